"""A service that creates transfers (a job service, issue 12) links them with ``parent`` and is told when
they end: the listener hook of TransferService, with a real store (SQLite) and no cluster."""

from __future__ import annotations

import threading

from cryptography.fernet import Fernet

from hpc.config import Config
from hpc.security import SecretBox
from hpc.services.transfers import TransferService, Tracker
from hpc.staging.control import Control
from hpc.store import open_store
from hpc.store.tables import utcnow


def service(tmp_path) -> TransferService:
    config = Config(data_dir=str(tmp_path))
    return TransferService(config, open_store(config.resolved_database_url), SecretBox(Fernet.generate_key()), None)


def insert(transfers: TransferService, row_id: str, parent: str | None) -> dict:
    now = utcnow()
    return transfers.store.transfers.insert({
        "id": row_id, "kind": "http", "infrastructure": "c", "owner": "u", "parent": parent, "state": "transferring",
        "reason": "", "bytes_done": 0, "attempts": 1, "checkpoint": {"path": "/x", "roots": ["/"]},
        "cancel_requested": False, "created_at": now, "updated_at": now, "lease_owner": "me",
        "secrets_enc": transfers.encrypt({"url": "http://example.org/f?sig=secret"}),
    })


def test_a_listener_hears_the_final_row_with_its_parent_and_no_secrets(tmp_path):
    transfers = service(tmp_path)
    heard = []
    transfers.add_listener(lambda kind, row: heard.append((kind, row)))
    transfers.add_listener(lambda kind, row: 1 / 0)  # a faulty listener does not stop the others
    row = insert(transfers, "00000000-0000-0000-0000-000000000001", "job:42")
    tracker = Tracker(transfers, transfers.store.transfers, row, Control(), threading.Event(), "me")
    tracker(done=10, total=10)
    tracker.end("completed", "", sha256="ab" * 32)
    assert [(kind, r["id"], r["state"], r["parent"], r["secrets_enc"]) for kind, r in heard] == [
        ("transfer", row["id"], "completed", "job:42", None)]
    children, total = transfers.list(_Admin(), parent="job:42")
    assert (total, [c["id"] for c in children]) == (1, [row["id"]])


def test_a_transfer_cancelled_before_it_started_is_heard_at_once(tmp_path):
    transfers = service(tmp_path)
    heard = []
    transfers.add_listener(lambda kind, row: heard.append(row["state"]))
    row = insert(transfers, "00000000-0000-0000-0000-000000000002", "job:7")
    transfers.store.transfers.update(row["id"], state="queued", lease_owner=None)
    transfers.cancel(row["id"], None, _Admin())
    assert heard == ["cancelled"]


class _Admin:
    name = "admin"
    is_admin = True

"""The event log on the real databases: recorded with each change, in order, never skipped by a reader.

On PostgreSQL, concurrent transactions take ids from a sequence in one order and may commit in another:
a reader that resumes from the highest id it saw would skip an event committed late with a lower id.
These tests run concurrent writers (with the commit delayed on purpose, to open that window wide)
against a reader that only ever asks for ``id > last``, and check that it saw every event exactly once,
in order; and, as a control, that without the store's serialisation the same reader does skip events.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from hpc.store import open_store
from hpc.store.tables import utcnow

pytestmark = pytest.mark.integration


def new_job(store, owner: str = "user", state: str = "queued") -> str:
    now = utcnow()
    job_id = str(uuid.uuid4())
    store.jobs.insert({"id": job_id, "infrastructure": "ghost", "owner": owner, "kind": "script", "name": "n",
                       "spec": {}, "scheduler_id": "", "state": state, "watch_period": 1.0,
                       "cancel_requested": False, "created_at": now, "updated_at": now, "poll_failures": 0,
                       "missing_polls": 0, "submit_attempts": 0})
    return job_id


def slow_commits(engine, delay: float) -> threading.local:
    """Delays the commit of transactions in threads that ask for it (``flag.slow = True``)."""
    flag = threading.local()

    @sa.event.listens_for(engine, "commit")
    def _commit(conn):
        if getattr(flag, "slow", False):
            time.sleep(random.uniform(0, delay))

    return flag


def run_writers_and_reader(store, writers: int, changes: int, delay: float) -> tuple[list[int], list[int]]:
    """Writers flip their own jobs' states; a reader polls ``after(last)``. Returns (seen ids, all ids)."""
    flag = slow_commits(store.engine, delay)
    jobs = [new_job(store) for _ in range(writers)]
    start = store.events.last_id()
    seen: list[int] = []
    done = threading.Event()

    def write(job_id: str) -> None:
        flag.slow = True
        for number in range(changes):
            store.jobs.update(job_id, state="running" if number % 2 == 0 else "queued")

    def read() -> None:
        last = start
        while True:
            finished = done.is_set()
            rows = store.events.after(last, limit=1000)
            for row in rows:
                seen.append(row["id"])
                last = row["id"]
            if finished and not rows:
                return
            time.sleep(0.002)

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write, args=(job_id,)) for job_id in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    reader.join()
    every = [row["id"] for row in store.events.after(start, limit=100000)]
    return seen, every


def test_postgresql_reader_never_skips_a_late_commit(pg_url):
    store = open_store(pg_url)
    try:
        assert store.events.serialize is True
        seen, every = run_writers_and_reader(store, writers=6, changes=15, delay=0.02)
        assert len(every) == 6 * (15 + 8)  # a job.state per change, a job.output per move to running
        assert seen == every  # each once, in id order, none skipped
        assert seen == sorted(set(seen))
    finally:
        store.close()


def test_postgresql_without_serialisation_a_reader_skips_events(pg_url):
    """The control: the same run with the advisory lock switched off loses events for the reader."""
    store = open_store(pg_url)
    try:
        store.events.serialize = False
        seen, every = run_writers_and_reader(store, writers=6, changes=15, delay=0.05)
        assert set(seen) < set(every)
    finally:
        store.close()


def test_sqlite_reader_sees_every_event_in_order(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'g.db'}")
    try:
        seen, every = run_writers_and_reader(store, writers=4, changes=10, delay=0.01)
        assert seen == every
        assert len(every) == 4 * (10 + 5)  # a job.state per change, a job.output per move to running
    finally:
        store.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_events_recorded_with_the_change_and_outbox_rows_with_them(database, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'g.db'}" if database == "sqlite" else request.getfixturevalue("pg_url")
    store = open_store(url)
    try:
        now = utcnow()
        store.subscriptions.insert({"id": str(uuid.uuid4()), "owner": "user", "admin": False, "url": "http://x/",
                                    "secret_enc": "x", "types": ["job.state"], "resource_ids": None,
                                    "source": "api", "created_at": now})
        store.subscriptions.insert({"id": str(uuid.uuid4()), "owner": "other", "admin": False, "url": "http://y/",
                                    "secret_enc": "x", "types": None, "resource_ids": None, "source": "api",
                                    "created_at": now})
        job_id = new_job(store, state="submitting")
        c = store.jobs.table.c
        assert store.jobs.update(job_id, state="queued", scheduler_id="7") is True
        # A guarded update whose guard fails changes nothing and records nothing.
        assert store.jobs.update(job_id, [c.state == "running"], state="completed") is False
        assert store.jobs.update(job_id, state="queued", reason="no change of state") is True
        assert store.jobs.update(job_id, [c.state.not_in(["completed"])], state="completed", exit_code=0,
                                 job_dir="/j") is True
        events = store.events.after(0)
        assert [(e["type"], e["data"].get("old_state"), e["data"]["state"]) for e in events] == [
            ("job.state", None, "submitting"), ("job.state", "submitting", "queued"),
            ("job.state", "queued", "completed"), ("job.output", None, "completed")]
        assert events[2]["data"]["exit_code"] == 0
        assert events[2]["data"]["status"] == "completed"
        with store.engine.connect() as conn:
            outbox = conn.execute(sa.text("SELECT event_id FROM deliveries ORDER BY event_id")).scalars().all()
        # Only the user's subscription, and only its type: three job.state events.
        assert outbox == [events[0]["id"], events[1]["id"], events[2]["id"]]
    finally:
        store.close()


def test_transfer_progress_is_rate_limited_and_stops_at_the_end(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'g.db'}")
    try:
        now = utcnow()
        transfer_id = str(uuid.uuid4())
        store.transfers.insert({"id": transfer_id, "kind": "http", "infrastructure": "ghost", "owner": "user",
                                "state": "queued", "reason": "", "bytes_done": 0, "attempts": 0,
                                "cancel_requested": False, "created_at": now, "updated_at": now})
        for done in range(0, 50):  # 50 writes within well under a second: at most one progress event
            store.transfers.update(transfer_id, state="transferring", bytes_done=done * 1000, bytes_total=50000)
        time.sleep(1.05)
        store.transfers.update(transfer_id, state="transferring", bytes_done=50000)
        store.transfers.update(transfer_id, state="transferring", bytes_done=50000)  # unchanged: none
        store.transfers.update(transfer_id, state="completed", bytes_done=50000, sha256="ab")
        types = [(e["type"], e["data"].get("bytes_done")) for e in store.events.after(0)]
        assert types == [("transfer.state", 0), ("transfer.state", 0), ("transfer.progress", 1000),
                         ("transfer.progress", 50000), ("transfer.state", 50000)]
    finally:
        store.close()


def test_callback_subscription_gets_the_earlier_events_of_its_resource(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'g.db'}")
    try:
        job_id = new_job(store, state="submitting")
        other = new_job(store, state="submitting")
        store.jobs.update(job_id, state="queued")
        subscription = str(uuid.uuid4())
        store.subscriptions.insert({"id": subscription, "owner": "user", "admin": False, "url": "http://x/",
                                    "secret_enc": "x", "types": None, "resource_ids": [job_id],
                                    "source": "callback", "created_at": utcnow()}, backfill=("job", job_id))
        store.jobs.update(job_id, state="running")
        store.jobs.update(other, state="queued")
        wanted = [e["id"] for e in store.events.after(0) if e["resource_id"] == job_id]
        with store.engine.connect() as conn:
            queued = conn.execute(sa.text("SELECT event_id FROM deliveries ORDER BY event_id")).scalars().all()
        assert queued == wanted
        assert len(wanted) == 4  # submitting, queued, running (+ output available)
    finally:
        store.close()

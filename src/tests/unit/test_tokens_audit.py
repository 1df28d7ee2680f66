"""API-made tokens, the revocation-following cache and the audit log, on a real SQLite store (two Store
objects on one file stand for two replicas)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from hpc.config import Config, TokenEntry
from hpc.errors import Forbidden, InvalidInput, NotFound
from hpc.security import ANONYMOUS_ADMIN, AuthenticationFailed, Principal, hash_token
from hpc.services.audit import AuditLog
from hpc.services.tokens import Authenticator, StoreUnavailable, TokenService, api_token, token_id_of
from hpc.store import open_store
from hpc.store.tables import utcnow

ADMIN = Principal("ops", "admin", "config")
USER = Principal("orchestrator", "user", "config")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'gateway.db'}"


def replica(url, clock=None, **config):
    store = open_store(url)
    audit = AuditLog(store)
    tokens = TokenService(store, audit)
    cfg = Config(tokens=(TokenEntry("ops", "admin", hash_token("configured-secret")),), **config)
    return store, tokens, Authenticator(cfg, tokens, None, clock=clock or time.monotonic)


def refusal(authenticate, token) -> tuple[str, str]:
    with pytest.raises(AuthenticationFailed) as caught:
        authenticate(token)
    return caught.value.kind, caught.value.reason


def test_token_shape():
    token_id = "5a0f3c1e-7b7e-4e55-9d6b-0c1d2e3f4a5b"
    token = api_token(token_id)
    assert token.startswith("hpc_5a0f3c1e7b7e4e559d6b0c1d2e3f4a5b_")
    assert token_id_of(token) == token_id
    assert token != api_token(token_id)
    for bad in ("hpc_", "hpc_zz_x", "hpc_5a0f3c1e7b7e4e559d6b0c1d2e3f4a5b", "tok-admin", "hpc_" + "g" * 32 + "_x"):
        assert token_id_of(bad) is None


def test_created_token_works_and_only_its_hash_is_stored(url):
    store, tokens, authenticate = replica(url)
    row, secret = tokens.create("bot", "user", None, ADMIN)
    assert authenticate(secret) == Principal("bot", "user", f"token:{row['id']}")
    with store.engine.connect() as conn:
        stored = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM api_tokens"))]
    assert [r["id"] for r in stored] == [row["id"]]
    assert secret not in repr(stored)
    assert stored[0]["hash"].startswith("sha256$")
    assert refusal(authenticate, secret[:-1] + ("A" if secret[-1] != "A" else "B")) == \
        ("unknown", "the token is not valid")


def test_configured_tokens_keep_working(url):
    _, _, authenticate = replica(url)
    assert authenticate("configured-secret") == Principal("ops", "admin", "config")
    assert refusal(authenticate, "not-a-token") == ("unknown", "the token is not valid")


def test_revocation_reaches_another_replica_within_token_cache_seconds(url):
    clock_a, clock_b = Clock(), Clock()
    _, tokens_a, auth_a = replica(url, clock_a)
    _, _, auth_b = replica(url, clock_b)
    row, secret = tokens_a.create("bot", "user", None, ADMIN)
    assert auth_b(secret).name == "bot"  # remembered by B
    assert auth_a(secret).name == "bot"
    revoked = tokens_a.revoke(row["id"], ADMIN)
    assert revoked["revoked_at"] is not None and revoked["revoked_by"] == "ops"
    assert refusal(auth_a, secret) == ("revoked", "the token has been revoked")  # at once where revoked
    clock_b.now += 0.4
    assert auth_b(secret).name == "bot"  # B has not re-read the generation yet: within its 0.5 s
    clock_b.now += 0.2
    assert refusal(auth_b, secret) == ("revoked", "the token has been revoked")


def test_revocation_is_idempotent_and_audited_once(url):
    store, tokens, _ = replica(url)
    row, _ = tokens.create("bot", "user", None, ADMIN)
    first = tokens.revoke(row["id"], ADMIN)
    again = tokens.revoke(row["id"], Principal("other-admin", "admin", "oidc"))
    assert again["revoked_at"] == first["revoked_at"]
    assert again["revoked_by"] == "ops"
    entries, total = store.audit.page(action="token.revoke", principal=None, since=None, limit=10, offset=0)
    assert (total, entries[0]["principal"], entries[0]["target"]) == (1, "ops", row["id"])


def test_expired_tokens_are_refused_at_once_even_when_remembered(url):
    _, tokens, authenticate = replica(url)
    row, secret = tokens.create("short", "user", utcnow() + timedelta(seconds=1), ADMIN)
    assert authenticate(secret).name == "short"
    time.sleep(1.1)
    assert refusal(authenticate, secret) == ("expired", "the token has expired")
    assert tokens.get(row["id"], ADMIN)["expires_at"] is not None


def test_a_verdict_read_across_a_revocation_is_not_remembered(url):
    """The store said "valid" just before another replica revoked; B's cache must not keep that answer."""
    clock = Clock()
    _, tokens_a, _ = replica(url)
    _, tokens_b, auth_b = replica(url, clock)
    row, secret = tokens_a.create("bot", "user", None, ADMIN)
    auth_b("configured-secret")
    real_check = tokens_b.check

    def check_then_revoked_elsewhere(token):
        verdict = real_check(token)
        tokens_a.revoke(row["id"], ADMIN)
        clock.now += 1.0
        auth_b._follow_revocations()  # another request on B sees the new generation meanwhile
        return verdict

    tokens_b.check = check_then_revoked_elsewhere
    assert auth_b(secret).name == "bot"  # this request was checked before the revocation
    tokens_b.check = real_check
    assert refusal(auth_b, secret)[0] == "revoked"


def test_only_admins_manage_tokens_and_bad_expiry_is_400(url):
    _, tokens, _ = replica(url)
    with pytest.raises(Forbidden):
        tokens.create("bot", "user", None, USER)
    with pytest.raises(InvalidInput) as caught:
        tokens.create("bot", "user", utcnow() - timedelta(seconds=1), ADMIN)
    assert caught.value.field == "expires_at"
    with pytest.raises(NotFound):
        tokens.revoke("5a0f3c1e-7b7e-4e55-9d6b-0c1d2e3f4a5b", ADMIN)
    with pytest.raises(Forbidden):
        tokens.list(USER)


def test_listing_pages_and_hides_revoked_on_request(url):
    _, tokens, _ = replica(url)
    made = [tokens.create(f"bot{i}", "user", None, ADMIN)[0] for i in range(3)]
    tokens.revoke(made[0]["id"], ADMIN)
    rows, total = tokens.list(ADMIN, limit=2, offset=0)
    assert total == 3 and len(rows) == 2
    rows, total = tokens.list(ADMIN, include_revoked=False)
    assert sorted(r["name"] for r in rows) == ["bot1", "bot2"] and total == 2


def test_an_unreadable_store_refuses_api_tokens_with_503_but_not_configured_ones(url):
    store, tokens, authenticate = replica(url)
    _, secret = tokens.create("bot", "user", None, ADMIN)
    # The store goes away: its file's directory does not exist (sqlite cannot open it).
    store.generations.engine = store.tokens.engine = sa.create_engine("sqlite:////nonexistent-dir/x.db")
    with pytest.raises(StoreUnavailable):
        authenticate(secret)
    assert authenticate("configured-secret").name == "ops"


def test_the_audit_log_filters_and_pages(url):
    store, _, _ = replica(url)
    audit = AuditLog(store)
    audit.record(ADMIN, "infrastructure.register", "tb-slurm", {"host": "127.0.0.1"})
    audit.record(Principal("oidc:bob", "admin", "oidc"), "infrastructure.delete", "tb-slurm")
    audit.record(ADMIN, "infrastructure.register", "tb-pbs")
    rows, total = audit.list(ADMIN, action="infrastructure.register")
    assert (total, [r["target"] for r in rows]) == (2, ["tb-pbs", "tb-slurm"])
    rows, total = audit.list(ADMIN, actor="oidc:bob")
    assert (total, rows[0]["credential"], rows[0]["action"]) == (1, "oidc", "infrastructure.delete")
    rows, total = audit.list(ADMIN, limit=1, offset=1)
    assert (total, [r["target"] for r in rows]) == (3, ["tb-slurm"])
    assert audit.list(ADMIN, since=utcnow() + timedelta(seconds=5)) == ([], 0)
    with pytest.raises(Forbidden):
        audit.list(USER)
    with pytest.raises(ValueError):
        audit.record(ADMIN, "made.up")
    assert ANONYMOUS_ADMIN.credential == "none"


def test_the_audit_actions_are_the_contracts():
    import yaml

    from hpc.services.audit import ACTIONS
    from tests.support import REPO

    spec = yaml.safe_load((REPO / "openapi" / "openapi.yaml").read_text())
    assert sorted(spec["components"]["schemas"]["AuditAction"]["enum"]) == sorted(ACTIONS)

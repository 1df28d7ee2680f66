"""Configuration, token hashing, secret encryption and the store's schema versioning."""

from __future__ import annotations

import sqlalchemy as sa
import pytest

from hpc.config import ConfigError, TokenEntry, load_config, parse_size
from hpc.security import SecretBox, fingerprint, hash_token, new_token, verify_token
from hpc.store import SchemaError, head_revision, make_engine, migrate, open_store
from hpc.store.tables import utcnow


def test_defaults_are_safe():
    config = load_config(environ={})
    assert config.listen_host == "127.0.0.1"
    assert config.auth_enabled is True
    assert config.trust_on_first_use is False
    assert config.resolved_database_url.startswith("sqlite:///")


def test_yaml_then_environment(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text("listen_port: 9999\nstaging_quota: 2GiB\ntokens:\n  - {name: a, role: admin, hash: 'sha256$s$d'}\n")
    config = load_config(path, environ={"HPC_LISTEN_PORT": "7000", "HPC_AUTH_ENABLED": "off"})
    assert config.listen_port == 7000
    assert config.staging_quota == 2 * 1024**3
    assert config.auth_enabled is False
    assert config.tokens == (TokenEntry("a", "admin", "sha256$s$d"),)


@pytest.mark.parametrize("text", ["listen_port: [1]", "nonsense: 1", "tokens: [{name: a, role: root, hash: x}]"])
def test_bad_yaml_is_refused(tmp_path, text):
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path, environ={})


def test_tokens_from_environment():
    config = load_config(environ={"HPC_TOKENS": "ci:user:sha256$aa$bb, ops:admin:sha256$cc$dd"})
    assert [t.name for t in config.tokens] == ["ci", "ops"]
    with pytest.raises(ConfigError):
        load_config(environ={"HPC_TOKENS": "justname"})


def test_parse_size():
    assert parse_size("500MiB") == 500 * 1024**2
    assert parse_size("1G") == 10**9
    assert parse_size(42) == 42
    with pytest.raises(ConfigError):
        parse_size("lots")


def test_token_hash_round_trip():
    token = new_token()
    entries = [TokenEntry("other", "user", hash_token("something-else")), TokenEntry("me", "admin", hash_token(token))]
    principal = verify_token(token, entries)
    assert principal is not None
    assert (principal.name, principal.role) == ("me", "admin")
    assert verify_token(token + "x", entries) is None
    assert token not in entries[1].hash
    assert hash_token(token) != hash_token(token)  # salted


def test_secret_box_creates_a_private_key_file(tmp_path):
    key_file = tmp_path / "secret.key"
    box = SecretBox.from_config("", key_file)
    assert key_file.stat().st_mode & 0o777 == 0o600
    sealed = box.encrypt("hunter2")
    assert "hunter2" not in sealed
    assert SecretBox.from_config("", key_file).decrypt(sealed) == "hunter2"
    assert box.encrypt(None) is None
    other = SecretBox.from_config("", tmp_path / "other.key")
    with pytest.raises(ValueError):
        other.decrypt(sealed)


def test_fingerprint_matches_openssh():
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJJ4VtyN5XgrjMI8/Qe9zYghKgClI2tVgbHFUW7rbgXg"
    assert fingerprint(key) == "SHA256:E442T6sAHSDgwBnDGmAglHuzTBY8sYJPUEqZOHvOQeI"


def test_store_persists_and_stamps_version(tmp_path):
    url = f"sqlite:///{tmp_path / 'db' / 'gw.db'}"
    store = open_store(url)
    now = utcnow()
    store.infrastructures.insert({
        "name": "a", "host": "h", "port": 22, "username": "u", "hostname": "c", "scheduler": "slurm",
        "settings": {"x": 1}, "owner": "me", "created_at": now, "updated_at": now,
    })
    store.close()
    reopened = open_store(url)
    row = reopened.infrastructures.get("a")
    assert row["settings"] == {"x": 1}
    assert row["created_at"] == now
    with reopened.engine.connect() as conn:
        assert conn.execute(sa.text("select version_num from alembic_version")).scalar() == head_revision()
        assert conn.execute(sa.text("pragma journal_mode")).scalar() == "wal"


def test_newer_schema_is_refused(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'gw.db'}")
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("update alembic_version set version_num = 'from-a-newer-gateway'"))
    with pytest.raises(SchemaError):
        migrate(engine)


def test_leases_are_exclusive(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'gw.db'}")
    now = utcnow()
    store.infrastructures.insert({
        "name": "a", "host": "h", "port": 22, "username": "u", "hostname": "c", "scheduler": "slurm",
        "settings": {}, "owner": "me", "created_at": now, "updated_at": now,
    })
    assert store.infrastructures.claim_poll("a", "replica-1", ttl=30)
    assert not store.infrastructures.claim_poll("a", "replica-2", ttl=30)
    assert store.infrastructures.claim_poll("a", "replica-1", ttl=30)
    store.infrastructures.release_poll("a", "replica-1")
    assert store.infrastructures.claim_poll("a", "replica-2", ttl=30)

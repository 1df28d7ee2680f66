"""Schema migrations (Alembic) on SQLite and on the testbed's PostgreSQL.

The revisions must build exactly ``tables.metadata`` (so a column added to tables.py without a revision
fails here), a database written by release 1.0 (``tests/fixtures/release_1_0.py``, that release's own
code) must come through the upgrade with every row and value intact, and 1.0 must then refuse it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from hpc.store import (SchemaError, Store, current_revision, db, head_revision, make_engine, migrate, open_store,
                       tables)
from hpc.store.db import HANDED_OVER_SCHEMA_VERSION, alembic_config
from tests.fixtures import release_1_0
from tests.support import REPO

ENGINES = ["sqlite", "postgresql"]


@pytest.fixture(params=ENGINES)
def db_url(request, tmp_path):
    """An empty database: a SQLite file, or a fresh database on the testbed's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def schema_diff(conn: sa.Connection, metadata: sa.MetaData) -> list:
    """What Alembic's autogenerate finds between the database and ``metadata`` (tables, columns, types,
    nullability, indexes); empty when they agree."""
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return compare_metadata(context, metadata)


def test_revisions_build_the_tables_schema(engine):
    """Fails when tables.py has something no revision makes: add one with 'hpc-gateway db revision MSG'
    (src/hpc/store/migrations/README.md)."""
    with engine.connect() as conn:
        command.upgrade(alembic_config(conn), "head")  # every revision from an empty database
        conn.commit()
        assert current_revision(conn) == head_revision()
        assert schema_diff(conn, tables.metadata) == []


def test_schema_check_catches_a_missing_revision(engine):
    """The check above is not vacuous: a column and a table in the tables but in no revision show up."""
    with engine.connect() as conn:
        command.upgrade(alembic_config(conn), "head")
        conn.commit()
        ahead = sa.MetaData()
        for table in tables.metadata.sorted_tables:
            table.to_metadata(ahead)
        ahead.tables["jobs"].append_column(sa.Column("migration_probe", sa.String(128), index=True))
        sa.Table("migration_probe_table", ahead, sa.Column("id", sa.Integer, primary_key=True))
        found = {(diff[0], diff[-1].name) if isinstance(diff, tuple) else ("?", str(diff))
                 for diff in schema_diff(conn, ahead)}
    assert found == {("add_column", "migration_probe"), ("add_index", "ix_jobs_migration_probe"),
                     ("add_table", "migration_probe_table")}


def test_new_database_is_created_at_head_and_agrees_with_the_revisions(engine):
    assert migrate(engine) == head_revision()
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert conn.execute(sa.text("select version from schema_version")).scalars().all() == [
            HANDED_OVER_SCHEMA_VERSION]
        assert schema_diff(conn, tables.metadata) == []
    assert migrate(engine) == head_revision()  # a second start changes nothing


T0 = datetime(2026, 11, 30, 8, 15, 30, 123456, tzinfo=timezone.utc)


def release_1_0_rows() -> dict[str, list[dict]]:
    """Rows as release 1.0 wrote them: every column of every table, with NULLs, JSON, unicode,
    microseconds, booleans and 64-bit byte counts."""
    infrastructures = [
        {"name": "cluster-a", "host": "login.a.example", "port": 22, "username": "alice", "hostname": "a",
         "scheduler": "slurm", "key_type": "ssh-ed25519", "key_path": "id_a", "key_data_enc": None,
         "passphrase_enc": "gAAAAAB-passphrase-token", "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA",
         "settings": {"mpi_launcher": "srun", "modules": ["gcc/12", "openmpi"], "quota": None},
         "owner": "ops", "created_at": T0, "updated_at": T0 + timedelta(seconds=1),
         "poll_owner": "replica-1", "poll_until": T0 + timedelta(minutes=1)},
        {"name": "cluster-b", "host": "10.1.2.3", "port": 2222, "username": "bob", "hostname": "b",
         "scheduler": "pbs", "key_type": None, "key_path": None, "key_data_enc": "gAAAAAB-inline-key",
         "passphrase_enc": None, "host_key": None, "settings": {}, "owner": "ops",
         "created_at": T0, "updated_at": T0, "poll_owner": None, "poll_until": None},
    ]
    jobs = []
    for index, (state, exit_code) in enumerate([("running", None), ("completed", 0), ("failed", 3)]):
        jobs.append({
            "id": str(uuid.UUID(int=index + 1)), "infrastructure": "cluster-a" if index else "cluster-b",
            "owner": "user-1", "kind": "script", "name": f"job-{index} ünïcode",
            "spec": {"script": "#!/bin/bash\necho 'quoted $(x)'\n", "resources": {"nodes": 1}, "env": {}},
            "scheduler_id": str(100 + index), "state": state, "native_state": state.upper(),
            "reason": None if index < 2 else "NonZeroExitCode", "exit_code": exit_code,
            "job_dir": f"/home/alice/.hpc/{index}", "watch_period": 2.5, "cancel_requested": index == 2,
            "cancel_sent_at": T0 if index == 2 else None, "created_at": T0 + timedelta(seconds=index),
            "submitted_at": T0, "started_at": T0 if index else None, "ended_at": T0 if index else None,
            "updated_at": T0, "next_poll_at": None if index else T0, "lease_owner": "replica-1" if not index else None,
            "lease_until": T0 if not index else None, "poll_failures": index, "missing_polls": 0,
            "submit_attempts": 1,
        })
    transfers = [
        {"id": str(uuid.UUID(int=100 + index)), "kind": kind, "infrastructure": "cluster-a", "owner": "user-1",
         "src": src, "dst": "data/in.bin", "endpoint": endpoint, "bucket": bucket, "object": obj,
         "region": "us-east-1" if bucket else None, "secrets_enc": "gAAAAAB-s3-keys" if bucket else None,
         "state": state, "reason": "" if state != "failed" else "HTTP 404 from the source",
         "bytes_done": done, "bytes_total": total, "rate": 12.5e6 if done else None,
         "sha256": "ab" * 32 if state == "completed" else None, "attempts": index,
         "checkpoint": {"temp": "data/.in.bin.part", "offset": done} if state == "running" else None,
         "cancel_requested": False, "created_at": T0, "started_at": T0, "ended_at": None, "updated_at": T0,
         "lease_owner": None, "lease_until": None}
        for index, (kind, src, endpoint, bucket, obj, state, done, total) in enumerate([
            ("http", "https://example.org/in.bin", None, None, None, "running", 6 * 2**30, 10 * 2**30),
            ("s3_data", None, "https://s3.example", "bucket", "in/x.bin", "completed", 5, 5),
            ("s3_result", "out/y.bin", "https://s3.example", "bucket", "out/y.bin", "failed", 0, None),
        ])
    ]
    return {"infrastructures": infrastructures, "jobs": jobs, "transfers": transfers}


def read_all(conn: sa.Connection, metadata: sa.MetaData, name: str) -> list[dict]:
    table = metadata.tables[name]
    return [dict(row._mapping) for row in conn.execute(sa.select(table).order_by(*table.primary_key.columns))]


def test_release_1_0_database_upgrades_keeping_its_data(engine):
    release_1_0.migrate(engine)  # release 1.0's own start: its tables, schema_version 1
    rows = release_1_0_rows()
    with engine.begin() as conn:
        for name, values in rows.items():
            conn.execute(release_1_0.metadata.tables[name].insert(), values)
    with engine.connect() as conn:
        written = {name: read_all(conn, release_1_0.metadata, name) for name in rows}
    assert written == rows  # what 1.0 reads back is what it was given (the reference for after)

    assert migrate(engine) == head_revision()

    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert conn.execute(sa.text("select version from schema_version")).scalars().all() == [
            HANDED_OVER_SCHEMA_VERSION]
        assert schema_diff(conn, tables.metadata) == []
        for name, before in rows.items():
            after = read_all(conn, tables.metadata, name)
            # Columns added since 1.0 may be there too; every 1.0 value is kept.
            assert [{key: row[key] for key in before[0]} for row in after] == before
    store = Store(engine)
    assert store.jobs.get(rows["jobs"][0]["id"])["spec"] == rows["jobs"][0]["spec"]
    assert store.transfers.get(rows["transfers"][0]["id"])["bytes_done"] == 6 * 2**30
    assert [row["name"] for row in store.infrastructures.list()] == ["cluster-a", "cluster-b"]
    # Release 1.0, started on the upgraded database by mistake, refuses it instead of writing to it.
    with pytest.raises(release_1_0.SchemaError, match="schema version 2, newer than this gateway's 1"):
        release_1_0.migrate(engine)


def test_a_database_from_a_newer_gateway_is_refused(engine):
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("update alembic_version set version_num = '9999'"))
    with pytest.raises(SchemaError, match="revision '9999', which this gateway .* does not know"):
        migrate(engine)


def test_foreign_or_damaged_databases_are_refused(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("create table jobs (id varchar(36) primary key)"))
    with pytest.raises(SchemaError, match=r"has the gateway's tables \(jobs\) but no schema version"):
        migrate(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("create table schema_version (version integer not null)"))
        conn.execute(sa.text("insert into schema_version values (7)"))
    with pytest.raises(SchemaError, match="schema version 7 but no Alembic revision"):
        migrate(engine)


def test_replicas_starting_together_migrate_once(db_url):
    """Four processes' worth of starts at once on one empty database: one creates, the others wait for
    the lock and find it done; all end at the head with one alembic_version row."""
    results, errors = [], []

    def start():
        try:
            store = open_store(db_url)
            results.append(1)
            store.close()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert (errors, len(results)) == ([], 4)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select version_num from alembic_version")).scalars().all() == [head_revision()]
        assert conn.execute(sa.text("select version from schema_version")).scalars().all() == [
            HANDED_OVER_SCHEMA_VERSION]
    engine.dispose()


def test_db_commands_adopt_a_release_1_0_database(db_url):
    engine = make_engine(db_url)
    release_1_0.migrate(engine)
    engine.dispose()
    env_cmd = [sys.executable, "-m", "hpc.cli", "db"]
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}

    def run(*args):
        return subprocess.run([*env_cmd, *args, "--database-url", db_url], capture_output=True, text=True,
                              timeout=60, env=env)

    before = run("current")
    assert (before.returncode, before.stdout.split(": ", 1)[1].strip()) == (
        1, f"release 1.0 schema_version 1, not yet under Alembic (head {head_revision()}): "
           "'hpc-gateway db upgrade' or a start upgrades it")
    upgraded = run("upgrade")
    assert (upgraded.returncode, upgraded.stdout.split(": ", 1)[1].strip()) == (
        0, f"upgraded from revision none to {head_revision()} (head)")
    after = run("current")
    assert (after.returncode, after.stdout.split(": ", 1)[1].strip()) == (0, f"revision {head_revision()} (head)")


NEXT_REVISION = '''"""A later release's change, as the README says to write one.

Revision ID: {rev}
Revises: {down}
"""

from alembic import op
import sqlalchemy as sa

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer, nullable=False, server_default="5"))
        batch_op.alter_column("native_state", existing_type=sa.String(64), type_=sa.String(128))
        batch_op.create_index("ix_jobs_priority", ["priority"])
    op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True), sa.Column("what", sa.Text))


def downgrade() -> None:
    op.drop_table("audit")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_priority")
        batch_op.alter_column("native_state", existing_type=sa.String(128), type_=sa.String(64))
        batch_op.drop_column("priority")
'''


def test_a_later_revision_upgrades_a_populated_database(engine, tmp_path, monkeypatch):
    """The machinery for the next revisions: a batch ALTER (on SQLite a copy of the table) and a new
    table, run on a populated 1.0 database inside migrate's one transaction, keep every row."""
    migrations = tmp_path / "migrations"
    shutil.copytree(db.MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    rev = f"{int(head_revision()) + 1:04d}"
    (migrations / "versions" / f"{rev}_jobs_priority.py").write_text(
        NEXT_REVISION.format(rev=rev, down=head_revision()))
    release_1_0.migrate(engine)
    rows = release_1_0_rows()
    with engine.begin() as conn:
        for name, values in rows.items():
            conn.execute(release_1_0.metadata.tables[name].insert(), values)
    monkeypatch.setattr(db, "MIGRATIONS", migrations)

    assert migrate(engine) == rev

    with engine.connect() as conn:
        after = read_all(conn, tables.metadata, "jobs")
        assert [{key: row[key] for key in rows["jobs"][0]} for row in after] == rows["jobs"]
        priorities = conn.execute(sa.text("select priority from jobs order by id")).scalars().all()
        assert priorities == [5, 5, 5]
        columns = {column["name"]: column for column in sa.inspect(conn).get_columns("jobs")}
        assert columns["native_state"]["type"].length == 128
        assert "ix_jobs_priority" in {index["name"] for index in sa.inspect(conn).get_indexes("jobs")}
        transfers = read_all(conn, tables.metadata, "transfers")
        assert [{key: row[key] for key in rows["transfers"][0]} for row in transfers] == rows["transfers"]


ADD_A_COLUMN = """
import json, sys
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pathlib import Path
from hpc.cli import main
from hpc.store import db, make_engine, migrate, tables
from tests.fixtures import release_1_0

db.MIGRATIONS = Path(sys.argv[1])
# What another engineer does in tables.py: a column (with the TypeDecorator) and an index.
tables.jobs.append_column(sa.Column("principal", sa.String(128), index=True))
tables.jobs.append_column(sa.Column("seen_at", tables.UTCDateTime))
code = main(["db", "revision", "jobs: principal and seen_at"])
engine = make_engine(sys.argv[2])
release_1_0.migrate(engine)
head = migrate(engine)
with engine.connect() as conn:
    diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), tables.metadata)
print(json.dumps({"code": code, "head": head, "diff": [str(d) for d in diff]}))
"""


def test_db_revision_writes_the_missing_revision(tmp_path):
    """'hpc-gateway db revision' (run in a subprocess on a copy of the revisions, with a column added
    to tables.py there) writes a revision that takes a 1.0 database to exactly the new tables."""
    migrations = tmp_path / "migrations"
    shutil.copytree(db.MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-c", ADD_A_COLUMN, str(migrations), f"sqlite:///{tmp_path / 'gw.db'}"],
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rev = f"{int(head_revision()) + 1:04d}"
    assert result == {"code": 0, "head": rev, "diff": []}
    written = migrations / "versions" / f"{rev}_jobs_principal_and_seen_at.py"
    text = written.read_text()
    assert f"down_revision = '{head_revision()}'" in text
    assert "batch_op.add_column(sa.Column('principal', sa.String(length=128), nullable=True))" in text
    assert "batch_op.add_column(sa.Column('seen_at', sa.DateTime(timezone=True), nullable=True))" in text
    assert "batch_op.create_index(batch_op.f('ix_jobs_principal'), ['principal'], unique=False)" in text
    assert "tables" not in text

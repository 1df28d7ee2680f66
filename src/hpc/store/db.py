"""Database engine and schema versioning.

A new, empty database gets the newest schema from ``tables.metadata`` and is stamped with
``SCHEMA_VERSION``. An existing database at an older version is brought forward by the steps in
``UPGRADES``, each in its own transaction, so an upgrade keeps the data. A database newer than this code
is refused: an older gateway must not write to a schema it does not know.

SQLite (the default) runs in WAL mode so readers never wait for the writer; PostgreSQL is used by URL
(``postgresql+psycopg://...``) for several replicas sharing one store.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from hpc.store import tables

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# version reached -> step that takes a database from (version - 1) to version.
UPGRADES: dict[int, Callable[[Connection], None]] = {}


class SchemaError(RuntimeError):
    """The database's schema cannot be used by this gateway."""


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL, a busy timeout and their directory created."""
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def current_version(conn: Connection) -> int | None:
    """The stamped schema version, or None for an empty database."""
    if not sa.inspect(conn).has_table("schema_version"):
        return None
    return conn.execute(sa.select(sa.func.max(tables.schema_version.c.version))).scalar()


def migrate(engine: Engine) -> int:
    """Creates or upgrades the schema; returns the version now in force."""
    with engine.begin() as conn:
        version = current_version(conn)
        if version is None:
            tables.metadata.create_all(conn)
            conn.execute(tables.schema_version.insert().values(version=SCHEMA_VERSION))
            log.info("created database schema version %d", SCHEMA_VERSION)
            return SCHEMA_VERSION
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"the database has schema version {version}, newer than this gateway's {SCHEMA_VERSION}: "
            "upgrade the gateway instead"
        )
    while version < SCHEMA_VERSION:
        step = UPGRADES[version + 1]
        with engine.begin() as conn:
            step(conn)
            conn.execute(tables.schema_version.update().values(version=version + 1))
        version += 1
        log.info("upgraded database schema to version %d", version)
    return version

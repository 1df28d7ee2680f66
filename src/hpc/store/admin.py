"""Repositories of the gateway's own records: API-made tokens, the audit log, cache generations, and the
census of jobs and transfers that the metrics read at scrape time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from hpc.store import tables
from hpc.store.tables import utcnow

TOKENS_GENERATION = "api_tokens"


def _row(row) -> dict[str, Any] | None:
    return dict(row._mapping) if row is not None else None


class GenerationRepository:
    """Counters in ``cache_generations``: bumped when something every replica caches changes."""

    table = tables.cache_generations

    def __init__(self, engine: Engine):
        self.engine = engine
        c = self.table.c
        self._read = sa.select(c.generation).where(c.name == sa.bindparam("name"))

    def get(self, name: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(self._read, {"name": name}).scalar() or 0

    def bump(self, conn: sa.Connection, name: str) -> None:
        """Adds one to ``name`` inside the caller's transaction (the row is made when missing: a database
        created from the tables rather than by the revisions has none)."""
        c = self.table.c
        changed = conn.execute(self.table.update().where(c.name == name).values(generation=c.generation + 1))
        if changed.rowcount == 0:
            conn.execute(self.table.insert().values(name=name, generation=1))


class TokenRepository:
    table = tables.api_tokens

    def __init__(self, engine: Engine, generations: GenerationRepository):
        self.engine = engine
        self.generations = generations
        self._get = sa.select(self.table).where(self.table.c.id == sa.bindparam("id"))

    def get(self, token_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            return _row(conn.execute(self._get, {"id": token_id}).first())

    def insert_with(self, values: dict[str, Any], also) -> dict[str, Any]:
        """Inserts a token and runs ``also(conn)`` (the audit entry) in the same transaction."""
        with self.engine.begin() as conn:
            conn.execute(self.table.insert().values(**values))
            also(conn)
        return self.get(values["id"])

    def revoke(self, token_id: str, by: str, also) -> bool:
        """Marks a token revoked, bumps the tokens generation and runs ``also(conn)``, in one transaction;
        False when it was revoked already (nothing changes then)."""
        c = self.table.c
        with self.engine.begin() as conn:
            changed = conn.execute(
                self.table.update().where(c.id == token_id, c.revoked_at.is_(None)).values(
                    revoked_at=utcnow(), revoked_by=by)
            ).rowcount
            if changed:
                self.generations.bump(conn, TOKENS_GENERATION)
                also(conn)
        return bool(changed)

    def page(self, *, limit: int, offset: int, include_revoked: bool = True) -> tuple[list[dict[str, Any]], int]:
        c = self.table.c
        conditions = [] if include_revoked else [c.revoked_at.is_(None)]
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(self.table).where(*conditions)).scalar_one()
            rows = conn.execute(
                sa.select(self.table).where(*conditions).order_by(c.created_at.desc(), c.id).limit(limit).offset(offset)
            ).all()
        return [_row(r) for r in rows], total


class AuditRepository:
    table = tables.audit_log

    def __init__(self, engine: Engine):
        self.engine = engine

    def values(self, **entry: Any) -> sa.Insert:
        return self.table.insert().values(**entry)

    def insert(self, conn: sa.Connection | None = None, **entry: Any) -> None:
        if conn is not None:
            conn.execute(self.values(**entry))
            return
        with self.engine.begin() as own:
            own.execute(self.values(**entry))

    def page(self, *, action: str | None, principal: str | None, since: datetime | None, limit: int,
             offset: int) -> tuple[list[dict[str, Any]], int]:
        """Newest first, with the total count of entries that match."""
        c = self.table.c
        conditions = []
        if action:
            conditions.append(c.action == action)
        if principal:
            conditions.append(c.principal == principal)
        if since:
            conditions.append(c.at >= since)
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(self.table).where(*conditions)).scalar_one()
            rows = conn.execute(
                sa.select(self.table).where(*conditions).order_by(c.at.desc(), c.id.desc()).limit(limit).offset(offset)
            ).all()
        return [_row(r) for r in rows], total


class CensusRepository:
    """Counts over the whole store, the same whichever replica asks (metrics computed at scrape time)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        jobs, transfers = tables.jobs.c, tables.transfers.c
        self._jobs = sa.select(jobs.infrastructure, jobs.state, sa.func.count()).group_by(
            jobs.infrastructure, jobs.state)
        self._transfers = sa.select(
            transfers.infrastructure, transfers.kind, transfers.state, sa.func.count(),
            sa.func.coalesce(sa.func.sum(transfers.rate), 0.0),
        ).group_by(transfers.infrastructure, transfers.kind, transfers.state)

    def count(self) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, str, int, float]]]:
        """Jobs as ``(infrastructure, state, count)`` and transfers as ``(infrastructure, kind, state,
        count, sum of their current rates in bytes/s)``, in one read transaction."""
        with self.engine.connect() as conn:
            jobs = [tuple(r) for r in conn.execute(self._jobs).all()]
            transfers = [tuple(r) for r in conn.execute(self._transfers).all()]
        return jobs, transfers

"""Small repository classes over the tables. Rows come back as plain dicts.

Work shared between gateway replicas (polling an infrastructure's jobs, running a transfer) is claimed
with a lease: an atomic UPDATE that succeeds only when nobody else holds an unexpired lease, so any
number of replicas can share one database without doing the same work twice.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from hpc.store import tables
from hpc.store.events import DeliveryRepository, EventLog, SubscriptionRepository, watched_columns
from hpc.store.admin import AuditRepository, CensusRepository, GenerationRepository, TokenRepository
from hpc.store.tables import utcnow


class DuplicateKey(Exception):
    """A row with that key exists already."""


def _row(row) -> dict[str, Any] | None:
    return dict(row._mapping) if row is not None else None


class _Repository:
    """Inserts and updates that write a column watched for events (``hpc.store.events.RULES``) go through
    the event log, which records the events in the same transaction."""

    table: sa.Table

    def __init__(self, engine: Engine, events: EventLog | None = None):
        self.engine = engine
        self.events = events
        self._watched = watched_columns(self.table.name) if events is not None else frozenset()

    @property
    def _key(self) -> sa.Column:
        return list(self.table.primary_key.columns)[0]

    def insert(self, values: dict[str, Any]) -> dict[str, Any]:
        try:
            if self._watched & set(values):
                self.events.insert_row(self.table, values)
            else:
                with self.engine.begin() as conn:
                    conn.execute(self.table.insert().values(**values))
        except sa.exc.IntegrityError:
            raise DuplicateKey(values[self._key.name]) from None
        return self.get(values[self._key.name])

    def get(self, key: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            return _row(conn.execute(self._get_statement, {"key": key}).first())

    @functools.cached_property
    def _get_statement(self) -> sa.Select:
        # Built once: status reads are the hot path (GET /job/{id}), and building and coercing the
        # statement cost more than running it on SQLite.
        return sa.select(self.table).where(self._key == sa.bindparam("key"))

    def update(self, key: str, where: Iterable[sa.ColumnElement] = (), **values: Any) -> bool:
        """Updates one row, optionally only if ``where`` holds; True if a row changed."""
        values.setdefault("updated_at", utcnow())
        if self._watched & set(values):
            return self.events.update_row(self.table, key, where, values)
        statement = self.table.update().where(self._key == key, *where).values(**values)
        with self.engine.begin() as conn:
            return conn.execute(statement).rowcount == 1

    def delete(self, key: str) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(self.table.delete().where(self._key == key)).rowcount == 1

    def count_active(self, infrastructure: str, terminal: Iterable[str]) -> int:
        """Rows of an infrastructure not yet in a terminal state."""
        c = self.table.c
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).where(c.infrastructure == infrastructure, c.state.not_in(list(terminal)))
            ).scalar_one()

    def page(self, *, owner: str | None, since: datetime | None, limit: int, offset: int,
             **equal: str | None) -> tuple[list[dict[str, Any]], int]:
        """Newest first: rows of ``owner`` (None: everyone's) created since ``since``, where each given
        column of ``equal`` has that value (None or empty: no condition); and the total count."""
        c = self.table.c
        conditions = [c[name] == value for name, value in equal.items() if value]
        if owner is not None:
            conditions.append(c.owner == owner)
        if since:
            conditions.append(c.created_at >= since)
        return self._page(conditions, limit, offset, c.created_at.desc())

    def release_leases(self, owner: str) -> int:
        """Drops every lease held by ``owner`` or its workers (``owner/<n>``): a replica restarting
        under a stable instance id holds nothing any more."""
        c = self.table.c
        held = sa.or_(c.lease_owner == owner, c.lease_owner.startswith(f"{owner}/", autoescape=True))
        with self.engine.begin() as conn:
            return conn.execute(
                self.table.update().where(held).values(lease_owner=None, lease_until=None)
            ).rowcount

    def lease_owners(self, terminal: Iterable[str]) -> list[str]:
        """Who holds leases on unfinished rows (expired or not)."""
        c = self.table.c
        with self.engine.connect() as conn:
            return list(conn.execute(
                sa.select(c.lease_owner).where(c.state.not_in(list(terminal)), c.lease_owner.is_not(None)).distinct()
            ).scalars())

    def _page(self, conditions: list, limit: int, offset: int, order) -> tuple[list[dict], int]:
        with self.engine.connect() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(self.table).where(*conditions)
            ).scalar_one()
            rows = conn.execute(
                sa.select(self.table).where(*conditions).order_by(order).limit(limit).offset(offset)
            ).all()
        return [_row(r) for r in rows], total


class InfrastructureRepository(_Repository):
    table = tables.infrastructures

    def list(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(self.table).order_by(self.table.c.name)).all()
        return [_row(r) for r in rows]

    def claim_poll(self, name: str, owner: str, ttl: float) -> bool:
        """Takes (or renews) the lease to poll this infrastructure's jobs; True if held by ``owner``."""
        now = utcnow()
        c = self.table.c
        statement = (
            self.table.update()
            .where(c.name == name, sa.or_(c.poll_owner.is_(None), c.poll_owner == owner, c.poll_until < now))
            .values(poll_owner=owner, poll_until=now + timedelta(seconds=ttl))
        )
        with self.engine.begin() as conn:
            return conn.execute(statement).rowcount == 1

    def poll_owners(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(self.table.c.poll_owner).where(
                self.table.c.poll_owner.is_not(None)).distinct()).scalars())

    def release_polls(self, owner: str) -> int:
        """Drops every poll lease ``owner`` holds."""
        c = self.table.c
        with self.engine.begin() as conn:
            return conn.execute(
                self.table.update().where(c.poll_owner == owner).values(poll_owner=None, poll_until=None)
            ).rowcount

    def release_poll(self, name: str, owner: str) -> None:
        c = self.table.c
        with self.engine.begin() as conn:
            conn.execute(
                self.table.update().where(c.name == name, c.poll_owner == owner)
                .values(poll_owner=None, poll_until=None)
            )


class JobRepository(_Repository):
    table = tables.jobs

    def active(self, infrastructure: str, terminal: Iterable[str]) -> list[dict[str, Any]]:
        c = self.table.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(self.table).where(c.infrastructure == infrastructure, c.state.not_in(list(terminal)))
            ).all()
        return [_row(r) for r in rows]

    def poll_due(self, infrastructure: str, now: datetime, terminal: Iterable[str]) -> bool:
        """Whether a submitted, unfinished job of the infrastructure is due for a status check or has a
        cancel to send."""
        c = self.table.c
        due = sa.or_(c.next_poll_at.is_(None), c.next_poll_at <= now,
                     sa.and_(c.cancel_requested.is_(True), c.cancel_sent_at.is_(None)))
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(c.id).where(c.infrastructure == infrastructure, c.state.not_in(list(terminal)),
                                      c.scheduler_id.is_not(None), c.scheduler_id != "", due).limit(1)
            ).first() is not None

    def active_infrastructures(self, terminal: Iterable[str]) -> list[str]:
        c = self.table.c
        with self.engine.connect() as conn:
            statement = sa.select(c.infrastructure).where(c.state.not_in(list(terminal))).distinct()
            return list(conn.execute(statement).scalars())

    def staging(self, phases: Iterable[str], terminal: Iterable[str]) -> list[dict[str, Any]]:
        """Unfinished jobs in one of ``phases`` (staging their inputs or outputs)."""
        c = self.table.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(self.table).where(c.phase.in_(list(phases)),
                                                            c.state.not_in(list(terminal)))).all()
        return [_row(r) for r in rows]

    def claim_submissions(self, owner: str, ttl: float, limit: int) -> list[dict[str, Any]]:
        """Claims jobs waiting to be submitted that nobody holds (or whose holder's lease ran out)."""
        c = self.table.c
        now = utcnow()
        with self.engine.connect() as conn:
            candidates = conn.execute(
                sa.select(c.id)
                .where(c.state == "submitting", sa.or_(c.next_poll_at.is_(None), c.next_poll_at <= now),
                       sa.or_(c.lease_owner.is_(None), c.lease_owner == owner, c.lease_until < now))
                .order_by(c.created_at)
                .limit(limit)
            ).scalars().all()
        claimed = []
        for job_id in candidates:
            taken = self.update(
                job_id,
                [c.state == "submitting", sa.or_(c.lease_owner.is_(None), c.lease_owner == owner, c.lease_until < now)],
                lease_owner=owner,
                lease_until=now + timedelta(seconds=ttl),
            )
            if taken:
                claimed.append(self.get(job_id))
        return claimed


class JobTaskRepository:
    """The tasks of array jobs (``job_tasks``): written in bulk, counted per state, read by pages."""

    table = tables.job_tasks

    def __init__(self, engine: Engine):
        self.engine = engine

    def insert_missing(self, job_id: str, indexes: Iterable[int], state: str = "queued") -> int:
        """Adds a row in ``state`` for each index the job has no row for yet; how many were added."""
        c = self.table.c
        indexes = list(indexes)
        with self.engine.begin() as conn:
            present = set(conn.execute(sa.select(c.task_index).where(c.job_id == job_id)).scalars())
            now = utcnow()
            rows = [{"job_id": job_id, "task_index": i, "state": state, "missing_polls": 0, "updated_at": now}
                    for i in indexes if i not in present]
            for start in range(0, len(rows), 5000):
                conn.execute(self.table.insert(), rows[start:start + 5000])
        return len(rows)

    def counts(self, job_id: str) -> dict[str, int]:
        c = self.table.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(c.state, sa.func.count()).where(c.job_id == job_id).group_by(c.state)).all()
        return {state: count for state, count in rows}

    def get(self, job_id: str, index: int) -> dict[str, Any] | None:
        c = self.table.c
        with self.engine.connect() as conn:
            return _row(conn.execute(sa.select(self.table).where(c.job_id == job_id, c.task_index == index)).first())

    def unfinished(self, job_id: str, ended: Iterable[str]) -> list[dict[str, Any]]:
        """The job's tasks not in an ``ended`` state, by index."""
        c = self.table.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(self.table).where(c.job_id == job_id, c.state.not_in(list(ended)))
                                .order_by(c.task_index)).all()
        return [_row(r) for r in rows]

    def page(self, job_id: str, *, state: str | None, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        c = self.table.c
        conditions = [c.job_id == job_id] + ([c.state == state] if state else [])
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(self.table).where(*conditions)).scalar_one()
            rows = conn.execute(sa.select(self.table).where(*conditions).order_by(c.task_index)
                                .limit(limit).offset(offset)).all()
        return [_row(r) for r in rows], total

    def update_many(self, job_id: str, changes: dict[int, dict[str, Any]], ended: Iterable[str]) -> int:
        """Applies ``{index: values}`` in one transaction; a task already in an ``ended`` state is never
        changed again. How many rows changed."""
        c = self.table.c
        ended = list(ended)
        now = utcnow()
        changed = 0
        with self.engine.begin() as conn:
            for index, values in changes.items():
                statement = (self.table.update()
                             .where(c.job_id == job_id, c.task_index == index, c.state.not_in(ended))
                             .values(updated_at=now, **values))
                changed += conn.execute(statement).rowcount
        return changed

    def end_unfinished(self, job_id: str, ended: Iterable[str], **values: Any) -> int:
        """Ends every task not ended yet with ``values`` (e.g. a cancelled array's tasks that never ran)."""
        c = self.table.c
        with self.engine.begin() as conn:
            return conn.execute(self.table.update().where(c.job_id == job_id, c.state.not_in(list(ended)))
                                .values(updated_at=utcnow(), **values)).rowcount


class JobDependencyRepository:
    """What jobs wait for (``job_dependencies``)."""

    table = tables.job_dependencies

    def __init__(self, engine: Engine):
        self.engine = engine

    def insert_many(self, rows: list[dict[str, Any]]) -> None:
        """Writes one job's dependencies, replacing what an interrupted earlier attempt at the same job id
        (a reserved one, asked again) left behind."""
        if rows:
            with self.engine.begin() as conn:
                conn.execute(self.table.delete().where(self.table.c.job_id.in_({row["job_id"] for row in rows})))
                conn.execute(self.table.insert(), rows)

    def for_jobs(self, job_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """Each job's dependencies in request order."""
        c = self.table.c
        job_ids = list(job_ids)
        found: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in job_ids}
        if not job_ids:
            return found
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(self.table).where(c.job_id.in_(job_ids))
                                .order_by(c.job_id, c.position)).all()
        for row in rows:
            found[row.job_id].append(_row(row))
        return found

    def pending(self, terminal: Iterable[str], held: str = "held") -> list[dict[str, Any]]:
        """Undecided dependencies of jobs that have not ended, undecided ones of ended jobs whose target
        has ended too (a native dependant can end in the poll that sees its predecessor end, before a
        look decided the dependency: it is decided once more, for the record), and every dependency of a
        ``held`` job (one whose dependencies were all decided, by a gateway stopped before it released
        the job), with the state of the job (``job_*``) and of its target (``target_*``; None when it does
        not exist)."""
        d, j = self.table.c, tables.jobs.c
        target = tables.jobs.alias("target")
        t = target.c
        statement = (
            sa.select(self.table, j.state.label("job_state"), j.infrastructure.label("job_infrastructure"),
                      j.owner.label("job_owner"), t.state.label("target_state"),
                      t.scheduler_id.label("target_scheduler_id"), t.infrastructure.label("target_infrastructure"),
                      t.spec.label("target_spec"))
            .join(tables.jobs, j.id == d.job_id)
            .join(target, t.id == d.target_id, isouter=True)
            .where(d.kind == "job", sa.or_(
                sa.and_(d.state == "pending", j.state.not_in(list(terminal))),
                sa.and_(d.state == "pending", t.state.in_(list(terminal))),
                j.state == held))
            .order_by(d.job_id, d.position)
        )
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(statement).all()]

    def update(self, job_id: str, position: int, **values: Any) -> bool:
        c = self.table.c
        values.setdefault("updated_at", utcnow())
        with self.engine.begin() as conn:
            return conn.execute(self.table.update().where(c.job_id == job_id, c.position == position)
                                .values(**values)).rowcount == 1


class _LeasedWork(_Repository):
    """Rows that background workers claim with a lease (transfers, batches)."""

    def claim_next(self, owner: str, ttl: float, terminal: Iterable[str]) -> dict[str, Any] | None:
        """Claims one unfinished transfer nobody holds (or whose holder's lease ran out)."""
        c = self.table.c
        now = utcnow()
        with self.engine.connect() as conn:
            candidates = conn.execute(
                sa.select(c.id)
                .where(c.state.not_in(list(terminal)), sa.or_(c.lease_owner.is_(None), c.lease_until < now))
                .order_by(c.created_at)
                .limit(8)
            ).scalars().all()
        for transfer_id in candidates:
            if self.renew_lease(transfer_id, owner, ttl, allow_takeover=True):
                return self.get(transfer_id)
        return None

    def renew_lease(self, transfer_id: str, owner: str, ttl: float, allow_takeover: bool = False) -> bool:
        c = self.table.c
        now = utcnow()
        held = c.lease_owner == owner
        if allow_takeover:
            held = sa.or_(c.lease_owner.is_(None), held, c.lease_until < now)
        statement = (
            self.table.update()
            .where(c.id == transfer_id, held)
            .values(lease_owner=owner, lease_until=now + timedelta(seconds=ttl))
        )
        with self.engine.begin() as conn:
            return conn.execute(statement).rowcount == 1

    def cancel_unstarted(self, transfer_id: str, reason: str) -> bool:
        """Ends a transfer no worker ever started (nothing to clean up); True if it was such a one."""
        c = self.table.c
        now = utcnow()
        return self.update(
            transfer_id,
            [c.state == "queued", c.started_at.is_(None), sa.or_(c.lease_owner.is_(None), c.lease_until < now)],
            state="cancelled", reason=reason, cancel_requested=True, secrets_enc=None, ended_at=now, updated_at=now,
        )


class JobTransferRepository:
    """The transfers a job stages its data with (``job_transfers``), each beside its transfer's row."""

    table = tables.job_transfers

    def __init__(self, engine: Engine):
        self.engine = engine

    def insert_many(self, rows: list[dict[str, Any]]) -> None:
        """Writes one job's links, replacing what an interrupted earlier attempt at the same job id left."""
        if rows:
            with self.engine.begin() as conn:
                conn.execute(self.table.delete().where(self.table.c.job_id.in_({row["job_id"] for row in rows})))
                conn.execute(self.table.insert(), rows)

    def for_jobs(self, job_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """Each job's links (inputs, then outputs, in request order), each with its transfer's row as
        ``transfer`` (None while the transfer is not made)."""
        c, t = self.table.c, tables.transfers
        job_ids = list(job_ids)
        found: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in job_ids}
        if not job_ids:
            return found
        columns = [t.c.id, t.c.kind, t.c.state, t.c.reason, t.c.bytes_done, t.c.bytes_total, t.c.sha256, t.c.src,
                   t.c.dst, t.c.endpoint, t.c.bucket, t.c.object, t.c.started_at, t.c.ended_at]
        statement = (sa.select(self.table, *[col.label(f"t_{col.name}") for col in columns])
                     .select_from(self.table.outerjoin(t, t.c.id == c.transfer_id))
                     .where(c.job_id.in_(job_ids)).order_by(c.job_id, c.role, c.position))
        with self.engine.connect() as conn:
            rows = conn.execute(statement).all()
        for row in rows:
            values = dict(row._mapping)
            transfer = {col.name: values.pop(f"t_{col.name}") for col in columns}
            values["transfer"] = transfer if transfer["id"] is not None else None
            found[values["job_id"]].append(values)
        return found

    def update(self, job_id: str, role: str, position: int, where: Iterable[sa.ColumnElement] = (),
               **values: Any) -> bool:
        c = self.table.c
        values.setdefault("updated_at", utcnow())
        statement = (self.table.update().where(c.job_id == job_id, c.role == role, c.position == position, *where)
                     .values(**values))
        with self.engine.begin() as conn:
            return conn.execute(statement).rowcount == 1

    def loose_ends(self, job_ended: Iterable[str], transfer_ended: Iterable[str]) -> list[dict[str, Any]]:
        """Links of ended jobs that still hold something: a request not yet made (its secrets), or a
        transfer that has not ended (to cancel)."""
        c, j, t = self.table.c, tables.jobs.c, tables.transfers.c
        statement = (
            sa.select(self.table, j.owner, j.credential, t.state.label("transfer_state"))
            .select_from(self.table.join(tables.jobs, j.id == c.job_id).outerjoin(tables.transfers,
                                                                                 t.id == c.transfer_id))
            .where(j.state.in_(list(job_ended)),
                   sa.or_(c.state == "pending",
                          sa.and_(c.state == "created", t.state.not_in(list(transfer_ended)))))
            .limit(200)
        )
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(statement).all()]


class TemplateRepository:
    """Versions of job templates, keyed by (name, version)."""

    table = tables.job_templates

    def __init__(self, engine: Engine):
        self.engine = engine

    def insert(self, values: dict[str, Any]) -> dict[str, Any]:
        """Writes one version; a new version clears the template's deprecation (all versions)."""
        c = self.table.c
        try:
            with self.engine.begin() as conn:
                conn.execute(self.table.insert().values(**values))
                conn.execute(self.table.update().where(c.name == values["name"]).values(deprecated_at=None))
        except sa.exc.IntegrityError:
            raise DuplicateKey(f"{values['name']} version {values['version']}") from None
        return self.get(values["name"], values["version"])

    def get(self, name: str, version: int | None = None) -> dict[str, Any] | None:
        """One version, the newest when ``version`` is None."""
        c = self.table.c
        statement = sa.select(self.table).where(c.name == name)
        statement = statement.where(c.version == version) if version is not None else \
            statement.order_by(c.version.desc()).limit(1)
        with self.engine.connect() as conn:
            return _row(conn.execute(statement).first())

    def latest(self, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """The newest version of every template, by name, and how many templates there are."""
        c = self.table.c
        newest = sa.select(c.name, sa.func.max(c.version).label("version")).group_by(c.name).subquery()
        joined = self.table.join(newest, sa.and_(c.name == newest.c.name, c.version == newest.c.version))
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(newest)).scalar_one()
            rows = conn.execute(sa.select(self.table).select_from(joined).order_by(c.name)
                                .limit(limit).offset(offset)).all()
        return [_row(r) for r in rows], total

    def versions(self, name: str, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """The versions of one template, newest first, and how many there are."""
        c = self.table.c
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).where(c.name == name)).scalar_one()
            rows = conn.execute(sa.select(self.table).where(c.name == name).order_by(c.version.desc())
                                .limit(limit).offset(offset)).all()
        return [_row(r) for r in rows], total

    def deprecate(self, name: str, when: datetime) -> bool:
        """Stamps every version of ``name`` deprecated (the first stamp is kept); True if it exists."""
        c = self.table.c
        with self.engine.begin() as conn:
            found = conn.execute(sa.select(sa.func.count()).where(c.name == name)).scalar_one()
            conn.execute(self.table.update().where(c.name == name, c.deprecated_at.is_(None))
                         .values(deprecated_at=when))
        return found > 0


class TransferRepository(_LeasedWork):
    table = tables.transfers


class BatchRepository(_LeasedWork):
    table = tables.transfer_batches


class BatchFileRepository:
    """The files of batches: one row per file, written and read in bulk."""

    table = tables.transfer_files

    def __init__(self, engine: Engine):
        self.engine = engine

    def insert_many(self, batch_id: str, files: list[dict[str, Any]]) -> None:
        """Adds a batch's listing (``number``, ``path``, ``src``, ``size`` each) in one transaction."""
        now = utcnow()
        rows = [{"batch_id": batch_id, "state": "queued", "reason": "", "sha256": None, "updated_at": now, **f}
                for f in files]
        with self.engine.begin() as conn:
            for start in range(0, len(rows), 1000):
                conn.execute(self.table.insert(), rows[start : start + 1000])

    def update_many(self, batch_id: str, outcomes: list[dict[str, Any]]) -> None:
        """Records outcomes (``number`` with ``state``, ``reason``, ``sha256``, ``size``) in one transaction."""
        if not outcomes:
            return
        c = self.table.c
        statement = (
            self.table.update()
            .where(c.batch_id == sa.bindparam("b_batch"), c.number == sa.bindparam("b_number"))
            .values(state=sa.bindparam("b_state"), reason=sa.bindparam("b_reason"),
                    sha256=sa.bindparam("b_sha256"), size=sa.bindparam("b_size"), updated_at=sa.bindparam("b_at"))
        )
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(statement, [
                {"b_batch": batch_id, "b_number": o["number"], "b_state": o["state"], "b_reason": o.get("reason", ""),
                 "b_sha256": o.get("sha256"), "b_size": o.get("size"), "b_at": now}
                for o in outcomes
            ])

    def all(self, batch_id: str, state: str | None = None) -> list[dict[str, Any]]:
        c = self.table.c
        conditions = [c.batch_id == batch_id] + ([c.state == state] if state else [])
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(self.table).where(*conditions).order_by(c.number)).all()
        return [_row(r) for r in rows]

    def page(self, batch_id: str, state: str | None, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        c = self.table.c
        conditions = [c.batch_id == batch_id] + ([c.state == state] if state else [])
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(self.table).where(*conditions)).scalar_one()
            rows = conn.execute(
                sa.select(self.table).where(*conditions).order_by(c.number).limit(limit).offset(offset)
            ).all()
        return [_row(r) for r in rows], total

    def counts(self, batch_id: str) -> dict[str, tuple[int, int]]:
        """Per state: (files, bytes)."""
        c = self.table.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.state, sa.func.count(), sa.func.coalesce(sa.func.sum(c.size), 0))
                .where(c.batch_id == batch_id).group_by(c.state)
            ).all()
        return {state: (int(n), int(size)) for state, n, size in rows}


class Store:
    """The repositories over one engine."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.events = EventLog(engine)
        self.infrastructures = InfrastructureRepository(engine)
        self.jobs = JobRepository(engine, self.events)
        self.tasks = JobTaskRepository(engine)
        self.dependencies = JobDependencyRepository(engine)
        self.job_transfers = JobTransferRepository(engine)
        self.transfers = TransferRepository(engine, self.events)
        self.batches = BatchRepository(engine)
        self.batch_files = BatchFileRepository(engine)
        self.subscriptions = SubscriptionRepository(engine, self.events)
        self.deliveries = DeliveryRepository(engine)
        self.templates = TemplateRepository(engine)
        self.generations = GenerationRepository(engine)
        self.tokens = TokenRepository(engine, self.generations)
        self.audit = AuditRepository(engine)
        self.census = CensusRepository(engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.select(1))

    def close(self) -> None:
        self.engine.dispose()

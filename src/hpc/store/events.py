"""The event log, webhook subscriptions and the webhook outbox.

Every state change of a job or a transfer records an event IN THE SAME TRANSACTION as the change, so a
crash can neither lose an event nor invent one. The repositories do it themselves (``_Repository.insert``
and ``update`` call :meth:`EventLog.insert_row` / :meth:`EventLog.update_row` when a watched column is
written): no service has to remember to. What becomes an event is the table :data:`RULES`, one line per
event type: a watched column, the fields copied into the payload, an optional condition and an optional
minimum interval per resource. A new event type (a job's phase, an array task's end, a linked
transfer's end) is one more line there, on whatever column records it.

An update that writes a watched column reads the row first, then updates it only if the watched columns
still hold what was read (an optimistic check that works the same on SQLite and PostgreSQL), and in that
same transaction appends the events the rules derive from the old and new values, plus one outbox row
(``deliveries``) per matching webhook subscription. If the check fails, a concurrent writer changed the
row: it is read again and the update retried.

Event ids come from the database (SQLite AUTOINCREMENT, a PostgreSQL sequence) and are what readers
resume from (SSE ``Last-Event-ID``). A reader that asks for ``id > last`` must never miss an event that
commits after a higher id was already visible. SQLite has one writer at a time, so ids become visible in
order. On PostgreSQL concurrent transactions take sequence values in one order and may commit in another;
every transaction that appends events therefore first takes one transaction-scoped advisory lock
(``pg_advisory_xact_lock``) before it writes anything, so such transactions run one at a time from their
first write to their commit, and an id is only ever visible after every lower id is. The lock covers a
handful of statements per state change; measured cost and the concurrent-writer test are in
``src/tests/integration/test_events_store.py``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from collections.abc import Callable, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from hpc.store import tables
from hpc.store.tables import utcnow

JOB_ENDED = frozenset({"completed", "failed", "cancelled", "timeout", "unknown"})
TRANSFER_ENDED = frozenset({"completed", "failed", "cancelled"})

# Any fixed 64-bit number, the same in every replica: the key of the advisory lock that serialises
# event-appending transactions on PostgreSQL ("hpcevent" in ASCII).
ADVISORY_KEY = 0x6870636576656E74

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Rule:
    """One event type derived from a change of one column.

    Attributes:
        type: The event type (``job.state``).
        column: The watched column: the event is considered when an insert or update writes a value
            different from the stored one (an insert counts as a change from None).
        payload: Columns copied from the new row into the event's data, or a function
            ``(old, new) -> dict`` (old is None for an insert).
        when: Extra condition ``(old, new) -> bool``.
        with_old: Add ``old_<column>`` (the value before the change) to the data.
        min_interval: Seconds that must pass between two events of this type for one resource (in
            this process): progress-like events at a bounded rate.
        resource: ``row -> (kind, id)`` of the resource the event is about; default: the table's
            kind (:data:`KINDS`) and the row's primary key.
    """

    type: str
    column: str
    payload: tuple[str, ...] | Callable[[Row | None, Row], dict[str, Any]]
    when: Callable[[Row | None, Row], bool] | None = None
    with_old: bool = True
    min_interval: float = 0.0
    resource: Callable[[Row], tuple[str, str]] | None = None

    def data(self, old: Row | None, new: Row) -> dict[str, Any]:
        if callable(self.payload):
            data = dict(self.payload(old, new))
        else:
            data = {name: new.get(name) for name in self.payload}
        if self.with_old:
            data[f"old_{self.column}"] = old.get(self.column) if old else None
        return {key: _jsonable(value) for key, value in data.items()}


def _job_state(old: Row | None, new: Row) -> dict[str, Any]:
    state = new["state"]
    # ``status`` as the seed's clients read it: queued, running, or completed (= ended, any outcome).
    status = "completed" if state in JOB_ENDED else "running" if state in ("running", "staging_out") else "queued"
    data = {"state": state, "status": status, "reason": new.get("reason"), "exit_code": new.get("exit_code"),
            "native_state": new.get("native_state"), "scheduler_id": new.get("scheduler_id")}
    if new.get("phase"):
        data["phase"] = new["phase"]
    return data


def _job_phase(old: Row | None, new: Row) -> dict[str, Any]:
    return {"phase": new["phase"], "state": new["state"], "reason": new.get("reason")}


def _job_tasks(old: Row | None, new: Row) -> dict[str, Any]:
    return {"state": new["state"], "counts": new.get("task_counts") or {}}


def _job_hold(old: Row | None, new: Row) -> dict[str, Any]:
    return {"state": new["state"], "reason": new.get("reason")}


def _job_output(old: Row | None, new: Row) -> dict[str, Any]:
    return {"state": new["state"], "streams": ["stdout", "stderr"], "final": new["state"] in JOB_ENDED}


#: Table name -> the kind of resource its rows are.
KINDS: dict[str, str] = {"jobs": "job", "transfers": "transfer"}

#: Table name -> the events its changes record. One line per event type.
RULES: dict[str, tuple[Rule, ...]] = {
    "jobs": (
        Rule("job.state", "state", _job_state),
        # Output can be read (GET /job/{id}/output) once the job runs; final once it ended after running.
        Rule("job.output", "state", _job_output, with_old=False,
             when=lambda old, new: new["state"] == "running"
             or (new["state"] in JOB_ENDED and bool(new.get("job_dir")) and bool(new.get("scheduler_id")))),
        # An array's tasks changed state: the counts per state (GET /job/{id}/tasks has each task).
        Rule("job.tasks", "task_counts", _job_tasks, with_old=False, when=lambda old, new: old is not None),
        # The gateway holds a job before submitting it (its dependencies), and releases it.
        Rule("job.held", "state", _job_hold, with_old=False, when=lambda old, new: new["state"] == "held"),
        Rule("job.released", "state", _job_hold, with_old=False,
             when=lambda old, new: old is not None and old["state"] == "held" and new["state"] == "submitting"),
        # A job that stages its own data moves through phases: staging_in, submitted, staging_out, done.
        Rule("job.phase", "phase", _job_phase, when=lambda old, new: new.get("phase") is not None),
    ),
    "transfers": (
        Rule("transfer.state", "state", ("state", "reason", "bytes_done", "bytes_total", "sha256")),
        Rule("transfer.progress", "bytes_done", ("state", "bytes_done", "bytes_total", "rate"), with_old=False,
             when=lambda old, new: old is not None and new["state"] not in TRANSFER_ENDED, min_interval=1.0),
    ),
}

#: Every event type a subscription may ask for.
EVENT_TYPES: tuple[str, ...] = tuple(sorted({rule.type for rules in RULES.values() for rule in rules}))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


def watched_columns(table_name: str) -> frozenset[str]:
    return frozenset(rule.column for rule in RULES.get(table_name, ()))


class EventLog:
    """Appends events (with their outbox rows) inside the transactions that change rows; reads them back."""

    def __init__(self, engine: Engine):
        self.engine = engine
        # Switchable only so that a test can show what goes wrong without it.
        self.serialize = engine.dialect.name == "postgresql"
        self._last_emitted: dict[tuple[str, str], float] = {}
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        e = tables.events.c
        self._after_statement = sa.select(tables.events).where(e.id > sa.bindparam("after")).order_by(e.id)

    # -- writing -----------------------------------------------------------------------------------

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Calls ``listener()`` (in the writer's thread, after the commit) whenever events were appended."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener's fault must not fail a committed write
                pass

    def lock(self, conn: Connection) -> None:
        """Serialises event-appending transactions (PostgreSQL); call before the transaction's first write."""
        if self.serialize:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_KEY})

    def derive(self, table_name: str, old: Row | None, new: Row) -> tuple[list[dict[str, Any]], list[tuple]]:
        """The events a change of a row records, and the rate-limit keys to mark once committed."""
        events, marks = [], []
        now = time.monotonic()
        for rule in RULES.get(table_name, ()):
            before = old.get(rule.column) if old is not None else None
            if old is not None and before == new.get(rule.column):
                continue
            if rule.when is not None and not rule.when(old, new):
                continue
            kind, resource_id = rule.resource(new) if rule.resource else (KINDS[table_name], new["id"])
            if rule.min_interval:
                key = (rule.type, resource_id)
                with self._lock:
                    last = self._last_emitted.get(key)
                if last is not None and now - last < rule.min_interval:
                    continue
                marks.append(key)
            events.append({"type": rule.type, "kind": kind, "resource_id": str(resource_id),
                           "owner": new["owner"], "data": rule.data(old, new)})
        return events, marks

    def _mark(self, marks: list[tuple]) -> None:
        if not marks:
            return
        now = time.monotonic()
        with self._lock:
            for key in marks:
                self._last_emitted[key] = now
            if len(self._last_emitted) > 4096:  # bounded: forget resources quiet for a minute
                for key, at in list(self._last_emitted.items()):
                    if now - at > 60:
                        del self._last_emitted[key]

    def append(self, conn: Connection, events: Iterable[dict[str, Any]]) -> list[int]:
        """Inserts events and their outbox rows in ``conn``'s transaction (after :meth:`lock`); their ids."""
        events = list(events)
        if not events:
            return []
        now = utcnow()
        ids = []
        for event in events:
            event.setdefault("created_at", now)
            ids.append(conn.execute(tables.events.insert().values(**event).returning(tables.events.c.id)).scalar_one())
        s = tables.subscriptions.c
        owners = {event["owner"] for event in events}
        subscriptions = conn.execute(
            sa.select(s.id, s.owner, s.admin, s.types, s.resource_ids)
            .where(sa.or_(s.admin.is_(True), s.owner.in_(owners)))
        ).all()
        outbox = [
            {"subscription_id": sub.id, "event_id": event_id, "state": "pending", "attempts": 0,
             "next_attempt_at": now, "created_at": now}
            for event_id, event in zip(ids, events)
            for sub in subscriptions
            if matches(sub._mapping, event)
        ]
        if outbox:
            conn.execute(tables.deliveries.insert(), outbox)
        return ids

    def insert_row(self, table: sa.Table, values: dict[str, Any]) -> None:
        """Inserts a row and the events its creation records, in one transaction."""
        events, marks = self.derive(table.name, None, values)
        with self.engine.begin() as conn:
            if events:
                self.lock(conn)
            conn.execute(table.insert().values(**values))
            self.append(conn, events)
        self._mark(marks)
        if events:
            self._notify()

    def update_row(self, table: sa.Table, key: Any, where: Iterable[sa.ColumnElement],
                   values: dict[str, Any]) -> bool:
        """Updates one row (if ``where`` holds) and records the events of the change; True if it changed."""
        where = list(where)
        column = list(table.primary_key.columns)[0]
        watched = sorted(watched_columns(table.name) & set(values))
        for name in watched:
            if isinstance(values.get(name), sa.ClauseElement):
                raise TypeError(f"{table.name}.{name} is watched for events: give it a value, not an expression")
        read = sa.select(table).where(column == key)
        for _ in range(100):
            with self.engine.connect() as conn:
                old = conn.execute(read).first()
            if old is None:
                return False
            old = dict(old._mapping)
            events, marks = self.derive(table.name, old, {**old, **values})
            guard = [table.c[name].is_not_distinct_from(old[name]) for name in watched]
            statement = table.update().where(column == key, *where, *guard).values(**values)
            with self.engine.begin() as conn:
                if events:
                    self.lock(conn)
                changed = conn.execute(statement).rowcount == 1
                if changed:
                    self.append(conn, events)
            if changed:
                self._mark(marks)
                if events:
                    self._notify()
                return True
            with self.engine.connect() as conn:
                now = conn.execute(read).first()
            if now is None or all(now._mapping[name] == old[name] for name in watched):
                return False  # the row is as read: ``where`` is what did not hold
        raise RuntimeError(f"{table.name} {key}: the row kept changing under 100 updates")

    # -- reading -----------------------------------------------------------------------------------

    def after(self, after: int, *, owner: str | None = None, kinds: Iterable[str] | None = None,
              resource_ids: Iterable[str] | None = None, types: Iterable[str] | None = None,
              limit: int = 500) -> list[dict[str, Any]]:
        """Events with an id above ``after``, oldest first, optionally filtered."""
        e = tables.events.c
        conditions = [e.id > after]
        if owner is not None:
            conditions.append(e.owner == owner)
        if kinds:
            conditions.append(e.kind.in_(list(kinds)))
        if resource_ids:
            conditions.append(e.resource_id.in_(list(resource_ids)))
        if types:
            conditions.append(e.type.in_(list(types)))
        with self.engine.connect() as conn:
            if len(conditions) == 1:
                rows = conn.execute(self._after_statement.limit(limit), {"after": after}).all()
            else:
                rows = conn.execute(sa.select(tables.events).where(*conditions).order_by(e.id).limit(limit)).all()
        return [dict(row._mapping) for row in rows]

    def last_id(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(tables.events.c.id))).scalar() or 0

    def get(self, event_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tables.events).where(tables.events.c.id == event_id)).first()
        return dict(row._mapping) if row is not None else None

    def prune(self, before: datetime) -> int:
        """Deletes events created before ``before`` that no pending delivery still needs."""
        e, d = tables.events.c, tables.deliveries.c
        pending = sa.select(d.event_id).where(d.state == "pending")
        with self.engine.begin() as conn:
            return conn.execute(
                tables.events.delete().where(e.created_at < before, e.id.not_in(pending))
            ).rowcount


def matches(subscription: Row, event: Row) -> bool:
    """Whether a subscription wants an event: visible to its owner, of its types and resources."""
    if not (subscription["admin"] or subscription["owner"] == event["owner"]):
        return False
    if subscription["types"] and event["type"] not in subscription["types"]:
        return False
    if subscription["resource_ids"] and event["resource_id"] not in subscription["resource_ids"]:
        return False
    return True


class SubscriptionRepository:
    """Webhook subscriptions; rows come back as dicts with their outbox counts where asked."""

    table = tables.subscriptions

    def __init__(self, engine: Engine, log: EventLog):
        self.engine = engine
        self.log = log

    def insert(self, values: dict[str, Any], backfill: tuple[str, str] | None = None) -> dict[str, Any]:
        """Stores a subscription; with ``backfill=(kind, id)`` the events that resource already recorded
        are queued for it too, in the same transaction (serialised with event appends, so none is
        queued twice or missed)."""
        with self.engine.begin() as conn:
            self.log.lock(conn)
            conn.execute(self.table.insert().values(**values))
            if backfill is not None:
                e = tables.events.c
                found = conn.execute(
                    sa.select(e.id, e.type, e.owner, e.resource_id)
                    .where(e.kind == backfill[0], e.resource_id == backfill[1]).order_by(e.id)
                ).all()
                now = utcnow()
                outbox = [{"subscription_id": values["id"], "event_id": row.id, "state": "pending", "attempts": 0,
                           "next_attempt_at": now, "created_at": now}
                          for row in found if matches(values, row._mapping)]
                if outbox:
                    conn.execute(tables.deliveries.insert(), outbox)
        return self.get(values["id"])

    def get(self, subscription_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.table).where(self.table.c.id == subscription_id)).first()
        return dict(row._mapping) if row is not None else None

    def page(self, owner: str | None, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        c = self.table.c
        conditions = [c.owner == owner] if owner is not None else []
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(self.table).where(*conditions)).scalar_one()
            rows = conn.execute(sa.select(self.table).where(*conditions).order_by(c.created_at.desc(), c.id)
                                .limit(limit).offset(offset)).all()
        return [dict(row._mapping) for row in rows], total

    def delete(self, subscription_id: str) -> bool:
        """Removes a subscription and its undelivered outbox rows."""
        with self.engine.begin() as conn:
            conn.execute(tables.deliveries.delete().where(tables.deliveries.c.subscription_id == subscription_id))
            return conn.execute(self.table.delete().where(self.table.c.id == subscription_id)).rowcount == 1

    def counts(self, subscription_ids: list[str]) -> dict[str, dict[str, int]]:
        """Outbox rows per subscription and state (pending, delivered, dead)."""
        if not subscription_ids:
            return {}
        d = tables.deliveries.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(d.subscription_id, d.state, sa.func.count())
                .where(d.subscription_id.in_(subscription_ids)).group_by(d.subscription_id, d.state)
            ).all()
        counts: dict[str, dict[str, int]] = {sid: {"pending": 0, "delivered": 0, "dead": 0} for sid in subscription_ids}
        for subscription_id, state, count in rows:
            counts[subscription_id][state] = count
        return counts

    def note(self, subscription_id: str, *, error: str | None = None) -> None:
        """Records the outcome of a delivery: the last error, or the time of the last success."""
        now = utcnow()
        values = {"last_error": error, "last_error_at": now} if error else {"last_delivered_at": now}
        with self.engine.begin() as conn:
            conn.execute(self.table.update().where(self.table.c.id == subscription_id).values(**values))


class DeliveryRepository:
    """The webhook outbox: due rows claimed with leases, then marked delivered, retried or dead."""

    table = tables.deliveries

    def __init__(self, engine: Engine):
        self.engine = engine

    def claim(self, owner: str, ttl: float, limit: int, busy: Mapping[str, int], per_subscription: int
              ) -> list[dict[str, Any]]:
        """Takes up to ``limit`` due deliveries (oldest first), at most ``per_subscription`` in flight per
        subscription counting ``busy`` (this process's deliveries under way), with their event and
        subscription. A crashed holder's rows come back when its lease runs out."""
        d = self.table.c
        now = utcnow()
        free = sa.or_(d.lease_owner.is_(None), d.lease_until < now)
        with self.engine.connect() as conn:
            candidates = conn.execute(
                sa.select(d.id, d.subscription_id)
                .where(d.state == "pending", d.next_attempt_at <= now, free)
                .order_by(d.id).limit(max(limit * 8, 64))
            ).all()
        taken: dict[str, int] = dict(busy)
        wanted = []
        for delivery_id, subscription_id in candidates:
            if len(wanted) >= limit:
                break
            if taken.get(subscription_id, 0) >= per_subscription:
                continue
            taken[subscription_id] = taken.get(subscription_id, 0) + 1
            wanted.append(delivery_id)
        if not wanted:
            return []
        # One transaction for the whole claim: the condition is checked row by row inside the UPDATE, and
        # RETURNING names the rows this owner got (another replica may have taken some meanwhile).
        with self.engine.begin() as conn:
            chosen = list(conn.execute(
                self.table.update().where(d.id.in_(wanted), d.state == "pending", free)
                .values(lease_owner=owner, lease_until=now + timedelta(seconds=ttl)).returning(d.id)
            ).scalars())
        if not chosen:
            return []
        e, s = tables.events.c, tables.subscriptions.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(self.table, e.type, e.kind, e.resource_id, e.created_at.label("event_time"), e.data,
                          s.url, s.secret_enc)
                .join(tables.events, e.id == d.event_id, isouter=True)
                .join(tables.subscriptions, s.id == d.subscription_id, isouter=True)
                .where(d.id.in_(chosen)).order_by(d.id)
            ).all()
        return [dict(row._mapping) for row in rows]

    def finish(self, delivery_id: int, owner: str, **values: Any) -> bool:
        """Ends a try of a delivery this owner holds (delivered, retried later, or dead)."""
        d = self.table.c
        values.update(lease_owner=None, lease_until=None)
        with self.engine.begin() as conn:
            return conn.execute(
                self.table.update().where(d.id == delivery_id, d.lease_owner == owner).values(**values)
            ).rowcount == 1

    def finish_delivered(self, done: list[tuple[int, int, int]], owner: str) -> int:
        """Marks many deliveries this owner holds as delivered in one transaction: ``(delivery id, attempts,
        HTTP status)`` each. Their subscriptions' ``last_delivered_at`` is set in the same transaction."""
        if not done:
            return 0
        d, s = self.table.c, tables.subscriptions.c
        now = utcnow()
        marked = 0
        with self.engine.begin() as conn:
            for (attempts, status), ids in _grouped(done).items():
                marked += conn.execute(
                    self.table.update().where(d.id.in_(ids), d.lease_owner == owner)
                    .values(state="delivered", attempts=attempts, last_status=status, last_error=None, ended_at=now,
                            lease_owner=None, lease_until=None)
                ).rowcount
            subscriptions = conn.execute(sa.select(d.subscription_id).where(d.id.in_([row[0] for row in done]))
                                         .distinct()).scalars().all()
            conn.execute(tables.subscriptions.update().where(s.id.in_(subscriptions)).values(last_delivered_at=now))
        return marked

    def release_leases(self, owner: str) -> int:
        d = self.table.c
        held = sa.or_(d.lease_owner == owner, d.lease_owner.startswith(f"{owner}/", autoescape=True))
        with self.engine.begin() as conn:
            return conn.execute(self.table.update().where(held).values(lease_owner=None, lease_until=None)).rowcount

    def lease_owners(self) -> list[str]:
        d = self.table.c
        with self.engine.connect() as conn:
            return list(conn.execute(
                sa.select(d.lease_owner).where(d.state == "pending", d.lease_owner.is_not(None)).distinct()
            ).scalars())

    def next_due(self) -> datetime | None:
        """When the earliest pending delivery is due (None: nothing pending)."""
        d = self.table.c
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.min(d.next_attempt_at)).where(d.state == "pending")).scalar()

    def list(self, subscription_id: str, state: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        d = self.table.c
        conditions = [d.subscription_id == subscription_id] + ([d.state == state] if state else [])
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(self.table).where(*conditions).order_by(d.id.desc()).limit(limit)).all()
        return [dict(row._mapping) for row in rows]

    def prune(self, before: datetime) -> int:
        """Deletes ended deliveries older than ``before``."""
        d = self.table.c
        with self.engine.begin() as conn:
            return conn.execute(self.table.delete().where(d.state != "pending", d.ended_at < before)).rowcount


def _grouped(done: list[tuple[int, int, int]]) -> dict[tuple[int, int], list[int]]:
    """Delivery ids by (attempts, status): one UPDATE per group (nearly always one group)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for delivery_id, attempts, status in done:
        groups.setdefault((attempts, status), []).append(delivery_id)
    return groups

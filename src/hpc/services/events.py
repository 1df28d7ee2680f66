"""Events as callers see them: who may see which, filters, and the one document shape.

The store records events (``hpc.store.events``); this module decides visibility (a user sees the events
of their own jobs and transfers, an admin every event), validates filters, and renders an event as the
document that both the SSE stream (``GET /events``) and webhook deliveries carry::

    {"id": 42, "type": "job.state", "time": "2026-01-01T12:00:00+00:00",
     "resource": {"kind": "job", "id": "<uuid>"}, "data": {"state": "running", "old_state": "queued", ...}}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from hpc.errors import InvalidInput
from hpc.security import Principal
from hpc.store import Store
from hpc.store.events import EVENT_TYPES, KINDS

RESOURCE_KINDS = tuple(sorted(set(KINDS.values())))
MAX_FILTER_ITEMS = 100
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def document(row: Mapping[str, Any]) -> dict[str, Any]:
    """The public form of a stored event."""
    return {"id": int(row["id"]), "type": row["type"], "time": row["created_at"].isoformat(),
            "resource": {"kind": row["kind"], "id": row["resource_id"]}, "data": row["data"]}


def encode(document_: Mapping[str, Any]) -> bytes:
    """Compact JSON, the exact bytes that are signed and sent."""
    return json.dumps(document_, separators=(",", ":"), sort_keys=True).encode()


def sse_frame(row: Mapping[str, Any]) -> bytes:
    """One server-sent event: ``id``, ``event`` (the type) and the document as ``data``."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (int(row["id"]), row["type"].encode(), encode(document(row)))


def split_list(value: str | Iterable[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` -> ``["a", "b", "c"]`` (empty items dropped)."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def check_types(types: Iterable[str], field: str) -> list[str]:
    types = list(dict.fromkeys(types))
    if len(types) > MAX_FILTER_ITEMS:
        raise InvalidInput(f"at most {MAX_FILTER_ITEMS} event types", field)
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise InvalidInput(f"unknown event type {unknown[0]!r}: known types are {', '.join(EVENT_TYPES)}", field)
    return types


def check_resource_ids(ids: Iterable[str], field: str) -> list[str]:
    ids = list(dict.fromkeys(ids))
    if len(ids) > MAX_FILTER_ITEMS:
        raise InvalidInput(f"at most {MAX_FILTER_ITEMS} resource ids", field)
    for value in ids:
        if not _UUID.match(value):
            raise InvalidInput(f"{value[:60]!r} is not a job or transfer id (a UUID)", field)
    return [value.lower() for value in ids]


@dataclass(frozen=True)
class EventFilter:
    """Which events a reader gets: visible to ``owner`` (None: all, an admin) and matching each given list."""

    owner: str | None = None
    kinds: tuple[str, ...] = ()
    resource_ids: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def accepts(self, row: Mapping[str, Any]) -> bool:
        return ((self.owner is None or row["owner"] == self.owner)
                and (not self.kinds or row["kind"] in self.kinds)
                and (not self.resource_ids or row["resource_id"] in self.resource_ids)
                and (not self.types or row["type"] in self.types))


def event_filter(principal: Principal, *, kind: str | Iterable[str] | None = None,
                 resource_id: str | Iterable[str] | None = None,
                 type: str | Iterable[str] | None = None) -> EventFilter:
    """A validated filter for ``principal`` from query parameters (each a comma list or repeated).

    Raises:
        InvalidInput: An unknown kind or type, a malformed id, or too many items.
    """
    kinds = split_list(kind)
    for value in kinds:
        if value not in RESOURCE_KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(RESOURCE_KINDS)}", "kind")
    return EventFilter(
        owner=None if principal.is_admin else principal.name,
        kinds=tuple(dict.fromkeys(kinds)),
        resource_ids=tuple(check_resource_ids(split_list(resource_id), "resource_id")),
        types=tuple(check_types(split_list(type), "type")),
    )


class EventService:
    """Reads the event log for a filter."""

    def __init__(self, store: Store):
        self.store = store

    def read(self, where: EventFilter, after: int, limit: int = 500) -> list[dict[str, Any]]:
        """Stored events above ``after`` that ``where`` accepts, oldest first."""
        return self.store.events.after(after, owner=where.owner, kinds=where.kinds,
                                       resource_ids=where.resource_ids, types=where.types, limit=limit)

    def last_id(self) -> int:
        return self.store.events.last_id()

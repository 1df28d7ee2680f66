"""/events (when not served by the stream layer) and /subscription operations."""

from __future__ import annotations

from typing import Any

from connexion import request
from connexion.lifecycle import ConnexionResponse

from hpc.api import views
from hpc.api.auth import caller
from hpc.api.context import gateway
from hpc.api.models import SubscriptionRequest
from hpc.errors import InvalidInput
from hpc.services.events import event_filter, sse_frame

SNAPSHOT_LIMIT = 1000


def _time(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def get_events(kind=None, resource_id=None, type=None, last_event_id=None, follow=True):
    """Validates like the stream layer (``hpc.api.sse``), which serves every valid request itself; reached
    only when that layer is not in front (an app embedded without it): the stored events, then the end."""
    where = event_filter(caller(), kind=kind, resource_id=resource_id, type=type)
    resume = last_event_id or request.headers.get("Last-Event-ID") or "0"
    if not resume.isdigit():
        raise InvalidInput("Last-Event-ID must be an event id (digits)", "Last-Event-ID")
    rows = gateway().events.read(where, int(resume), SNAPSHOT_LIMIT)
    body = b"retry: 2000\n\n" + b"".join(sse_frame(row) for row in rows)
    return ConnexionResponse(status_code=200, body=body, content_type="text/event-stream")


def _subscription(row: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
    document = {key: _time(row.get(key)) for key in (
        "id", "url", "types", "resource_ids", "source", "owner", "created_at", "last_error", "last_error_at",
        "last_delivered_at")}
    if "deliveries" in row:
        document["deliveries"] = row["deliveries"]
    if "dead_letters" in row:
        document["dead_letters"] = [
            {"event_id": d["event_id"], "attempts": d["attempts"], "last_status": d["last_status"],
             "last_error": d["last_error"], "ended_at": _time(d["ended_at"])}
            for d in row["dead_letters"]]
    if secret is not None:
        document["secret"] = secret
    return document


def create_subscription(body):
    request_ = views.parse(SubscriptionRequest, body)
    row, secret = gateway().webhooks.create(
        caller(), request_.url, [t.value for t in request_.types or []], [str(r) for r in request_.resource_ids or []])
    return views.reply(_subscription(row, secret), 201)


def list_subscriptions(limit=100, offset=0):
    rows, total = gateway().webhooks.list(caller(), limit, offset)
    return views.reply(views.page([_subscription(row) for row in rows], total, limit, offset))


def get_subscription(subscription_id):
    return views.reply(_subscription(gateway().webhooks.get(subscription_id, caller())))


def delete_subscription(subscription_id):
    gateway().webhooks.delete(subscription_id, caller())
    return ConnexionResponse(status_code=204)


def check_callback(callback_url: str | None) -> str | None:
    """A request's ``callback_url`` checked before anything else happens (400 naming the field)."""
    return gateway().webhooks.check_url(callback_url, "callback_url")


def with_callback(document: dict[str, Any], callback_url: str | None, kind: str, resource_id: str) -> dict[str, Any]:
    """The 201 answer, with the implicit subscription's id and secret when a callback was asked for."""
    if callback_url:
        document["callback"] = gateway().webhooks.callback(caller(), callback_url, kind, resource_id)
    return document

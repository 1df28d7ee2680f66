"""Webhooks: subscriptions, callback URLs, and the delivery workers that drain the outbox.

A subscription names a URL, optionally the event types and the resources it wants, and gets a secret,
shown once and stored Fernet-encrypted. ``callback_url`` on a job or transfer request is a subscription
to every event of that one resource (including those recorded before the subscription existed).

Deliveries come from the outbox the event log fills (``deliveries``, one row per event x subscription,
written in the event's own transaction). Each replica's dispatcher claims due rows with a lease and hands
them to at most ``webhook_workers`` threads; at most ``webhook_per_subscription`` deliveries of one
subscription are under way at once per replica, so a slow or dead endpoint holds a few workers for at
most ``webhook_timeout`` each and never the rest. A delivery is a POST of the event document, signed
(:mod:`hpc.signatures`); a 2xx answer delivers it. Anything else (no connection, a timeout, another
status, a redirect, which is never followed) is retried after ``webhook_retry_delay`` x 2^(tries-1)
seconds (capped at ``webhook_retry_max_delay``, +-20 % jitter), and after ``webhook_max_attempts`` tries
the delivery is dead: it stays in the outbox with its last error, counted on the subscription. A replica
that dies mid-delivery leaves its lease to run out (``webhook_timeout`` + 30 s), and the row is delivered
again: at least once, so receivers deduplicate by event id.

Callback and subscription URLs pass the address policy of transfer sources (``source_allow_networks``):
checked when the subscription is made (400 naming the field, before any connection) and again on the
address actually connected to at every delivery.
"""

from __future__ import annotations

import logging
import random
import secrets as random_secrets
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import requests

from hpc import __version__
from hpc.config import Config
from hpc.errors import InvalidInput, NotFound
from hpc.security import Principal, SecretBox
from hpc.services.events import check_resource_ids, check_types, document, encode
from hpc.services.leases import dead_local_owners
from hpc.signatures import HEADER, sign
from hpc.staging.addresses import AddressPolicy, check_url, default_port, loggable_url, parse_networks
from hpc.staging.errors import SourceError
from hpc.staging.http import guarded_session
from hpc.store import Store
from hpc.store.tables import utcnow

log = logging.getLogger(__name__)

IDLE = 1.0  # seconds between outbox scans when nothing woke the dispatcher
PRUNE_EVERY = 3600.0


class WebhookService:
    """Subscriptions (create, list, show, delete, callbacks) and this replica's delivery workers."""

    def __init__(self, config: Config, store: Store, secrets: SecretBox):
        self.config = config
        self.store = store
        self.secrets = secrets
        self.policy = AddressPolicy(parse_networks(config.source_allow_networks))
        self.owner = f"{config.resolved_instance_id}/webhooks"
        self.counters: Counter = Counter()
        self._busy: Counter = Counter()  # subscription id -> deliveries under way here
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._local = threading.local()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        store.events.on_commit(self._wake.set)

    # -- requests ------------------------------------------------------------------------------

    def check_url(self, url: str | None, field: str) -> str | None:
        """Validates a webhook URL's form and every address its host resolves to (no connection made).

        Raises:
            InvalidInput: Malformed, not http(s), or an address the policy refuses, naming ``field``.
        """
        if url is None:
            return None
        try:
            parts = check_url(url)
        except ValueError as exc:
            raise InvalidInput(f"{field}: {exc}", field) from None
        if parts.username or parts.password:
            raise InvalidInput(f"{field}: credentials in the URL are not accepted (the signature authenticates)",
                               field)
        try:
            self.policy.resolve(parts.hostname, default_port(parts))
        except SourceError as exc:
            raise InvalidInput(f"{field}: {exc.reason}", field) from None
        return url

    def create(self, principal: Principal, url: str, types: list[str] | None = None,
               resource_ids: list[str] | None = None) -> tuple[dict[str, Any], str]:
        """A new subscription and its secret (returned here only)."""
        self.check_url(url, "url")
        types = check_types(types or [], "types") or None
        resource_ids = check_resource_ids(resource_ids or [], "resource_ids") or None
        for resource_id in resource_ids or ():
            if not self._visible(resource_id, principal):
                raise InvalidInput(f"no job or transfer {resource_id} of yours", "resource_ids")
        return self._insert(principal, url, types, resource_ids, "api", None)

    def callback(self, principal: Principal, url: str, kind: str, resource_id: str) -> dict[str, Any]:
        """The implicit subscription of a request's ``callback_url`` (already checked); its id and secret."""
        row, secret = self._insert(principal, url, None, [resource_id], "callback", (kind, resource_id))
        log.info("%s %s: callback subscription %s to %s", kind, resource_id, row["id"], loggable_url(url))
        return {"subscription_id": row["id"], "secret": secret}

    def _insert(self, principal: Principal, url: str, types, resource_ids, source: str, backfill):
        secret = "whsec_" + random_secrets.token_urlsafe(32)
        values = {"id": str(uuid.uuid4()), "owner": principal.name, "admin": principal.is_admin, "url": url,
                  "secret_enc": self.secrets.encrypt(secret), "types": types, "resource_ids": resource_ids,
                  "source": source, "created_at": utcnow()}
        row = self.store.subscriptions.insert(values, backfill=backfill)
        self._wake.set()
        return row, secret

    def _visible(self, resource_id: str, principal: Principal) -> bool:
        for repository in (self.store.jobs, self.store.transfers):
            row = repository.get(resource_id)
            if row is not None and (principal.is_admin or row["owner"] == principal.name):
                return True
        return False

    def get(self, subscription_id: str, principal: Principal) -> dict[str, Any]:
        """A subscription with its outbox counts and latest dead deliveries (never its secret)."""
        row = self.store.subscriptions.get(str(subscription_id))
        if row is None or not (principal.is_admin or row["owner"] == principal.name):
            raise NotFound(f"no subscription {subscription_id}", "subscription_id")
        row["deliveries"] = self.store.subscriptions.counts([row["id"]])[row["id"]]
        row["dead_letters"] = self.store.deliveries.list(row["id"], "dead", limit=10)
        return row

    def list(self, principal: Principal, limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        rows, total = self.store.subscriptions.page(None if principal.is_admin else principal.name, limit, offset)
        counts = self.store.subscriptions.counts([row["id"] for row in rows])
        for row in rows:
            row["deliveries"] = counts[row["id"]]
        return rows, total

    def delete(self, subscription_id: str, principal: Principal) -> None:
        row = self.get(subscription_id, principal)
        self.store.subscriptions.delete(row["id"])
        log.info("subscription %s deleted by %s", row["id"], principal.name)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters) | {"in_flight": sum(self._busy.values())}

    # -- background ----------------------------------------------------------------------------

    def start(self, stop: threading.Event) -> None:
        """Takes back this replica's earlier leases and dead local replicas', then starts delivering."""
        base = self.config.resolved_instance_id
        for owner in {base, *dead_local_owners(o.split("/", 1)[0] for o in self.store.deliveries.lease_owners())}:
            released = self.store.deliveries.release_leases(owner)
            if released:
                log.info("took back %d webhook deliveries held by %s, which is no longer running", released, owner)
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.config.webhook_workers), thread_name_prefix="webhook")
        self._thread = threading.Thread(target=self._run, args=(stop,), name="webhook-dispatcher", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, stop: threading.Event) -> None:
        pruned = 0.0
        while not stop.is_set():
            self._wake.clear()
            try:
                self._dispatch()
                if time.monotonic() - pruned > PRUNE_EVERY:
                    pruned = time.monotonic()
                    self._prune()
            except Exception:  # the store may be briefly unavailable; never let the dispatcher die
                log.exception("webhook dispatch failed")
            self._wake.wait(IDLE)

    def _dispatch(self) -> None:
        with self._lock:
            free = self.config.webhook_workers - sum(self._busy.values())
            busy = dict(self._busy)
        if free <= 0:
            return
        ttl = self.config.webhook_timeout + 30.0
        for row in self.store.deliveries.claim(self.owner, ttl, free, busy, self.config.webhook_per_subscription):
            with self._lock:
                self._busy[row["subscription_id"]] += 1
            self._pool.submit(self._deliver_guarded, row)

    def _prune(self) -> None:
        before = utcnow() - timedelta(days=self.config.event_retention_days)
        deliveries = self.store.deliveries.prune(before)
        events = self.store.events.prune(before)
        if deliveries or events:
            log.info("pruned %d events and %d ended deliveries older than %s days", events, deliveries,
                     self.config.event_retention_days)

    def _deliver_guarded(self, row: dict[str, Any]) -> None:
        try:
            self._deliver(row)
        except Exception:
            log.exception("webhook delivery %s failed unexpectedly", row["id"])
            self._failed(row, None, "the gateway failed while delivering; see its log")
        finally:
            with self._lock:
                self._busy[row["subscription_id"]] -= 1
                if self._busy[row["subscription_id"]] <= 0:
                    del self._busy[row["subscription_id"]]
            self._wake.set()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = guarded_session(self.policy)
        return session

    def _deliver(self, row: dict[str, Any]) -> None:
        if row["url"] is None:
            self._dead(row, None, "the subscription was deleted")
            return
        if row["type"] is None:
            self._dead(row, None, "the event was pruned before it could be delivered")
            return
        event = {"id": row["event_id"], "type": row["type"], "kind": row["kind"], "resource_id": row["resource_id"],
                 "created_at": row["event_time"], "data": row["data"]}
        body = encode(document(event) | {"subscription": row["subscription_id"]})
        secret = self.secrets.decrypt(row["secret_enc"])
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"hpc-gateway/{__version__}",
            "X-HPC-Event-Id": str(row["event_id"]),
            "X-HPC-Event-Type": row["type"],
            "X-HPC-Delivery": str(row["id"]),
            "X-HPC-Attempt": str(row["attempts"] + 1),
            HEADER: sign(secret, body),
        }
        timeout = self.config.webhook_timeout
        try:
            response = self._session().post(row["url"], data=body, headers=headers, allow_redirects=False,
                                            stream=True, timeout=(min(5.0, timeout), timeout))
            response.close()
        except SourceError as exc:  # the address policy refused the address now resolved
            self._failed(row, None, exc.reason)
            return
        except requests.Timeout:
            self._failed(row, None, f"no answer within {timeout:g}s")
            return
        except requests.RequestException as exc:
            self._failed(row, None, f"cannot connect: {_short(exc)}")
            return
        if 200 <= response.status_code < 300:
            self.store.deliveries.finish(row["id"], self.owner, state="delivered", attempts=row["attempts"] + 1,
                                         last_status=response.status_code, last_error=None, ended_at=utcnow())
            self.store.subscriptions.note(row["subscription_id"])
            with self._lock:
                self.counters["delivered"] += 1
            return
        if 300 <= response.status_code < 400:
            self._failed(row, response.status_code,
                         f"HTTP {response.status_code}: redirects are not followed")
        else:
            self._failed(row, response.status_code, f"HTTP {response.status_code} {response.reason or ''}".rstrip())

    def _failed(self, row: dict[str, Any], status: int | None, reason: str) -> None:
        attempts = row["attempts"] + 1
        if attempts >= self.config.webhook_max_attempts:
            self._dead(row, status, f"gave up after {attempts} tries: {reason}", attempts)
            return
        delay = min(self.config.webhook_retry_max_delay, self.config.webhook_retry_delay * 2 ** (attempts - 1))
        delay *= random.uniform(0.8, 1.2)
        self.store.deliveries.finish(row["id"], self.owner, attempts=attempts, last_status=status, last_error=reason,
                                     next_attempt_at=utcnow() + timedelta(seconds=delay))
        self.store.subscriptions.note(row["subscription_id"], error=reason)
        with self._lock:
            self.counters["retried"] += 1
        log.info("webhook delivery %s (event %s) to %s failed (try %d), again in %.1fs: %s", row["id"],
                 row["event_id"], loggable_url(row["url"] or ""), attempts, delay, reason)

    def _dead(self, row: dict[str, Any], status: int | None, reason: str, attempts: int | None = None) -> None:
        self.store.deliveries.finish(row["id"], self.owner, state="dead", attempts=attempts or row["attempts"],
                                     last_status=status, last_error=reason, ended_at=utcnow())
        if row["url"] is not None:
            self.store.subscriptions.note(row["subscription_id"], error=reason)
        with self._lock:
            self.counters["dead"] += 1
        log.warning("webhook delivery %s (event %s) dead: %s", row["id"], row["event_id"], reason)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text:
        return "connection refused"
    return text[:200]

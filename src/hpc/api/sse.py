"""``GET /events``: server-sent events served by an ASGI layer in front of Connexion.

Connexion runs its Flask handlers in a thread pool, so a stream held open by a handler would take one of
those threads for as long as the client listens; a few dozen listeners would starve the API. This layer
answers ``GET /events`` itself, on the event loop: a stream costs a coroutine and a bounded queue, no
thread. Anything it does not serve (no or bad token, a malformed parameter) falls through to Connexion,
which answers as the spec says (401, 400 naming the parameter), like ``hpc.api.fastpath``.

ONE reader per process (:class:`EventHub`) looks at the store every ``event_poll_interval`` seconds (at
once when this process recorded an event) and fans each new event out to the queues of the streams whose
filter accepts it; the frames are built once and shared. Events come from the store, so a client
connected to any replica sees every event. A stream that resumes (``Last-Event-ID`` header or
``last_event_id`` query parameter) first reads what it missed from the store, then joins the live fan-out
at the point where its catch-up ended; ids it already sent are skipped, so it misses nothing and sees
nothing twice.

A client that stops reading is dropped, memory bounded: its queue holds at most ``event_queue_size``
events (references to shared frames) and a write that waits more than ``event_send_timeout`` for the
client ends the stream; uvicorn's own buffer is bounded by its flow control (writes wait for the socket
to drain). A comment line every ``event_heartbeat`` seconds keeps idle connections (and proxies) open.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from typing import Any, Callable
from urllib.parse import parse_qs

from hpc.errors import DomainError
from hpc.errors import Unavailable
from hpc.security import ANONYMOUS_ADMIN, Authenticate, AuthenticationFailed, Principal
from hpc.services.events import EventFilter, EventService, event_filter, sse_frame

log = logging.getLogger(__name__)

BATCH = 500  # events per store read
_QUERY_PARAMETERS = frozenset({"kind", "resource_id", "type", "last_event_id", "follow"})

_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no")]


class _Gone(Exception):
    """The stream ended: the client left, or was dropped."""


class Subscriber:
    """One open stream: its filter, its bounded queue, and the task serving it."""

    def __init__(self, where: EventFilter, queue_size: int, task: asyncio.Task):
        self.where = where
        self.queue: asyncio.Queue = asyncio.Queue(queue_size)
        self.task = task
        self.dropped: str | None = None
        self.gone = False

    def offer(self, event_id: int, frame: bytes) -> bool:
        """Queues an event; a full queue drops the subscriber. False if it was dropped."""
        if self.dropped or self.gone:
            return False
        try:
            self.queue.put_nowait((event_id, frame))
            return True
        except asyncio.QueueFull:
            self.drop(f"more than {self.queue.maxsize} events waiting: the client does not keep up")
            return False

    def drop(self, reason: str) -> None:
        if self.dropped is None:
            self.dropped = reason
            while not self.queue.empty():  # free the references now
                self.queue.get_nowait()
            self.task.cancel()


class EventHub:
    """The process's one store reader, fanning new events out to the subscribers' queues.

    It runs only while someone listens; its high-water mark is the highest event id it has fanned out.
    """

    def __init__(self, service: EventService, poll_interval: float, batch: int = BATCH):
        self.service = service
        self.poll_interval = poll_interval
        self.batch = batch
        self.high_water: int | None = None
        self.counters: Counter = Counter()
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="events-reader")

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def stats(self) -> dict[str, int]:
        return {"subscribers": len(self._subscribers), "high_water": self.high_water or 0, **self.counters}

    async def run(self, function: Callable, *args, **kwargs) -> Any:
        """Runs a store read off the event loop (the hub's own two threads, never the API's)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(function, *args, **kwargs))

    async def start(self) -> None:
        """Starts the reader if it is not running; on return ``high_water`` is set."""
        if self._task is not None and not self._task.done():
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        last = await self.run(self.service.last_id)
        if self._task is not None and not self._task.done():  # started by another stream meanwhile
            return
        self.high_water = last
        self._task = self._loop.create_task(self._read_loop())

    def notify(self) -> None:
        """Wakes the reader at once (any thread): this process just committed events."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or self._task is None:
            return
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the loop has closed
            pass

    def register(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)

    def unregister(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    async def _read_loop(self) -> None:
        # Gives the first subscriber time to register after its catch-up before an idle hub stops.
        idle_rounds = 0
        while True:
            if not self._subscribers:
                idle_rounds += 1
                if idle_rounds > 40:
                    self._task, self.high_water = None, None
                    return
            else:
                idle_rounds = 0
            try:
                rows = await self.run(self.service.store.events.after, self.high_water, limit=self.batch)
            except Exception:  # the store may be briefly unavailable: streams stay open, reading resumes
                log.exception("reading events failed")
                rows = []
                await asyncio.sleep(1.0)
            for row in rows:
                frame = None
                for subscriber in list(self._subscribers):
                    if subscriber.where.accepts(row):
                        frame = frame or sse_frame(row)
                        if not subscriber.offer(row["id"], frame):
                            self.counters["dropped"] += 1
                            self._subscribers.discard(subscriber)
                self.high_water = row["id"]
            self.counters["read"] += len(rows)
            if len(rows) == self.batch:
                await asyncio.sleep(0)  # the streams write what they got before the next batch comes
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                await asyncio.sleep(0.02)  # a burst of commits costs one read, not one each
            except asyncio.TimeoutError:
                pass


class EventStream:
    """ASGI middleware serving ``GET /events`` in front of ``app``."""

    def __init__(self, app, *, service: EventService, hub: EventHub, auth_enabled: bool, authenticate: Authenticate,
                 queue_size: int, heartbeat: float, send_timeout: float, max_subscribers: int):
        self.app = app
        self.service = service
        self.hub = hub
        self.auth_enabled = auth_enabled
        self.queue_size = queue_size
        self.heartbeat = heartbeat
        self.send_timeout = send_timeout
        self.max_subscribers = max_subscribers
        # The gateway's one credential check: configured and API-made tokens (revocation seen within
        # token_cache_seconds on every replica) and OpenID Connect.
        self._authenticate = authenticate

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/events" and scope["method"] == "GET":
            request = self._parse(scope)
            if request is not None:
                if self.hub.subscribers >= self.max_subscribers:
                    await _problem(send, 503, "Service Unavailable",
                                   f"{self.max_subscribers} event streams are open on this replica; try again later")
                    return
                await self._serve(*request, receive, send)
                return
        await self.app(scope, receive, send)

    def _parse(self, scope) -> tuple[EventFilter, int | None, bool] | None:
        """The stream's filter, resume point and mode; None for anything Connexion should answer."""
        headers = dict(scope["headers"])
        principal = ANONYMOUS_ADMIN
        if self.auth_enabled:
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            try:
                principal = self._authenticate(token.strip())
            except (AuthenticationFailed, Unavailable):
                return None  # Connexion answers, with the reason
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if set(query) - _QUERY_PARAMETERS:
            return None  # Connexion names the unknown parameter
        try:
            where = event_filter(principal, kind=query.get("kind"), resource_id=query.get("resource_id"),
                                 type=query.get("type"))
        except DomainError:
            return None
        if "last_event_id" in query:
            resume = query["last_event_id"][-1]
        elif b"last-event-id" in headers:
            resume = headers[b"last-event-id"].decode("latin-1")
        else:
            resume = ""
        if ("last_event_id" in query or b"last-event-id" in headers) and not (
                resume.isascii() and resume.isdigit() and len(resume) < 19):
            return None  # present but empty or not a number: Connexion answers 400 naming it
        follow = query.get("follow", ["true"])[-1].lower()
        if follow not in ("true", "false", "1", "0"):
            return None
        return where, int(resume) if resume else None, follow in ("true", "1")

    async def _serve(self, where: EventFilter, cursor: int | None, follow: bool, receive, send) -> None:
        subscriber = Subscriber(where, self.queue_size, asyncio.current_task())
        watcher = asyncio.create_task(_watch_disconnect(receive, subscriber))
        self.hub.counters["streams"] += 1
        try:
            if cursor is None and follow:
                # Joined before the answer starts: a client that reads a record once the stream is open
                # cannot miss a change made in between.
                await self.hub.start()
                last_sent = self.hub.high_water
                self.hub.register(subscriber)
                await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
                await self._write(send, subscriber, b"retry: 2000\n: connected\n\n")
            else:
                await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
                await self._write(send, subscriber, b"retry: 2000\n: connected\n\n")
                last_sent = await self._catch_up(send, subscriber, cursor if cursor is not None else 0)
                if not follow:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                self.hub.register(subscriber)
            while True:
                try:
                    item = await asyncio.wait_for(subscriber.queue.get(), self.heartbeat)
                except asyncio.TimeoutError:
                    await self._write(send, subscriber, b": keepalive\n\n")
                    continue
                frames = []
                while True:  # what is queued goes out in one write
                    event_id, frame = item
                    if event_id > last_sent:  # else sent during the catch-up already
                        frames.append(frame)
                        last_sent = event_id
                    if subscriber.queue.empty() or len(frames) >= 64:
                        break
                    item = subscriber.queue.get_nowait()
                if frames:
                    await self._write(send, subscriber, b"".join(frames))
                    self.hub.counters["sent"] += len(frames)
        except (asyncio.CancelledError, _Gone):
            if not (subscriber.dropped or subscriber.gone):
                raise
            if subscriber.dropped:
                self.hub.counters["dropped_streams"] += 1
                log.info("event stream dropped: %s", subscriber.dropped)
        finally:
            self.hub.unregister(subscriber)
            watcher.cancel()

    async def _catch_up(self, send, subscriber: Subscriber, cursor: int) -> int:
        """Sends the stored events after ``cursor`` until the hub's fan-out covers the rest; the last id
        covered. Ids become visible in order (``hpc.store.events``), so once a read that started after the
        hub reached ``mark`` comes back short, every event up to ``mark`` has been sent."""
        while True:
            await self.hub.start()
            mark = self.hub.high_water
            rows = await self.hub.run(self.service.read, subscriber.where, cursor, BATCH)
            for row in rows:
                await self._write(send, subscriber, sse_frame(row))
                cursor = row["id"]
                self.hub.counters["sent"] += 1
            if len(rows) == BATCH:
                continue
            cursor = max(cursor, mark)
            if self.hub.high_water is not None and self.hub.high_water <= cursor:
                return cursor

    async def _write(self, send, subscriber: Subscriber, data: bytes) -> None:
        try:
            await asyncio.wait_for(send({"type": "http.response.body", "body": data, "more_body": True}),
                                   self.send_timeout)
        except asyncio.TimeoutError:
            subscriber.dropped = f"a write waited more than {self.send_timeout:g}s: the client does not read"
            raise _Gone() from None
        if subscriber.gone:
            raise _Gone()


async def _watch_disconnect(receive, subscriber: Subscriber) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            subscriber.gone = True
            subscriber.task.cancel()
            return


async def _problem(send, status: int, title: str, detail: str) -> None:
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/problem+json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def event_stream(app, gateway) -> EventStream:
    """The layer for ``gateway``, its hub woken by the gateway's own commits."""
    config = gateway.config
    # A batch never fills a queue on its own: a reader that keeps up is never dropped for a burst.
    hub = EventHub(gateway.events, config.event_poll_interval, max(1, min(BATCH, config.event_queue_size // 2)))
    gateway.store.events.on_commit(hub.notify)
    gateway.event_hub = hub
    return EventStream(app, service=gateway.events, hub=hub, auth_enabled=config.auth_enabled,
                       authenticate=gateway.authenticate,
                       queue_size=config.event_queue_size, heartbeat=config.event_heartbeat,
                       send_timeout=config.event_send_timeout, max_subscribers=config.event_max_subscribers)

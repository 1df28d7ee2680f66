"""Reading the gateway's event stream (``GET /events``, server-sent events) from Python.

    for event in client.events(resource_id=job["id"]):
        print(event["id"], event["type"], event["data"])

:func:`iter_events` parses a stream and resumes it after a dropped connection from the last id seen
(``Last-Event-ID``), so a consumer misses nothing and sees nothing twice. :class:`ChangeNotifier` wakes a
waiting loop when a record it watches changes, which lets ``wait_for_job``, ``wait_for_transfer`` and the
command line's ``wait`` commands read a record when it changed instead of every poll period; against a
gateway without the stream they poll as before.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import requests

from hpc.client import errors

if TYPE_CHECKING:
    from hpc.client.api import Client

# Silence longer than this means the connection is gone (the gateway sends a comment every 15 s).
READ_TIMEOUT = 45.0


def parse_sse(lines: Iterable[bytes | str]) -> Iterator[dict[str, str]]:
    """Server-sent event fields (``id``, ``event``, ``data``) per event, from the stream's lines.

    Comments (lines starting with ``:``) and ``retry`` are skipped; multi-line ``data`` is joined with
    newlines, as the SSE specification says.
    """
    fields: dict[str, str] = {}
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        line = line.rstrip("\r\n")
        if not line:
            if data or fields:
                if data:
                    fields["data"] = "\n".join(data)
                yield fields
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name in ("id", "event"):
            fields[name] = value


def iter_events(client: "Client", *, kind: str | None = None, resource_id: str | Iterable[str] | None = None,
                type: str | Iterable[str] | None = None, last_event_id: int | None = None, follow: bool = True,
                reconnect: bool = True, connected: threading.Event | None = None,
                stop: threading.Event | None = None, opened=None) -> Iterator[dict[str, Any]]:
    """Event documents from ``GET /events``, oldest first; see :meth:`hpc.client.Client.events`."""
    params = {"kind": kind, "resource_id": _join(resource_id), "type": _join(type),
              "follow": None if follow else "false"}
    last = last_event_id
    failures = 0
    while stop is None or not stop.is_set():
        headers = {"Accept": "text/event-stream"}
        if client.token:
            headers["Authorization"] = f"Bearer {client.token}"
        query = {k: v for k, v in params.items() if v is not None}
        if last is not None:
            query["last_event_id"] = str(last)
        url = f"{client.url}/events"
        try:
            response = client.session.get(url, params=query, headers=headers, stream=True,
                                          timeout=(min(client.timeout, 10.0), READ_TIMEOUT))
        except requests.RequestException as exc:
            if not reconnect or last is None and failures >= 3:
                raise errors.GatewayUnreachable(client.url, exc) from None
            failures += 1
            time.sleep(min(30.0, 0.5 * 2 ** failures))
            continue
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"title": response.reason or "", "detail": response.text[:500]}
            response.close()
            raise errors.api_error(response.status_code, problem if isinstance(problem, dict) else {}, "GET", url)
        if opened is not None:
            opened(response)
        if connected is not None:
            connected.set()
        failures = 0
        try:
            for fields in parse_sse(_lines(response)):
                if "data" not in fields:
                    continue
                event = json.loads(fields["data"])
                last = int(fields.get("id") or event["id"])
                yield event
                if stop is not None and stop.is_set():
                    return
        except (requests.RequestException, ConnectionError, OSError):
            pass  # dropped or silent too long: resume from the last id seen
        finally:
            response.close()
        if not follow or not reconnect:
            return
        time.sleep(0.2)


def _lines(response: requests.Response) -> Iterator[bytes]:
    """The response's lines as they arrive (an empty line ends each event)."""
    buffer = b""
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line


def abort(response: requests.Response) -> None:
    """Ends a streamed response from another thread at once.

    ``response.close()`` would wait for the reading thread's buffer lock, i.e. until the next bytes
    arrive (up to a heartbeat); shutting the socket down wakes the reader with an error instead.
    """
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
            return
        except OSError:
            pass
    response.close()


def _join(value: str | Iterable[str] | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return ",".join(value) or None


class ChangeNotifier:
    """Watches the event stream for some resources in a thread; :meth:`wait` returns when one changed.

    ``available`` is False when the gateway has no event stream (or it failed): callers then poll.
    """

    def __init__(self, client: "Client", resource_ids: Iterable[str], connect_timeout: float = 10.0):
        self.available = False
        self._ids = sorted({str(r) for r in resource_ids})
        self._client = client
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._failed = threading.Event()
        self._response: requests.Response | None = None
        self._thread = threading.Thread(target=self._run, name="hpc-events", daemon=True)
        if not self._ids:
            return
        self._thread.start()
        deadline = time.monotonic() + connect_timeout
        while time.monotonic() < deadline and not (self._connected.is_set() or self._failed.is_set()):
            self._connected.wait(0.05)
        self.available = self._connected.is_set()

    def _run(self) -> None:
        from hpc.client.api import Client

        # A client of its own: requests sessions are not shared between threads.
        client = Client(self._client.url, self._client.token, timeout=self._client.timeout)
        try:
            for _ in iter_events(client, resource_id=self._ids, connected=self._connected, stop=self._stop,
                                 opened=self._opened):
                self._changed.set()
        except Exception:  # no stream here (404, old gateway) or it failed: the waiter polls
            pass
        finally:
            self.available = False
            self._failed.set()
            self._changed.set()
            client.close()

    def _opened(self, response: requests.Response) -> None:
        self._response = response
        if self._stop.is_set():
            abort(response)

    def wait(self, timeout: float) -> bool:
        """Waits until a watched resource had an event (True) or ``timeout`` passed (False)."""
        changed = self._changed.wait(max(0.0, timeout))
        self._changed.clear()
        return changed

    def close(self) -> None:
        """Stops watching: the stream is closed at once (the thread ends with it)."""
        self._stop.set()
        response = self._response
        if response is not None:
            abort(response)

    def __enter__(self) -> "ChangeNotifier":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

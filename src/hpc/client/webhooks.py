"""Receiving the gateway's webhook deliveries: signature check, replay window, deduplication.

Inside any web framework, check each delivery with :func:`verify_delivery` (the raw body bytes and the
request headers) and answer 2xx quickly; anything else makes the gateway retry. For a script,
:class:`WebhookReceiver` is a small threaded HTTP server that does it all::

    from hpc.client.webhooks import WebhookReceiver

    with WebhookReceiver(secret, lambda event: print(event["type"], event["data"]), port=8090) as hook:
        client.submit_job("tb-slurm", script="...", callback_url=hook.url)   # or POST /subscription
        ...

Deliveries are at least once (a gateway that dies after delivering but before recording it delivers
again), so the receiver passes each event id to the handler once, remembering the last ``remember``
ids. Standard library only.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections import OrderedDict
from typing import Any, Callable, Mapping

from hpc.signatures import HEADER, TOLERANCE, SignatureError, sign, verify

__all__ = ["HEADER", "SignatureError", "WebhookReceiver", "sign", "verify", "verify_delivery"]

MAX_BODY = 1024 * 1024


def verify_delivery(secret: str, body: bytes, headers: Mapping[str, str], *, tolerance: float = TOLERANCE
                    ) -> dict[str, Any]:
    """The event a delivery carries, after checking its signature and age.

    Raises:
        SignatureError: Missing, stale or wrong signature, or a body that is not an event.
    """
    header = next((value for name, value in headers.items() if name.lower() == HEADER.lower()), None)
    verify(secret, body, header, tolerance=tolerance)
    try:
        event = json.loads(body)
    except ValueError:
        raise SignatureError("the body is not JSON") from None
    if not isinstance(event, dict) or "id" not in event or "type" not in event:
        raise SignatureError("the body is not an event")
    return event


class WebhookReceiver:
    """A threaded HTTP server that verifies deliveries and hands each new event to ``handler``.

    Answers 204 to a good delivery (also to a repeat, which is not passed on), 401 to a bad signature,
    413 to an oversized body. ``handler`` runs in the request's thread; if it raises, the answer is 500
    and the gateway delivers the event again later.

    Args:
        secret: The subscription's (or callback's) secret.
        handler: Called with each event document, once per event id.
        host, port: Where to listen (port 0: any free port; see ``url``).
        remember: How many recent event ids are kept for deduplication.
    """

    def __init__(self, secret: str, handler: Callable[[dict[str, Any]], None], *, host: str = "127.0.0.1",
                 port: int = 0, path: str = "/", remember: int = 100_000, tolerance: float = TOLERANCE):
        self.secret = secret
        self.handler = handler
        self.path = path
        self.tolerance = tolerance
        self.rejected = 0
        self.repeats = 0
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._remember = remember
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server protocol
                receiver._handle(self)

            def log_message(self, *args):  # quiet: the handler sees what matters
                pass

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.path}"

    def start(self) -> "WebhookReceiver":
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            request.send_response(413)
            request.end_headers()
            return
        body = request.rfile.read(length)
        try:
            event = verify_delivery(self.secret, body, dict(request.headers), tolerance=self.tolerance)
        except SignatureError:
            with self._lock:
                self.rejected += 1
            request.send_response(401)
            request.end_headers()
            return
        event_id = int(event["id"])
        with self._lock:
            repeat = event_id in self._seen
            if repeat:
                self.repeats += 1
            else:  # claimed before the handler runs: a concurrent repeat is not passed on twice
                self._seen[event_id] = None
                while len(self._seen) > self._remember:
                    self._seen.popitem(last=False)
        if not repeat:
            try:
                self.handler(event)
            except Exception:
                with self._lock:
                    self._seen.pop(event_id, None)
                request.send_response(500)
                request.end_headers()
                return
        request.send_response(204)
        request.end_headers()

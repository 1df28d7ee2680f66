"""Request metrics: the outermost ASGI layer, so every answer is counted, whoever gives it.

It sits in front of the request guard (which answers 413, 400, 405 and 401 itself), the status fast path
(which answers most ``GET /job/{id}`` and transfer polls) and Connexion. Each request is labelled with
the contract's ``operationId`` for its path template and method, never with the path itself (which holds
ids); a path the contract does not have is ``unmatched`` (the Swagger UI ``swagger_ui``, the spec
``spec``). Methods outside the standard set are ``OTHER``.
"""

from __future__ import annotations

import re
import time
from typing import Any

from hpc.services.metrics import HTTP_DURATION, HTTP_REQUESTS

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"))
_PARAM = re.compile(r"{[^}/]+}")


class OperationMap:
    """Path and method -> operationId, from the contract; routes indexed by their first path segment."""

    def __init__(self, spec: dict[str, Any]):
        by_segment: dict[str | None, list[tuple[re.Pattern, dict[str, str]]]] = {}
        for template, operations in spec.get("paths", {}).items():
            methods = {m.upper(): op["operationId"] for m, op in operations.items()
                       if isinstance(op, dict) and m.upper() in _METHODS and "operationId" in op}
            if "GET" in methods:
                methods.setdefault("HEAD", methods["GET"])
            pattern = re.compile("".join(
                "[^/]*" if _PARAM.fullmatch(part) else re.escape(part)
                for part in re.split(r"({[^}/]+})", template)), re.DOTALL)
            first = template.split("/", 2)[1]
            by_segment.setdefault(None if _PARAM.search(first) else first, []).append((pattern, methods))
        # Templates that start with a parameter could match any first segment: tried after the others.
        self._generic = by_segment.pop(None, [])
        self._by_segment = {first: routes + self._generic for first, routes in by_segment.items()}

    def operation(self, method: str, path: str) -> str:
        first = path.split("/", 2)[1] if path.startswith("/") else ""
        for pattern, methods in self._by_segment.get(first, self._generic):
            if pattern.fullmatch(path):
                return methods.get(method, "unmatched")
        if first == "ui":
            return "swagger_ui"
        if path in ("/openapi.json", "/openapi.yaml"):
            return "spec"
        return "unmatched"


class RequestMetrics:
    """ASGI middleware counting requests by operation, method and status, and timing them."""

    def __init__(self, app, spec: dict[str, Any]):
        self.app = app
        self.operations = OperationMap(spec)
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what uvicorn answers when the app fails before it starts a response

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            self._observe(scope, status, time.perf_counter() - started)

    def _observe(self, scope, status: int, seconds: float) -> None:
        method = scope["method"].upper()
        if method not in _METHODS:
            method = "OTHER"
        operation = self.operations.operation(method, scope["path"])
        code = str(status) if 100 <= status <= 599 else "other"
        counter = self._counters.get((operation, method, code))
        if counter is None:  # label lookups cost more than the increment: each child is looked up once
            counter = self._counters[(operation, method, code)] = HTTP_REQUESTS.labels(operation, method, code)
        timer = self._timers.get((operation, method))
        if timer is None:
            timer = self._timers[(operation, method)] = HTTP_DURATION.labels(operation, method)
        counter.inc()
        timer.observe(seconds)

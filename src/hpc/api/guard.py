"""The request guard: the checks every request passes before Connexion sees it (ASGI middleware).

Connexion and Starlette assume well-formed requests, so some hostile ones broke them with a 500 or cost
memory without bound. The guard answers those itself, with a problem+json document:

- **413** for a body larger than ``max_body_size``: the ``Content-Length`` header is checked before a
  byte is read, and a body without one (chunked) is counted as it streams in, so no request can make the
  gateway hold more than the limit;
- **400** for a body that is not UTF-8 or whose JSON nests deeper than :data:`MAX_DEPTH` (Python's JSON
  parser recurses and would fail with a RecursionError);
- **400** for a control character (newline, NUL...) in a path parameter, naming the parameter: Starlette's
  mount pattern does not match such a path, and the request fell through to Flask outside any operation;
- **405** with the ``Allow`` header the contract gives for the path;
- **401** with ``WWW-Authenticate: Bearer`` before any of the 400s above, for an operation that needs a
  token when the request has no valid one (as Connexion answers 401 before it validates a request); a
  token sent but refused gets ``error="invalid_token"`` and the reason in ``error_description``.

A body that passes is handed on whole, with its true ``Content-Length`` (a chunked body used to reach
Connexion as "missing").
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

from hpc.api.auth import challenge
from hpc.errors import Unavailable
from hpc.security import Authenticate, AuthenticationFailed, configured_tokens

MAX_DEPTH = 32  # the contract's deepest body (params.kalman.r) nests 3 levels
_METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PARAM = re.compile(r"{([^}/]+)}")
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENING = frozenset(b"[{")
_THREAD_FROM = 256 * 1024  # bodies from this size are checked off the event loop


@dataclass(frozen=True)
class Route:
    """One path of the contract: its pattern, parameter names, methods, and which need a token."""

    pattern: re.Pattern
    methods: frozenset[str]
    secured: frozenset[str]

    @property
    def allow(self) -> str:
        methods = set(self.methods) | ({"HEAD"} if "GET" in self.methods else set())
        return ", ".join(sorted(methods))


def routes_of(spec: dict[str, Any]) -> list[Route]:
    """The contract's paths as patterns that match any characters but "/" in a parameter."""
    default_security = spec.get("security") or []
    routes = []
    for template, operations in spec.get("paths", {}).items():
        regex, last = "", 0
        for match in _PARAM.finditer(template):
            regex += re.escape(template[last:match.start()]) + f"(?P<{match.group(1)}>[^/]*)"
            last = match.end()
        regex += re.escape(template[last:])
        methods = {m.upper(): op for m, op in operations.items() if m in _METHODS and isinstance(op, dict)}
        secured = {m for m, op in methods.items() if any(op.get("security", default_security))}
        routes.append(Route(re.compile(regex, re.DOTALL), frozenset(methods), frozenset(secured)))
    return routes


def json_depth_exceeds(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether a JSON text nests arrays and objects deeper than ``limit``, without recursing.

    Strings are cut out and everything but brackets dropped (both in C); each pass then removes every
    innermost ``[]``/``{}`` pair, i.e. one level of nesting. What is left after at most ``limit`` passes
    nests as deep as the body less the levels removed; it is short unless the body is deep, and scanned
    exactly. Unbalanced brackets (malformed JSON, for the parser to refuse) count as nesting too.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    removed = 0
    while removed < limit:
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if shorter == brackets:
            break
        brackets, removed = shorter, removed + 1
    depth = 0
    for byte in brackets:
        depth += 1 if byte in _OPENING else -1
        if depth + removed > limit:
            return True
    return False


def problem_message(status: int, title: str, detail: str, field: str | None = None,
                    headers: list[tuple[bytes, bytes]] | None = None) -> tuple[dict, bytes]:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if field:
        body["field"] = field
    data = json.dumps(body).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/problem+json"),
                         (b"content-length", str(len(data)).encode()), *(headers or [])]}
    return start, data


class RequestGuard:
    """ASGI middleware in front of the API (see the module's docstring)."""

    def __init__(self, app, spec: dict[str, Any], *, max_body_size: int, auth_enabled: bool,
                 authenticate: Authenticate | None = None, tokens=(), on_refused=None):
        self.app = app
        self.routes = routes_of(spec)
        self.max_body_size = max_body_size
        self.auth_enabled = auth_enabled
        self._authenticate = authenticate or configured_tokens(tokens)
        self._on_refused = on_refused  # called with the AuthenticationFailed of each 401 for a bad token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"].upper()
        route, params = self._route(scope["path"])
        if route is not None and method not in route.methods and not (method == "HEAD" and "GET" in route.methods):
            await self._answer(send, 405, "Method Not Allowed",
                               f"{method} is not an operation of this path; it offers {route.allow}",
                               headers=[(b"allow", route.allow.encode())])
            return
        if _CONTROL.search(scope["path"]):
            if route is None:
                await self._answer(send, 404, "Not Found", "no such path")
            elif await self._authorized(scope, route, send):
                name = next(name for name, value in params.items() if _CONTROL.search(value))
                await self._answer(send, 400, "Bad Request",
                                   f"path parameter {name!r} must not contain control characters", name)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_size):
            await self._too_large(send)
            return
        if method in ("GET", "HEAD", "DELETE", "OPTIONS") and length in (None, b"0") \
                and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)
            return
        body, more = await self._read_body(receive)
        if body is None:
            await self._too_large(send)
            return
        if body and route is not None:
            if not await self._authorized(scope, route, send):
                return
            if len(body) < _THREAD_FROM:
                reason = self._body_problem(body)
            else:
                reason = await asyncio.get_running_loop().run_in_executor(None, self._body_problem, body)
            if reason:
                await self._answer(send, 400, "Bad Request", reason)
                return
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope.get("headers") or []
                            if k not in (b"content-length", b"transfer-encoding")]
        scope["headers"].append((b"content-length", str(len(body)).encode()))
        await self.app(scope, self._replay(body, receive, more), send)

    def _route(self, path: str) -> tuple[Route | None, dict[str, str]]:
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match:
                return route, match.groupdict()
        return None, {}

    async def _read_body(self, receive) -> tuple[bytes | None, bool]:
        """The whole body, or None as soon as it passes the limit (the rest is never read)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks), False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_size:
                return None, False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), True

    @staticmethod
    def _replay(body: bytes, receive, connected: bool):
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            if not connected:
                return {"type": "http.disconnect"}
            return await receive()

        return replay

    @staticmethod
    def _body_problem(body: bytes) -> str | None:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"the request body is not valid UTF-8 (byte {exc.start})"
        if json_depth_exceeds(body):
            return f"the request body nests arrays or objects deeper than {MAX_DEPTH} levels"
        return None

    async def _authorized(self, scope, route: Route, send) -> bool:
        """True when the operation needs no token or has a valid one; else answers 401."""
        if not self.auth_enabled or scope["method"].upper() not in route.secured:
            return True
        authorization = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await self._answer(send, 401, "Unauthorized", "a valid bearer token is required",
                               headers=[(b"www-authenticate", b"Bearer")])
            return False
        try:
            self._authenticate(token.strip())
            return True
        except AuthenticationFailed as exc:
            if self._on_refused is not None:
                self._on_refused(exc)
            await self._answer(send, 401, "Unauthorized", exc.reason,
                               headers=[(b"www-authenticate", challenge(exc.reason).encode())])
        except Unavailable as exc:
            await self._answer(send, 503, "Service Unavailable", exc.detail)
        return False

    async def _too_large(self, send) -> None:
        await self._answer(send, 413, "Payload Too Large",
                           f"the request body is larger than {self.max_body_size} bytes, the gateway's limit "
                           "(max_body_size)")

    @staticmethod
    async def _answer(send, status: int, title: str, detail: str, field: str | None = None,
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
        start, data = problem_message(status, title, detail, field, headers)
        await send(start)
        await send({"type": "http.response.body", "body": data})

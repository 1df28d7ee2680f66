"""Exceptions raised by :class:`hpc.client.Client`.

Every answer of the gateway that is not a success becomes an :class:`ApiError` (or one of its
subclasses, chosen by HTTP status) carrying the RFC 7807 problem document the gateway sent: ``status``,
``title``, ``detail`` and, for a bad request, ``field`` (the offending request field as a dotted path).
A gateway that cannot be reached at all raises :class:`GatewayUnreachable`; a wait that runs out of
time raises :class:`WaitTimeout` with the last record seen.
"""

from __future__ import annotations

import re
from typing import Any


class ClientError(Exception):
    """Base of every error this client raises."""


class GatewayUnreachable(ClientError):
    """No HTTP answer at all: connection refused, DNS failure, TLS failure or a request timeout."""

    def __init__(self, url: str, cause: Exception):
        super().__init__(f"cannot reach the gateway at {url}: {_reason(cause)}")
        self.url = url
        self.cause = cause


class ApiError(ClientError):
    """The gateway answered with an error status; the attributes are its problem+json document.

    Attributes:
        status: The HTTP status code.
        title: The problem's short title (``Not Found``).
        detail: What is wrong, in words a person can act on.
        field: The request field at fault (``ssh_key.path``), or None.
        problem: The whole problem document as received (or ``{}`` when the body was not JSON).
        method, url: The request that failed.
    """

    def __init__(self, status: int, problem: dict[str, Any], method: str = "", url: str = ""):
        self.status = status
        self.problem = problem
        self.title = str(problem.get("title") or "")
        self.detail = str(problem.get("detail") or "")
        self.field = problem.get("field")
        self.type = str(problem.get("type") or "about:blank")
        self.method = method
        self.url = url
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.status} {self.title}".strip()
        if self.detail and self.detail != self.title:
            text += f": {self.detail}"
        if self.field:
            text += f" (field: {self.field})"
        return text


class BadRequest(ApiError):
    """400: the request breaks the contract or a domain rule; ``field`` says where."""


class Unauthorized(ApiError):
    """401: no token, or a token the gateway does not know."""


class Forbidden(ApiError):
    """403: the token's role may not do this (registering infrastructures needs ``admin``)."""


class NotFound(ApiError):
    """404: no such infrastructure, job or transfer (or not yours)."""


class Conflict(ApiError):
    """409: the resource exists already, or its state forbids the operation now."""


class ClusterRefused(ApiError):
    """422: the cluster said no at registration (unreachable, key refused, host key unknown)."""


class ServerError(ApiError):
    """5xx: the gateway or the cluster behind it failed (502 unavailable, 504 timeout, 507 full)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: ClusterRefused,
}


def api_error(status: int, problem: dict[str, Any], method: str = "", url: str = "") -> ApiError:
    """The most specific :class:`ApiError` subclass for ``status``."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return cls(status, problem, method, url)


class WaitTimeout(ClientError, TimeoutError):
    """A wait ran out of time before the job or transfer ended; ``last`` is the record seen last."""

    def __init__(self, what: str, timeout: float, last: dict[str, Any]):
        state = last.get("state") or last.get("status")
        super().__init__(f"{what} still {state} after {timeout:g} s")
        self.timeout = timeout
        self.last = last


def _reason(cause: Exception) -> str:
    """The useful words of a requests/urllib3 exception (``[Errno 111] Connection refused``)."""
    text = str(cause)
    match = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if match:
        return match.group(0)
    if "timed out" in text.lower():
        return "timed out"
    return text[:300]

"""The one table that turns domain errors into RFC 7807 ``application/problem+json`` responses."""

from __future__ import annotations

import json
import logging

from connexion.exceptions import BadRequestProblem, ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse

from hpc import errors
from hpc.api import auth

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# domain error -> (HTTP status, title)
TABLE: dict[type[errors.DomainError], tuple[int, str]] = {
    errors.InvalidInput: (400, "Bad Request"),
    errors.Unauthorized: (401, "Unauthorized"),
    errors.Forbidden: (403, "Forbidden"),
    errors.NotFound: (404, "Not Found"),
    errors.Conflict: (409, "Conflict"),
    errors.ClusterRefused: (422, "Cluster Refused"),
    errors.InsufficientStorage: (507, "Insufficient Storage"),
    errors.ClusterUnavailable: (502, "Cluster Unavailable"),
    errors.ClusterTimeout: (504, "Cluster Timeout"),
    errors.Unavailable: (503, "Service Unavailable"),
}

_DETAIL_LIMIT = 500


def problem(status: int, title: str, detail: str, field: str | None = None,
            challenge: str = "Bearer", extra: dict | None = None) -> ConnexionResponse:
    """A problem+json response; a 401 names the scheme the client must use (RFC 6750), with the reason
    a token was refused when one was (``challenge``, made by ``hpc.api.auth.challenge``). ``extra``:
    extension members (RFC 7807 3.2)."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if field:
        body["field"] = field
    body.update(extra or {})
    return ConnexionResponse(status_code=status, body=json.dumps(body), content_type=PROBLEM_JSON,
                             headers={"WWW-Authenticate": challenge} if status == 401 else None)


def domain_error(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    for cls in type(exc).__mro__:
        if cls in TABLE:
            status, title = TABLE[cls]
            return problem(status, title, exc.detail, exc.field)
    return internal_error(_request, exc)


def bad_request(_request: ConnexionRequest, exc: BadRequestProblem) -> ConnexionResponse:
    """Contract violations. ``hpc.api.validation`` words them (field named, no value quoted); what
    Connexion raises itself (malformed JSON, a missing body) carries no value either."""
    detail = exc.detail or "the request does not match the API contract"
    if len(detail) > _DETAIL_LIMIT:
        detail = detail[:_DETAIL_LIMIT] + "... (cut)"
    return problem(400, "Bad Request", detail, getattr(exc, "field", None))


def connexion_problem(_request: ConnexionRequest, exc: ProblemException) -> ConnexionResponse:
    # e.g. 415, whose detail quotes the request's Content-Type header.
    detail = (exc.detail or exc.title or "")[:_DETAIL_LIMIT]
    if isinstance(exc, auth.InvalidToken):
        return problem(401, "Unauthorized", detail, challenge=auth.challenge(exc.detail))
    return problem(exc.status_code, exc.title or "Error", detail)


def internal_error(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    # The traceback goes to the log only; the client gets no internals.
    log.error("unhandled error", exc_info=exc)
    return problem(500, "Internal Server Error", "the gateway failed unexpectedly; the log has the details")

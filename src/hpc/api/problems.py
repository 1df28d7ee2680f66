"""The one table that turns domain errors into RFC 7807 ``application/problem+json`` responses."""

from __future__ import annotations

import json
import logging
import re

from connexion.exceptions import BadRequestProblem, ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from connexion.validators import ParameterValidator

from hpc import errors

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
}

_DETAIL_LIMIT = 500
_PATH_SUFFIX = re.compile(r" - '([^']*)'$")
_REQUIRED = re.compile(r"^'([^']+)' is a required property")


def problem(status: int, title: str, detail: str, field: str | None = None) -> ConnexionResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if field:
        body["field"] = field
    return ConnexionResponse(status_code=status, body=json.dumps(body), content_type=PROBLEM_JSON)


def domain_error(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    for cls in type(exc).__mro__:
        if cls in TABLE:
            status, title = TABLE[cls]
            return problem(status, title, exc.detail, exc.field)
    return internal_error(_request, exc)


def bad_request(_request: ConnexionRequest, exc: BadRequestProblem) -> ConnexionResponse:
    """Connexion's schema validation errors, with the offending field pulled out of the message."""
    detail = exc.detail or "the request does not match the API contract"
    field = None
    match = _PATH_SUFFIX.search(detail)
    if match:
        field = match.group(1)
    required = _REQUIRED.match(detail)
    if required:
        field = f"{field}.{required.group(1)}" if field else required.group(1)
    if len(detail) > _DETAIL_LIMIT:
        # jsonschema quotes the offending value: a megabyte of script must not come back in the answer.
        detail = detail[:_DETAIL_LIMIT] + "... (cut)" + (f" - '{field}'" if field else "")
    return problem(400, "Bad Request", detail, field)


def connexion_problem(_request: ConnexionRequest, exc: ProblemException) -> ConnexionResponse:
    return problem(exc.status_code, exc.title or "Error", exc.detail or exc.title or "")


def internal_error(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    # The traceback goes to the log only; the client gets no internals.
    log.error("unhandled error", exc_info=exc)
    return problem(500, "Internal Server Error", "the gateway failed unexpectedly; the log has the details")


class NamedParameterValidator(ParameterValidator):
    """Connexion's parameter check, its message cut to one line that names the parameter.

    Connexion passes jsonschema's whole multi-line report (schema dump included) and never the
    parameter's name; this keeps the first line and appends ``- 'name'`` as body errors have it.
    """

    @staticmethod
    def validate_parameter(parameter_type, value, param, param_name=None):
        error = ParameterValidator.validate_parameter(parameter_type, value, param, param_name)
        if not error:
            return error
        return f"{parameter_type} parameter: {error.splitlines()[0]} - '{param['name']}'"

"""Request checks on the way into Connexion, with messages that name the field and echo no value.

jsonschema's own messages quote the offending value (``'hunter2' is not of type 'integer'``), and
Connexion logs them at INFO: a secret sent with the wrong type, or a 50 MB string, would land whole in the
log and in the 400's detail. The validators here replace both: a message says which field broke which
rule and what type was sent, never the value itself (of any field: so no list of secret fields can go
stale when one is added), and nothing is logged.

Also here, because every request crosses them:

- no string anywhere in a JSON body may hold a NUL character (no shell, path or scheduler directive can
  carry one; refused as 400 naming the field, ``command.2`` or ``params.exe``);
- a query parameter the operation does not declare, or one given twice, is a 400 naming it (silently
  ignoring ``?tail=2`` or using the last of ``?state=a&state=b`` hides client mistakes);
- a ``date-time`` query parameter must be a date-time with a time zone that converts to UTC.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any, Iterable
from urllib.parse import parse_qsl

from connexion.exceptions import BadRequestProblem
from connexion.validators import JSONRequestBodyValidator, ParameterValidator
from jsonschema import Draft4Validator

from hpc.validation_messages import describe, dotted, field_of, json_type  # noqa: F401 (re-exported)
from hpc.validation_messages import short as _short

class FieldProblem(BadRequestProblem):
    """A 400 that names the request field at fault (``field`` in the problem document)."""

    def __init__(self, detail: str, field: str | None = None):
        super().__init__(detail=detail)
        self.field = field


def nul_field(value: Any) -> str | None:
    """The dotted path of the first string (key or value) holding a NUL character, if any."""
    stack: list[tuple[list[Any], Any]] = [([], value)]
    while stack:  # iterative: the guard bounds the depth, but a recursion limit must never matter here
        path, item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return dotted(path) or "body"
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    return dotted(path + [key.replace("\x00", "\\0")])
                stack.append((path + [key], child))
        elif isinstance(item, list):
            stack.extend((path + [index], child) for index, child in enumerate(item))
    return None


class BodyValidator(JSONRequestBodyValidator):
    """Connexion's JSON body check, with messages that name the field and never quote a value."""

    async def _parse(self, stream, scope) -> Any:
        # The guard refuses these before Connexion; kept so that no path around it can answer 500.
        try:
            return await super()._parse(stream, scope)
        except (UnicodeDecodeError, LookupError):
            raise FieldProblem("the request body is not valid UTF-8") from None
        except RecursionError:
            raise FieldProblem("the request body nests arrays or objects too deep") from None

    def _validate(self, body: Any) -> None:
        if not self._nullable and body is None:
            raise FieldProblem("the request body must not be empty")
        error = next(iter(sorted(self._validator.iter_errors(body), key=lambda e: e.path)), None)
        if error is not None:
            field = field_of(error)
            raise FieldProblem(f"{field or 'body'}: {describe(error)}", field)
        field = nul_field(body)
        if field is not None:
            raise FieldProblem(f"{field}: NUL characters are not allowed", field)


def parse_date_time(value: str) -> datetime:
    """An ISO 8601 date-time with a time zone, as an aware UTC datetime.

    Raises:
        ValueError: Not a date-time, no time zone, or out of range once converted to UTC
            (``9999-12-31T23:59:59-14:00`` is past the year 9999 in UTC).
    """
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-01-01T00:00:00Z") from None
    if parsed.tzinfo is None:
        raise ValueError("needs a time zone (for example 2026-01-01T00:00:00Z)")
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


class ParameterChecks(ParameterValidator):
    """Connexion's parameter check with named, value-free messages; unknown and repeated query
    parameters refused; ``date-time`` parameters parsed."""

    def validate_request(self, request) -> None:
        known = {param["name"] for param in self.parameters.get("query", [])} | self.security_query_params
        raw = request.scope.get("query_string", b"").decode("latin-1")
        counts = Counter(name for name, _ in parse_qsl(raw, keep_blank_values=True))
        for name, count in counts.items():
            shown = _short(name)
            if name not in known:
                allowed = ", ".join(sorted(known)) or "none"
                raise FieldProblem(f"unknown query parameter {shown!r} (this operation takes: {allowed})", shown)
            if count > 1:
                raise FieldProblem(f"query parameter {shown!r} was given {count} times: give it once", shown)
        super().validate_request(request)

    @staticmethod
    def validate_parameter(parameter_type, value, param, param_name=None):
        name = param["name"]
        if value is None:
            if param.get("required"):
                raise FieldProblem(f"{parameter_type} parameter {name!r} is required", name)
            return None
        schema = param.get("schema", param)
        error = next(iter(Draft4Validator(schema, format_checker=Draft4Validator.FORMAT_CHECKER)
                          .iter_errors(value)), None)
        if error is not None:
            raise FieldProblem(f"{parameter_type} parameter {name!r}: {describe(error)}", name)
        if schema.get("format") == "date-time" and isinstance(value, str):
            try:
                parse_date_time(value)
            except ValueError as exc:
                raise FieldProblem(f"{parameter_type} parameter {name!r} {exc}", name) from None
        return None

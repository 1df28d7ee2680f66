"""Words for a JSON Schema violation that name the field and the rule, never the value.

jsonschema's own messages quote the offending value (``'hunter2' is not of type 'integer'``); these do not,
so they can be returned and logged whatever the value holds. Used for request bodies
(:mod:`hpc.api.validation`) and for job-template parameters (:mod:`hpc.services.templates`).
"""

from __future__ import annotations

from typing import Any, Iterable

from jsonschema import ValidationError

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
               float: "a number", type(None): "null"}
_ARTICLE = {"object": "an object", "array": "an array", "string": "a string", "boolean": "a boolean",
            "integer": "an integer", "number": "a number"}
_SHOWN_LIMIT = 120


def dotted(path: Iterable[Any]) -> str:
    return ".".join(str(part) for part in path)


def short(value: Any) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= _SHOWN_LIMIT else text[:_SHOWN_LIMIT] + "..."


def json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def describe(error: ValidationError, schema: str = "the contract") -> str:
    """One line saying which rule the value broke, without the value (secret or not); ``schema`` names
    the schema in the words of the rules it has no wording for."""
    rule, limit, value = error.validator, error.validator_value, error.instance
    if rule == "type":
        wanted = " or ".join(_ARTICLE.get(t, t) for t in (limit if isinstance(limit, list) else [limit]))
        return f"must be {wanted}, not {json_type(value)}"
    if rule == "required":
        missing = [name for name in limit if isinstance(value, dict) and name not in value]
        return f"{short(missing[0] if missing else limit)} is required"
    texts = {
        "enum": lambda: f"must be one of: {short(limit)}",
        "pattern": lambda: f"must match the pattern {short(limit)}",
        "format": lambda: f"must be a valid {limit}",
        "maxLength": lambda: f"must be at most {limit} characters long",
        "minLength": lambda: f"must be at least {limit} characters long",
        "maximum": lambda: f"must be at most {limit}",
        "minimum": lambda: f"must be at least {limit}",
        "maxItems": lambda: f"must have at most {limit} items",
        "minItems": lambda: f"must have at least {limit} items",
        "maxProperties": lambda: f"must have at most {limit} entries",
        "minProperties": lambda: f"must have at least {limit} entries",
        "additionalProperties": lambda: f"is not a field {schema} defines",
        "uniqueItems": lambda: "must not repeat items",
    }
    text = texts.get(rule)
    return text() if text else f"breaks the {rule!r} rule of {schema}"


def field_of(error: ValidationError) -> str | None:
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        path += missing[:1]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties") or {} if isinstance(error.schema, dict) else {}
        path += [short(name) for name in error.instance if name not in known][:1]
    return dotted(path) or None

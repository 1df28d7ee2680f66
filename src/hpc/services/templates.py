"""Job templates: registration (checked), versions, deprecation, and rendering a job's payload from one.

A template is a batch-script body with ``{{name}}`` placeholders (syntax and quoting:
:mod:`hpc.schedulers.template`), a JSON Schema of its parameters, and default resources. Admins register
it (version 1) and update it by adding versions; a version never changes once written, and a job
records the name and version it ran with. Deprecating a template refuses new jobs from it and keeps
everything readable.

The SERRANO services are the built-in template ``serrano``: listed and readable here, rendered by the
same :func:`hpc.schedulers.template.render`, submitted through the legacy ``services`` + ``params``
request (:mod:`hpc.schedulers.serrano` derives its values).
"""

from __future__ import annotations

import functools
import json
import logging
from datetime import datetime, timezone
from typing import Any

import referencing
from jsonschema import Draft202012Validator, SchemaError
from referencing.exceptions import Unresolvable

from hpc.errors import Conflict, Forbidden, InvalidInput, NotFound
from hpc.schedulers import serrano
from hpc.schedulers.template import (
    TemplateSyntaxError,
    TemplateValueError,
    placeholder_names,
    render,
    scan,
)
from hpc.security import Principal
from hpc.services.jobs import resources_of
from hpc.store import DuplicateKey, Store
from hpc.store.tables import utcnow
from hpc.validation_messages import describe, field_of

log = logging.getLogger(__name__)

SCHEMA_MAX_BYTES = 64 * 1024
SCHEMA_MAX_DEPTH = 16
PAYLOAD_MAX_BYTES = 1024 * 1024  # the rendered payload, as a script job's is bounded by the contract
RENDERABLE_TYPES = frozenset({"string", "integer", "number", "boolean", "array"})
_SCALAR_TYPES = RENDERABLE_TYPES - {"array"}
# What may stand where bash evaluates a word as arithmetic or code: its rendering is a plain number or
# true/false, never text a shell could run.
_INERT_TYPES = frozenset({"integer", "number", "boolean"})
DRAFT = "https://json-schema.org/draft/2020-12/schema"
# Keywords that name or move a schema's base URI, or refer by anchor: refused, so that every reference is
# a JSON pointer into the one document (checked to resolve) and no URI is ever looked up.
_REFUSED_KEYWORDS = ("$id", "$anchor", "$dynamicAnchor", "$dynamicRef", "$recursiveRef", "$recursiveAnchor")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# No registry entry is ever fetched: a reference outside the schema (refused at registration) could
# otherwise make jsonschema retrieve a URL.
_NO_RETRIEVAL = referencing.Registry()


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (the request guard bounds it at 32 anyway)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _pointer_target(schema: Any, reference: str) -> bool:
    """Whether ``#/a/b`` (RFC 6901, percent-encoding aside) names a value inside ``schema``."""
    node = schema
    for token in reference[2:].split("/") if reference != "#" else ():
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False
    return True


def _reference_problem(schema: Any) -> tuple[str, str] | None:
    """``(path, why)`` of the first reference that is not a JSON pointer resolving inside ``schema``."""
    stack: list[tuple[list[str], Any]] = [([], schema)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if key in _REFUSED_KEYWORDS:
                    return ".".join(path + [key]), f"{key} is not supported: refer with $ref '#/...' only"
                if key == "$ref":
                    if not (isinstance(child, str) and (child == "#" or child.startswith("#/"))):
                        return ".".join(path + [key]), "only references inside the schema ('#/...') are allowed"
                    if not _pointer_target(schema, child):
                        return ".".join(path + [key]), "the reference names nothing in the schema"
                stack.append((path + [key], child))
        elif isinstance(item, list):
            stack.extend((path + [str(i)], child) for i, child in enumerate(item))
    return None


@functools.lru_cache(maxsize=64)
def _placeholders(body: str) -> tuple:
    """:func:`scan` of a stored body (versions never change: each is read once per process, not per job)."""
    return tuple(scan(body))


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, registry=_NO_RETRIEVAL, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _errors(schema: dict[str, Any], instance: Any) -> list:
    """Every violation of ``schema`` by ``instance``, in path order."""
    try:
        errors = list(_validator(schema).iter_errors(instance))
    except Unresolvable:  # refused at registration (_reference_problem); kept so it can never be a 500
        raise InvalidInput("parameters: the schema has a reference that names nothing in it", "parameters") from None
    return sorted(errors, key=lambda e: list(map(str, e.absolute_path)))


def check_schema(schema: dict[str, Any]) -> None:
    """Refuses a parameters schema that is not a bounded, self-contained JSON Schema of an object.

    Raises:
        InvalidInput: naming ``parameters`` or the path inside it.
    """
    size = len(json.dumps(schema))
    if size > SCHEMA_MAX_BYTES:
        raise InvalidInput(f"parameters: the schema is {size} bytes as JSON, more than {SCHEMA_MAX_BYTES}",
                           "parameters")
    if _depth(schema) > SCHEMA_MAX_DEPTH:
        raise InvalidInput(f"parameters: the schema nests deeper than {SCHEMA_MAX_DEPTH} levels", "parameters")
    if schema.get("$schema", DRAFT) != DRAFT:
        raise InvalidInput(f"parameters.$schema: parameter schemas are JSON Schema draft 2020-12 ({DRAFT})",
                           "parameters.$schema")
    reference = _reference_problem(schema)
    if reference:
        where, why = reference
        raise InvalidInput(f"parameters.{where}: {why}", f"parameters.{where}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = ".".join(["parameters", *map(str, exc.absolute_path)])
        raise InvalidInput(f"{where}: not a valid JSON Schema: {exc.message[:300]}", where) from None
    if schema.get("type") != "object":
        raise InvalidInput("parameters.type: the parameters schema must describe an object (type: object)",
                           "parameters.type")


def _property_types(prop: Any) -> set[str]:
    declared = prop.get("type") if isinstance(prop, dict) else None
    return set(declared if isinstance(declared, list) else [declared] if declared else [])


def check_template(body: str, schema: dict[str, Any]) -> list[str]:
    """Checks a template's body against its parameters schema; returns the placeholder names in order.

    Raises:
        InvalidInput: The schema is refused (:func:`check_schema`), the body is no template
            (``body``), a placeholder has no parameter or one of a type no script can hold, an array
            parameter stands inside a word, or a default breaks the schema.
    """
    check_schema(schema)
    try:
        placeholders = scan(body)
    except TemplateSyntaxError as exc:
        raise InvalidInput(f"body: {exc}", "body") from None
    properties = schema.get("properties") or {}
    for ph in placeholders:
        prop = properties.get(ph.name)
        if prop is None:
            raise InvalidInput(f"body: line {ph.line}: placeholder {{{{{ph.name}}}}} has no parameter in the "
                               f"schema (parameters.properties.{ph.name})", "body")
        types = _property_types(prop)
        if not types or not types <= RENDERABLE_TYPES:
            raise InvalidInput(f"parameters.properties.{ph.name}.type: a parameter used in the body must declare "
                               f"a type among {', '.join(sorted(RENDERABLE_TYPES))}",
                               f"parameters.properties.{ph.name}.type")
        items = _property_types(prop.get("items")) if "array" in types else set()
        if "array" in types:
            if not items or not items <= _SCALAR_TYPES:
                raise InvalidInput(f"parameters.properties.{ph.name}.items.type: an array parameter's items must "
                                   f"declare a type among {', '.join(sorted(_SCALAR_TYPES))}",
                                   f"parameters.properties.{ph.name}.items.type")
            if not ph.whole_word:
                raise InvalidInput(f"body: line {ph.line}: array parameter {{{{{ph.name}}}}} must stand as a whole "
                                   "word (each item becomes one word)", "body")
        if ph.evaluated and not ((types - {"array"}) | items) <= _INERT_TYPES:
            raise InvalidInput(f"body: line {ph.line}: {{{{{ph.name}}}}} stands where bash runs the word as code "
                               f"({ph.evaluated}), so a quoted string is not data there; only a parameter of type "
                               "integer, number or boolean may stand there", "body")
    defaults = {name: prop["default"] for name, prop in properties.items() if isinstance(prop, dict)
                and "default" in prop}
    for error in _errors(schema, defaults):
        path = list(error.absolute_path)
        if path and path[0] in defaults:
            field = f"parameters.properties.{path[0]}.default"
            raise InvalidInput(f"{field}: the default {describe(error, 'the schema')}", field)
    return list(dict.fromkeys(ph.name for ph in placeholders))


def render_parameters(body: str, schema: dict[str, Any], parameters: dict[str, Any]) -> str:
    """The payload of a job: ``parameters`` checked against the schema, defaults filled, body rendered.

    Raises:
        InvalidInput: naming ``parameters.<name>`` (the detail never quotes the value).
    """
    values = dict(parameters)
    for name, prop in (schema.get("properties") or {}).items():
        if isinstance(prop, dict) and "default" in prop and name not in values:
            values[name] = prop["default"]
    errors = _errors(schema, values)
    if errors:
        field = ".".join(["parameters", *filter(None, [field_of(errors[0])])])
        raise InvalidInput(f"{field}: {describe(errors[0], 'the template')}", field)
    try:
        payload = render(body, values, _placeholders(body))
    except TemplateSyntaxError as exc:  # registered under other rules: a new version must fix it
        raise Conflict(f"the template no longer passes the checks ({exc}): add a fixed version", "template") from None
    except TemplateValueError as exc:
        raise InvalidInput(f"parameters.{exc.name}: {exc}", f"parameters.{exc.name}") from None
    size = len(payload.encode())
    if size > PAYLOAD_MAX_BYTES:
        raise InvalidInput(f"parameters: the rendered script would be {size} bytes, more than {PAYLOAD_MAX_BYTES}",
                           "parameters")
    return payload


def _builtin() -> dict[str, Any]:
    """The built-in SERRANO template as a stored version would read."""
    return {"name": serrano.NAME, "version": 1, "description": serrano.DESCRIPTION, "body": serrano.TEMPLATE_BODY,
            "parameters": serrano.PARAMETERS_SCHEMA, "resources": {}, "owner": "hpc-gateway",
            "created_at": _EPOCH, "deprecated_at": None, "builtin": True}


class TemplateService:
    """Job templates: register, add versions, read, deprecate; render a job's payload."""

    def __init__(self, store: Store):
        self.store = store

    # -- writing ------------------------------------------------------------------------------

    def register(self, request: Any, principal: Principal) -> dict[str, Any]:
        """Version 1 of a new template (admin). ``request``: an ``hpc.api.models.TemplateRequest``."""
        self._require_admin(principal)
        if request.name == serrano.NAME or self.store.templates.get(request.name) is not None:
            raise Conflict(f"a template named {request.name!r} exists already: add a version with "
                           f"POST /template/{request.name}/versions", "name")
        return self._write(request.name, 1, request, principal)

    def add_version(self, name: str, request: Any, principal: Principal) -> dict[str, Any]:
        """The next version of a template (admin). ``request``: an ``hpc.api.models.TemplateVersionRequest``."""
        self._require_admin(principal)
        if name == serrano.NAME:
            raise Conflict("the built-in serrano template cannot be changed", "template_name")
        latest = self.store.templates.get(name)
        if latest is None:
            raise NotFound(f"no template named {name!r}", "template_name")
        return self._write(name, latest["version"] + 1, request, principal)

    def _write(self, name: str, version: int, request: Any, principal: Principal) -> dict[str, Any]:
        schema = request.parameters if request.parameters is not None else {"type": "object", "properties": {}}
        check_template(request.body, schema)
        resources = request.resources.model_dump(mode="json", exclude_none=True) if request.resources else {}
        resources_of(resources)
        try:
            row = self.store.templates.insert({
                "name": name, "version": version, "description": request.description or "", "body": request.body,
                "parameters": schema, "resources": resources, "owner": principal.name, "created_at": utcnow(),
                "deprecated_at": None,
            })
        except DuplicateKey:
            raise Conflict(f"template {name!r} version {version} was just written by another request: retry",
                           "template_name") from None
        log.info("template %s version %d registered by %s", name, version, principal.name)
        # Audit seam: record ("template.version", name, version, principal) once an audit log exists.
        return self._shown(row, version)

    def deprecate(self, name: str, principal: Principal) -> None:
        """Refuses new jobs from the template from now on (admin); idempotent."""
        self._require_admin(principal)
        if name == serrano.NAME:
            raise Conflict("the built-in serrano template cannot be deprecated", "template_name")
        if not self.store.templates.deprecate(name, utcnow()):
            raise NotFound(f"no template named {name!r}", "template_name")
        log.info("template %s deprecated by %s", name, principal.name)

    # -- reading ------------------------------------------------------------------------------

    def get(self, name: str, version: int | None = None) -> dict[str, Any]:
        """One version (default the newest), with ``latest_version`` and ``placeholders``."""
        if name == serrano.NAME:
            if version not in (None, 1):
                raise NotFound("the built-in serrano template has only version 1", "version")
            return self._shown(_builtin(), 1)
        latest = self.store.templates.get(name)
        if latest is None:
            raise NotFound(f"no template named {name!r}", "template_name")
        row = latest if version is None else self.store.templates.get(name, version)
        if row is None:
            raise NotFound(f"template {name!r} has no version {version}", "version")
        return self._shown(row, latest["version"])

    def list(self, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """The newest version of every template by name, the built-in one first."""
        rows, total = self.store.templates.latest(limit, max(0, offset - 1))  # the built-in one is number 0
        if offset == 0:
            rows = [_builtin(), *rows][:limit]
        return [self._shown(row, row["version"]) for row in rows], total + 1

    def versions(self, name: str, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        if name == serrano.NAME:
            return ([self._shown(_builtin(), 1)] if offset == 0 else []), 1
        rows, total = self.store.templates.versions(name, limit, offset)
        if total == 0:
            raise NotFound(f"no template named {name!r}", "template_name")
        latest = self.store.templates.get(name)["version"]
        return [self._shown(row, latest) for row in rows], total

    # -- jobs ---------------------------------------------------------------------------------

    def payload(self, name: str, version: int | None, parameters: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The template version a job runs and its rendered payload.

        Raises:
            InvalidInput: ``template`` is the built-in one (submitted with ``services``), or a parameter
                is refused (``parameters.<name>``).
            NotFound: No such template or version (``template``, ``template_version``).
            Conflict: The template is deprecated.
        """
        if name == serrano.NAME:
            raise InvalidInput("the built-in serrano template runs from services and params, not from template",
                               "template")
        row = self.store.templates.get(name, version)
        if row is None:
            if version is not None and self.store.templates.get(name) is not None:
                raise NotFound(f"template {name!r} has no version {version}", "template_version")
            raise NotFound(f"no template named {name!r}", "template")
        if row["deprecated_at"] is not None:
            raise Conflict(f"template {name!r} is deprecated: no new jobs run from it", "template")
        return row, render_parameters(row["body"], row["parameters"], parameters)

    # -- shared -------------------------------------------------------------------------------

    @staticmethod
    def _shown(row: dict[str, Any], latest_version: int) -> dict[str, Any]:
        shown = dict(row, latest_version=latest_version)
        shown.setdefault("builtin", False)
        shown["placeholders"] = placeholder_names(row["body"])
        return shown

    @staticmethod
    def _require_admin(principal: Principal) -> None:
        if not principal.is_admin:
            raise Forbidden("managing job templates requires the admin role")

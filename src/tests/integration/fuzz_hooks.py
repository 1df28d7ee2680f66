"""Schemathesis hooks for the API fuzzing test (loaded through ``SCHEMATHESIS_HOOKS``).

They keep the generated requests local and let some reach the deep paths:

- a body's ``infrastructure`` is often swapped for a registered name (``tb-slurm``, ``tb-pbs``), so job
  and transfer creation gets past the lookup to its own checks;
- every address a request would make the gateway resolve or connect to is an IP literal on this box or
  a link-local one (refused before any connection): registration and PATCH hosts, HTTP sources, S3
  endpoints (a job's inputs and outputs too). No fuzzed host name ever reaches DNS;
- ``GET /events`` reads the stored events and ends (``follow=false`` where the case left it out or
  valid): a followed stream never ends, and Schemathesis reads each one for the whole request timeout
  (60 s a case, once the stream's schema lets its events pass).

The choices depend on the generated value only (no randomness of their own), so a seed reproduces a run.
"""

from __future__ import annotations

import schemathesis

REGISTERED = ("tb-slurm", "tb-pbs")
HOSTS = ("127.0.0.1", "169.254.169.254", "::1")


def _pick(value, choices):
    """One of ``choices`` or ``None`` (keep the generated value), chosen by the value itself."""
    index = len(repr(value)) % (len(choices) + 1)
    return choices[index] if index < len(choices) else None


def _valid_string(body: dict, key: str, longest: int) -> bool:
    """Whether ``body[key]`` is a string the contract accepts: only those are swapped, so a request
    generated to break the contract (negative mode) stays broken."""
    value = body.get(key)
    return isinstance(value, str) and 1 <= len(value) <= longest


@schemathesis.hook
def map_body(context, body):
    if not isinstance(body, dict):
        return body
    path = context.operation.path
    if _valid_string(body, "infrastructure", 128):
        body["infrastructure"] = _pick(body, REGISTERED) or body["infrastructure"]
    if path in ("/infrastructure", "/infrastructure/{infrastructure_name}") and _valid_string(body, "host", 255):
        body["host"] = HOSTS[len(repr(body)) % len(HOSTS)]
    if path == "/data" and _valid_string(body, "src", 8192):
        body["src"] = "http://127.0.0.1:8081/hello.txt" if len(repr(body)) % 2 else "http://169.254.169.254/x"
    if path in ("/s3_data", "/s3_result") and _valid_string(body, "endpoint", 2048):
        body["endpoint"] = "http://127.0.0.1:9000" if len(repr(body)) % 2 else "http://169.254.169.254"
    if path in ("/job", "/job/dry_run"):  # a job's inputs and outputs: HTTP sources and S3 endpoints
        for item in [i for key in ("inputs", "outputs") if isinstance(body.get(key), list) for i in body[key]]:
            if isinstance(item, dict) and _valid_string(item, "url", 8192):
                item["url"] = "http://127.0.0.1:8081/hello.txt" if len(repr(item)) % 2 else "http://169.254.169.254/x"
            s3 = item.get("s3") if isinstance(item, dict) else None
            if isinstance(s3, dict) and _valid_string(s3, "endpoint", 2048):
                s3["endpoint"] = "http://127.0.0.1:9000" if len(repr(item)) % 2 else "http://169.254.169.254"
    return body


@schemathesis.hook
def map_path_parameters(context, path_parameters):
    if not isinstance(path_parameters, dict):
        return path_parameters
    name = path_parameters.get("infrastructure_name")
    if isinstance(name, str) and 1 <= len(name) <= 128 and context.operation.method.upper() == "GET":
        path_parameters["infrastructure_name"] = _pick(path_parameters, REGISTERED) or name
    return path_parameters


@schemathesis.hook
def map_query(context, query):
    if context.operation.path != "/events" or not (query is None or isinstance(query, dict)):
        return query
    query = dict(query or {})
    if query.get("follow", True) in (True, "true", "1"):
        query["follow"] = "false"
    return query

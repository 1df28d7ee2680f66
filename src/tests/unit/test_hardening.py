"""Pure parts of the hardening (issue 10): the request guard, value-free validation messages, the checks
made at registration, the job output cut at UTF-8 boundaries, SFTP error classification by errno, the
one definition of "ended", PBS telemetry of a ``mixed`` node, and the command line's own refusals.

The live behaviour (a real gateway, the testbed) is in tests/integration/test_hostile_requests.py and
test_job_hardening.py.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import logging

import pytest
from click.testing import CliRunner
from jsonschema import Draft4Validator

from hpc import cli
from hpc.api.app import load_spec
from hpc.api.guard import MAX_DEPTH, RequestGuard, json_depth_exceeds, routes_of
from hpc.api.run import LOG_MESSAGE_LIMIT, BoundedMessages
from hpc.api.validation import describe, field_of, nul_field, parse_date_time
from hpc.client.api import Client
from hpc.client.display import TransferDisplay, _MarkColumn
from hpc.client.records import JOB_FINAL_STATES
from hpc.errors import InvalidInput
from hpc.schedulers import ENDED_STATES, JobState, get_scheduler
from hpc.security import hash_token
from hpc.config import TokenEntry
from hpc.services import jobs as job_service
from hpc.services.infrastructures import check_host_name, check_settings
from hpc.services.jobs import job_dir_failure, whole_characters
from hpc.states import JOB_ENDED_STATES, job_has_ended
from tests.unit.test_schedulers import parse

CANARY = "canary-Zq8v-secret-value"


# -- validation messages ------------------------------------------------------------------------------

@pytest.mark.parametrize("schema, value, expected", [
    ({"type": "string"}, [CANARY], "must be a string, not an array"),
    ({"type": "object"}, CANARY, "must be an object, not a string"),
    ({"type": "string", "maxLength": 3}, CANARY, "must be at most 3 characters long"),
    ({"type": "string", "enum": ["a", "b"]}, CANARY, "must be one of: a, b"),
    ({"type": "string", "pattern": "^x$"}, CANARY, "must match the pattern ^x$"),
    ({"type": "integer", "maximum": 5}, 10**30, "must be at most 5"),
])
def test_messages_name_the_rule_and_never_quote_the_value(schema, value, expected):
    error = next(Draft4Validator(schema).iter_errors(value))
    assert describe(error) == expected
    assert CANARY not in describe(error)


def test_a_missing_property_is_named_with_its_path():
    schema = {"type": "object", "properties": {"ssh_key": {"type": "object", "required": ["path"]}}}
    error = next(Draft4Validator(schema).iter_errors({"ssh_key": {"password": CANARY}}))
    assert (field_of(error), describe(error)) == ("ssh_key.path", "path is required")


def test_the_contract_marks_every_secret_write_only():
    spec = load_spec(True)
    schemas = spec["components"]["schemas"]
    assert schemas["SSHKey"]["properties"]["password"]["writeOnly"] is True
    assert schemas["SSHKey"]["properties"]["private_key"]["writeOnly"] is True
    for name in ("S3FileTransferRequest", "S3ResultTransferRequest"):
        assert schemas[name]["properties"]["secret_key"]["writeOnly"] is True
        assert schemas[name]["properties"]["access_key"]["writeOnly"] is True


def test_nul_characters_are_found_wherever_they_are():
    assert nul_field({"command": ["ls", "a\x00b"]}) == "command.1"
    assert nul_field({"params": {"read_input_data": "/x", "exe": "a\x00"}}) == "params.exe"
    assert nul_field({"env": {"A\x00B": "x"}}) == "env.A\\0B"
    assert nul_field({"script": "echo fine", "list": [1, None, True]}) is None
    deep = current = []
    for _ in range(5000):  # deeper than Python's recursion limit: the walk is iterative
        current.append([])
        current = current[0]
    assert nul_field(deep) is None


def test_dates_that_overflow_once_in_utc_are_refused():
    with pytest.raises(ValueError, match="out of range"):
        parse_date_time("9999-12-31T23:59:59-14:00")
    with pytest.raises(ValueError, match="time zone"):
        parse_date_time("2026-01-01T00:00:00")
    assert parse_date_time("2026-01-01T02:00:00+02:00").isoformat() == "2026-01-01T00:00:00+00:00"


# -- JSON depth -----------------------------------------------------------------------------------------

def test_depth_at_the_limit_passes_and_one_more_fails():
    assert json_depth_exceeds(b"[1, 2") is False  # malformed, not deep: the parser says what is wrong
    assert json_depth_exceeds(b"[" * 1000) is True  # malformed and deep: the parser would recurse
    assert json_depth_exceeds(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is False
    assert json_depth_exceeds(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)) is True
    assert json_depth_exceeds(b'{"a":' * 1500 + b"1" + b"}" * 1500) is True


def test_brackets_in_strings_do_not_count():
    assert json_depth_exceeds(json.dumps({"script": "[" * 5000 + '\\"' + "{" * 5000}).encode()) is False


def test_deep_nesting_behind_many_shallow_siblings_is_found():
    shallow = b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)
    body = b"[" + b",".join([shallow] * 2000) + b"," + b"[" * 1000 + b"]" * 1000 + b"]"
    assert json_depth_exceeds(body) is True
    assert json_depth_exceeds(b"[" + b",".join([shallow] * 2000) + b"]") is False


# -- the guard, as ASGI ---------------------------------------------------------------------------------

TOKEN = "tok-unit"
SPEC = load_spec(True)


def run_guard(method: str, path: str, chunks=(b"",), headers=(), token: str | None = TOKEN, limit=4000):
    """Runs one request through the guard; returns (status, headers, body, what the inner app saw)."""
    seen = {}

    async def inner(scope, receive, send):
        message = await receive()
        seen.update(body=message.get("body", b""), headers=dict(scope["headers"]))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = RequestGuard(inner, SPEC, max_body_size=limit, auth_enabled=True,
                         tokens=(TokenEntry("unit", "admin", hash_token(TOKEN)),))
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    read = []

    async def receive():
        read.append(1)
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent = []

    async def send(message):
        sent.append(message)

    all_headers = list(headers) + ([(b"authorization", f"Bearer {token}".encode())] if token else [])
    scope = {"type": "http", "method": method, "path": path, "headers": all_headers, "query_string": b""}
    asyncio.run(guard(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:]), seen, len(read)


def test_content_length_over_the_limit_is_413_before_a_byte_is_read():
    status, _, body, seen, reads = run_guard("POST", "/job", [b"x" * 10], [(b"content-length", b"5000")])
    assert (status, reads, seen) == (413, 0, {})
    assert json.loads(body)["status"] == 413


def test_a_chunked_body_is_counted_as_it_streams():
    status, _, _, seen, reads = run_guard("POST", "/job", [b"x" * 1600] * 10, [(b"transfer-encoding", b"chunked")])
    assert (status, reads, seen) == (413, 3, {})  # stopped at the third chunk, the rest never read


def test_a_good_body_reaches_connexion_whole_with_its_length():
    chunks = [b'{"infrastructure":', b' "tb-slurm"}']
    status, _, _, seen, _ = run_guard("POST", "/job", chunks, [(b"transfer-encoding", b"chunked")])
    assert status == 299
    assert seen["body"] == b"".join(chunks)
    assert seen["headers"][b"content-length"] == str(len(b"".join(chunks))).encode()
    assert b"transfer-encoding" not in seen["headers"]


@pytest.mark.parametrize("body, detail", [
    (b'{"infrastructure": "\xff"}', "not valid UTF-8"),
    (b"[" * 900 + b"]" * 900, "deeper than"),
])
def test_bad_bodies_are_400_and_401_without_a_token(body, detail):
    status, headers, text, seen, _ = run_guard("POST", "/job", [body])
    assert (status, seen) == (400, {})
    assert detail in json.loads(text)["detail"]
    status, headers, _, _, _ = run_guard("POST", "/job", [body], token=None)
    assert (status, headers[b"www-authenticate"]) == (401, b"Bearer")


def test_control_characters_in_path_parameters_name_the_parameter():
    status, _, text, _, _ = run_guard("GET", "/job/a\nb")
    assert (status, json.loads(text)["field"]) == (400, "job_id")
    status, _, text, _, _ = run_guard("DELETE", "/infrastructure/x\x00")
    assert (status, json.loads(text)["field"]) == (400, "infrastructure_name")
    assert run_guard("GET", "/job/a\nb/output", token=None)[0] == 401
    assert run_guard("GET", "/job/a\nb/output", token="wrong")[0] == 401


def test_405_carries_the_methods_of_the_path():
    status, headers, _, _, _ = run_guard("PUT", "/job")
    assert (status, headers[b"allow"]) == (405, b"GET, HEAD, POST")
    status, headers, _, _, _ = run_guard("POST", "/infrastructure/tb-slurm")
    assert (status, headers[b"allow"]) == (405, b"DELETE, GET, HEAD, PATCH")
    assert run_guard("HEAD", "/job")[0] == 299


def test_every_contract_path_is_routed_and_only_health_is_open():
    routes = routes_of(SPEC)
    assert len(routes) == len(SPEC["paths"])
    open_ = [r.pattern.pattern for r in routes if not r.secured]
    assert open_ == ["/health", "/health/live", "/health/ready"]


# -- registration checks -------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, field", [
    ({"mpi_launcher": "mpirun -n '{num_mpi_procs}"}, "settings.mpi_launcher"),
    ({"mpi_launcher": "mpirun\x00 -n 2"}, "settings.mpi_launcher"),
    ({"mpi_launcher": "mpirun\n-n 2"}, "settings.mpi_launcher"),
    ({"job_root": "jobs\nrm -rf ~"}, "settings.job_root"),
    ({"job_root": "jobs\x00x"}, "settings.job_root"),
    ({"allowed_roots": ["ok", "bad\tone"]}, "settings.allowed_roots.1"),
])
def test_settings_that_would_break_every_job_are_refused(settings, field):
    with pytest.raises(InvalidInput) as caught:
        check_settings(settings)
    assert caught.value.field == field


def test_good_settings_pass():
    check_settings({"mpi_launcher": "srun --mpi=pmix -n {num_mpi_procs}", "job_root": "/scratch/$USER/jobs",
                    "allowed_roots": ["/scratch", "data"]})


@pytest.mark.parametrize("host", ["a..b", "-x.org", "x" * 64 + ".org", "a b", "host\x00.org", ".", "é..x"])
def test_malformed_host_names_are_refused_before_any_lookup(host):
    with pytest.raises(InvalidInput) as caught:
        check_host_name(host)
    assert caught.value.field == "host"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "login.example.org", "bücher.example", "node-1"])
def test_good_host_names_pass(host):
    assert check_host_name(host) == host


# -- jobs ------------------------------------------------------------------------------------------------

TEXT = "h€llo 𝄞 done\n".encode()


@pytest.mark.parametrize("length", range(1, 12))
def test_output_read_in_any_slices_rebuilds_the_text_without_a_broken_character(length):
    offset, pieces = 0, []
    while offset < len(TEXT):
        chunk = TEXT[offset:offset + length + 3]
        data, eof = whole_characters(chunk, length, offset + len(chunk) >= len(TEXT), final=False)
        data.decode("utf-8")  # whole characters only: strict decoding never fails
        assert data
        pieces.append(data)
        offset += len(data)
    assert b"".join(pieces) == TEXT
    assert eof is True


def test_a_character_still_being_written_waits_then_comes_whole_or_replaced():
    partial = "€".encode()[:2]
    assert whole_characters(b"ab" + partial, 10, True, final=False) == (b"ab", True)
    assert whole_characters(partial, 10, True, final=False) == (b"", True)
    assert whole_characters(partial, 10, True, final=True) == (partial, True)  # the job ended: as it is


def test_invalid_bytes_are_not_mistaken_for_a_cut_character():
    assert whole_characters(b"abc\xff", 10, True, final=False) == (b"abc\xff", True)


@pytest.mark.parametrize("exc, permanent", [
    (NotADirectoryError(errno.ENOTDIR, "not a directory", "/home/u/file"), True),
    (OSError(errno.ENOENT, "Datei nicht gefunden"), True),  # the cluster's locale does not matter
    (PermissionError(errno.EACCES, "Permiso denegado"), True),
    (OSError("Failure"), False),  # SSH_FX_FAILURE: no errno, may pass
    (EOFError(), False),  # the connection dropped
    (OSError(errno.ECONNRESET, "reset"), False),
])
def test_job_directory_errors_are_classified_by_errno(exc, permanent):
    reason = job_dir_failure(exc, "/home/u/file/jobs/1")
    assert (reason is not None) is permanent
    if permanent:
        assert "job_root" in reason


def test_one_definition_of_ended_everywhere():
    assert "unknown" in JOB_ENDED_STATES
    assert JOB_FINAL_STATES == JOB_ENDED_STATES
    assert {s.value for s in ENDED_STATES} == JOB_ENDED_STATES
    assert job_service.ENDED == JOB_ENDED_STATES
    assert job_has_ended(JobState.UNKNOWN) and job_has_ended("timeout") and not job_has_ended("running")


def test_following_a_job_that_ended_unknown_returns():
    class Fake(Client):
        def __init__(self):
            super().__init__("http://127.0.0.1:9", "t")
            self.reads = 0

        def job_output(self, job_id, stream="stdout", offset=0, length=None):
            self.reads += 1
            assert self.reads < 10
            return {"data": "", "next_offset": offset, "eof": True, "job_state": "unknown"}

    assert list(Fake().follow_job_output("j", poll=0.01, timeout=5)) == []


def test_pbs_counts_the_idle_cpu_of_a_mixed_node():
    sched, _, result = parse("pbs", "telemetry_mixed")
    (debug,) = sched.parse_telemetry(*result)
    slurm = get_scheduler("slurm")
    assert (debug.total_cpus, debug.avail_cpus, debug.running_jobs) == (2, 1, 1)
    assert slurm.name == "slurm"


# -- command line and displays ---------------------------------------------------------------------------

@pytest.mark.parametrize("walltime", ["5", "1:00", "00:60:00", "tomorrow", "1-2-03:00:00"])
def test_a_malformed_walltime_is_refused_by_the_cli_itself(walltime):
    result = CliRunner().invoke(cli.cli, ["job", "submit", "-i", "x", "--url", "http://127.0.0.1:9",
                                          "--walltime", walltime, "--", "true"])
    assert result.exit_code == 2
    assert "walltime" in result.output


def test_a_verifying_transfer_shows_no_cross():
    display = TransferDisplay(io.StringIO(), live=True)
    with display:
        display.update({"id": "t", "status": "transferring", "state": "verifying", "bytes_done": 10,
                        "bytes_total": 10, "dst": "x"})
        task = display.progress.tasks[0]
        assert task.finished is True  # rich: every byte counted
        assert "✘" not in _MarkColumn().render(task).plain
        display.update({"id": "t", "status": "failure", "state": "failed", "bytes_done": 10, "bytes_total": 10,
                        "dst": "x", "reason": "checksum mismatch"})
        assert _MarkColumn().render(display.progress.tasks[0]).plain == "✘"


def test_log_messages_are_bounded():
    record = logging.LogRecord("connexion", logging.INFO, __file__, 1, "Validation error: %s", ("x" * 10**6,), None)
    BoundedMessages().filter(record)
    assert len(record.getMessage()) < LOG_MESSAGE_LIMIT + 100

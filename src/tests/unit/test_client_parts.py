"""Pure parts of the client and the command line: errors, waiting loops, display lines, option parsing.

Talking to a gateway is covered by the integration tests (tests/integration/test_cli*.py); here only what
needs no gateway: how problems become exceptions, how waits end, what the displays print, how options
parse, and that the command line's usage errors exit 2 before anything is sent.
"""

from __future__ import annotations

import io
import re
import time

import click
import pytest

from hpc import cli
from hpc.client import errors
from hpc.client.api import Client, job_done, job_succeeded, transfer_done, transfer_succeeded
from hpc.client.display import JobDisplay, TransferDisplay, human_seconds, job_line, transfer_line


@pytest.mark.parametrize("status, cls", [
    (400, errors.BadRequest), (401, errors.Unauthorized), (403, errors.Forbidden), (404, errors.NotFound),
    (409, errors.Conflict), (422, errors.ClusterRefused), (502, errors.ServerError), (504, errors.ServerError),
    (418, errors.ApiError),
])
def test_problems_become_exceptions_by_status(status, cls):
    error = errors.api_error(status, {"title": "T", "detail": "what went wrong", "field": "resources.walltime"})
    assert type(error) is cls
    assert (error.status, error.title, error.detail, error.field) == (status, "T", "what went wrong",
                                                                      "resources.walltime")
    assert str(error) == f"{status} T: what went wrong (field: resources.walltime)"


def test_unreachable_gateway_names_the_reason():
    cause = ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded "
                            "(Caused by NewConnectionError(\"...: [Errno 111] Connection refused\"))")
    assert str(errors.GatewayUnreachable("http://127.0.0.1:9", cause)) == \
        "cannot reach the gateway at http://127.0.0.1:9: [Errno 111] Connection refused"


def test_old_status_decides_the_end_and_state_the_outcome():
    failed = {"status": "completed", "state": "failed", "exit_code": 3}
    assert (job_done(failed), job_succeeded(failed)) == (True, False)
    assert job_done({"status": "running", "state": "running"}) is False
    assert job_succeeded({"status": "completed"}) is True
    assert (transfer_done({"status": "transferring", "state": "verifying"}),
            transfer_done({"status": "failure", "state": "failed"})) == (False, True)
    assert (transfer_succeeded({"status": "completed", "state": "completed"}),
            transfer_succeeded({"status": "failure", "state": "cancelled"})) == (True, False)


def test_wait_loop_rides_out_a_restart_and_times_out():
    client = Client("http://127.0.0.1:9", "t")
    answers = iter([{"status": "queued"}, errors.GatewayUnreachable("u", OSError("down")),
                    errors.api_error(502, {"title": "Bad Gateway"}), {"status": "completed", "state": "failed"}])

    def read():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    seen = []
    final = client._wait(read, job_done, "job x", timeout=10, poll=0.01, on_update=seen.append)
    assert (final, len(seen)) == ({"status": "completed", "state": "failed"}, 2)

    with pytest.raises(errors.NotFound):  # not transient: raised at once
        client._wait(lambda: (_ for _ in ()).throw(errors.api_error(404, {})), job_done, "job x", 10, 0.01, None)
    with pytest.raises(errors.GatewayUnreachable):  # the very first read: the caller's to see
        client._wait(lambda: (_ for _ in ()).throw(errors.GatewayUnreachable("u", OSError())), job_done, "job x",
                     10, 0.01, None)
    start = time.monotonic()
    with pytest.raises(errors.WaitTimeout) as caught:
        client._wait(lambda: {"status": "running", "state": "running"}, job_done, "job x", 0.2, 0.05, None)
    assert (caught.value.last["state"], time.monotonic() - start < 2) == ("running", True)
    assert str(caught.value) == "job x still running after 0.2 s"


def test_job_and_transfer_lines():
    job = {"id": "1712f460-57fd-47db-a34a-c415b3596883", "infrastructure": "tb-pbs", "status": "completed",
           "state": "failed", "native_state": "F", "scheduler_id": "42", "exit_code": 3, "reason": "exited with code 3"}
    assert job_line(job) == "job 1712f460 on tb-pbs: failed (F), scheduler id 42, exit code 3: exited with code 3"
    moving = {"id": "e947bf07-8a08", "status": "transferring", "state": "transferring", "bytes_done": 12_500_000,
              "bytes_total": 50_000_000, "percent": 25.0, "rate": 5_000_000, "eta": 7.5}
    assert transfer_line(moving) == "transfer e947bf07 transferring: 12.5 MB of 50.0 MB (25 %), 5.0 MB/s, 0:08 left"
    failed = {"id": "e947bf07", "status": "failure", "state": "failed", "bytes_done": 0, "reason": "HTTP 404"}
    assert transfer_line(failed) == "transfer e947bf07 failed: 0 bytes: HTTP 404"
    assert (human_seconds(3725), human_seconds(None)) == ("1:02:05", "")


def test_plain_progress_prints_changes_not_every_poll():
    stream = io.StringIO()
    display = TransferDisplay(stream, live=False)
    with display:
        record = {"id": "abc", "status": "transferring", "state": "queued", "bytes_done": 0}
        display.update(record)
        display.update(record)  # nothing new
        display.update({**record, "state": "transferring", "bytes_done": 10, "bytes_total": 100})
        display.update({**record, "state": "transferring", "bytes_done": 20, "bytes_total": 100})  # < 5 s later
        display.update({**record, "status": "completed", "state": "completed", "bytes_done": 100,
                        "bytes_total": 100})
    assert stream.getvalue().splitlines() == [
        "transfer abc queued: 0 bytes",
        "transfer abc transferring: 10 bytes of 100 bytes",
        "transfer abc completed: 100 bytes of 100 bytes",
    ]


def test_live_display_draws_a_bar_with_the_gateways_numbers(monkeypatch):
    monkeypatch.setenv("COLUMNS", "150")
    stream = io.StringIO()
    with TransferDisplay(stream, live=True) as display:
        display.update({"id": "abc", "kind": "s3_data", "bucket": "b", "object": "big.bin", "dst": "data/big.bin",
                        "status": "transferring", "state": "transferring", "bytes_done": 25_000_000,
                        "bytes_total": 100_000_000, "rate": 12_000_000, "eta": 6.25})
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())
    assert "s3_data s3://b/big.bin -> data/big.bin" in screen
    assert re.search(r"━+.*25%\s+25\.0 MB/100\.0 MB\s+12\.0 MB/s\s+eta 0:06", screen) is not None
    jobs = io.StringIO()
    with JobDisplay(jobs, live=True) as display:
        display.update({"id": "1712f460-57fd", "infrastructure": "tb-slurm", "status": "completed",
                        "state": "completed", "exit_code": 0, "scheduler_id": "7"})
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", jobs.getvalue())
    assert "✔ job 1712f460 on tb-slurm: completed, scheduler id 7, exit code 0" in drawn


def test_assignments_nest_and_take_json_values():
    parsed = cli._parse_assignments(["read_input_data=/Init_Data/x.csv", "kmean.cluster_number=3",
                                     "kmean.epsilon_criteria=1e-5", "filter.fft=1", "name=a=b", "mpi_launcher="],
                                    "--param")
    assert parsed == {"read_input_data": "/Init_Data/x.csv", "kmean": {"cluster_number": 3, "epsilon_criteria": 1e-5},
                      "filter": {"fft": 1}, "name": "a=b", "mpi_launcher": ""}
    with pytest.raises(click.BadParameter):
        cli._parse_assignments(["no-equals-sign"], "--param")
    assert cli._s3_address("s3://bucket/dir/object.csv", "x") == ("bucket", "dir/object.csv")
    for wrong in ("bucket/object", "s3://bucket", "s3://bucket/"):
        with pytest.raises(click.BadParameter):
            cli._s3_address(wrong, "x")


@pytest.mark.parametrize("argv", [
    ["job", "submit", "-i", "x"],                                          # no payload
    ["job", "submit", "-i", "x", "--services", "fft", "--", "true"],        # two payloads
    ["job", "submit", "-i", "x", "--param", "oops", "--services", "fft"],   # not KEY=VALUE
    ["transfer", "s3-in", "bucket/key", "dst", "-i", "x", "--endpoint", "e", "--access-key", "a", "--secret-key", "s"],
    ["transfer", "http"],
    ["infra", "add", "x", "--host", "h"],
    ["no-such-command"],
])
def test_usage_errors_exit_2_before_any_request(argv, capsys):
    assert cli.main(["--url", "http://127.0.0.1:9", *argv]) == 2
    assert "Error" in capsys.readouterr().err


def test_unreachable_gateway_exits_3(capsys):
    assert cli.main(["--url", "http://127.0.0.1:9", "--token", "t", "job", "list"]) == 3
    assert "cannot reach the gateway at http://127.0.0.1:9" in capsys.readouterr().err


def test_version_and_help_exit_0(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == "hpc-gateway, version 1.0.0\n"
    assert cli.main(["job", "submit", "--help"]) == 0
    assert "--script FILE" in capsys.readouterr().out

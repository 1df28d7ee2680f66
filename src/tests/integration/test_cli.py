"""The ``hpc-gateway`` command line against a real gateway and the live testbed.

Each command runs as its own process, as a person or a script runs it: exit codes, ``--json`` output and
the progress display (in a pseudo-terminal) are what is checked.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import uuid

import boto3
import pytest
import requests

from tests.support import REPO, TESTBED_ENV, TESTBED_INFRASTRUCTURES, infrastructure_body, new_gateway, read_env_file

pytestmark = pytest.mark.integration

SCHEDULERS = [name for name, _ in TESTBED_INFRASTRUCTURES]


@pytest.fixture(scope="module")
def gateway(testbed, tmp_path_factory):
    """One gateway for the module, with the testbed registered as tb-slurm, tb-pbs and tb-sge."""
    process = new_gateway(testbed, tmp_path_factory.mktemp("cli-gateway"))
    try:
        for name, scheduler in TESTBED_INFRASTRUCTURES:
            response = process.post("/infrastructure", infrastructure_body(testbed, name, scheduler))
            assert response.status_code == 201
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def s3():
    """The testbed's S3 store (keys read now: they change when moto restarts) and a fresh bucket."""
    env = read_env_file(TESTBED_ENV)
    client = boto3.client("s3", endpoint_url=env["TESTBED_S3_ENDPOINT"], region_name=env["TESTBED_S3_REGION"],
                          aws_access_key_id=env["TESTBED_S3_ACCESS_KEY"],
                          aws_secret_access_key=env["TESTBED_S3_SECRET_KEY"])
    bucket = f"cli-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return {"client": client, "bucket": bucket, "env": {
        "HPC_S3_ENDPOINT": env["TESTBED_S3_ENDPOINT"], "HPC_S3_REGION": env["TESTBED_S3_REGION"],
        "HPC_S3_ACCESS_KEY": env["TESTBED_S3_ACCESS_KEY"], "HPC_S3_SECRET_KEY": env["TESTBED_S3_SECRET_KEY"]}}


def cli_env(gateway, token: str = "admin", **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HPC_", "AWS_"))}
    env.update({"PYTHONPATH": str(REPO / "src"), "HPC_URL": gateway.url, "HPC_TOKEN": gateway.tokens[token],
                "COLUMNS": "120"})
    env.update(extra)
    return env


def cli(gateway, *args: str, token: str = "admin", timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """Runs ``hpc-gateway ARGS`` (this tree's code) with stdout and stderr captured (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "hpc.cli", *args], env=cli_env(gateway, token, **env),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def cli_json(gateway, *args: str, expect: int = 0, **kwargs) -> dict | list:
    result = cli(gateway, "--json", *args, **kwargs)
    assert (result.returncode, result.stderr) == (expect, result.stderr)
    return json.loads(result.stdout)


def cli_in_pty(gateway, *args: str, timeout: float = 120, **env: str) -> tuple[int, str]:
    """Runs ``hpc-gateway ARGS`` on a 120x40 pseudo-terminal; returns its exit code and everything it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "hpc.cli", *args], env=cli_env(gateway, **env),
                               stdin=slave, stdout=slave, stderr=slave, cwd=REPO, start_new_session=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every holder of the terminal's other end has closed it
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        return process.wait(timeout=max(1.0, deadline - time.monotonic())), b"".join(chunks).decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.mark.parametrize("infra", SCHEDULERS)
def test_job_submit_wait_json_and_logs(gateway, infra):
    job = cli_json(gateway, "job", "submit", "-i", infra, "--watch-period", "0.5", "--poll", "0.3", "--wait",
                   "--walltime", "00:05:00", "--name", "cli-ok", "--",
                   "bash", "-c", "echo hello from $(hostname); echo to stderr >&2", token="user")
    assert (job["status"], job["state"], job["exit_code"], job["infrastructure"]) == ("completed", "completed", 0,
                                                                                      infra)
    logs = cli(gateway, "job", "logs", job["id"], token="user")
    assert (logs.returncode, logs.stdout.startswith("hello from ")) == (0, True)
    errors = cli(gateway, "job", "logs", job["id"], "--stderr", token="user")
    assert errors.stdout == "to stderr\n"
    shown = cli_json(gateway, "job", "show", job["id"], token="user")
    assert shown["id"] == job["id"]
    human = cli(gateway, "job", "show", job["id"], token="user")
    assert re.search(r"state\s+completed", human.stdout) is not None


def test_array_and_dependency_from_the_command_line(gateway):
    array = cli_json(gateway, "job", "submit", "-i", "tb-sge", "--array", "0-3%2", "--watch-period", "0.5",
                     "--", "bash", "-c", 'echo "i=$HPC_ARRAY_TASK_ID"; [ "$HPC_ARRAY_TASK_ID" != 2 ]', token="user")
    assert array["array"] == {"spec": "0-3%2", "size": 4, "counts": {"queued": 4}}
    after = cli_json(gateway, "job", "submit", "-i", "tb-slurm", "--after", f"{array['id']}:notok",
                     "--after", array["id"] + ":any", "--watch-period", "0.5", "--", "echo", "after", token="user")
    assert (after["state"], [(d["job"], d["condition"]) for d in after["after"]]) == (
        "held", [(array["id"], "notok"), (array["id"], "any")])
    waited = cli(gateway, "job", "wait", after["id"], array["id"], "--poll", "0.3", token="user")
    assert waited.returncode == 1  # the array failed (task 2), the dependant completed
    assert re.search(r"tasks 3 completed 1 failed of 4, exit code 1", waited.stdout) is not None
    tasks = cli(gateway, "job", "tasks", array["id"], "--state", "failed", token="user")
    assert re.search(r"^2\s+failed\s+1\s", tasks.stdout, re.M) is not None
    assert cli(gateway, "job", "logs", array["id"], "--task", "2", token="user").stdout == "i=2\n"
    assert cli(gateway, "job", "logs", after["id"], token="user").stdout == "after\n"
    bad = cli(gateway, "job", "submit", "-i", "tb-slurm", "--after", "x:maybe", "--", "true", token="user")
    assert (bad.returncode, "does not read ID[:ok|notok|any]" in bad.stderr) == (2, True)
    refused = cli(gateway, "job", "submit", "-i", "tb-slurm", "--array", "3-1", "--", "true", token="user")
    assert (refused.returncode, "array" in refused.stderr) == (3, True)


def test_failed_job_exits_1_and_says_why(gateway, tmp_path):
    # (a failing job on tb-slurm through the CLI: examples/06_cli_tour.sh, run by test_examples.py)
    infra = "tb-pbs"
    script = tmp_path / "fail.sh"
    script.write_text("echo about to fail >&2\nexit 3\n")
    result = cli(gateway, "job", "submit", "-i", infra, "--script", str(script), "--watch-period", "0.5",
                 "--poll", "0.3", "--wait", token="user")
    assert result.returncode == 1
    assert re.search(r"failed.*exit code 3", result.stdout) is not None
    job_id = re.search(r"submitted job (\S+)", result.stderr).group(1)
    waited = cli_json(gateway, "job", "wait", job_id, expect=1, token="user")
    assert (waited["state"], waited["exit_code"]) == ("failed", 3)


def test_live_job_line_in_a_terminal(gateway):
    code, screen = cli_in_pty(gateway, "job", "submit", "-i", "tb-slurm", "--watch-period", "0.5", "--poll", "0.3",
                              "--wait", "--", "sleep", "1")
    text = ANSI.sub("", screen)
    assert code == 0
    assert re.search(r"job [0-9a-f]{8} on tb-slurm: running", text) is not None
    assert re.search(r"✔ job [0-9a-f]{8} on tb-slurm: completed, scheduler id \d+, exit code 0", text) is not None


def test_job_list_cancel_follow_and_timeouts(gateway):
    long = cli_json(gateway, "job", "submit", "-i", "tb-pbs", "--watch-period", "0.5", "--", "sleep", "300",
                    token="user")
    timed_out = cli(gateway, "job", "wait", long["id"], "--timeout", "1", token="user")
    assert timed_out.returncode == 4
    listing = cli_json(gateway, "job", "list", "-i", "tb-pbs", "--limit", "1", token="user")
    assert [item["id"] for item in listing["items"]] == [long["id"]]
    cancelled = cli_json(gateway, "job", "cancel", long["id"], "--wait", "--timeout", "60", token="user")
    assert (cancelled["state"], cancelled["status"]) == ("cancelled", "completed")
    again = cli(gateway, "job", "cancel", long["id"], "--json", token="user")
    assert (again.returncode, json.loads(again.stdout)["status"]) == (3, 409)

    lines = cli_json(gateway, "job", "submit", "-i", "tb-slurm", "--watch-period", "0.5", "--",
                     "bash", "-c", "for i in 1 2 3; do echo line $i; sleep 1; done", token="user")
    followed = cli(gateway, "job", "logs", "-f", "--poll", "0.3", lines["id"], token="user")
    assert (followed.returncode, followed.stdout) == (0, "line 1\nline 2\nline 3\n")


def test_usage_api_and_connection_errors_have_their_exit_codes(gateway):
    assert cli(gateway, "job", "submit", "-i", "tb-slurm").returncode == 2  # no payload
    assert cli(gateway, "job", "submit", "-i", "tb-slurm", "--script", "/dev/null", "--", "true").returncode == 2
    assert cli(gateway, "transfer", "s3-in", "bucket/object", "x", "-i", "tb-slurm", "--endpoint", "http://x",
               "--access-key", "a", "--secret-key", "b").returncode == 2
    missing = cli(gateway, "job", "show", str(uuid.uuid4()), "--json")
    assert (missing.returncode, json.loads(missing.stdout)["status"]) == (3, 404)
    assert cli(gateway, "job", "submit", "-i", "tb-slurm", "--walltime", "1 hour", "--", "true").returncode == 2
    bad = cli(gateway, "job", "submit", "-i", "tb-slurm", "--partition", "a b", "--json", "--", "true")
    assert (bad.returncode, json.loads(bad.stdout)["field"]) == (3, "resources.partition")
    assert "resources.partition" in bad.stderr
    denied = cli(gateway, "job", "list", token="admin", HPC_TOKEN="wrong")
    assert (denied.returncode, "401" in denied.stderr) == (3, True)
    unreachable = cli(gateway, "infra", "list", "--url", "http://127.0.0.1:9")
    assert (unreachable.returncode, "cannot reach the gateway" in unreachable.stderr) == (3, True)


def test_infra_commands(gateway, testbed, tmp_path):
    names = [entry["name"] for entry in cli_json(gateway, "infra", "list")]
    assert names == ["tb-pbs", "tb-sge", "tb-slurm"]
    shown = cli_json(gateway, "infra", "show", "tb-slurm")
    assert (shown["scheduler"], shown["host_key_fingerprint"]) == ("slurm", testbed["TESTBED_HOST_KEY_FINGERPRINT"])
    telemetry = cli_json(gateway, "infra", "telemetry", "tb-pbs")
    assert telemetry["partitions"][0]["name"] == testbed["TESTBED_SLURM_PARTITION"]
    queues = cli_json(gateway, "infra", "telemetry", "tb-sge")
    assert (queues["scheduler"], queues["partitions"][0]["name"]) == ("sge", testbed["TESTBED_SGE_QUEUE"])
    added = cli_json(gateway, "infra", "add", "cli-extra", "--host", testbed["TESTBED_SSH_HOST"],
                     "--port", testbed["TESTBED_SSH_PORT"], "--user", testbed["TESTBED_SSH_USER"],
                     "--scheduler", "slurm", "--key", "id_ed25519_pw", "--setting", "mpi_launcher=",
                     HPC_KEY_PASSPHRASE=testbed["TESTBED_SSH_KEY_PASSPHRASE"])
    assert (added["name"], added["hostname"], added["settings"]["mpi_launcher"]) == ("cli-extra", "127.0.0.1", "")
    duplicate = cli(gateway, "infra", "add", "cli-extra", "--host", "127.0.0.1", "--user", "u", "--scheduler", "pbs",
                    "--key", "id_ed25519")
    assert (duplicate.returncode, "409 Conflict" in duplicate.stderr) == (3, True)
    wrong_key = cli(gateway, "infra", "add", "cli-bad", "--host", testbed["TESTBED_SSH_HOST"], "--port",
                    testbed["TESTBED_SSH_PORT"], "--user", testbed["TESTBED_SSH_USER"], "--scheduler", "pbs",
                    "--key", "no-such-key", "--json")
    assert (wrong_key.returncode, json.loads(wrong_key.stdout)["field"]) == (3, "ssh_key.path")
    grid = cli_json(gateway, "infra", "add", "cli-sge", "--host", testbed["TESTBED_SSH_HOST"], "--port",
                    testbed["TESTBED_SSH_PORT"], "--user", testbed["TESTBED_SSH_USER"], "--scheduler", "sge",
                    "--key", "id_ed25519", "--setting", f'command_setup_lines=[". {testbed["TESTBED_SGE_SETTINGS"]}"]')
    setup = [f". {testbed['TESTBED_SGE_SETTINGS']}"]
    assert (grid["scheduler"], grid["settings"]["command_setup_lines"]) == ("sge", setup)
    assert cli(gateway, "infra", "rm", "cli-sge").returncode == 0
    as_user = cli(gateway, "infra", "rm", "cli-extra", token="user")
    assert (as_user.returncode, "403" in as_user.stderr) == (3, True)
    removed = cli(gateway, "infra", "rm", "cli-extra")
    assert (removed.returncode, removed.stdout) == (0, "removed cli-extra\n")
    fixture = tmp_path / "fixture.yaml"
    subprocess.run([sys.executable, str(REPO / "examples" / "make_fixture.py"), str(fixture), "--key", "id_ed25519"],
                   check=True, capture_output=True)
    again = cli_json(gateway, "infra", "add", "--from-file", str(fixture), "--exist-ok")
    assert [record["name"] for record in again] == ["tb-slurm", "tb-pbs", "tb-sge"]
    table = cli(gateway, "infra", "list")
    assert re.search(r"tb-slurm\s+slurm\s+hpcuser@127\.0\.0\.1:2222", table.stdout) is not None


def test_transfer_s3_in_shows_a_progress_bar_in_a_terminal(gateway, s3):
    size = 24 * 1024 * 1024
    s3["client"].put_object(Bucket=s3["bucket"], Key="big.bin", Body=os.urandom(size))
    code, screen = cli_in_pty(gateway, "transfer", "s3-in", f"s3://{s3['bucket']}/big.bin", "cli/big.bin",
                              "-i", "tb-slurm", "--wait", **s3["env"])
    text = ANSI.sub("", screen)
    assert code == 0, text[-2000:]
    assert "━" in text  # the bar
    assert re.search(r"100%\s+25\.2 MB/25\.2 MB", text) is not None  # percent, bytes done of the total
    assert f"s3_data s3://{s3['bucket']}/big.bin -> cli/big.bin" in text
    assert re.search(r"✔ s3_data .*100%", text) is not None  # the final frame stays, marked done


def test_transfers_json_round_trip_and_failure(gateway, s3, testbed):
    body = b"a,b\n1,2\n" * 1000
    s3["client"].put_object(Bucket=s3["bucket"], Key="in.csv", Body=body)
    inbound = cli_json(gateway, "transfer", "s3-in", f"s3://{s3['bucket']}/in.csv", "cli/in.csv", "-i", "tb-pbs",
                       "--wait", token="user", **s3["env"])
    assert (inbound["state"], inbound["status"], inbound["bytes_done"]) == ("completed", "completed", len(body))
    outbound = cli_json(gateway, "transfer", "s3-out", "cli/in.csv", f"s3://{s3['bucket']}/back.csv", "-i", "tb-pbs",
                        "--wait", token="user", **s3["env"])
    assert outbound["state"] == "completed"
    assert s3["client"].get_object(Bucket=s3["bucket"], Key="back.csv")["Body"].read() == body

    page = cli_json(gateway, "transfer", "list", "--kind", "s3_data", "-i", "tb-pbs", token="user")
    assert inbound["id"] in [item["id"] for item in page["items"]]
    shown = cli_json(gateway, "transfer", "show", outbound["id"], token="user")
    assert (shown["kind"], shown["src"]) == ("s3_result", "cli/in.csv")
    waited = cli_json(gateway, "transfer", "wait", inbound["id"], token="user")
    assert waited["state"] == "completed"

    missing = cli(gateway, "transfer", "http", f"{testbed['TESTBED_HTTP_URL']}/no-such-file", "cli/none",
                  "-i", "tb-slurm", "--wait", token="user")
    assert missing.returncode == 1
    assert re.search(r"transfer [0-9a-f]{8} failed", missing.stdout) is not None
    started = cli_json(gateway, "transfer", "http", f"{testbed['TESTBED_HTTP_URL']}/hello.txt", "cli/hello.txt",
                       "-i", "tb-slurm", token="user")
    assert started["status"] in ("transferring", "completed")
    done = cli_json(gateway, "transfer", "wait", started["id"], "--kind", "http", token="user")
    assert (done["state"], done["dst"]) == ("completed", "cli/hello.txt")


def test_job_submit_with_inputs_and_outputs(gateway, s3, testbed):
    """--input (an http URL and an s3:// object) and --output (when success and always) in one command;
    S3 keys from the same environment variables as the transfer commands."""
    bucket, client = s3["bucket"], s3["client"]
    client.put_object(Bucket=bucket, Key="flow/in.txt", Body=b"from s3\n")
    run = f"flow-{uuid.uuid4().hex[:8]}"
    done = cli_json(gateway, "job", "submit", "-i", "tb-slurm", "--workdir", f"cli/{run}",
                    "--input", f"s3://{bucket}/flow/in.txt=cli/{run}/a.txt",
                    "--input", f"{testbed['TESTBED_HTTP_URL']}/hello.txt=cli/{run}/b.txt",
                    "--output", f"cli/{run}/both.txt=s3://{bucket}/flow/both.txt",
                    "--output", f"cli/{run}/both.txt=s3://{bucket}/flow/always.txt,when=always",
                    "--wait", "--", "sh", "-c", "cat a.txt b.txt > both.txt", token="user", **s3["env"])
    assert (done["state"], done["phase"]) == ("completed", "done"), done
    assert [(i["kind"], i["state"]) for i in done["inputs"]] == [("s3_data", "completed"), ("http", "completed")]
    assert [(o["when"], o["state"]) for o in done["outputs"]] == [("success", "completed"), ("always", "completed")]
    hello = requests.get(f"{testbed['TESTBED_HTTP_URL']}/hello.txt", timeout=10).content
    assert client.get_object(Bucket=bucket, Key="flow/both.txt")["Body"].read() == b"from s3\n" + hello
    assert s3["env"]["HPC_S3_SECRET_KEY"] not in json.dumps(done)
    missing = cli(gateway, "job", "submit", "-i", "tb-slurm", "--input", f"s3://{bucket}/x=cli/x", "--", "true",
                  token="user")
    assert missing.returncode == 2
    assert "--input names an S3 object: give --endpoint, --access-key, --secret-key" in missing.stderr


def test_serve_and_token_keep_working(tmp_path):
    made = subprocess.run([sys.executable, "-m", "hpc.cli", "token", "ci", "--role", "admin", "--json"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    token = json.loads(made.stdout)
    assert (token["name"], token["role"]) == ("ci", "admin")
    assert token["env"].startswith("HPC_TOKENS=ci:admin:sha256$")
    helped = subprocess.run([sys.executable, "-m", "hpc.cli", "serve", "--help"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert (helped.returncode, "--config" in helped.stdout) == (0, True)
    installed = REPO / ".venv" / "bin" / "hpc-gateway"
    if installed.exists():
        version = subprocess.run([str(installed), "--version"], capture_output=True, text=True)
        assert version.stdout.strip() == "hpc-gateway, version 1.0.0"

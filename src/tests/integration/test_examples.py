"""Every program in ``examples/`` runs to success against a real gateway and the live testbed.

The examples are run as a person runs them after the README's setup: as programs, configured only by
``HPC_URL``, ``HPC_TOKEN`` and the fixture file (written here by ``examples/make_fixture.py``, as
``scripts/run-local.sh`` writes it).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import REPO, TESTBED_ENV, new_gateway

pytestmark = pytest.mark.integration

EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def setup(testbed, tmp_path_factory):
    """A gateway with nothing registered, and the environment the examples read."""
    data_dir = tmp_path_factory.mktemp("examples-gateway")
    gateway = new_gateway(testbed, data_dir)
    fixture = data_dir / "fixture.infrastructure.yaml"
    made = subprocess.run([sys.executable, str(EXAMPLES / "make_fixture.py"), str(fixture), "--key", "id_ed25519",
                           "--testbed-env", str(TESTBED_ENV)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    # The command line of this tree, whichever interpreter runs the tests.
    shim = data_dir / "hpc-gateway"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hpc.cli "$@"\n')
    shim.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HPC_", "AWS_"))}
    env.update({
        "PYTHONPATH": str(REPO / "src"), "HPC_URL": gateway.url, "HPC_TOKEN": gateway.tokens["admin"],
        "HPC_FIXTURE": str(fixture),
        # Large enough for several chunks and visible progress, small enough for the suite's time.
        "HPC_EXAMPLE_LARGE_MB": "24", "PYTHON": sys.executable,
        "HPC_GATEWAY_CLI": str(shim),
    })
    try:
        yield {"gateway": gateway, "env": env}
    finally:
        gateway.stop()


def run_example(setup, name: str, timeout: float = 300) -> subprocess.CompletedProcess:
    program = EXAMPLES / name
    command = ["bash", str(program)] if name.endswith(".sh") else [sys.executable, str(program)]
    result = subprocess.run(command, env=setup["env"], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert result.returncode == 0, (f"{name} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n"
                                    f"--- stderr\n{result.stderr[-4000:]}\n--- gateway log\n"
                                    f"{setup['gateway'].log()[-3000:]}")
    return result


def registered(setup) -> None:
    """The examples after the first expect the fixture's clusters registered (as run-local.sh leaves them)."""
    if setup["gateway"].get("/infrastructure/tb-pbs").status_code != 200:
        run_example(setup, "01_register_infrastructure.py")


def test_01_register_infrastructure(setup):
    first = run_example(setup, "01_register_infrastructure.py")
    assert first.stdout.count("registered: ") == 3
    assert "registered now: tb-pbs, tb-sge, tb-slurm" in first.stdout
    assert "partition all.q: " in first.stdout  # Grid Engine's queue, from qstat -f
    again = run_example(setup, "01_register_infrastructure.py")
    assert again.stdout.count("already registered") == 3


def test_02_submit_and_wait(setup):
    registered(setup)
    result = run_example(setup, "02_submit_and_wait.py")
    assert result.stdout.count("example-fails on") == 3
    assert "example-cancel: state cancelled" in result.stdout
    # progress: a state line per change, on stderr (not a terminal here)
    assert "on tb-pbs: completed" in result.stderr
    assert "on tb-sge: completed" in result.stderr


def test_03_http_transfers(setup):
    registered(setup)
    result = run_example(setup, "03_http_transfers.py")
    assert f"large.bin: completed, {24 * 1024 * 1024} bytes" in result.stdout
    assert "completed: 25.2 MB of 25.2 MB (100 %)" in result.stderr


def test_04_s3_transfers(setup):
    registered(setup)
    result = run_example(setup, "04_s3_transfers.py")
    assert "examples/large.bin: 25165824 bytes back, identical" in result.stdout


def test_05_end_to_end_serrano(setup):
    registered(setup)
    result = run_example(setup, "05_end_to_end_serrano.py", timeout=600)
    assert "the spectrum peaks at bin 8" in result.stdout
    assert result.stdout.count("3 groups: 0, 1, 2") == 2


def test_06_cli_tour(setup):
    registered(setup)
    result = run_example(setup, "06_cli_tour.sh")
    assert "exit code 1 (1: the job ended without success)" in result.stdout
    assert "state completed exit code 0" in result.stdout
    assert "s3://hpc-examples/cli/count.txt: 1000 input.txt" in result.stdout


def test_07_job_array(setup):
    registered(setup)
    # On Grid Engine (scheduling every second, two slots) the hundred tiny tasks take about a minute;
    # the same on the shared Slurm, loaded by other suites, took more than two.
    env = {**setup["env"], "HPC_INFRASTRUCTURE": "tb-sge"}
    result = subprocess.run([sys.executable, str(EXAMPLES / "07_job_array.py")], env=env, capture_output=True,
                            text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "array: state completed, tasks {'completed': 100}" in result.stdout
    assert "task 42 said: task 42 of 100 on " in result.stdout
    assert "gather read 100 files; the sum of the squares is 328350" in result.stdout


def test_08_serrano_one_request(setup):
    registered(setup)
    result = run_example(setup, "08_serrano_one_request.py", timeout=600)
    out = result.stdout
    assert "the spectrum peaks at bin 8" in out
    # watched over the event stream: the phases in order, the legacy status as the seed's clients read it
    phases = [line.rsplit("phase ", 1)[1] for line in out.splitlines() if " job.phase " in line]
    assert phases == ["staging_in", "submitted", "staging_out", "done"]
    assert "state held (status queued)" in out
    assert "state staging_out (status running" in out
    assert "state completed (status completed, exit code 0)" in out
    assert out.count("transfer.state") >= 4  # each transfer's queued ... completed

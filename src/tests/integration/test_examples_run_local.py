"""The README's run command, ``scripts/run-local.sh``, leaves what the examples and the CLI need.

It is started as a person starts it (on its own port and data directory here, so it does not collide
with a gateway already running on 8080): the printed ``export HPC_URL=... HPC_TOKEN=...`` and the fixture
file it writes are all the examples get, with no editing.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from tests.support import REPO, free_port

pytestmark = pytest.mark.integration


def test_run_local_serves_and_the_examples_use_what_it_prints(testbed, tmp_path):
    data = tmp_path / "gateway"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HPC_", "AWS_"))}
    env.update({"HPC_DATA_DIR": str(data), "HPC_LISTEN_PORT": str(free_port())})
    process = subprocess.Popen(["bash", str(REPO / "scripts" / "run-local.sh")], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    printed = b""
    try:
        deadline = time.monotonic() + 240
        while b"Ctrl-C stops the gateway" not in printed:
            assert process.poll() is None, printed.decode(errors="replace")
            assert time.monotonic() < deadline, printed.decode(errors="replace")
            ready, _, _ = select.select([process.stdout], [], [], 1.0)
            if ready:
                printed += os.read(process.stdout.fileno(), 65536)
        text = printed.decode()
        url, token = re.search(r"export HPC_URL=(\S+) HPC_TOKEN=(\S+)", text).groups()
        fixture = data / "fixture.infrastructure.yaml"
        assert oct(fixture.stat().st_mode & 0o777) == "0o600"  # it holds the S3 keys

        run_env = {key: value for key, value in os.environ.items() if not key.startswith(("HPC_", "AWS_"))}
        run_env.update({"HPC_URL": url, "HPC_TOKEN": token, "HPC_FIXTURE": str(fixture),
                        "PYTHONPATH": str(REPO / "src")})
        example = subprocess.run([sys.executable, str(REPO / "examples" / "01_register_infrastructure.py")],
                                 env=run_env, capture_output=True, text=True, timeout=120)
        assert (example.returncode, example.stdout.count("already registered")) == (0, 3), example.stderr
        job = subprocess.run([sys.executable, "-m", "hpc.cli", "job", "submit", "-i", "tb-slurm", "--watch-period",
                              "0.5", "--wait", "--", "hostname"], env=run_env, capture_output=True, text=True,
                             timeout=120)
        assert (job.returncode, "completed" in job.stdout) == (0, True), job.stderr
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # as Ctrl-C: the script stops its gateway
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        process.stdout.close()

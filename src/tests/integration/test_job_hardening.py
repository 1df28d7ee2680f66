"""Jobs on the live testbed: a job_root that cannot be made fails at once, times come from the cluster's
record, output slices keep UTF-8 characters whole, and a job that ended ``unknown`` lets
``hpc-gateway job logs --follow`` return."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from tests.integration.test_jobs_api import ssh, submit, wait_job
from tests.support import REPO, infrastructure_body

pytestmark = pytest.mark.integration


def test_a_job_root_under_a_regular_file_fails_the_job_at_once(gateway, testbed):
    blocker = f"hpc-blocker-{uuid.uuid4().hex[:8]}"
    assert ssh(testbed, f"echo not a directory > {blocker}").returncode == 0
    try:
        body = infrastructure_body(testbed, "tb-blocked", "slurm", settings={"job_root": f"{blocker}/jobs"})
        assert gateway.post("/infrastructure", body).status_code == 201
        started = time.monotonic()
        job = submit(gateway, "tb-blocked", script="true\n")
        ended = wait_job(gateway, job["id"], timeout=30)
        assert time.monotonic() - started < 30  # not the 10-minute give-up of transient faults
        assert ended["state"] == "failed"
        assert "not a directory" in ended["reason"]
        assert blocker in ended["reason"]
        assert "job_root" in ended["reason"]
    finally:
        ssh(testbed, f"rm -f {blocker}")


@pytest.mark.parametrize("infra", ["tb-slurm", "tb-pbs"])
def test_times_come_from_the_cluster_record(registered, testbed, infra):
    # Jobs shorter than a poll period: the gateway never sees most of them running.
    jobs = [submit(registered, infra, name=f"times-{i}", script=f"sleep {i % 2}\nexit {i % 3 == 2 and 1 or 0}\n",
                   watch_period=2) for i in range(6)]
    for job in jobs:
        ended = wait_job(registered, job["id"], timeout=180)
        assert ended["state"] in ("completed", "failed")
        assert ended["started_at"] is not None, ended
        assert ended["ended_at"] is not None
        files = ssh(testbed, f"cat ~/.hpc-gateway/jobs/{job['id']}/started ~/.hpc-gateway/jobs/{job['id']}/ended")
        started_epoch, ended_epoch = (int(line) for line in files.stdout.split())
        assert to_epoch(ended["started_at"]) == started_epoch
        assert to_epoch(ended["ended_at"]) == ended_epoch


def to_epoch(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def test_output_slices_keep_characters_whole(registered):
    text = "h€llo 𝄞 wörld\n"
    job = submit(registered, "tb-slurm", script=f"printf '%s' '{text}'\n")
    wait_job(registered, job["id"], timeout=120)
    for length in (1, 2, 3, 5):
        offset, pieces = 0, []
        while True:
            chunk = registered.get(f"/job/{job['id']}/output", token="user",
                                   params={"offset": offset, "length": length}).json()
            assert "\ufffd" not in chunk["data"]
            pieces.append(chunk["data"])
            assert chunk["next_offset"] == offset + len(chunk["data"].encode())
            offset = chunk["next_offset"]
            if chunk["eof"]:
                break
        assert "".join(pieces) == text


def test_logs_follow_returns_for_a_job_that_ended_unknown(registered):
    # The payload kills its batch script with SIGKILL: no trap runs, so no exit_code file is written,
    # and the Torque wrapper reports the job "C" without an exit status: it ends "unknown".
    job = submit(registered, "tb-pbs", script="echo before\nsleep 1\nkill -9 $PPID\n", watch_period=1)
    ended = wait_job(registered, job["id"], timeout=120)
    assert ended["state"] == "unknown", ended
    env = {**os.environ, "HPC_URL": registered.url, "HPC_TOKEN": registered.tokens["user"],
           "PYTHONPATH": str(REPO / "src")}
    follow = subprocess.run([sys.executable, "-m", "hpc.cli", "job", "logs", job["id"], "--follow"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert follow.stdout == "before\n"
    assert follow.returncode == 1  # returned, with the exit code of a job that ended without success
    assert "unknown" in follow.stderr

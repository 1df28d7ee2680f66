"""Batched tracking, restarts and cluster faults, on the live testbed."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.test_jobs_api import submit, wait_job

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[3]


def stats(gateway, infra: str) -> dict:
    return gateway.get("/stats", token="admin").json()["jobs"].get(infra, {})


def scheduler_jobs_named(testbed, tag: str) -> int:
    """How many ended jobs whose name contains ``tag`` Slurm (itself and behind the Torque wrappers) and
    Grid Engine (its accounting, written up to a second after a job ends) know of, counted on the cluster
    with OpenSSH once the count stops growing."""
    from tests.integration.test_jobs_api import ssh

    counts: list[int] = []
    for _ in range(20):
        slurm = ssh(testbed, f"squeue -h -t all -o %j | grep -c {tag}")
        sge = ssh(testbed, f". {testbed['TESTBED_SGE_SETTINGS']}; qacct -j '*{tag}*' | grep -c '^jobname .*{tag}'")
        if slurm.stdout.strip().isdigit() and sge.stdout.strip().isdigit():  # grep -c prints 0 on no match
            counts.append(int(slurm.stdout) + int(sge.stdout))
        if len(counts) >= 3 and counts[-1] == counts[-3]:
            return counts[-1]
        time.sleep(0.5)
    raise AssertionError(f"no steady count of jobs named {tag}: {counts}")


@pytest.mark.slow
def test_200_jobs_cost_one_status_command_per_period(registered):
    with ThreadPoolExecutor(16) as pool:
        jobs = list(pool.map(
            lambda i: submit(registered, "tb-slurm", name=f"many-{i}", script="sleep 600\n", watch_period=2),
            range(200),
        ))
    deadline = time.monotonic() + 300
    while registered.get("/job", params={"state": "submitting"}, token="admin").json()["total"]:
        assert time.monotonic() < deadline, "submissions did not finish"
        time.sleep(1)
    before = stats(registered, "tb-slurm").get("status", 0)
    connections_before = registered.get("/stats", token="admin").json()["ssh"]["tb-slurm"]["connections_opened"]
    window = 12.0
    time.sleep(window)
    commands = stats(registered, "tb-slurm").get("status", 0) - before
    # watch_period 2 s: about 6 polls in 12 s, each ONE command for all 200 jobs (not 200 commands).
    assert 4 <= commands <= 8, commands
    after = registered.get("/stats", token="admin").json()["ssh"]["tb-slurm"]["connections_opened"]
    assert after == connections_before  # steady state opens no connection
    states = {j["state"] for j in registered.get("/job", params={"limit": 1000}, token="admin").json()["items"]}
    assert states <= {"queued", "running"}
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda j: registered.delete(f"/job/{j['id']}", token="user"), jobs))
    deadline = time.monotonic() + 120
    while registered.get("/job", params={"state": "cancelled", "limit": 1}, token="admin").json()["total"] < 200:
        assert time.monotonic() < deadline, "cancellations did not finish"
        time.sleep(1)


@pytest.mark.slow
def test_gateway_killed_while_jobs_run_each_ends_once(registered, testbed):
    tag = f"restart-{int(time.time())}"
    jobs = [
        submit(registered, infra, name=f"{tag}-{infra}-{code}", script=f"sleep 8\nexit {code}\n")
        for infra in ("tb-slurm", "tb-pbs", "tb-sge") for code in (0, 4)
    ]
    # Kill as soon as the jobs were accepted: some may still be mid-submission.
    time.sleep(1.0)
    registered.kill()
    registered.start()
    for job in jobs:
        ended = wait_job(registered, job["id"], timeout=120)
        expected_code = int(job["name"].rsplit("-", 1)[1])
        assert ended["exit_code"] == expected_code, ended
        assert ended["state"] == ("completed" if expected_code == 0 else "failed")
    # Exactly one scheduler job per gateway job: no submission was made twice.
    assert scheduler_jobs_named(testbed, tag) == len(jobs)


@pytest.mark.slow
@pytest.mark.parametrize(("infra", "controller"), [("tb-slurm", "slurmctld"), ("tb-sge", "sge_qmaster")])
def test_controller_down_keeps_state_and_tracking_resumes(registered, infra, controller):
    job = submit(registered, infra, script="sleep 25\n", name="survivor")
    wait_job(registered, job["id"], until=lambda j: j["state"] == "running", timeout=60)
    subprocess.run(["bash", str(REPO / "testbed" / "ctl.sh"), "stop", controller], check=True)
    try:
        paused = wait_job(registered, job["id"], until=lambda j: "tracking paused" in (j["reason"] or ""),
                          timeout=60)
        assert paused["state"] == "running"
        assert paused["status"] == "running"
    finally:
        subprocess.run(["bash", str(REPO / "testbed" / "ctl.sh"), "start", controller], check=True)
    ended = wait_job(registered, job["id"], timeout=120)
    assert ended["state"] == "completed"
    assert ended["exit_code"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_replicas_on_one_store_never_double_submit(gateway_factory, testbed, request, database):
    """Two gateway processes share one database: work is claimed from the store, not held in memory."""
    from tests.support import TESTBED_INFRASTRUCTURES, GatewayProcess, free_port, infrastructure_body

    extra = {"HPC_DATABASE_URL": request.getfixturevalue("pg_url")} if database == "postgresql" else {}
    registered = gateway_factory(extra_env=extra)
    for name, scheduler in TESTBED_INFRASTRUCTURES:
        assert registered.post("/infrastructure", infrastructure_body(testbed, name, scheduler)).status_code == 201
    assert registered.get("/health", token=None).json()["database"] == database
    port = free_port()
    twin = GatewayProcess(registered.data_dir, port, {**registered.env, "HPC_LISTEN_PORT": str(port)},
                          registered.tokens, registered.data_dir / "twin.log").start()
    try:
        tag = f"twin-{int(time.time())}"
        replicas = [registered, twin]
        names = [name for name, _ in TESTBED_INFRASTRUCTURES]
        jobs = [submit(replicas[i % 2], names[i % 3], name=f"{tag}-{i}",
                       script=f"sleep 1\nexit {i % 2}\n") for i in range(12)]
        for i, job in enumerate(jobs):
            ended = wait_job(replicas[(i + 1) % 2], job["id"], timeout=120)  # read through the other replica
            assert (ended["state"], ended["exit_code"]) == (("completed", 0) if i % 2 == 0 else ("failed", 1))
        assert scheduler_jobs_named(testbed, tag) == len(jobs)
    finally:
        twin.stop()

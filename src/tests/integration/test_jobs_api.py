"""Jobs through the real API on the live testbed, for Slurm, PBS (Slurm's Torque wrappers) and Grid Engine."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest


pytestmark = pytest.mark.integration

SCHEDULERS = ["tb-slurm", "tb-pbs", "tb-sge"]


def ssh(testbed, command: str) -> subprocess.CompletedProcess:
    """Runs a command on the testbed cluster with OpenSSH, independently of the gateway."""
    return subprocess.run(
        ["ssh", "-p", testbed["TESTBED_SSH_PORT"], "-i", testbed["TESTBED_SSH_KEY"], "-o", "BatchMode=yes",
         "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={testbed['TESTBED_KNOWN_HOSTS']}",
         "-o", "StrictHostKeyChecking=yes", f"{testbed['TESTBED_SSH_USER']}@{testbed['TESTBED_SSH_HOST']}", command],
        capture_output=True, text=True, timeout=60,
    )


def submit(gateway, infrastructure: str, token: str = "user", **fields) -> dict:
    body = {"infrastructure": infrastructure, "watch_period": 1, **fields}
    response = gateway.post("/job", body, token=token)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["state"] == "submitting"
    return job


def wait_job(gateway, job_id: str, until=lambda j: j["status"] == "completed", timeout: float = 120,
             token: str = "user") -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = gateway.get(f"/job/{job_id}", token=token).json()
        if until(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job did not get there in {timeout}s: {job}\n{gateway.log()[-4000:]}")
        time.sleep(0.3)


@pytest.mark.parametrize("infra", SCHEDULERS)
def test_exit_codes_and_output(registered, infra):
    ok = submit(registered, infra, script="#!/bin/bash\necho hello from $(hostname)\n", name="ok")
    bad = submit(registered, infra, script="echo about to fail >&2\nexit 3\n", name="bad")
    done = wait_job(registered, ok["id"])
    assert done["state"] == "completed"
    assert done["exit_code"] == 0
    assert done["scheduler_id"]
    assert done["ended_at"] is not None
    out = registered.get(f"/job/{ok['id']}/output", token="user").json()
    assert out["data"].startswith("hello from ")
    assert out["eof"] is True

    failed = wait_job(registered, bad["id"])
    assert failed["status"] == "completed"  # old clients stop waiting
    assert failed["state"] == "failed"
    assert failed["exit_code"] == 3
    err = registered.get(f"/job/{bad['id']}/output", params={"stream": "stderr"}, token="user").json()
    assert err["data"] == "about to fail\n"


@pytest.mark.parametrize("infra", SCHEDULERS)
def test_cancel_running_job_and_tail_its_output(registered, infra):
    job = submit(registered, infra, name="tail",
                 script="for i in $(seq 1 300); do echo line $i; sleep 0.2; done\n")
    wait_job(registered, job["id"], until=lambda j: j["state"] == "running", timeout=60)
    deadline = time.monotonic() + 30
    while True:
        out = registered.get(f"/job/{job['id']}/output", token="user").json()
        if out["size"] > 0:
            break
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert out["data"].startswith("line 1\n")
    tail = registered.get(f"/job/{job['id']}/output", params={"offset": out["next_offset"]}, token="user").json()
    assert tail["offset"] == out["next_offset"]

    cancelled = registered.delete(f"/job/{job['id']}", token="user")
    assert cancelled.status_code == 202
    assert cancelled.json()["cancel_requested"] is True
    assert registered.delete(f"/job/{job['id']}", token="user").status_code == 202  # idempotent
    ended = wait_job(registered, job["id"], timeout=60)
    assert ended["state"] == "cancelled"
    assert ended["status"] == "completed"
    again = registered.delete(f"/job/{job['id']}", token="user")
    assert again.status_code == 409
    assert again.headers["Content-Type"].startswith("application/problem+json")


@pytest.mark.slow
def test_walltime_ends_as_timeout_on_each(registered):
    jobs = [submit(registered, infra, name="tmo", script="sleep 600\n", resources={"walltime": "00:00:10"})
            for infra in SCHEDULERS]
    for job in jobs:
        ended = wait_job(registered, job["id"], timeout=150)
        assert ended["state"] == "timeout", ended
        assert ended["status"] == "completed"


def test_submit_refused_by_scheduler_ends_failed_with_its_message(registered):
    job = submit(registered, "tb-slurm", script="true\n", resources={"partition": "nosuch"})
    ended = wait_job(registered, job["id"], timeout=60)
    assert ended["state"] == "failed"
    assert "invalid partition" in ended["reason"].lower()
    pbs = submit(registered, "tb-pbs", script="true\n", resources={"partition": "nosuch"})
    ended = wait_job(registered, pbs["id"], timeout=60)
    assert ended["state"] == "failed"
    assert "partition" in ended["reason"].lower()
    sge = submit(registered, "tb-sge", script="true\n", resources={"partition": "nosuch"})
    ended = wait_job(registered, sge["id"], timeout=60)
    assert ended["state"] == "failed"
    assert 'job requests unknown queue "nosuch"' in ended["reason"]


HOSTILE = ["it's", 'a "quoted" one', "$(touch {m})", "`touch {m}`", "x\nEOF\ntouch {m}", ";touch {m}", "a b  c"]


@pytest.mark.parametrize("infra", SCHEDULERS)
def test_hostile_values_are_data_not_code(registered, testbed, infra):
    marker = f"/tmp/hpc-marker-{uuid.uuid4().hex}"
    values = [v.format(m=marker) for v in HOSTILE]
    workdir = f"/home/{testbed['TESTBED_SSH_USER']}/hpc wd $(touch {marker})"  # inside allowed_roots (home)
    ssh(testbed, f"mkdir -p '{workdir}'")
    job = submit(
        registered, infra,
        name=values[2],
        command=["printf", "%s|", *values],
        env={"HOSTILE": values[4], "OTHER": values[3]},
        workdir=workdir,
    )
    ended = wait_job(registered, job["id"])
    assert ended["state"] == "completed", ended
    out = registered.get(f"/job/{job['id']}/output", token="user").json()["data"]
    assert out == "".join(v + "|" for v in values)
    env_job = submit(registered, infra, script='printf "%s" "$HOSTILE"; pwd >&2\n', env={"HOSTILE": values[4]},
                     workdir=workdir)
    wait_job(registered, env_job["id"])
    assert registered.get(f"/job/{env_job['id']}/output", token="user").json()["data"] == values[4]
    err = registered.get(f"/job/{env_job['id']}/output", params={"stream": "stderr"}, token="user").json()["data"]
    assert err == workdir + "\n"
    assert ssh(testbed, f"test -e {marker}").returncode == 1


@pytest.mark.parametrize(
    "body, field",
    [
        ({"infrastructure": "tb-slurm", "services": [], "params": {"read_input_data": "/x"}}, "services"),
        ({"infrastructure": "tb-slurm", "services": ["fft", "kmean"], "params": {"read_input_data": "/x"}}, "services"),
        ({"infrastructure": "tb-slurm", "services": ["kmean", "knn"], "params": {"read_input_data": "/x"}}, "services"),
        ({"infrastructure": "tb-slurm", "services": ["fft"]}, "params"),
        ({"infrastructure": "tb-slurm", "services": ["fft"], "params": {}}, "params.read_input_data"),
        ({"infrastructure": "tb-slurm", "services": ["warp"], "params": {"read_input_data": "/x"}}, "services.0"),
        ({"infrastructure": "tb-slurm", "script": "true", "resources": {"nodes": -1}}, "resources.nodes"),
        ({"infrastructure": "tb-slurm", "script": "true", "resources": {"cpus_per_task": 10**9}},
         "resources.cpus_per_task"),
        ({"infrastructure": "tb-slurm", "script": "true", "resources": {"walltime": "1 hour"}}, "resources.walltime"),
        ({"infrastructure": "tb-slurm", "script": "true", "resources": {"partition": "a b"}}, "resources.partition"),
        ({"infrastructure": "tb-slurm", "script": "x" * (1024 * 1024 + 1)}, "script"),
        ({"infrastructure": "tb-slurm", "script": "true", "command": ["true"]}, "services"),
        ({"infrastructure": "tb-slurm"}, "services"),
        ({"infrastructure": "tb-slurm", "script": "true", "env": {"BAD-NAME": "x"}}, "env.BAD-NAME"),
        ({"infrastructure": "tb-slurm", "script": "true", "watch_period": "often"}, "watch_period"),
    ],
)
def test_bad_job_requests_are_400_naming_the_field(registered, body, field):
    response = registered.post("/job", body, token="user")
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["field"] == field
    assert registered.get("/job", token="admin").json()["total"] == 0


def test_unknown_job_ids(registered):
    assert registered.get(f"/job/{uuid.uuid4()}", token="user").status_code == 404
    malformed = registered.get("/job/not-a-uuid", token="user")
    assert malformed.status_code == 400
    assert malformed.json()["field"] == "job_id"
    assert registered.delete(f"/job/{uuid.uuid4()}", token="user").status_code == 404


def test_ownership_and_listing(registered):
    mine = submit(registered, "tb-slurm", script="true\n", name="mine")
    theirs = submit(registered, "tb-pbs", token="user2", script="true\n", name="theirs")
    assert registered.get(f"/job/{theirs['id']}", token="user").status_code == 404
    assert registered.delete(f"/job/{theirs['id']}", token="user").status_code == 404
    assert registered.get(f"/job/{theirs['id']}/output", token="user").status_code == 404
    listing = registered.get("/job", token="user").json()
    assert [j["id"] for j in listing["items"]] == [mine["id"]]
    assert registered.get("/job", token="admin").json()["total"] == 2
    only_pbs = registered.get("/job", params={"infrastructure": "tb-pbs"}, token="admin").json()
    assert [j["id"] for j in only_pbs["items"]] == [theirs["id"]]
    page = registered.get("/job", params={"limit": 1, "offset": 1}, token="admin").json()
    assert (page["total"], len(page["items"]), page["items"][0]["id"]) == (2, 1, mine["id"])
    future = registered.get("/job", params={"since": "2999-01-01T00:00:00Z"}, token="admin").json()
    assert future["total"] == 0
    bad_since = registered.get("/job", params={"since": "yesterday"}, token="admin")
    assert bad_since.status_code == 400
    assert bad_since.json()["field"] == "since"
    assert "\n" not in bad_since.json()["detail"]
    wait_job(registered, mine["id"])
    assert registered.get("/job", params={"state": "completed"}, token="user").json()["total"] == 1


def read_csv(testbed, path: str) -> list[list[str]]:
    result = ssh(testbed, f"cat {path}")
    assert result.returncode == 0, result.stderr
    return [line.split(",") for line in result.stdout.strip().splitlines()]


@pytest.mark.parametrize("infra", SCHEDULERS)
def test_serrano_fft_and_kmean_end_to_end(registered, testbed, infra):
    fft = submit(registered, infra, services=["fft"],
                 params={"read_input_data": "/Init_Data/raw_data_input_fft/input.csv", "num_mpi_procs": 1})
    fft_done = wait_job(registered, fft["id"], timeout=180)
    assert fft_done["state"] == "completed", registered.get(f"/job/{fft['id']}/output",
                                                            params={"stream": "stderr"}, token="user").json()
    # Both use the application's one workspace, so they run one after the other, as the seed's clients do.
    kmean = submit(registered, infra, services=["kmean"],
                   params={"read_input_data": "/Init_Data/raw_data_input_kmean/input.csv",
                           "kmean": {"cluster_number": 3}, "num_mpi_procs": 1})
    kmean_done = wait_job(registered, kmean["id"], timeout=180)
    assert kmean_done["state"] == "completed", kmean_done
    workspace = "serrano/data/Output_Data"
    spectrum = read_csv(testbed, f"{workspace}/CSVFormate/FFT_Filter_output.csv")
    assert len(spectrum) > 100
    magnitudes = [float(row[0]) for row in spectrum[1:]]
    assert magnitudes.index(max(magnitudes[1:])) == 8  # the sample's sine sits at bin 8
    clusters = read_csv(testbed, f"{workspace}/KMean/KMean_cluster.csv")
    assert len(clusters) == 301
    assert {row[-1] for row in clusters[1:]} == {"0", "1", "2"}
    out = registered.get(f"/job/{fft['id']}/output", token="user").json()["data"]
    assert "case 1" in out


def test_delete_infrastructure_refused_while_a_job_runs(registered):
    job = submit(registered, "tb-slurm", script="sleep 300\n")
    wait_job(registered, job["id"], until=lambda j: j["scheduler_id"] != "", timeout=60)
    response = registered.delete("/infrastructure/tb-slurm", token="admin")
    assert response.status_code == 409
    assert "1 active job" in response.json()["detail"]
    registered.delete(f"/job/{job['id']}", token="user")
    wait_job(registered, job["id"], timeout=60)
    assert registered.delete("/infrastructure/tb-slurm", token="admin").status_code == 204


def test_fast_path_answers_exactly_as_connexion(registered):
    job = submit(registered, "tb-slurm", script="true\n")
    ended = wait_job(registered, job["id"])
    # A query string sends the request through Connexion; without one the fast path answers. "?&" is a
    # query string with no parameter in it (an unknown parameter would be refused with 400).
    through_connexion = registered.get(f"/job/{job['id']}?&", token="user")
    assert through_connexion.status_code == 200
    assert through_connexion.json() == ended
    assert registered.get(f"/job/{job['id']}", token="user2").status_code == 404
    assert registered.get(f"/job/{job['id']}", token=None).status_code == 401
    bad = registered.request("GET", f"/job/{job['id']}", token=None, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert bad.headers["Content-Type"].startswith("application/problem+json")

"""Three replicas on one PostgreSQL behind nginx (``scripts/replicas.sh``); one is killed mid-flow.

The replicas run with 5-second leases. Jobs and transfers are under way when the replica holding the
tb-slurm poll lease (and some transfers) gets ``kill -9``. The survivors must take its polls and its
transfers over once the leases run out, and nothing may be lost or done twice: each job appends a line
to a file of its own on the cluster (a job run twice shows two lines), each job name appears once in
Slurm (a job submitted twice shows twice), each transfer completes once with the source's sha256.
The 10,000-job version of this is ``bench/replicas.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config as BotoConfig

from tests.replica_set import ReplicaSet, free_port_block

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE = 5.0
CLUSTER_HOME = Path("/home/hpcuser")
JOBS_PER_INFRA = 12
HTTP_FILES = 3
S3_FILES = 3
FILE_SIZE = 4 * 1024 * 1024  # read at 1 MB/s: about 4 s each, so the kill finds them mid-flow


@pytest.fixture(scope="module")
def pg_database(testbed):
    """A fresh database on the testbed's PostgreSQL for this module's replicas; dropped afterwards."""
    import sqlalchemy as sa

    server = testbed["TESTBED_PG_URL"]
    name = f"hpc_replicas_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield server.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, pg_database):
    replica_set = ReplicaSet(
        tmp_path_factory.mktemp("replicas"), free_port_block(4), pg_database,
        settings={
            "HPC_POLL_LEASE_SECONDS": str(LEASE),
            "HPC_SUBMIT_LEASE_SECONDS": str(LEASE),
            "HPC_TRANSFER_LEASE_SECONDS": str(LEASE),
            "HPC_TRANSFER_MAX_RATE": "1MB",
            "HPC_MIN_WATCH_PERIOD": "0.5",
        },
    )
    try:
        replica_set.up()
        yield replica_set
    finally:
        replica_set.down()


@pytest.fixture(scope="module")
def sources(testbed):
    """Random files served by the testbed's nginx and, under the same names, by its S3 server."""
    tag = uuid.uuid4().hex[:10]
    root = Path(testbed["TESTBED_HTTP_ROOT"]) / f"hpcgw-replicas-{tag}"
    root.mkdir(mode=0o755)
    s3 = boto3.client("s3", endpoint_url=testbed["TESTBED_S3_ENDPOINT"], region_name="us-east-1",
                      aws_access_key_id=testbed["TESTBED_S3_ACCESS_KEY"],
                      aws_secret_access_key=testbed["TESTBED_S3_SECRET_KEY"],
                      config=BotoConfig(s3={"addressing_style": "path"}))
    bucket = f"hpcgw-replicas-{tag}"
    s3.create_bucket(Bucket=bucket)
    files = []
    for index in range(max(HTTP_FILES, S3_FILES)):
        data = os.urandom(FILE_SIZE)
        path = root / f"f{index}.bin"
        path.write_bytes(data)
        path.chmod(0o644)
        s3.put_object(Bucket=bucket, Key=f"f{index}.bin", Body=data)
        files.append({"name": f"f{index}.bin", "sha256": hashlib.sha256(data).hexdigest(),
                      "url": f"{testbed['TESTBED_HTTP_URL']}/{root.name}/f{index}.bin"})
    yield {"tag": tag, "files": files, "bucket": bucket}
    shutil.rmtree(root, ignore_errors=True)
    for index in range(len(files)):
        s3.delete_object(Bucket=bucket, Key=f"f{index}.bin")
    s3.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="module")
def cluster_dir(sources):
    """hpcgw-replicas/<tag> under the cluster user's home: the jobs' files and the transfers' targets."""
    relative = f"hpcgw-replicas/{sources['tag']}"
    yield relative, CLUSTER_HOME / relative
    # After a failure, jobs of this module may still wait in the queue: they would write here later.
    queue = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout.split("\n")
    left = [line.split()[0] for line in queue if line.strip() and line.split()[1].startswith(f"rs{sources['tag']}-")]
    if left:
        subprocess.run(["scancel", *left], check=False)
    shutil.rmtree(CLUSTER_HOME / relative, ignore_errors=True)
    if (CLUSTER_HOME / "hpcgw-replicas").exists() and not any((CLUSTER_HOME / "hpcgw-replicas").iterdir()):
        (CLUSTER_HOME / "hpcgw-replicas").rmdir()


def wait_for(predicate, timeout: float, what: str, period: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_the_script_starts_three_replicas_once_behind_one_balancer(replicas):
    again = replicas.script("up")
    assert again.returncode == 0, again.stderr
    assert len(re.findall(r"replica-\d: running \(pid", again.stdout)) == 3  # nothing started twice
    assert "balancer: running" in again.stdout
    status = replicas.script("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("/health 200") == 4
    # Round robin: consecutive requests through the balancer reach every replica.
    instances = {replicas.get("/stats").json()["instance"] for _ in range(6)}
    assert instances == {"replica-1", "replica-2", "replica-3"}
    names = {item["name"] for item in replicas.get("/infrastructure").json()}
    assert {"tb-slurm", "tb-pbs"} <= names


def test_a_killed_replica_has_its_polls_and_transfers_taken_over_and_nothing_is_done_twice(
        replicas, testbed, sources, cluster_dir):
    relative, absolute = cluster_dir
    tag = sources["tag"]
    jobs = []
    for index in range(2 * JOBS_PER_INFRA):
        infra = "tb-slurm" if index % 2 == 0 else "tb-pbs"
        script = f"mkdir -p ~/{relative}\necho once >> ~/{relative}/job-{index}.log\nsleep 1\n"
        response = replicas.post("/job", {"infrastructure": infra, "script": script, "name": f"rs{tag}-{index}",
                                          "watch_period": 1}, token="user")
        assert response.status_code == 201, response.text
        jobs.append(response.json())

    owner = wait_for(lambda: replicas.poll_owners().get("tb-slurm"), 30, "a replica polling tb-slurm")
    victim = int(owner.rsplit("-", 1)[1])
    survivors = [index for index in range(1, 4) if index != victim]
    # Transfers posted to the victim itself: its workers are woken by the request and claim them first.
    transfers = []
    for index, source in enumerate(sources["files"][:HTTP_FILES]):
        body = {"src": source["url"], "dst": f"{relative}/http-{index}.bin", "infrastructure": "tb-slurm"}
        transfers.append(("data", source, replicas.post("/data", body, replica=victim, token="user")))
    for index, source in enumerate(sources["files"][:S3_FILES]):
        body = {"endpoint": testbed["TESTBED_S3_ENDPOINT"], "bucket": sources["bucket"], "object": source["name"],
                "region": "us-east-1", "access_key": testbed["TESTBED_S3_ACCESS_KEY"],
                "secret_key": testbed["TESTBED_S3_SECRET_KEY"], "dst": f"{relative}/s3-{index}.bin",
                "infrastructure": "tb-pbs"}
        transfers.append(("s3_data", source, replicas.post("/s3_data", body, replica=victim, token="user")))
    for _, _, response in transfers:
        assert response.status_code == 201, response.text

    def victim_mid_transfer():
        held = {tid: lease for tid, lease in replicas.transfer_leases().items()
                if (lease[0] or "").startswith(f"replica-{victim}/") and lease[1] > 0}
        return held or None

    held = wait_for(victim_mid_transfer, 30, f"replica-{victim} moving bytes")
    before = {index: replicas.stats(index)["jobs"].get("tb-slurm", {}).get("status", 0) for index in survivors}

    killed_at = replicas.kill(victim)
    claimed = first_poll = first_transfer = None
    while first_poll is None or first_transfer is None or claimed is None:
        assert time.time() - killed_at < 90, f"no takeover 90 s after the kill (lease {LEASE} s)"
        now = time.time()
        if claimed is None and replicas.poll_owners()["tb-slurm"] in [f"replica-{i}" for i in survivors]:
            claimed = now - killed_at
        if first_poll is None and any(
                replicas.stats(index)["jobs"].get("tb-slurm", {}).get("status", 0) > before[index]
                for index in survivors):
            first_poll = now - killed_at
        leases = replicas.transfer_leases()
        # Claimed by a survivor's worker (a completed one can only have been finished by a survivor).
        if first_transfer is None and any(
                (leases[tid][0] or "").startswith(tuple(f"replica-{i}/" for i in survivors))
                or leases[tid][2] == "completed" for tid in held):
            first_transfer = now - killed_at
        time.sleep(0.1)
    print(f"replica-{victim} killed holding the tb-slurm poll lease and {len(held)} transfer(s); the poll lease "
          f"taken over after {claimed:.1f}s, first status command by a survivor after {first_poll:.1f}s (when a "
          f"submitted job was due), first transfer claimed after {first_transfer:.1f}s (lease {LEASE}s)")
    # Taken over once the lease ran out, not only when the victim comes back (with the 60 s poll lease
    # of old, this took up to a minute).
    assert claimed < LEASE + 15, claimed
    assert first_transfer < LEASE + 15, first_transfer

    # The balancer sends requests on to the survivors: no client sees the dead replica.
    codes = [replicas.get(f"/job/{jobs[i % len(jobs)]['id']}", token="user").status_code for i in range(12)]
    assert codes == [200] * 12

    for job in jobs:
        ended = wait_for(lambda: (lambda j: j if j["status"] == "completed" else None)(
            replicas.get(f"/job/{job['id']}", token="user").json()), 180, f"job {job['name']}", period=0.5)
        assert (ended["state"], ended["exit_code"]) == ("completed", 0), ended
    for index in range(len(jobs)):
        assert (absolute / f"job-{index}.log").read_text() == "once\n"
    names = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%j"], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(name for name in names if name.startswith(f"rs{tag}-")) == sorted(job["name"] for job in jobs)
    assert {len(ids) for ids in replicas.scheduler_ids().values()} == {1}

    completions = replicas.completions()
    for kind, source, response in transfers:
        record = wait_for(lambda: (lambda r: r if r["status"] != "transferring" else None)(
            replicas.get(f"/{kind}/{response.json()['id']}", token="user").json()), 120, f"transfer {source}")
        assert (record["state"], record["sha256"]) == ("completed", source["sha256"]), record
        assert completions[record["id"]] == 1
        if record["id"] in held:
            assert record["attempts"] >= 2, record  # resumed by a survivor

    # `up` brings the killed replica back, and only it.
    again = replicas.script("up")
    assert again.returncode == 0, again.stderr
    assert f"replica-{victim}: started" in again.stdout
    assert len(re.findall(r"replica-\d: running \(pid", again.stdout)) == 2

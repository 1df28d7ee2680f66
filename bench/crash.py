"""Crash consistency: ``kill -9`` of the gateway at random moments while jobs are being submitted and
single-file transfers (``POST /data``, ``POST /s3_data``) run, then a restart, many times over.

Each cycle submits jobs and transfers, waits a random time (seeded), kills the gateway with SIGKILL and
starts it again on the same database. At the end every job must have run exactly once (its script
appends a line to its own file on the cluster: one line, no more, no less) and ended ``completed``;
every transfer must have ended ``completed`` with the source's sha256 (checked again on the cluster)
or ``failed`` with a reason; nothing may be left active.

    .venv/bin/python bench/crash.py [--cycles 30] [--seed 1] [--jobs 3] [--transfers 2] [--smoke]

Prints its figures and exits 1 on any violation. src/tests/integration/test_crash_loop.py runs a short
version of it in the suite.
"""

from __future__ import annotations

import hashlib
import os
import random
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
from botocore.config import Config as BotoConfig

from common import arguments, start_gateway, testbed

SIZES = {"1m": 1 * 2**20, "16m": 16 * 2**20, "48m": 48 * 2**20}
ENDED_JOB = {"completed", "failed", "cancelled", "timeout", "unknown"}
ENDED_TRANSFER = {"completed", "failed", "cancelled"}


def ssh(bed: dict[str, str], command: str) -> str:
    argv = ["ssh", "-p", bed["TESTBED_SSH_PORT"], "-i", bed["TESTBED_SSH_KEY"], "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={bed['TESTBED_KNOWN_HOSTS']}",
            "-o", "StrictHostKeyChecking=yes", f"{bed['TESTBED_SSH_USER']}@{bed['TESTBED_SSH_HOST']}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout


def source_files(bed: dict[str, str], sizes: dict[str, int]) -> dict[str, dict]:
    """Random files served by nginx (made once, kept), with their sha256."""
    root = Path(bed["TESTBED_HTTP_ROOT"]) / "hpcgw-crash"
    root.mkdir(mode=0o755, exist_ok=True)
    files = {}
    for name, size in sizes.items():
        path, sidecar = root / f"{name}.bin", root / f"{name}.bin.sha256"
        if not (path.exists() and path.stat().st_size == size and sidecar.exists()):
            data = os.urandom(size)
            path.write_bytes(data)
            sidecar.write_text(hashlib.sha256(data).hexdigest())
        path.chmod(0o644)
        files[name] = {"path": path, "sha256": sidecar.read_text().strip(),
                       "url": f"{bed['TESTBED_HTTP_URL']}/hpcgw-crash/{name}.bin"}
    return files


def s3_client(bed: dict[str, str]):
    return boto3.client("s3", endpoint_url=bed["TESTBED_S3_ENDPOINT"], aws_access_key_id=bed["TESTBED_S3_ACCESS_KEY"],
                        aws_secret_access_key=bed["TESTBED_S3_SECRET_KEY"], region_name="us-east-1",
                        config=BotoConfig(s3={"addressing_style": "path"}))


def post(gateway, path: str, body: dict) -> dict:
    """POST through a restart: the gateway may be down for a moment; a 201 is expected."""
    deadline = time.monotonic() + 60
    while True:
        try:
            response = gateway.post(path, body, token="user", timeout=30)
            if response.status_code == 201:
                return response.json()
            raise AssertionError(f"POST {path}: {response.status_code} {response.text[:500]}")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run(cycles: int, seed: int, jobs_per_cycle: int, transfers_per_cycle: int, sizes: dict[str, int],
        max_delay: float, settle_timeout: float) -> dict:
    """The loop; returns its figures. Raises AssertionError naming the first violation."""
    bed = testbed()
    rng = random.Random(seed)
    run_id = f"crash-{uuid.uuid4().hex[:8]}"
    files = source_files(bed, sizes)
    s3 = s3_client(bed)
    bucket = f"hpcgw-{run_id}"
    s3.create_bucket(Bucket=bucket)
    for name, info in files.items():
        s3.upload_file(str(info["path"]), bucket, f"in/{name}.bin")
    ssh(bed, f"mkdir -p {run_id}")
    gateway = start_gateway(bed, HPC_LOG_LEVEL="INFO", HPC_TRANSFER_LEASE_SECONDS="3",
                            HPC_TRANSFER_RETRY_DELAY="0.2")
    jobs: list[dict] = []
    transfers: list[dict] = []
    started = time.monotonic()
    kills = 0
    try:
        for cycle in range(cycles):
            for _ in range(jobs_per_cycle):
                token = uuid.uuid4().hex
                job = post(gateway, "/job", {"infrastructure": rng.choice(["tb-slurm", "tb-pbs"]), "watch_period": 1,
                                             "name": f"{run_id}-{cycle}",
                                             "script": f"echo ran >> ~/{run_id}/{token}\n"})
                jobs.append({"id": job["id"], "token": token})
            for index in range(transfers_per_cycle):
                name = rng.choice(sorted(files))
                dst = f"{run_id}/t{cycle}-{index}-{name}.bin"
                if rng.random() < 0.5:
                    body = {"src": files[name]["url"], "dst": dst, "infrastructure": "tb-slurm"}
                    kind, path = "http", "/data"
                else:
                    body = {"endpoint": bed["TESTBED_S3_ENDPOINT"], "bucket": bucket, "object": f"in/{name}.bin",
                            "region": "us-east-1", "access_key": bed["TESTBED_S3_ACCESS_KEY"],
                            "secret_key": bed["TESTBED_S3_SECRET_KEY"], "dst": dst, "infrastructure": "tb-pbs"}
                    kind, path = "s3_data", "/s3_data"
                record = post(gateway, path, body)
                transfers.append({"id": record["id"], "kind": kind, "path": path, "dst": dst,
                                  "sha256": files[name]["sha256"]})
            time.sleep(rng.uniform(0, max_delay))
            gateway.kill()
            kills += 1
            gateway.start()
        outcome = settle(gateway, jobs, transfers, settle_timeout)
        check(bed, run_id, jobs, transfers, outcome)
    finally:
        gateway.stop()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=bucket)
        ssh(bed, f"rm -rf {shlex.quote(run_id)}")
    completed = sum(1 for t in outcome["transfers"].values() if t["state"] == "completed")
    return {"cycles": cycles, "kills": kills, "seed": seed, "jobs": len(jobs), "transfers": len(transfers),
            "transfers_completed": completed, "transfers_failed": len(transfers) - completed,
            "duration": time.monotonic() - started, "settle": outcome["settle"]}


def settle(gateway, jobs: list[dict], transfers: list[dict], timeout: float) -> dict:
    """Waits until every job and transfer has ended; AssertionError names what is stuck."""
    begun = time.monotonic()
    while True:
        job_states = {j["id"]: gateway.get(f"/job/{j['id']}", token="user").json() for j in jobs}
        transfer_states = {t["id"]: gateway.get(f"{t['path']}/{t['id']}", token="user").json() for t in transfers}
        active = [r for r in job_states.values() if r["state"] not in ENDED_JOB]
        active += [r for r in transfer_states.values() if r["state"] not in ENDED_TRANSFER]
        if not active:
            return {"jobs": job_states, "transfers": transfer_states, "settle": time.monotonic() - begun}
        if time.monotonic() - begun > timeout:
            raise AssertionError(f"{len(active)} still active after {timeout:.0f} s, e.g. {active[0]}")
        time.sleep(1)


def check(bed: dict[str, str], run_id: str, jobs: list[dict], transfers: list[dict], outcome: dict) -> None:
    lines = ssh(bed, f"cd {shlex.quote(run_id)} && for f in *; do [ -f \"$f\" ] && printf '%s %s\\n' \"$f\" "
                     "\"$(wc -l < \"$f\")\"; done")
    runs = {name: int(count) for name, count in (line.split() for line in lines.splitlines())}
    for job in jobs:
        record = outcome["jobs"][job["id"]]
        assert (record["state"], record["exit_code"]) == ("completed", 0), f"job did not complete: {record}"
        assert runs.get(job["token"]) == 1, f"job {job['id']} ran {runs.get(job['token'], 0)} times"
    sums = ssh(bed, f"cd {shlex.quote(run_id)} && sha256sum t*.bin 2>/dev/null || true")
    on_cluster = {path: digest for digest, path in (line.split() for line in sums.splitlines())}
    for transfer in transfers:
        record = outcome["transfers"][transfer["id"]]
        if record["state"] == "completed":
            assert record["sha256"] == transfer["sha256"], f"wrong sha256 reported: {record}"
            assert on_cluster.get(transfer["dst"].split("/", 1)[1]) == transfer["sha256"], f"wrong bytes: {record}"
        else:
            assert record["state"] == "failed" and record.get("reason"), f"transfer ended without a reason: {record}"


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=3, help="jobs submitted per cycle")
    parser.add_argument("--transfers", type=int, default=2, help="transfers started per cycle")
    parser.add_argument("--max-delay", type=float, default=2.0, help="longest wait before a kill (s)")
    args = parser.parse_args()
    sizes = SIZES if not args.smoke else {"1m": SIZES["1m"]}
    cycles = 2 if args.smoke else args.cycles
    try:
        figures = run(cycles, args.seed, args.jobs, args.transfers, sizes, args.max_delay,
                      settle_timeout=120 + 20 * cycles)
    except AssertionError as exc:
        print(f"VIOLATION: {exc}")
        return 1
    print(f"# crash consistency: kill -9 at random moments (seed {figures['seed']}), restart, check")
    print(f"cycles {figures['cycles']}  kills {figures['kills']}  jobs {figures['jobs']} (each ran exactly once)  "
          f"transfers {figures['transfers']} (completed {figures['transfers_completed']}, "
          f"failed with a reason {figures['transfers_failed']})  stuck 0")
    print(f"duration {figures['duration']:.0f} s, settled {figures['settle']:.0f} s after the last restart")
    return 0


if __name__ == "__main__":
    sys.exit(main())

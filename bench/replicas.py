"""Three replicas behind nginx at scale: 10,000 tracked jobs, 50 transfers, one replica killed mid-flow.

Starts ``scripts/replicas.sh`` (its own directory, ports and a fresh PostgreSQL database), registers the
testbed as tb-slurm and tb-pbs, and then:

1. submits ``--jobs`` jobs through the balancer, half to each infrastructure, into the testbed's
   ``parked`` Slurm partition (State=DOWN: they stay queued and take no CPU from other tests), and times
   the POSTs and the submissions;
2. counts the status commands of all replicas together (``GET /stats`` of each, summed) over a window:
   the reference is one command per infrastructure per period;
3. starts ``--transfers`` transfers (HTTP from the testbed's nginx, S3 from moto, 1-32 MiB, read at
   ``--rate`` each) and a stream of short ``--runners`` jobs that each append a line to a file of their own,
   then ``kill -9`` the replica holding the tb-slurm poll lease while it moves bytes;
4. measures the takeover: from the kill to a survivor's claim of the lease and first status command
   (polls), to a survivor's claim and first progress write (transfers), to the submission of the jobs whose
   submission the killed replica held; GET /job/{id} latency through the balancer before, during
   (kill to takeover) and after, at a fixed rate;
5. checks nothing is lost or done twice: every runner completed once (one line in its file, one Slurm
   job of its name, one scheduler id), every parked job is in Slurm once, every transfer completed once
   with its source's sha256 (checked again on the cluster); counts the status commands after the kill;
6. cancels every job through the API and waits until each is tracked to ``cancelled``, then cleans up
   (Slurm jobs of this run, cluster files, sources, the database) so the shared testbed stays usable.

    .venv/bin/python bench/replicas.py [--jobs 10000] [--transfers 50] [--period 30] [--smoke]
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import requests
import sqlalchemy as sa
from botocore.config import Config as BotoConfig

from common import arguments, testbed

from tests.replica_set import ReplicaSet  # noqa: E402 (common puts src on the path)

MiB = 1024 * 1024
SIZES = [1, 4, 8, 16, 32]  # MiB, cycled over the transfers
CLUSTER_HOME = Path("/home/hpcuser")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def ssh(bed: dict[str, str], command: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """A command on the cluster as its user, with OpenSSH (independently of the gateway)."""
    return subprocess.run(
        ["ssh", "-p", bed["TESTBED_SSH_PORT"], "-i", bed["TESTBED_SSH_KEY"], "-o", "BatchMode=yes",
         "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={bed['TESTBED_KNOWN_HOSTS']}",
         "-o", "StrictHostKeyChecking=yes", f"{bed['TESTBED_SSH_USER']}@{bed['TESTBED_SSH_HOST']}", command],
        capture_output=True, text=True, timeout=timeout)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def check_slurm(jobs: int) -> None:
    partition = subprocess.run(["sinfo", "-h", "-p", "parked", "-o", "%a"], capture_output=True, text=True).stdout
    if partition.strip() != "down":
        # A testbed brought up by an older checkout: the partition is made for this run only (until the
        # next slurmctld restart); bash testbed/up.sh from this checkout writes it into slurm.conf.
        made = subprocess.run(["scontrol", "create", "PartitionName=parked", "Nodes=localhost", "State=DOWN",
                               "MaxTime=INFINITE"], capture_output=True, text=True)
        if made.returncode != 0:
            sys.exit("the testbed's Slurm has no DOWN partition 'parked' and scontrol could not make one "
                     f"({made.stderr.strip()}): run bash testbed/up.sh from this checkout")
        say("made the DOWN partition 'parked' with scontrol (slurm.conf lacks it: testbed/up.sh of an older "
            "checkout); it lasts until slurmctld restarts")
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    limit = next(int(line.split("=")[1]) for line in config.splitlines() if line.startswith("MaxJobCount"))
    if limit < jobs + 2000:
        sys.exit(f"Slurm's MaxJobCount is {limit}, below {jobs} jobs + 2000 for everyone else: run "
                 "bash testbed/up.sh from this checkout (it raises it to 50000)")


class LatencyProbe:
    """GET /job/{id} through the balancer at a fixed rate; keeps (start time, seconds, status)."""

    def __init__(self, replicas: ReplicaSet, job_ids: list[str], rate: float, threads: int = 8):
        self.replicas, self.job_ids, self.rate, self.threads = replicas, job_ids, rate, threads
        self.samples: list[tuple[float, float, str]] = []
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        for number in range(self.threads):
            worker = threading.Thread(target=self._run, args=(number,), daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join()

    def _run(self, number: int) -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {self.replicas.tokens['user']}"}
        interval = self.threads / self.rate
        due = time.time() + number * interval / self.threads
        pick = random.Random(number)
        while not self._stop.is_set():
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            due += interval
            started = time.time()
            try:
                response = session.get(f"{self.replicas.url}/job/{pick.choice(self.job_ids)}", headers=headers,
                                       timeout=30)
                outcome = str(response.status_code)
            except requests.RequestException as exc:
                outcome = type(exc).__name__
            self.samples.append((started, time.time() - started, outcome))

    def window(self, start: float, end: float) -> dict:
        inside = [s for s in self.samples if start <= s[0] < end]
        good = [s[1] * 1000 for s in inside if s[2] == "200"]
        return {"requests": len(inside), "errors": len(inside) - len(good),
                "p50_ms": round(percentile(good, 0.50), 1), "p99_ms": round(percentile(good, 0.99), 1),
                "max_ms": round(max(good), 1) if good else None}


def status_counts(snapshot: dict[int, dict | None]) -> dict[str, int]:
    """Status commands per infrastructure, summed over the replicas of one snapshot."""
    total: dict[str, int] = {}
    for stats in snapshot.values():
        for infra, counters in ((stats or {}).get("jobs") or {}).items():
            total[infra] = total.get(infra, 0) + counters.get("status", 0)
    return total


class Bench:
    def __init__(self, args, bed: dict[str, str]):
        self.args, self.bed = args, bed
        self.run = f"rb{uuid.uuid4().hex[:8]}"
        self.report: dict = {"run": self.run, "jobs": args.jobs, "transfers": args.transfers,
                             "runners": args.runners, "period_s": args.period, "leases_s": {}}
        self.server = bed["TESTBED_PG_URL"]
        self.database = f"hpc_bench_{self.run}"
        self.job_root = f".hpc-gateway/bench-{self.run}"
        self.data_dir = f"bench-{self.run}"
        self.www = Path(bed["TESTBED_HTTP_ROOT"]) / f"bench-{self.run}"
        self.bucket = f"bench-{self.run}"
        self.s3 = boto3.client("s3", endpoint_url=bed["TESTBED_S3_ENDPOINT"], region_name="us-east-1",
                               aws_access_key_id=bed["TESTBED_S3_ACCESS_KEY"],
                               aws_secret_access_key=bed["TESTBED_S3_SECRET_KEY"],
                               config=BotoConfig(s3={"addressing_style": "path"}))
        self.replicas: ReplicaSet | None = None
        self.sources: list[dict] = []
        self.parked: list[dict] = []

    # -- setup --------------------------------------------------------------------------------

    def setup(self) -> None:
        admin = sa.create_engine(self.server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.database}"'))
        admin.dispose()
        self.www.mkdir(mode=0o755)
        self.s3.create_bucket(Bucket=self.bucket)
        for index in range(self.args.transfers):
            data = os.urandom(SIZES[index % len(SIZES)] * MiB // (8 if self.args.smoke else 1))
            name = f"f{index}.bin"
            if index % 2 == 0:
                (self.www / name).write_bytes(data)
                (self.www / name).chmod(0o644)
            else:
                self.s3.put_object(Bucket=self.bucket, Key=name, Body=data)
            self.sources.append({"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                 "kind": "data" if index % 2 == 0 else "s3_data"})
        leases = {"HPC_POLL_LEASE_SECONDS": self.args.poll_lease, "HPC_SUBMIT_LEASE_SECONDS": self.args.submit_lease,
                  "HPC_TRANSFER_LEASE_SECONDS": self.args.transfer_lease}
        settings = {key: str(value) for key, value in leases.items() if value}
        self.report["leases_s"] = settings or "defaults"
        settings.update(HPC_TRANSFER_MAX_RATE=self.args.rate, HPC_MIN_WATCH_PERIOD="1",
                        HPC_SSH_COMMAND_TIMEOUT=self.args.ssh_timeout)
        url = self.server.rsplit("/", 1)[0] + "/" + self.database
        self.replicas = ReplicaSet(Path(self.args.dir), self.args.port, url, register=False, settings=settings)
        started = time.time()
        self.replicas.up()
        say(f"3 replicas up behind {self.replicas.url} in {time.time() - started:.1f}s (run {self.run})")
        for name, scheduler in (("tb-slurm", "slurm"), ("tb-pbs", "pbs")):
            response = self.replicas.post("/infrastructure", {
                "name": name, "host": self.bed["TESTBED_SSH_HOST"], "port": int(self.bed["TESTBED_SSH_PORT"]),
                "username": self.bed["TESTBED_SSH_USER"], "hostname": self.bed["TESTBED_HOSTNAME"],
                "scheduler": scheduler, "ssh_key": {"type": "ssh-ed25519", "path": "testbed_ed25519"},
                "settings": {"mpi_launcher": "", "job_root": self.job_root}})
            if response.status_code != 201:
                raise RuntimeError(f"registering {name}: {response.status_code} {response.text}")

    # -- phases -------------------------------------------------------------------------------

    def submit_parked(self) -> None:
        replicas, n = self.replicas, self.args.jobs

        def one(index: int) -> dict:
            body = {"infrastructure": "tb-slurm" if index % 2 == 0 else "tb-pbs", "name": f"{self.run}-p{index}",
                    "script": "sleep 3600\n", "watch_period": self.args.period,
                    "resources": {"partition": "parked", "walltime": "02:00:00"}}
            for _ in range(5):
                response = replicas.post("/job", body, token="user")
                if response.status_code == 201:
                    return response.json()
                time.sleep(1)
            raise RuntimeError(f"POST /job: {response.status_code} {response.text}")

        started = time.time()
        with ThreadPoolExecutor(32) as pool:
            self.parked = list(pool.map(one, range(n)))
        posted = time.time() - started
        say(f"{n} jobs accepted in {posted:.1f}s ({n / posted:.0f} POST/s)")
        shown = time.time()
        while True:
            left = replicas.job_states().get("submitting", 0)
            if not left:
                break
            if time.time() - shown >= 10:
                say(f"  submitting: {left} left")
                shown = time.time()
            time.sleep(1)
        submitted = time.time() - started
        say(f"{n} jobs submitted to the schedulers {submitted:.1f}s after the first POST ({n / submitted:.0f}/s)")
        self.report["submission"] = {"post_s": round(posted, 1), "post_per_s": round(n / posted),
                                     "all_submitted_s": round(submitted, 1),
                                     "submitted_per_s": round(n / submitted, 1)}

    def snapshot(self) -> dict[int, dict | None]:
        return {index: self.replicas.stats(index) for index in range(1, self.replicas.count + 1)}

    def poll_window(self, seconds: float, label: str) -> dict:
        """Status commands of all replicas together per infrastructure and period, and the longest poll.

        A poll lease is renewed every 0.5 s between polls and every third of its length during one, so a
        run of renewal gaps longer than a second is a poll in progress: its length, to within a third of
        the lease, is the sum of that run."""
        before = self.snapshot()
        gaps: dict[str, list[tuple[float, bool]]] = {"tb-slurm": [], "tb-pbs": []}
        last: dict[str, tuple] = {}
        end = time.time() + seconds
        with self.replicas.engine.connect() as conn:
            while time.time() < end:
                rows = conn.execute(sa.text("SELECT name, poll_until FROM infrastructures")).all()
                conn.commit()
                now = time.time()
                for name, until in rows:
                    if name in last and last[name][0] != until:
                        gap = now - last[name][1]
                        polls = gaps[name]
                        if gap > 1.0 and polls and polls[-1][1]:
                            polls[-1] = (polls[-1][0] + gap, True)  # the same poll goes on
                        else:
                            polls.append((gap, gap > 1.0))
                    if name not in last or last[name][0] != until:
                        last[name] = (until, now)
                time.sleep(0.1)
        after = self.snapshot()
        alive = [i for i in after if after[i] is not None and before[i] is not None]
        counts = status_counts({i: after[i] for i in alive})
        base = status_counts({i: before[i] for i in alive})
        periods = seconds / self.args.period
        result = {}
        for infra in ("tb-slurm", "tb-pbs"):
            commands = counts.get(infra, 0) - base.get(infra, 0)
            result[infra] = {"status_commands": commands, "per_period": round(commands / periods, 2),
                             "longest_poll_s": round(max(g for g, _ in gaps[infra]), 1) if gaps[infra] else None}
        per_replica = {f"replica-{i}": {k: v - status_counts({i: before[i]}).get(k, 0)
                                        for k, v in status_counts({i: after[i]}).items()} for i in alive}
        say(f"poll cost {label} ({seconds:.0f}s, period {self.args.period}s, replicas {alive}): "
            + ", ".join(f"{k} {v['status_commands']} commands = {v['per_period']}/period, longest poll "
                        f"{v['longest_poll_s']}s" for k, v in result.items()) + f"; per replica {per_replica}")
        return {"window_s": seconds, "replicas": alive, **result, "per_replica": per_replica}

    def start_transfers(self) -> list[dict]:
        def one(index: int) -> dict:
            source = self.sources[index]
            dst = f"{self.data_dir}/{source['name']}"
            if source["kind"] == "data":
                body = {"src": f"{self.bed['TESTBED_HTTP_URL']}/{self.www.name}/{source['name']}", "dst": dst,
                        "infrastructure": "tb-slurm"}
            else:
                body = {"endpoint": self.bed["TESTBED_S3_ENDPOINT"], "bucket": self.bucket, "object": source["name"],
                        "region": "us-east-1", "access_key": self.bed["TESTBED_S3_ACCESS_KEY"],
                        "secret_key": self.bed["TESTBED_S3_SECRET_KEY"], "dst": dst, "infrastructure": "tb-pbs"}
            response = self.replicas.post(f"/{source['kind']}", body, token="user")
            if response.status_code != 201:
                raise RuntimeError(f"POST /{source['kind']}: {response.status_code} {response.text}")
            return {**source, "id": response.json()["id"], "dst": dst}

        with ThreadPoolExecutor(10) as pool:
            return list(pool.map(one, range(self.args.transfers)))

    def runner_stream(self, count: int, seconds: float, outcomes: list) -> threading.Thread:
        """POSTs ``count`` short jobs evenly over ``seconds`` (across the kill); 502s are counted, not retried."""
        def run() -> None:
            for index in range(count):
                name = f"{self.run}-r{index}"
                script = (f"mkdir -p ~/{self.data_dir}/runs\necho once >> ~/{self.data_dir}/runs/{name}.log\n"
                          "sleep 1\n")
                body = {"infrastructure": "tb-slurm" if index % 2 == 0 else "tb-pbs", "name": name,
                        "script": script, "watch_period": self.args.period}
                try:
                    response = self.replicas.post("/job", body, token="user", timeout=30)
                    outcomes.append((time.time(), name, response.status_code))
                except requests.RequestException as exc:
                    outcomes.append((time.time(), name, type(exc).__name__))
                time.sleep(seconds / count)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def kill_and_measure(self, transfers: list[dict]) -> dict:
        replicas = self.replicas
        # The victim: a replica holding a poll lease (tb-slurm's first) and transfers mid-flow; after 20 s
        # without such a moment, the tb-slurm poller whatever it holds.
        deadline = time.time() + 20
        while True:
            owners = replicas.poll_owners()
            leases = replicas.transfer_leases()
            moving: dict[str, dict] = {}
            for tid, lease in leases.items():
                if lease[0] and lease[1] > 0 and lease[2] != "completed":
                    moving.setdefault(lease[0].split("/")[0], {})[tid] = lease
            candidates = [owners.get(name) for name in ("tb-slurm", "tb-pbs") if moving.get(owners.get(name) or "")]
            if candidates or time.time() > deadline:
                victim_name = candidates[0] if candidates else owners.get("tb-slurm")
                break
            time.sleep(0.2)
        victim = int(victim_name.rsplit("-", 1)[1])
        survivors = [i for i in range(1, replicas.count + 1) if i != victim]
        before = self.snapshot()
        killed_at = replicas.kill(victim)
        # What it held when it died, read once it is dead (it changes nothing any more).
        owners = replicas.poll_owners()
        infras = sorted(name for name, owner in owners.items() if owner == victim_name)
        held = {tid: lease for tid, lease in replicas.transfer_leases().items()
                if (lease[0] or "").startswith(f"{victim_name}/") and lease[2] not in ("completed", "failed",
                                                                                       "cancelled")}
        submissions = {job for job, owner in replicas.submission_leases().items() if owner == victim_name}
        say(f"kill -9 {victim_name}: it held the poll lease of {infras}, {len(held)} transfer(s) mid-flow, "
            f"{len(submissions)} submission(s)")
        survivor_prefixes = tuple(f"replica-{i}" for i in survivors)
        poll_claim: dict[str, float] = {}
        poll_first: dict[str, float] = {}
        transfer_claim: dict[str, float] = {}
        transfer_bytes: dict[str, float] = {}
        claimed_at_bytes: dict[str, int] = {}
        submitted: dict[str, float] = {}
        limit = killed_at + 4 * max(float(self.args.poll_lease or 30), float(self.args.transfer_lease or 30),
                                    float(self.args.submit_lease or 60))
        base = status_counts({i: before[i] for i in survivors})
        while time.time() < limit:
            now = time.time() - killed_at
            owners = replicas.poll_owners()
            counts = status_counts({i: replicas.stats(i) for i in survivors})
            for infra in infras:
                if infra not in poll_claim and (owners.get(infra) or "").startswith(survivor_prefixes):
                    poll_claim[infra] = now
                if infra not in poll_first and counts.get(infra, 0) > base.get(infra, 0):
                    poll_first[infra] = now
            leases = replicas.transfer_leases()
            for tid in held:
                owner, done, state = leases[tid]
                if tid not in transfer_claim and (owner or "").startswith(survivor_prefixes):
                    transfer_claim[tid], claimed_at_bytes[tid] = now, done
                if tid not in transfer_claim and state == "completed":
                    transfer_claim[tid] = now
                # The survivor's first progress write (from the transfer's checkpoint, which may lie below
                # the bytes the killed replica had reported).
                if tid in transfer_claim and tid not in transfer_bytes and (
                        state == "completed" or done != claimed_at_bytes.get(tid, done)):
                    transfer_bytes[tid] = now
            if submissions:
                waiting = set(replicas.submission_leases()) | {
                    job for job, state in self._job_states(submissions).items() if state == "submitting"}
                for job in submissions - waiting:
                    submitted.setdefault(job, now)
            if (len(poll_first) == len(infras) and len(transfer_bytes) == len(held)
                    and len(submitted) == len(submissions)):
                break
            time.sleep(0.2)
        done_at = time.time()

        def spread(values) -> dict | None:
            values = sorted(values)
            return {"first_s": round(values[0], 1), "last_s": round(values[-1], 1), "n": len(values)} if values else None

        result = {
            "victim": victim_name, "killed_at": killed_at, "takeover_done_at": done_at,
            "polls": {infra: {"lease_claimed_s": round(poll_claim[infra], 1) if infra in poll_claim else None,
                              "first_status_command_s": round(poll_first[infra], 1) if infra in poll_first else None}
                      for infra in infras},
            "transfers_held": len(held),
            "transfers_claimed": spread(transfer_claim.values()),
            "transfers_first_progress": spread(transfer_bytes.values()),
            "submissions_held": len(submissions),
            "submissions_done": spread(submitted.values()),
        }
        say(f"takeover: {json.dumps({k: v for k, v in result.items() if k not in ('killed_at', 'takeover_done_at')})}")
        return result

    def _job_states(self, ids: set[str]) -> dict[str, str]:
        with self.replicas.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, state FROM jobs WHERE id = ANY(:ids)"), {"ids": list(ids)}).all()
        return dict(rows)

    def wait_transfers(self, transfers: list[dict]) -> list[dict]:
        records = []
        for transfer in transfers:
            deadline = time.time() + 600
            while True:
                record = self.replicas.get(f"/{transfer['kind']}/{transfer['id']}", token="user").json()
                if record["status"] != "transferring":
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"transfer {transfer['id']} did not end: {record}")
                time.sleep(0.5)
            records.append(record)
        return records

    def wait_runners(self) -> list[dict]:
        deadline = time.time() + 600 + 3 * self.args.period
        while True:
            with self.replicas.engine.connect() as conn:
                rows = [dict(r._mapping) for r in conn.execute(sa.text(
                    "SELECT id, name, state, exit_code, scheduler_id FROM jobs WHERE name LIKE :p"),
                    {"p": f"{self.run}-r%"})]
            if all(r["state"] in ("completed", "failed", "cancelled", "timeout", "unknown") for r in rows):
                return rows
            if time.time() > deadline:
                raise RuntimeError(f"runner jobs did not end: {[r for r in rows if r['state'] != 'completed']}")
            time.sleep(1)

    def verify(self, transfers: list[dict], records: list[dict], runners: list[dict]) -> dict:
        problems = []
        # Transfers: completed once, with the source's sha256, and the same bytes on the cluster.
        completions = self.replicas.completions()
        for transfer, record in zip(transfers, records):
            if (record["state"], record["sha256"]) != ("completed", transfer["sha256"]):
                problems.append(f"transfer {transfer['id']}: {record['state']} sha256 {record['sha256']}")
            if completions[transfer["id"]] != 1:
                problems.append(f"transfer {transfer['id']} completed {completions[transfer['id']]} times")
        listing = ssh(self.bed, f"cd {self.data_dir} && sha256sum f*.bin").stdout
        on_cluster = {line.split()[1]: line.split()[0] for line in listing.splitlines()}
        for transfer in transfers:
            if on_cluster.get(transfer["name"]) != transfer["sha256"]:
                problems.append(f"{transfer['dst']} on the cluster: sha256 {on_cluster.get(transfer['name'])}")
        # Runner jobs: each completed, ran once (one line in its file) and was submitted once.
        lines = ssh(self.bed, f"cd {self.data_dir}/runs && wc -l {self.run}-r*.log").stdout
        counted = {line.split()[1][:-4]: int(line.split()[0]) for line in lines.splitlines()
                   if line.strip() and not line.strip().endswith(" total")}
        for runner in runners:
            if (runner["state"], runner["exit_code"]) != ("completed", 0):
                problems.append(f"runner {runner['name']}: {runner['state']} exit {runner['exit_code']}")
            if counted.get(runner["name"]) != 1:
                problems.append(f"runner {runner['name']} ran {counted.get(runner['name'])} times")
        names = ssh(self.bed, "squeue -h -t all -o %j").stdout.split()
        in_slurm: dict[str, int] = {}
        for name in names:
            if name.startswith(f"{self.run}-"):
                in_slurm[name] = in_slurm.get(name, 0) + 1
        with self.replicas.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT name, scheduler_id, state, reason FROM jobs")).all()
        # Every job the gateway submitted must be in Slurm once; one it could not submit ended with a reason.
        expected = {name for name, scheduler_id, _, _ in rows if scheduler_id}
        refused: dict[str, int] = {}
        for _, scheduler_id, state, reason in rows:
            if not scheduler_id:
                key = f"{state}: {reason}"
                refused[key] = refused.get(key, 0) + 1
        twice = sorted(name for name, count in in_slurm.items() if count > 1)
        missing = sorted(expected - set(in_slurm))
        if twice:
            problems.append(f"{len(twice)} job names twice in Slurm, e.g. {twice[:5]}")
        if missing:
            problems.append(f"{len(missing)} jobs missing in Slurm, e.g. {missing[:5]}")
        ids = self.replicas.scheduler_ids()
        several = [job for job, found in ids.items() if len(found) > 1]
        if several:
            problems.append(f"{len(several)} jobs with two scheduler ids, e.g. {several[:3]}")
        states = self.replicas.job_states()
        result = {"transfers_completed_once_sha256_ok": sum(
            1 for t, r in zip(transfers, records) if r["state"] == "completed" and r["sha256"] == t["sha256"]
            and completions[t["id"]] == 1),
            "runners_completed_once": sum(1 for r in runners if r["state"] == "completed"
                                          and counted.get(r["name"]) == 1),
            "runners": len(runners), "jobs_in_slurm_once": sum(1 for n in expected if in_slurm.get(n) == 1),
            "jobs_expected_in_slurm": len(expected), "job_states": dict(states), "never_submitted": refused,
            "problems": problems}
        say(f"checks: {json.dumps({k: v for k, v in result.items() if k != 'problems'})}")
        for problem in problems:
            say(f"PROBLEM: {problem}")
        return result

    def cancel_all(self) -> dict:
        started = time.time()

        def one(job: dict) -> int:
            return self.replicas.request("DELETE", f"/job/{job['id']}", token="user").status_code

        with ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(one, self.parked))
        requested = time.time() - started
        say(f"{len(codes)} DELETE /job in {requested:.1f}s: {dict((c, codes.count(c)) for c in set(codes))}")
        deadline = time.time() + 900
        shown = time.time()
        while True:
            states = self.replicas.job_states()
            active = sum(v for k, v in states.items() if k not in ("completed", "failed", "cancelled", "timeout",
                                                                    "unknown"))
            if not active or time.time() > deadline:
                break
            if time.time() - shown >= 10:
                say(f"  still active: {active}")
                shown = time.time()
            time.sleep(1)
        tracked = time.time() - started
        say(f"every job tracked to its end {tracked:.1f}s after the first DELETE: {dict(states)}")
        return {"delete_s": round(requested, 1), "all_ended_s": round(tracked, 1), "states": dict(states),
                "active_left": active}

    def cleanup(self) -> None:
        say("cleaning up: this run's Slurm jobs, cluster files, sources, replicas, database")
        names = ssh(self.bed, f"squeue -h -t PENDING,RUNNING -o '%i %j' | grep ' {self.run}-' | cut -d' ' -f1"
                    ).stdout.split()
        for start in range(0, len(names), 1000):
            ssh(self.bed, "scancel " + " ".join(names[start:start + 1000]))
        ssh(self.bed, f"rm -rf {self.job_root} {self.data_dir}")
        shutil.rmtree(self.www, ignore_errors=True)
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
                for item in page.get("Contents", []):
                    self.s3.delete_object(Bucket=self.bucket, Key=item["Key"])
            self.s3.delete_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001 - best effort, reported
            say(f"S3 cleanup: {exc}")
        if self.replicas:
            say(self.replicas.down().strip().splitlines()[-1])
        if not self.args.keep:
            admin = sa.create_engine(self.server, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
            admin.dispose()
            shutil.rmtree(self.args.dir, ignore_errors=True)


def main() -> int:
    parser = arguments(__doc__, rounds=1)
    parser.add_argument("--jobs", type=int, default=10000, help="parked jobs tracked (half per infrastructure)")
    parser.add_argument("--transfers", type=int, default=50)
    parser.add_argument("--runners", type=int, default=40, help="short jobs submitted across the kill")
    parser.add_argument("--period", type=float, default=30.0, help="watch_period of every job (s)")
    parser.add_argument("--window", type=float, default=0, help="poll-cost window (s); default 4 periods")
    parser.add_argument("--rate", default="4MB", help="HPC_TRANSFER_MAX_RATE: bytes/s read per transfer")
    parser.add_argument("--latency-rate", type=float, default=40.0, help="GET /job/{id} per second")
    parser.add_argument("--poll-lease", default="", help="HPC_POLL_LEASE_SECONDS (default: the gateway's)")
    parser.add_argument("--submit-lease", default="", help="HPC_SUBMIT_LEASE_SECONDS")
    parser.add_argument("--transfer-lease", default="", help="HPC_TRANSFER_LEASE_SECONDS")
    parser.add_argument("--ssh-timeout", default="300", help="HPC_SSH_COMMAND_TIMEOUT: the testbed's Torque "
                        "wrapper (Perl) needs 60-110 s here for one qstat -f of 5,000 ids")
    parser.add_argument("--port", type=int, default=8290, help="the balancer; replicas on +1..+3")
    parser.add_argument("--dir", default="/var/lib/hpc-replicas-bench")
    parser.add_argument("--json", help="write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the database and the replica directory")
    args = parser.parse_args()
    if args.smoke:
        args.jobs, args.transfers, args.runners, args.period = 40, 4, 4, 4.0
        args.poll_lease = args.poll_lease or "5"
        args.submit_lease = args.submit_lease or "5"
        args.transfer_lease = args.transfer_lease or "5"
        args.rate, args.latency_rate = "256KB", 10.0
    window = args.window or (2 if args.smoke else 4) * args.period
    bed = testbed()
    check_slurm(args.jobs)
    bench = Bench(args, bed)
    say(f"load before: {open('/proc/loadavg').read().split()[:3]}")
    try:
        bench.setup()
        bench.submit_parked()
        probe = LatencyProbe(bench.replicas, [job["id"] for job in bench.parked], args.latency_rate)
        probe.start()
        time.sleep(args.period + 2)  # every job polled once since its submission
        bench.report["poll_before"] = bench.poll_window(window, "before the kill")
        runner_outcomes: list = []
        stream = bench.runner_stream(args.runners, 4.0 if args.smoke else 10.0, runner_outcomes)
        transfers = bench.start_transfers()
        say(f"{len(transfers)} transfers started")
        time.sleep(3)
        takeover = bench.kill_and_measure(transfers)
        bench.report["takeover"] = {k: v for k, v in takeover.items() if not k.endswith("_at")}
        stream.join()
        records = bench.wait_transfers(transfers)
        runners = bench.wait_runners()
        say(f"transfers and runners ended {time.time() - takeover['killed_at']:.1f}s after the kill")
        bench.report["poll_after"] = bench.poll_window(window, "after the kill")
        probe.stop()
        killed = takeover["killed_at"]
        bench.report["latency_get_job"] = {
            "before": probe.window(killed - window, killed),
            "during": probe.window(killed, takeover["takeover_done_at"]),
            "after": probe.window(takeover["takeover_done_at"], time.time()),
        }
        say(f"GET /job/{{id}} through the balancer at {args.latency_rate}/s: "
            f"{json.dumps(bench.report['latency_get_job'])}")
        posts = [o for o in runner_outcomes if o[2] != 201]
        bench.report["runner_posts_failed"] = [(round(t - killed, 2), name, code) for t, name, code in posts]
        bench.report["checks"] = bench.verify(transfers, records, runners)
        started = time.time()
        bench.replicas.up()
        say(f"replicas.sh up restarted {takeover['victim']} in {time.time() - started:.1f}s")
        bench.report["cancel"] = bench.cancel_all()
    finally:
        bench.cleanup()
        say(f"load after: {open('/proc/loadavg').read().split()[:3]}")
    report = bench.report
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    before, after = report["poll_before"], report["poll_after"]
    print(f"\n# {args.jobs} jobs, {args.transfers} transfers, 3 replicas behind nginx, watch_period {args.period}s")
    for infra in ("tb-slurm", "tb-pbs"):
        for label, window_report in (("before kill", before), ("after kill", after)):
            measured = window_report[infra]["per_period"]
            print(f"poll cost {infra:<8} {label:<11} {measured:5.2f} status commands/period, all replicas  "
                  f"ratio {3 / max(measured, 1e-9):5.2f} vs one poller per replica (3/period)")
    print(f"takeover after kill -9 of {report['takeover']['victim']}: {json.dumps(report['takeover'])}")
    problems = report["checks"]["problems"] + (["jobs left active"] if report["cancel"]["active_left"] else [])
    print("nothing lost or done twice" if not problems else f"PROBLEMS: {problems}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())

"""End to end through the API: S3 -> cluster, HTTP -> cluster, cluster -> S3; and the gateway's memory.

Each transfer is a POST then GETs until it ends (the time an orchestrator waits). The reference of each is
the slower of its two legs measured alone in the same run, on the same file:
  S3 -> cluster:   max(one-stream S3 GET to local disk, OpenSSH sftp PUT)
  HTTP -> cluster: max(HTTP GET to local disk, OpenSSH sftp PUT)
  cluster -> S3:   max(OpenSSH sftp GET, boto3 upload of the local file)
ratio = reference time / transfer time (>= 1/1.15 = 0.87 meets the goal of at most 1.15x the slower leg).
While the transfers run, the gateway's RSS is sampled every 50 ms: peak growth over its idle RSS.

    .venv/bin/python bench/e2e.py [--size-mib 1024] [--rounds 3] [--smoke]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import requests
from botocore.config import Config

from common import Timer, arguments, row, start_gateway, testbed
from sftp import make_file, openssh

BUCKET = "hpc-bench"


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """Samples a process's resident memory in a thread while the block runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self):
        self.base = rss_bytes(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def wait_transfer(gateway, path: str, timeout: float = 1800) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = gateway.get(path, token="user").json()
        if record["status"] != "transferring":
            if record["status"] != "completed":
                sys.exit(f"transfer failed: {record}")
            return record
        if time.monotonic() > deadline:
            sys.exit(f"transfer did not end in {timeout}s: {record}")
        time.sleep(0.2)


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--streams", type=int, default=None,
                        help="SSH connections writing the file in parallel (the gateway's sftp_streams)")
    args = parser.parse_args()
    size = (4 if args.smoke else args.size_mib) * 1024 * 1024
    rounds = 1 if args.smoke else args.rounds
    bed = testbed()
    s3 = boto3.client("s3", endpoint_url=bed["TESTBED_S3_ENDPOINT"], region_name=bed["TESTBED_S3_REGION"],
                      aws_access_key_id=bed["TESTBED_S3_ACCESS_KEY"],
                      aws_secret_access_key=bed["TESTBED_S3_SECRET_KEY"],
                      config=Config(retries={"max_attempts": 2}))
    work = Path(tempfile.mkdtemp(prefix="hpc-bench-e2e-", dir="/var/tmp"))
    local = work / "data.bin"
    expected = make_file(local, size)
    www = Path(bed["TESTBED_HTTP_ROOT"]) / f"bench-{os.getpid()}.bin"
    shutil.copyfile(local, www)
    www.chmod(0o644)
    key = f"bench-{os.getpid()}.bin"
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.upload_file(str(local), BUCKET, key)
    extra = {"HPC_SFTP_STREAMS": str(args.streams), "HPC_SFTP_PARALLEL_THRESHOLD": "1"} if args.streams else {}
    gateway = start_gateway(bed, HPC_STAGING_QUOTA=str(4 * size + 2**30), **extra)
    pid = gateway.process.pid
    mb = size / 1e6
    keys = {"endpoint": bed["TESTBED_S3_ENDPOINT"], "bucket": BUCKET, "region": bed["TESTBED_S3_REGION"],
            "access_key": bed["TESTBED_S3_ACCESS_KEY"], "secret_key": bed["TESTBED_S3_SECRET_KEY"]}
    times: dict[str, list[float]] = {}
    peaks: list[int] = []  # per round: the first includes one-time work (botocore loading its models)

    def record(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)

    try:
        time.sleep(1)
        idle = rss_bytes(pid)
        for n in range(rounds):
            # A destination of its own for each transfer: replacing a 1 GiB file would add the unlink of
            # the old one (about 1 s on this ext4) to the rename.
            dst = f"bench-e2e/{n}/from-s3.bin"
            with Timer() as t:
                out = work / "s3-get.bin"
                with open(out, "wb") as handle:
                    for chunk in s3.get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(1 << 20):
                        handle.write(chunk)
            record("s3 get alone", t.seconds)
            with Timer() as t:
                with requests.get(f"{bed['TESTBED_HTTP_URL']}/{www.name}", stream=True, timeout=60) as response:
                    with open(work / "http-get.bin", "wb") as handle:
                        for chunk in response.iter_content(1 << 20):
                            handle.write(chunk)
            record("http get alone", t.seconds)
            with Timer() as handshake:
                openssh(bed, "pwd\n")
            with Timer() as t:
                openssh(bed, f"put {local} bench-e2e-put.bin\n")
            record("sftp put alone", t.seconds - handshake.seconds)
            with Timer() as t:
                openssh(bed, f"get bench-e2e-put.bin {work / 'sftp-get.bin'}\n")
            record("sftp get alone", t.seconds - handshake.seconds)
            with Timer() as t:
                s3.upload_file(str(local), BUCKET, f"{key}.upload")
            record("s3 upload alone", t.seconds)
            for path in work.glob("*-get.bin"):
                path.unlink()

            peak = 0
            with PeakRss(pid) as rss, Timer() as t:
                created = gateway.post("/s3_data", {**keys, "object": key, "dst": dst, "infrastructure": "tb-slurm"},
                                       token="user").json()
                done = wait_transfer(gateway, f"/s3_data/{created['id']}")
            peak = max(peak, rss.peak - idle)
            record("s3 -> cluster", t.seconds)
            if done.get("sha256") != expected:
                sys.exit(f"s3 -> cluster delivered other bytes: {done}")
            with PeakRss(pid) as rss, Timer() as t:
                created = gateway.post("/data", {"src": f"{bed['TESTBED_HTTP_URL']}/{www.name}",
                                                 "dst": f"bench-e2e/{n}/from-http.bin",
                                                 "infrastructure": "tb-slurm"}, token="user").json()
                wait_transfer(gateway, f"/data/{created['id']}")
            peak = max(peak, rss.peak - idle)
            record("http -> cluster", t.seconds)
            with PeakRss(pid) as rss, Timer() as t:
                created = gateway.post("/s3_result", {**keys, "object": f"{key}.result", "src": dst,
                                                      "infrastructure": "tb-slurm"}, token="user").json()
                wait_transfer(gateway, f"/s3_result/{created['id']}")
            peak = max(peak, rss.peak - idle)
            record("cluster -> s3", t.seconds)
            peaks.append(peak)
    finally:
        gateway.stop()
        subprocess.run(["ssh", "-p", bed["TESTBED_SSH_PORT"], "-i", bed["TESTBED_SSH_KEY"], "-o", "BatchMode=yes",
                        "-o", f"UserKnownHostsFile={bed['TESTBED_KNOWN_HOSTS']}", "hpcuser@127.0.0.1",
                        "rm -rf bench-e2e bench-e2e-put.bin"], check=False)
        for name in (key, f"{key}.upload", f"{key}.result"):
            s3.delete_object(Bucket=BUCKET, Key=name)
        www.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)

    def median(name: str) -> float:
        values = sorted(times[name])
        return values[len(values) // 2]

    streams = f", sftp_streams {args.streams}" if args.streams else ""
    print(f"# end to end through the API, {size // 2**20} MiB, {rounds} round(s){streams}; sha256 checked")
    for name in ("s3 get alone", "http get alone", "sftp put alone", "sftp get alone", "s3 upload alone"):
        print(row(name, [mb / s for s in times[name]], "MB/s"))
    pairs = {"s3 -> cluster": ("s3 get alone", "sftp put alone"),
             "http -> cluster": ("http get alone", "sftp put alone"),
             "cluster -> s3": ("sftp get alone", "s3 upload alone")}
    for name, legs in pairs.items():
        slower = max(median(leg) for leg in legs)
        print(row(name, [mb / s for s in times[name]], "MB/s", mb / slower, f"slower leg ({' / '.join(legs)})"))
    print(f"gateway peak RSS growth over idle while staging, per round: "
          f"{', '.join(f'{p / 2**20:.1f}' for p in peaks)} MiB (goal < 64 MiB; the first round includes "
          "one-time loading of the S3 client)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End to end through the API, against each leg at its best and against rclone, in the same run.

Directions, each a POST then GETs until it ends (what an orchestrator waits), sha256 checked on the cluster:
  S3 -> cluster (POST /s3_data), HTTP -> cluster (POST /data), cluster -> S3 (POST /s3_result),
  and many files: N objects of 64 KiB under one S3 prefix -> a cluster directory (POST /batch/s3_data).

Reference of a direction: its slower leg, each leg measured alone at its best in the same round:
  source GET alone   one-stream S3 GET / HTTP GET, read and dropped (no disk)
  SFTP put alone     the faster of the gateway's own SFTP layer and OpenSSH sftp -c aes128-gcm -B 261120 -R 64
  SFTP get alone     the same, reading
  S3 upload alone    boto3 upload_file, the fastest of several part sizes and concurrencies
ratio = reference time / transfer time (goal >= 0.85). The peer is rclone 1.60 (Debian) in the same round:
``copyto`` between an S3 remote and an SFTP remote on the testbed for one object, ``copy --transfers 8`` for
the many files (goal: >= 1.5x rclone for one big object, >= 1.0x for the many files). The gateway's RSS is
sampled every 50 ms while it moves the data: peak growth over its idle RSS (goal < 64 MiB).

    .venv/bin/python bench/e2e.py [--size-mib 1024] [--files 2000] [--rounds 3] [--smoke]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import requests
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from common import Timer, arguments, start_gateway, testbed
from sftp import OPENSSH_BEST, gateway_get, gateway_put, make_file, openssh_seconds, target_of

from hpc.ssh import ClusterFiles, SSHConnection

BUCKET = "hpc-bench"
MiB = 1024 * 1024
UPLOADS = ((8 * MiB, 10), (16 * MiB, 4), (64 * MiB, 4))  # (part size, concurrency) tried for the S3 upload leg


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def disk_bytes(directory: Path) -> int:
    """Bytes of disk the files under ``directory`` occupy (their allocated blocks)."""
    total = 0
    for path in directory.rglob("*") if directory.exists() else ():
        try:
            total += path.stat().st_blocks * 512
        except OSError:  # a spool file removed meanwhile
            pass
    return total


class PeakRss:
    """Samples a process's resident memory (and its staging directory's disk use) while the block runs."""

    def __init__(self, pid: int, staging: Path | None = None):
        self.pid, self.peak, self.disk, self._stop = pid, 0, 0, threading.Event()
        self._staging = staging

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            if self._staging is not None:
                self.disk = max(self.disk, disk_bytes(self._staging))
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def wait_for(gateway, path: str, timeout: float = 1800) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = gateway.get(path, token="user").json()
        if record.get("state") in ("completed", "failed", "cancelled"):
            if record["state"] != "completed":
                sys.exit(f"{path} did not complete: {record}")
            return record
        if time.monotonic() > deadline:
            sys.exit(f"{path} did not end in {timeout}s: {record}")
        time.sleep(0.1)


def rclone(bed, *args: str) -> None:
    """rclone with an S3 remote "s3" and an SFTP remote "tb" defined in its environment (no config file)."""
    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
        "RCLONE_CONFIG": "/dev/null",
        "RCLONE_CONFIG_S3_TYPE": "s3", "RCLONE_CONFIG_S3_PROVIDER": "Other",
        "RCLONE_CONFIG_S3_ENDPOINT": bed["TESTBED_S3_ENDPOINT"], "RCLONE_CONFIG_S3_REGION": bed["TESTBED_S3_REGION"],
        "RCLONE_CONFIG_S3_ACCESS_KEY_ID": bed["TESTBED_S3_ACCESS_KEY"],
        "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": bed["TESTBED_S3_SECRET_KEY"],
        "RCLONE_CONFIG_TB_TYPE": "sftp", "RCLONE_CONFIG_TB_HOST": "127.0.0.1",
        "RCLONE_CONFIG_TB_PORT": bed["TESTBED_SSH_PORT"], "RCLONE_CONFIG_TB_USER": bed["TESTBED_SSH_USER"],
        "RCLONE_CONFIG_TB_KEY_FILE": bed["TESTBED_SSH_KEY"],
        "RCLONE_CONFIG_TB_KNOWN_HOSTS_FILE": bed["TESTBED_KNOWN_HOSTS"],
    }
    # rclone reads AWS_CA_BUNDLE and fails when it is set for another purpose: it is not passed on.
    for attempt in (1, 2):  # the testbed is shared: a daemon restarted by another test must not end the run
        result = subprocess.run(["rclone", *args], env=env, capture_output=True, text=True)
        if result.returncode == 0:
            return
        print(f"rclone {' '.join(args)} failed (try {attempt}): {result.stderr.strip()[-300:]}", file=sys.stderr)
    sys.exit("rclone failed twice")


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=2000, help="objects of 64 KiB in the many-files case")
    args = parser.parse_args()
    size = (4 if args.smoke else args.size_mib) * MiB
    count = 20 if args.smoke else args.files
    rounds = 1 if args.smoke else args.rounds
    bed = testbed()
    s3 = boto3.client("s3", endpoint_url=bed["TESTBED_S3_ENDPOINT"], region_name=bed["TESTBED_S3_REGION"],
                      aws_access_key_id=bed["TESTBED_S3_ACCESS_KEY"],
                      aws_secret_access_key=bed["TESTBED_S3_SECRET_KEY"],
                      config=Config(retries={"max_attempts": 2}, max_pool_connections=16))
    work = Path(tempfile.mkdtemp(prefix="hpc-bench-e2e-", dir="/var/tmp"))
    local = work / "data.bin"
    expected = make_file(local, size)
    www = Path(bed["TESTBED_HTTP_ROOT"]) / f"bench-{os.getpid()}.bin"
    shutil.copyfile(local, www)
    www.chmod(0o644)
    key = f"bench-{os.getpid()}.bin"
    prefix = f"bench-many-{os.getpid()}"
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.upload_file(str(local), BUCKET, key)
    small = os.urandom(64 * 1024)
    with ThreadPool(16) as pool:
        pool.map(lambda n: s3.put_object(Bucket=BUCKET, Key=f"{prefix}/d{n % 10}/f{n:05d}.bin",
                                         Body=small[n % 4096:] + small[: n % 4096]), range(count))
    connection = SSHConnection(target_of(bed))
    home = connection.run('printf %s "$HOME"').stdout
    layer = ClusterFiles(connection, "auto")
    quota = 2 * size + 2**30
    gateway = start_gateway(bed, HPC_STAGING_QUOTA=str(quota))
    pid = gateway.process.pid
    mb = size / 1e6
    times: dict[str, list[float]] = {}
    peaks: list[int] = []
    disks: list[int] = []

    def record(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)

    def timed(name: str, action) -> None:
        with Timer() as t:
            action()
        record(name, t.seconds)

    keys = {"endpoint": bed["TESTBED_S3_ENDPOINT"], "bucket": BUCKET, "region": bed["TESTBED_S3_REGION"],
            "access_key": bed["TESTBED_S3_ACCESS_KEY"], "secret_key": bed["TESTBED_S3_SECRET_KEY"],
            "infrastructure": "tb-slurm"}
    try:
        time.sleep(1)
        idle = rss_bytes(pid)
        for n in range(rounds):
            # -- the legs alone, each at its best ---------------------------------------------------
            def s3_get():
                body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
                while body.read(MiB):
                    pass

            def http_get():
                with requests.get(f"{bed['TESTBED_HTTP_URL']}/{www.name}", stream=True, timeout=60) as response:
                    for _ in response.iter_content(MiB):
                        pass

            timed("s3 get alone", s3_get)
            timed("http get alone", http_get)
            timed("sftp put, gateway layer", lambda: gateway_put(layer, local, f"{home}/bench-e2e-put.bin"))
            record("sftp put, OpenSSH gcm", openssh_seconds(bed, f"put {local} bench-e2e-put.bin\n", *OPENSSH_BEST))
            timed("sftp get, gateway layer", lambda: gateway_get(layer, f"{home}/bench-e2e-put.bin",
                                                                 work / "back.bin", size))
            record("sftp get, OpenSSH gcm", openssh_seconds(bed, f"get bench-e2e-put.bin {work / 'back.bin'}\n",
                                                            *OPENSSH_BEST))
            (work / "back.bin").unlink(missing_ok=True)
            for part, concurrency in UPLOADS:
                config = TransferConfig(multipart_chunksize=part, multipart_threshold=part,
                                        max_concurrency=concurrency)
                timed(f"s3 upload {part // MiB} MiB x {concurrency}",
                      lambda: s3.upload_file(str(local), BUCKET, f"{key}.upload", Config=config))

            # -- through the gateway ----------------------------------------------------------------
            # A destination of its own for each transfer: replacing a 1 GiB file would add the unlink of
            # the old one (about 1 s on ext4) to the rename.
            peak = 0
            for name, path, body in (
                ("s3 -> cluster", "/s3_data", {**keys, "object": key, "dst": f"bench-e2e/{n}/from-s3.bin"}),
                ("http -> cluster", "/data", {"src": f"{bed['TESTBED_HTTP_URL']}/{www.name}",
                                              "dst": f"bench-e2e/{n}/from-http.bin", "infrastructure": "tb-slurm"}),
                ("cluster -> s3", "/s3_result",
                 {**keys, "object": f"{key}.result", "src": f"bench-e2e/{n}/from-s3.bin"}),
            ):
                with PeakRss(pid, gateway.data_dir / "staging") as rss, Timer() as t:
                    created = gateway.post(path, body, token="user").json()
                    done = wait_for(gateway, f"{path}/{created['id']}")
                peak = max(peak, rss.peak - idle)
                disks.append(rss.disk)
                record(name, t.seconds)
                if done.get("sha256") != expected:
                    sys.exit(f"{name} delivered other bytes: {done}")
            peaks.append(peak)
            with Timer() as t:
                created = gateway.post("/batch/s3_data", {**keys, "prefix": prefix, "dst": f"bench-e2e/{n}/many"},
                                       token="user").json()
                done = wait_for(gateway, f"/batch/{created['id']}")
            record("many files -> cluster", t.seconds)
            if done["files_done"] != count:
                sys.exit(f"the many-files batch moved {done['files_done']} of {count} files: {done}")

            # -- the peer -----------------------------------------------------------------------------
            # Destinations of their own this round (the cluster's are removed after each round; the object
            # is deleted first): rclone would skip a copy whose destination looks the same.
            s3.delete_object(Bucket=BUCKET, Key=f"{key}.rclone")
            timed("rclone s3 -> cluster", lambda: rclone(bed, "copyto", f"s3:{BUCKET}/{key}",
                                                         f"tb:bench-e2e/{n}/rclone.bin"))
            timed("rclone cluster -> s3", lambda: rclone(bed, "copyto", f"tb:bench-e2e/{n}/rclone.bin",
                                                         f"s3:{BUCKET}/{key}.rclone"))
            timed("rclone many files -> cluster",
                  lambda: rclone(bed, "copy", "--transfers", "8", f"s3:{BUCKET}/{prefix}",
                                 f"tb:bench-e2e/{n}/rclone-many"))  # noqa: B023 (called in this iteration)
            connection.run("rm -rf bench-e2e bench-e2e-put.bin", timeout=300)
    finally:
        gateway.stop()
        layer.close()
        connection.run("rm -rf bench-e2e bench-e2e-put.bin", timeout=300)
        connection.close()
        for name in (key, f"{key}.upload", f"{key}.result", f"{key}.rclone"):
            s3.delete_object(Bucket=BUCKET, Key=name)
        with ThreadPool(16) as pool:
            pool.map(lambda n: s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/d{n % 10}/f{n:05d}.bin"), range(count))
        www.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    report(times, mb, count, rounds, peaks, size)
    print(f"staging disk in use at most {max(disks) / MiB:.0f} MiB (quota {quota / MiB:.0f} MiB)")
    return 0


def report(times: dict[str, list[float]], mb: float, count: int, rounds: int, peaks: list[int], size: int) -> None:
    def median(name: str) -> float:
        return statistics.median(times[name])

    def speed(name: str) -> float:
        return mb / median(name)

    def best(*names: str) -> tuple[str, float]:
        name = min(names, key=median)
        return name, speed(name)

    def line(name: str, value: float, unit: str = "MB/s", note: str = "") -> None:
        low = min(times[name]) if name in times else 0
        print(f"{name:<34} median {value:9.1f} {unit}" + (f"  (best round {mb / low:.1f})" if low and unit == "MB/s"
                                                          else "") + (f"  {note}" if note else ""))

    print(f"# end to end, {size // MiB} MiB and {count} files of 64 KiB, {rounds} round(s); sha256 checked; "
          "medians; ratios of medians in the same run")
    for name in ("s3 get alone", "http get alone", "sftp put, gateway layer", "sftp put, OpenSSH gcm",
                 "sftp get, gateway layer", "sftp get, OpenSSH gcm", *(f"s3 upload {p // MiB} MiB x {c}"
                                                                       for p, c in UPLOADS)):
        line(name, speed(name))
    put = best("sftp put, gateway layer", "sftp put, OpenSSH gcm")
    get = best("sftp get, gateway layer", "sftp get, OpenSSH gcm")
    upload = best(*(f"s3 upload {p // MiB} MiB x {c}" for p, c in UPLOADS))
    references = {
        "s3 -> cluster": min(("s3 get alone", speed("s3 get alone")), put, key=lambda leg: leg[1]),
        "http -> cluster": min(("http get alone", speed("http get alone")), put, key=lambda leg: leg[1]),
        "cluster -> s3": min(get, upload, key=lambda leg: leg[1]),
    }
    peers = {"s3 -> cluster": "rclone s3 -> cluster", "cluster -> s3": "rclone cluster -> s3"}
    for name, (leg, reference) in references.items():
        value = speed(name)
        text = f"ratio {value / reference:.2f} vs slower leg ({leg}, {reference:.1f} MB/s)"
        if name in peers:
            text += f"; ratio {value / speed(peers[name]):.2f} vs rclone ({speed(peers[name]):.1f} MB/s)"
        print(f"{name:<34} median {value:9.1f} MB/s  {text}")
    for name in peers.values():
        line(name, speed(name))
    many, peer = median("many files -> cluster"), median("rclone many files -> cluster")
    print(f"{'many files -> cluster':<34} median {count / many:9.1f} files/s  ratio {peer / many:.2f} vs rclone "
          f"copy --transfers 8 ({count / peer:.1f} files/s)")
    print(f"gateway peak RSS growth over idle while moving {size // MiB} MiB, per round: "
          f"{', '.join(f'{p / MiB:.1f}' for p in peaks)} MiB (goal < 64 MiB)")


class ThreadPool:
    """A tiny thread pool for the setup steps (boto3 clients are thread-safe)."""

    def __init__(self, workers: int):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(workers)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._pool.shutdown(wait=True)

    def map(self, fn, items) -> None:
        list(self._pool.map(fn, items))


if __name__ == "__main__":
    sys.exit(main())

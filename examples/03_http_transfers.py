"""Stages files from an HTTP server onto a cluster: a small text file and a large binary one (64 MiB, or
``$HPC_EXAMPLE_LARGE_MB``), both at once, with a progress bar each (bytes, rate, time left). Then checks
the SHA-256 the gateway verified at the destination against the local files, and reads the small file
back through a job.

The files are published in the fixture's HTTP server (its ``root`` directory, served at its ``url``).

    python examples/03_http_transfers.py
"""

from __future__ import annotations

from pathlib import Path

import common
from hpc.client import transfer_succeeded
from hpc.client.display import watch_jobs, watch_transfers


def main() -> None:
    client = common.client()
    server = common.http_server()
    infrastructure = common.infrastructure()
    folder = Path(server["root"]) / "hpc-examples"
    small, large = folder / "small.txt", folder / "large.bin"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # the web server reads as another user
    small.write_text("".join(f"line {n}: the quick brown fox\n" for n in range(1, 201)))
    if not large.exists() or large.stat().st_size != common.large_size():
        common.write_random_file(large, common.large_size())
    for path in (small, large):
        path.chmod(0o644)

    common.heading(f"staging {small.name} and {large.name} from {server['url']} onto {infrastructure}")
    transfers = [
        client.create_http_transfer(f"{server['url'].rstrip('/')}/hpc-examples/{path.name}",
                                    f"hpc-examples/http/{path.name}", infrastructure)
        for path in (small, large)
    ]
    finished = watch_transfers(client, transfers, timeout=600)
    for record, path in zip(finished, (small, large)):
        print(f"{path.name}: {record['state']}, {record['bytes_done']} bytes, sha256 {record.get('sha256')}")
        common.check(transfer_succeeded(record), f"transfer {record['id']} ended {record['state']}: "
                                                 f"{record.get('reason')}")
        common.check(record["bytes_done"] == path.stat().st_size, "every byte arrived")
        if record.get("sha256"):
            common.check(record["sha256"] == common.sha256_of(path), "the checksums match")

    common.heading("reading the small file on the cluster")
    job = client.submit_job(infrastructure, script="head -n 3 ~/hpc-examples/http/small.txt\n", watch_period=1)
    watch_jobs(client, [job], timeout=300)
    output = client.job_output(job["id"])["data"]
    print(output, end="")
    common.check(output.startswith("line 1: the quick brown fox"), "the file on the cluster is the one sent")


if __name__ == "__main__":
    main()

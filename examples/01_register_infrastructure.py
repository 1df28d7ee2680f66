"""Registers the fixture's clusters with the gateway (skipping those already there) and shows what their
schedulers report: partitions, nodes, CPUs, running and queued jobs.

    python examples/01_register_infrastructure.py
"""

from __future__ import annotations

import common
from hpc.client import NotFound


def main() -> None:
    client = common.client()
    print(f"gateway {client.url}: {client.health()}")
    for entry in common.infrastructures():
        common.heading(f"infrastructure {entry['name']}")
        try:
            summary = client.get_infrastructure(entry["name"])
            print(f"already registered ({summary['scheduler']} on {summary['host']})")
        except NotFound:
            # The gateway logs in over SSH and checks the host key before it answers.
            summary = client.create_infrastructure(**entry)
            print(f"registered: {summary['scheduler']} on {summary['host']}:{summary.get('port', 22)}, "
                  f"host key {summary.get('host_key_fingerprint')}")
        telemetry = client.telemetry(entry["name"])
        common.check(len(telemetry["partitions"]) > 0, "the scheduler reported no partition")
        for partition in telemetry["partitions"]:
            print(f"  partition {partition['name']}: {partition['avail_nodes']}/{partition['total_nodes']} nodes, "
                  f"{partition['avail_cpus']}/{partition['total_cpus']} CPUs free, "
                  f"{partition['running_jobs']} running, {partition['queued_jobs']} queued")
    names = [entry["name"] for entry in client.list_infrastructures()]
    print(f"\nregistered now: {', '.join(names)}")


if __name__ == "__main__":
    main()

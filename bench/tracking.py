"""Tracking cost: SSH commands and connections per poll period per infrastructure, with N active jobs.

For N in 1, 100, 1000 jobs (sleeping, on the testbed's Slurm), the gateway polls with watch_period P.
Over a window it counts the status commands and the SSH connections it opened (GET /stats). The
reference is the naive tracker of the seed: one status command per job per period, so the ratio is
naive commands / measured commands (higher is better; the goal is 1 command per period, 0 connections).

    .venv/bin/python bench/tracking.py [--jobs 1,100,1000] [--period 2] [--window 20] [--smoke]
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

from common import Timer, arguments, start_gateway, testbed


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(1)


def main() -> int:
    parser = arguments(__doc__, rounds=1)
    parser.add_argument("--jobs", default="1,100,1000")
    parser.add_argument("--period", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    counts = [1, 5] if args.smoke else [int(n) for n in args.jobs.split(",")]
    window = 4.0 if args.smoke else args.window
    gateway = start_gateway(testbed())
    print(f"# tracking cost on tb-slurm, watch_period {args.period}s, window {window}s")
    print(f"{'jobs':>6} {'submit s':>9} {'polls':>6} {'cmds/period':>12} {'conn opened':>12} "
          f"{'naive cmds/period':>18} {'ratio':>7}")
    try:
        for n in counts:
            with Timer() as submit_time, ThreadPoolExecutor(16) as pool:
                jobs = list(pool.map(lambda i: gateway.post(
                    "/job", {"infrastructure": "tb-slurm", "script": "sleep 3600\n", "name": f"bench-{i}",
                             "watch_period": args.period}, token="user").json(), range(n)))
                wait_until(lambda: gateway.get("/job", params={"state": "submitting", "limit": 1},
                                               token="admin").json()["total"] == 0, 600, "submissions")
            before = gateway.get("/stats", token="admin").json()
            time.sleep(window)
            after = gateway.get("/stats", token="admin").json()
            polls = after["jobs"]["tb-slurm"].get("status", 0) - before["jobs"]["tb-slurm"].get("status", 0)
            opened = (after["ssh"]["tb-slurm"]["connections_opened"]
                      - before["ssh"]["tb-slurm"]["connections_opened"])
            periods = window / args.period
            per_period = polls / periods
            print(f"{n:>6} {submit_time.seconds:>9.1f} {polls:>6} {per_period:>12.2f} {opened:>12} "
                  f"{n:>18} {n / max(per_period, 1e-9):>7.1f}")
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda j: gateway.delete(f"/job/{j['id']}", token="user"), jobs))
            wait_until(lambda: gateway.get("/job", params={"state": "cancelled", "limit": 1},
                                           token="admin").json()["total"] >= sum(counts[: counts.index(n) + 1]),  # noqa: B023 (called in this iteration)
                       600, "cancellations")
    finally:
        gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

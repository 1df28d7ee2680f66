"""A/B of the status poll: GET /job/{id} on another revision's code and on this working tree, alternated.

On a shared box the load swings from minute to minute, so two benchmark runs minutes apart compare the
box more than the code. This starts one gateway from each tree (the other revision exported with
``git archive`` into a temporary directory) and alternates them, round by round, under the same load
generators as bench/api.py: wrk (closed loop, 64 clients) for throughput, hey (64 clients x 16 req/s) for
latency. Each gateway serves a completed job written straight into its store (background work off), so
no cluster is involved and both answer the same document.

    .venv/bin/python bench/api_ab.py [--base main] [--rounds 4] [--seconds 8] [--smoke]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import sqlalchemy as sa
from api import hey, wrk
from common import REPO, arguments, testbed

from tests.support import new_gateway


def export(ref: str) -> Path:
    """The tree of ``ref`` in a temporary directory."""
    target = Path(tempfile.mkdtemp(prefix="hpc-ab-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def start(bed: dict[str, str], src: Path):
    gateway = new_gateway(bed, Path(tempfile.mkdtemp(prefix="hpc-ab-data-")), start=False,
                          extra_env={"HPC_LOG_LEVEL": "WARNING", "HPC_BACKGROUND": "0"})
    gateway.env["PYTHONPATH"] = str(src)
    gateway.start(timeout=120)
    job_id = str(uuid.uuid4())
    engine = sa.create_engine(f"sqlite:///{gateway.data_dir / 'gateway.db'}")
    with engine.begin() as conn:  # the columns every revision has
        conn.execute(sa.text(
            "INSERT INTO jobs (id, infrastructure, owner, kind, name, spec, scheduler_id, state, watch_period, "
            "cancel_requested, created_at, updated_at, poll_failures, missing_polls, submit_attempts) VALUES "
            "(:id, 'tb-slurm', 'user', 'script', 'probe', '{}', '42', 'completed', 10, 0, :now, :now, 0, 0, 0)"),
            {"id": job_id, "now": "2026-01-01 00:00:00.000000"})
    engine.dispose()
    if gateway.get(f"/job/{job_id}", token="user").status_code != 200:
        sys.exit(f"the gateway from {src} does not serve the probe job")
    return gateway, job_id


def main() -> int:
    parser = arguments(__doc__, rounds=4)
    parser.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    rounds, seconds = (1, 2) if args.smoke else (args.rounds, args.seconds)
    bed = testbed()
    base_tree = export(args.base)
    gateways = {}
    results = {}
    try:
        gateways[args.base] = start(bed, base_tree / "src")
        gateways["working tree"] = start(bed, REPO / "src")
        results = {name: {"rps": [], "rate": [], "p50": [], "p99": []} for name in gateways}
        for gateway, job_id in gateways.values():
            wrk(f"{gateway.url}/job/{job_id}", 1, {"Authorization": f"Bearer {gateway.tokens['user']}"})
        print(f"# GET /job/{{id}}, {rounds} alternated rounds of {seconds}s per tool; base {args.base}")
        for number in range(rounds):
            order = list(gateways.items()) if number % 2 == 0 else list(gateways.items())[::-1]
            for name, (gateway, job_id) in order:
                url, headers = f"{gateway.url}/job/{job_id}", {"Authorization": f"Bearer {gateway.tokens['user']}"}
                closed, fixed = wrk(url, seconds, headers), hey(url, seconds, headers)
                for key, value in (("rps", closed["rps"]), ("rate", fixed["rps"]), ("p50", fixed["p50"]),
                                   ("p99", fixed["p99"])):
                    results[name][key].append(value)
                print(f"round {number} {name:<14} wrk {closed['rps']:7.0f} req/s | hey {fixed['rps']:5.0f} req/s "
                      f"p50 {fixed['p50']:6.1f} ms p99 {fixed['p99']:6.1f} ms", flush=True)
    finally:
        for gateway, _ in gateways.values():
            gateway.stop()
        shutil.rmtree(base_tree, ignore_errors=True)
    base, tree = results[args.base], results["working tree"]
    for name, values in results.items():
        print(f"{name:<14} median: wrk {statistics.median(values['rps']):7.0f} req/s | hey "
              f"{statistics.median(values['rate']):5.0f} req/s p50 {statistics.median(values['p50']):6.1f} ms "
              f"p99 {statistics.median(values['p99']):6.1f} ms")
    throughput = statistics.median(tree["rps"]) / statistics.median(base["rps"])
    p99 = statistics.median(tree["p99"]) / statistics.median(base["p99"])
    print(f"ratio working tree / {args.base}: throughput {throughput:.2f}, p99 {p99:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

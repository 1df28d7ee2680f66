"""Shared bench helpers: a real gateway on the local testbed, timing, and the report format.

Every benchmark prints min and median of its rounds and a RATIO to a reference measured in the same run:
absolute numbers on a shared 2-core machine are noise, ratios are not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tests.support import TESTBED_ENV, GatewayProcess, infrastructure_body, new_gateway, read_env_file  # noqa: E402


def arguments(description: str, rounds: int = 3) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=rounds, help="rounds per measurement")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and one round: proves it runs")
    return parser


def testbed() -> dict[str, str]:
    if not TESTBED_ENV.exists():
        sys.exit(f"the testbed is not up: run bash testbed/up.sh ({TESTBED_ENV} missing)")
    return read_env_file(TESTBED_ENV)


def start_gateway(bed: dict[str, str], **extra_env: str) -> GatewayProcess:
    """A gateway process with quiet logs and the testbed registered as tb-slurm and tb-pbs."""
    env = {"HPC_LOG_LEVEL": "WARNING", **extra_env}
    gateway = new_gateway(bed, Path(tempfile.mkdtemp(prefix="hpc-bench-")), extra_env=env)
    for name, scheduler in (("tb-slurm", "slurm"), ("tb-pbs", "pbs")):
        response = gateway.post("/infrastructure", infrastructure_body(bed, name, scheduler))
        if response.status_code != 201:
            gateway.stop()
            sys.exit(f"registering {name} failed: {response.status_code} {response.text}")
    return gateway


def summary(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def row(name: str, values: list[float], unit: str, reference: float | None = None, ref_name: str = "",
        higher_is_better: bool = True) -> str:
    """One report line: method, min / median, and the median's ratio to the reference."""
    low, mid = summary(values)
    line = f"{name:<46} min {low:>10.2f}  median {mid:>10.2f} {unit}"
    if reference:
        ratio = mid / reference if higher_is_better else reference / mid
        line += f"  ratio {ratio:5.2f} vs {ref_name}"
    return line


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start

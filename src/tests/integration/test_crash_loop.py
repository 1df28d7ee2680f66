"""Crash consistency in the suite: a short seeded run of bench/crash.py (kill -9 of the gateway at random
moments during job submission and single-file transfers, restart, every job ran exactly once, every
transfer completed with the right sha256 or failed with a reason, none stuck). The full-length run is
``bench/crash.py`` itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[3] / "bench"
CYCLES = os.environ.get("HPC_CRASH_CYCLES", "6")
SEED = os.environ.get("HPC_CRASH_SEED", "7")


def test_kill_9_at_random_moments_loses_duplicates_and_strands_nothing(testbed):
    result = subprocess.run([sys.executable, str(BENCH / "crash.py"), "--cycles", CYCLES, "--seed", SEED],
                            capture_output=True, text=True, timeout=600, cwd=BENCH.parent)
    print("\n" + result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"cycles {CYCLES}  kills {CYCLES}" in result.stdout
    assert "stuck 0" in result.stdout

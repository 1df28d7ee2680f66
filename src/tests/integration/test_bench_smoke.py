"""Each benchmark runs end to end with tiny sizes, so none of them can rot (figures are not checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[3] / "bench"


@pytest.mark.parametrize("script, expect", [
    ("api.py", "GET /job/{id}"),
    ("tracking.py", "cmds/period"),
    ("sftp.py", "gateway SSH layer put"),
    ("e2e.py", "s3 -> cluster"),
    ("alternatives.py", "paramiko engine put"),
    ("events.py", "webhook deliveries"),
    ("replicas.py", "takeover after kill -9"),
])
def test_benchmark_smoke_run(testbed, script, expect):
    result = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], capture_output=True, text=True,
                            timeout=240, cwd=BENCH.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert expect in result.stdout
    assert "ratio" in result.stdout


def test_api_ab_smoke_run(testbed):
    result = subprocess.run([sys.executable, str(BENCH / "api_ab.py"), "--smoke", "--base", "HEAD"],
                            capture_output=True, text=True, timeout=240, cwd=BENCH.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ratio working tree / HEAD: throughput" in result.stdout

"""The linter runs in the suite: ``ruff check`` over the repository with pyproject.toml's rules is clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def ruff() -> str:
    found = Path(sys.executable).with_name("ruff")
    if found.exists():
        return str(found)
    on_path = shutil.which("ruff")
    if on_path is None:
        pytest.fail("ruff is not installed: run scripts/setup.sh (it installs requirements-dev.txt)")
    return on_path


def test_ruff_finds_nothing():
    result = subprocess.run([ruff(), "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_ruff_reads_the_project_rules():
    result = subprocess.run([ruff(), "check", "--show-settings", "src/hpc/config.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "line_length = 120" in result.stdout
    assert "src/hpc/api/models.py" in result.stdout  # the generated models are excluded

"""Property-based fuzzing of the whole API with Schemathesis, against a live gateway with auth on.

Every operation of ``openapi/openapi.yaml`` gets generated requests, valid and invalid (examples,
coverage, fuzzing and stateful phases), checked for: no 5xx, status codes, content types, headers and
bodies as the contract lists them, 405 with ``Allow`` for other methods, 401 without the token, invalid
data refused. The gateway runs with ``background: false``, so the jobs and transfers the fuzzer creates
are stored but never executed; the testbed is registered first so valid infrastructure names exist.
``fuzz_hooks`` keeps every address local (no fuzzed host name reaches DNS).

Left out: ``positive_data_acceptance`` (a schema-valid request must be accepted): the contract has
rules beyond JSON Schema that answer 400 as documented: exactly one of services, script, command or
template; a NUL character in any body string; environment variable names; paths inside ``allowed_roots``;
a template's own parameter schema. And
``use_after_free`` (a deleted resource must be gone): DELETE on a job or a transfer cancels it, and its
record stays readable with the outcome, as the contract says.

Seeded (``HPC_FUZZ_SEED``, default 1) and bounded (``HPC_FUZZ_EXAMPLES`` cases per operation and
phase, default 100): about a minute here. A failure prints the reproducing ``curl`` command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support import REPO, infrastructure_body

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("HPC_FUZZ_SEED", "1"))
EXAMPLES = int(os.environ.get("HPC_FUZZ_EXAMPLES", "100"))


def test_schemathesis_finds_no_5xx_and_no_contract_violation(gateway_factory, testbed, tmp_path):
    gateway = gateway_factory(extra_env={"HPC_BACKGROUND": "0"})
    for name, scheduler in (("tb-slurm", "slurm"), ("tb-pbs", "pbs")):
        assert gateway.post("/infrastructure", infrastructure_body(testbed, name, scheduler)).status_code == 201
    st = Path(sys.executable).parent / "st"
    command = [
        str(st), "run", str(REPO / "openapi" / "openapi.yaml"), "--url", gateway.url,
        "-H", f"Authorization: Bearer {gateway.tokens['admin']}",
        "--seed", str(SEED), "--max-examples", str(EXAMPLES), "--workers", "2",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance,use_after_free",
        "--request-timeout", "60", "--no-color",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.integration.fuzz_hooks",
           "PYTHONPATH": str(REPO / "src"), "COLUMNS": "160"}
    started = time.monotonic()
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    duration = time.monotonic() - started
    report = run.stdout + run.stderr
    (tmp_path / "schemathesis.txt").write_text(report)
    cases = re.search(r"(\d+) generated, (\d+) (?:passed|found)", report)
    operations = re.search(r"Tested: (\d+)", report)
    print(f"\nschemathesis: seed {SEED}, {operations.group(1) if operations else '?'} operations, "
          f"{cases.group(1) if cases else '?'} cases, {duration:.0f} s")
    assert run.returncode == 0, report[-20000:]
    spec = yaml.safe_load((REPO / "openapi" / "openapi.yaml").read_text())
    declared = sum(1 for ops in spec["paths"].values() for method in ops if method in ("get", "post", "patch", "delete"))
    assert operations is not None and int(operations.group(1)) == declared
    assert cases is not None and int(cases.group(1)) >= declared * 10
    assert "Traceback" not in gateway.log()

"""``hpc-gateway fs`` against a real gateway and the live testbed: each command as its own process, bytes
round-tripped exactly, refusals exiting 3 with the gateway's reason, the download's progress bar drawn in
a pseudo-terminal."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import uuid

import pytest

from tests.integration.test_cli import ANSI, cli, cli_env, cli_in_pty, cli_json
from tests.integration.test_jobs_api import ssh
from tests.support import REPO, infrastructure_body, new_gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(testbed, tmp_path_factory):
    """A gateway with ``tb-files``, whose one allowed root is a fresh directory in the testbed home."""
    base = f"files-cli-{uuid.uuid4().hex[:10]}"
    assert ssh(testbed, f"mkdir -p {base}/root").returncode == 0
    process = new_gateway(testbed, tmp_path_factory.mktemp("cli-files-gateway"))
    try:
        body = infrastructure_body(testbed, "tb-files", "slurm")
        body["settings"]["allowed_roots"] = [f"{base}/root"]
        assert process.post("/infrastructure", body).status_code == 201
        process.base = f"{base}/root"
        yield process
    finally:
        process.stop()
        ssh(testbed, f"rm -rf {base}")


def test_put_ls_cat_sum_get_mv_rm(gateway, tmp_path):
    root = gateway.base
    payload = os.urandom(300_000)
    (tmp_path / "data.bin").write_bytes(payload)
    env = {"HPC_INFRASTRUCTURE": "tb-files"}
    assert cli_json(gateway, "fs", "mkdir", f"{root}/in", **env)["type"] == "directory"
    put = cli_json(gateway, "fs", "put", str(tmp_path / "data.bin"), f"{root}/in/", **env)
    assert (put["name"], put["size"]) == ("data.bin", len(payload))
    listed = cli(gateway, "fs", "ls", f"{root}/in", **env)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"data\.bin\s+file\s+300000\s+0644", listed.stdout) is not None

    cat = subprocess.run([sys.executable, "-m", "hpc.cli", "fs", "cat", f"{root}/in/data.bin", "--offset", "10",
                          "--length", "1000"], env=cli_env(gateway, **env), capture_output=True, cwd=REPO, timeout=60)
    assert (cat.returncode, cat.stdout) == (0, payload[10:1010])
    summed = cli(gateway, "fs", "sum", f"{root}/in/data.bin", **env)
    assert summed.stdout == f"{hashlib.sha256(payload).hexdigest()}  {root}/in/data.bin\n"

    got = cli(gateway, "fs", "get", f"{root}/in/data.bin", str(tmp_path / "back.bin"), **env)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "back.bin").read_bytes() == payload
    assert cli(gateway, "fs", "mv", f"{root}/in/data.bin", f"{root}/in/moved.bin", **env).returncode == 0

    refused = cli(gateway, "fs", "rm", f"{root}/in", **env)
    assert refused.returncode == 3
    assert "recursive" in refused.stderr
    escaped = cli(gateway, "fs", "get", f"{root}/../../etc/passwd", str(tmp_path / "x"), **env)
    assert escaped.returncode == 3
    assert "outside the allowed directories" in escaped.stderr
    assert not (tmp_path / "x").exists()
    assert cli(gateway, "fs", "rm", "-r", f"{root}/in", **env).returncode == 0
    assert cli_json(gateway, "fs", "ls", root, **env)["total"] == 0


def test_get_shows_a_progress_bar_in_a_terminal(gateway, testbed, tmp_path):
    assert ssh(testbed, f"head -c 8000000 /dev/zero > {gateway.base}/big.bin").returncode == 0
    code, screen = cli_in_pty(gateway, "fs", "get", "-i", "tb-files", f"{gateway.base}/big.bin",
                              str(tmp_path / "big.bin"))
    text = ANSI.sub("", screen)
    assert code == 0, text[-2000:]
    assert (tmp_path / "big.bin").stat().st_size == 8_000_000
    assert f"{tmp_path / 'big.bin'}: 8000000 bytes" in text

"""The README's "A short tour": every curl command in it, replayed as the same request on a real gateway.

The commands are read from README.md itself (so the tour cannot drift from what works): each curl
command's method, path, query and body are sent as written, with ``$HPC_URL`` and ``$auth`` meaning the
test gateway and its admin token, ``<id>`` the id the previous POST to that path answered, and the
placeholder cluster of "register another cluster" pointed at the testbed (the same fields, real values).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.support import REPO

pytestmark = pytest.mark.integration


def tour_commands() -> list[list[str]]:
    """The tour's shell commands, one token list each (multi-line quoted bodies joined)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## A short tour\n(.*?)^## ", text, re.S | re.M).group(1)
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    commands, pending = [], ""
    for line in block.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            tokens = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        if tokens:
            commands.append(tokens)
        pending = ""
    assert pending == ""
    return commands


def parse_curl(tokens: list[str]) -> tuple[str, str, dict, dict | None]:
    """(method, path, query, JSON body) of a curl command from the tour."""
    assert tokens[0] == "curl"
    method, url, body, headers = None, None, None, []
    args = iter(tokens[1:])
    for arg in args:
        if arg == "-s":
            continue
        if arg == "-H":
            headers.append(next(args))
        elif arg == "-d":
            body = json.loads(next(args))
        elif arg == "-X":
            method = next(args)
        else:
            assert url is None
            url = arg
    assert headers[0] == "$auth"
    assert url[:len("$HPC_URL/")] == "$HPC_URL/"
    parts = urlsplit(url.replace("$HPC_URL", "http://gateway"))
    return method or ("POST" if body is not None else "GET"), parts.path, dict(parse_qsl(parts.query)), body


def test_the_readme_tour_commands_work(registered, testbed):
    commands = tour_commands()
    assert (commands[0][0], commands[1][0][:5]) == ("export", "auth=")
    curls = [parse_curl(tokens) for tokens in commands[2:]]
    assert len(curls) == len(commands) - 2  # nothing but curl after the two settings
    created: dict[str, dict] = {}  # path of a POST -> the record it answered last
    posted: list[tuple[str, dict]] = []
    for method, path, query, body in curls:
        if "<id>" in path:
            collection = path.split("/")[1]
            path = path.replace("<id>", created[f"/{collection}"]["id"])
        if path == "/infrastructure" and method == "POST":
            # A placeholder cluster in the README: the same fields, pointed at the testbed.
            assert set(body) == {"name", "host", "username", "hostname", "scheduler", "ssh_key", "host_key"}
            assert set(body["ssh_key"]) == {"type", "path", "password"}
            body.update(host=testbed["TESTBED_SSH_HOST"], port=int(testbed["TESTBED_SSH_PORT"]),
                        username=testbed["TESTBED_SSH_USER"], hostname=testbed["TESTBED_HOSTNAME"],
                        host_key=f"{testbed['TESTBED_HOST_KEY_TYPE']} {testbed['TESTBED_HOST_KEY_B64']}",
                        settings={"mpi_launcher": ""})
            body["ssh_key"].update(path="id_ed25519_pw", password=testbed["TESTBED_SSH_KEY_PASSPHRASE"])
        response = registered.request(method, path, params=query, json=body)
        assert (method, path, response.status_code) == (method, path, 201 if method == "POST" else 200)
        if method == "POST":
            created[path] = response.json()
            posted.append((path, response.json()))

    assert registered.get("/infrastructure/my-cluster").json()["host_key_fingerprint"] == \
        testbed["TESTBED_HOST_KEY_FINGERPRINT"]
    # What the tour started finishes well: the script job, the SERRANO job, the transfer.
    jobs = [record["id"] for path, record in posted if path == "/job"]
    assert len(jobs) == 2
    for job_id in jobs:
        ended = wait(registered, f"/job/{job_id}", lambda r: r["status"] == "completed")
        assert (ended["state"], ended["exit_code"]) == ("completed", 0)
    output = registered.get(f"/job/{jobs[0]}/output", params={"stream": "stdout"}).json()
    assert output["data"][:len("hello from ")] == "hello from "
    transfer = wait(registered, f"/data/{created['/data']['id']}", lambda r: r["status"] != "transferring")
    assert (transfer["state"], transfer["dst"]) == ("completed", "data/hello.txt")


def wait(gateway, path: str, done, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = gateway.get(path).json()
        if done(record):
            return record
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_the_readme_command_line_section_runs(registered, testbed, tmp_path):
    """The shell block of "Command line and Python client" runs as written, against the testbed."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Command line and Python client\n(.*?)(?=^## |\Z)", text, re.S | re.M).group(1)
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    fixture = tmp_path / "fixture.infrastructure.yaml"
    made = subprocess.run([sys.executable, str(REPO / "examples" / "make_fixture.py"), str(fixture),
                           "--key", "id_ed25519"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    shim = tmp_path / "bin" / "hpc-gateway"  # 'hpc-gateway' on the PATH: this tree's command line
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hpc.cli "$@"\n')
    shim.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HPC_", "AWS_"))}
    env.update({"HPC_URL": registered.url, "HPC_TOKEN": registered.tokens["user"], "HPC_FIXTURE": str(fixture),
                "PYTHONPATH": str(REPO / "src"), "PATH": f"{shim.parent}:{os.environ['PATH']}"})
    script = "set -euo pipefail\n" + block.replace(".venv/bin/python", sys.executable)
    result = subprocess.run(["bash", "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "line 1\nline 2\nline 3\n" in result.stdout
    assert re.search(r"job [0-9a-f]{8} on tb-pbs: completed", result.stdout) is not None
    assert len(re.findall(r"transfer [0-9a-f]{8} completed", result.stdout)) == 3

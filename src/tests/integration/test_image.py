"""The Dockerfile's instructions, exercised outside a container (no container engine runs here).

The test reads the Dockerfile's ENV, VOLUME, USER, COPY of the entry point, ENTRYPOINT, CMD and
HEALTHCHECK, and runs that same entry point command with that environment, the container paths mapped
to temporary directories: the gateway must come up healthy, put its state where the volumes are, and
stop cleanly on SIGTERM. Where a container builder is installed, the image is built as well.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests

from hpc.security import hash_token
from tests.support import REPO, free_port

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.strip().partition(" ")
        result.append((keyword.upper(), rest.strip()))
        pending = ""
    return result


def env_of(parsed) -> dict[str, str]:
    env = {}
    for keyword, rest in parsed:
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def exec_form(parsed, keyword: str) -> list[str]:
    values = [rest for kw, rest in parsed if kw == keyword]
    assert len(values) == 1
    return json.loads(values[0])


def test_dockerfile_facts():
    parsed = instructions()
    env = env_of(parsed)
    volumes = json.loads([rest for kw, rest in parsed if kw == "VOLUME"][0])
    assert volumes == [env["HPC_DATA_DIR"], env["HPC_STAGING_DIR"]]
    users = [rest for kw, rest in parsed if kw == "USER"]
    assert users == ["hpc"]
    assert any(kw == "RUN" and "useradd --system --uid 10001" in rest for kw, rest in parsed)
    assert (env["HPC_LISTEN_HOST"], env["HPC_LISTEN_PORT"]) == ("0.0.0.0", "8080")
    assert [rest for kw, rest in parsed if kw == "EXPOSE"] == ["8080"]
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "src/tests", "testbed"} <= set(ignored)


def test_entrypoint_runs_the_gateway_as_the_image_would(tmp_path):
    parsed = instructions()
    env = env_of(parsed)
    entrypoint, command = exec_form(parsed, "ENTRYPOINT"), exec_form(parsed, "CMD")
    copies = dict(reversed(shlex.split(rest)) for kw, rest in parsed if kw == "COPY" and len(shlex.split(rest)) == 2)
    script = next(REPO / source for target, source in copies.items() if target.endswith("/" + entrypoint[0]))
    assert script == REPO / "scripts" / "docker-entrypoint.sh"

    # The container's paths become temporary directories; the port a free one on loopback.
    data, staging = tmp_path / "data", tmp_path / "staging"
    mapped = {env["HPC_DATA_DIR"]: str(data), env["HPC_STAGING_DIR"]: str(staging)}
    port = free_port()
    token = "docker-test-token"
    bin_dir = tmp_path / "bin"  # 'hpc-gateway' on PATH, as pip installs it in the image
    bin_dir.mkdir()
    (bin_dir / "hpc-gateway").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hpc.cli "$@"\n')
    (bin_dir / "hpc-gateway").chmod(0o755)
    run_env = {key: value for key, value in os.environ.items() if not key.startswith("HPC_")}
    run_env.update({key: mapped.get(value, value) for key, value in env.items()})
    run_env.update({"HPC_LISTEN_HOST": "127.0.0.1", "HPC_LISTEN_PORT": str(port),
                    "HPC_TOKENS": f"ops:admin:{hash_token(token)}", "PYTHONPATH": str(REPO / "src"),
                    "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    log = tmp_path / "gateway.log"
    process = subprocess.Popen([str(script), *command], env=run_env, stdout=open(log, "wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                health = requests.get(f"{url}/health", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert (health.status_code, health.json()["auth"]) == (200, True)
        assert requests.get(f"{url}/infrastructure", timeout=5).status_code == 401
        listed = requests.get(f"{url}/infrastructure", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert (listed.status_code, listed.json()) == (200, [])
        # State lands on the volumes: the database and secret key in data_dir, keys/ made, staging made.
        assert ((data / "gateway.db").is_file(), (data / "keys").is_dir(), staging.is_dir()) == (True, True, True)
        assert oct(data.stat().st_mode & 0o777) == "0o700"

        healthcheck = [rest for kw, rest in parsed if kw == "HEALTHCHECK"][0]
        probe = json.loads(re.search(r"CMD (\[.*\])$", healthcheck).group(1))
        assert probe[0] == "python"
        checked = subprocess.run([sys.executable, *probe[1:]], env=run_env, capture_output=True, timeout=10)
        assert checked.returncode == 0

        # exec: the gateway itself is the process that gets the container's SIGTERM, and shuts down
        # cleanly (uvicorn re-raises the signal once it has finished, so the status is "killed by TERM").
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) in (0, -signal.SIGTERM)
        assert "Finished server process" in log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_entrypoint_passes_other_commands_through(tmp_path):
    script = REPO / "scripts" / "docker-entrypoint.sh"
    env = {**os.environ, "HPC_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO / "src")}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hpc-gateway").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hpc.cli "$@"\n')
    (bin_dir / "hpc-gateway").chmod(0o755)
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    made = subprocess.run([str(script), "token", "ops", "--role", "admin", "--json"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert (made.returncode, json.loads(made.stdout)["role"]) == (0, "admin")
    echoed = subprocess.run([str(script), "echo", "plain command"], env=env, capture_output=True, text=True)
    assert echoed.stdout == "plain command\n"


def container_engine() -> str | None:
    """docker or podman, if one is installed and its daemon (for docker) answers."""
    for name in ("podman", "docker"):
        path = shutil.which(name)
        if path and subprocess.run([path, "info"], capture_output=True, timeout=30).returncode == 0:
            return path
    return None


def test_image_builds():
    engine = container_engine()
    if engine is None:
        pytest.skip("no container engine runs here; the entry point test above stands in for the build")
    built = subprocess.run([engine, "build", "-t", "hpc-gateway:test", str(REPO)], capture_output=True, text=True,
                           timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]

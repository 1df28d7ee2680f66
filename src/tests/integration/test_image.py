"""The gateway's container image, built and run: a job and a transfer go through the container.

``scripts/image.sh build`` makes the image with podman from the repository's Dockerfile on a Debian base
made with debootstrap (no registry here), cached by its inputs: the first build on a machine takes
about two minutes, later ones about a second. The container then runs as the Dockerfile says (its
entry point and user, volumes for data and staging, configuration by ``HPC_*``), with its port published
on 127.0.0.1. It has its own network namespace (slirp4netns) with ``allow_host_loopback``, because the
testbed listens on 127.0.0.1 only: from inside the container the host's loopback is 10.0.2.2, so the
testbed cluster is registered as 10.0.2.2:2222 with its host key in the mounted known_hosts.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from hpc.security import hash_token
from hpc.store import head_revision
from tests.fixtures import release_1_0
from tests.support import REPO, free_port, infrastructure_body

pytestmark = pytest.mark.integration

IMAGE_SCRIPT = REPO / "scripts" / "image.sh"
HOST_FROM_CONTAINER = "10.0.2.2"  # slirp4netns: the host's loopback, seen from the container
UID = 10001  # the image's user "hpc" (Dockerfile)
CLUSTER_HOME = Path("/home/hpcuser")
KiB = 1024


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """podman with the runtime settings image.sh uses on this machine (runc, explicit ulimits)."""
    done = subprocess.run(["bash", str(IMAGE_SCRIPT), "podman", *args], capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def image(testbed) -> str:
    """The gateway image, built by scripts/image.sh (a no-op when its inputs did not change)."""
    if os.geteuid() != 0:
        pytest.skip("rootful podman: the image test runs as root")
    started = time.monotonic()
    built = subprocess.run(["bash", str(IMAGE_SCRIPT), "build"], capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stderr[-5000:]
    print(f"scripts/image.sh build: {time.monotonic() - started:.1f} s")
    return built.stdout.strip().splitlines()[-1]


def owned_dir(path: Path) -> Path:
    """A directory for a volume, owned by the image's user (as a fresh named volume would be)."""
    path.mkdir(mode=0o700, parents=True)
    os.chown(path, UID, UID)
    return path


def install_file(path: Path, content: str | bytes, mode: int = 0o600) -> None:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    path.chmod(mode)
    os.chown(path, UID, UID)


def test_image_metadata_user_and_installed_package(image):
    facts = json.loads(podman("image", "inspect", image).stdout)[0]
    config = facts["Config"]
    assert config["User"] == "hpc"
    assert set(config["ExposedPorts"]) == {"8080/tcp"}
    assert set(config["Volumes"]) == {"/var/lib/hpc-gateway", "/var/spool/hpc-gateway"}
    env = dict(item.split("=", 1) for item in config["Env"])
    assert (env["HPC_DATA_DIR"], env["HPC_STAGING_DIR"], env["HPC_LISTEN_HOST"], env["HPC_LISTEN_PORT"]) == (
        "/var/lib/hpc-gateway", "/var/spool/hpc-gateway", "0.0.0.0", "8080")
    assert (config["Entrypoint"], config["Cmd"]) == (["docker-entrypoint.sh"], ["serve"])
    assert facts["Healthcheck"]["Test"][0] == "CMD"  # kept: built with --format docker
    # Built on the base image.sh made from Debian packages (its label is inherited).
    assert config["Labels"]["hpc.base.key"] != ""

    whoami = podman("run", "--rm", image, "id", "-u")
    assert whoami.stdout.strip() == str(UID)
    # Only what .dockerignore lets in: no tests, testbed, .git or venv of the build host.
    listed = podman("run", "--rm", image, "sh", "-c", "ls -A /opt/hpc-gateway /opt/hpc-gateway/src").stdout
    assert listed.split() == ["/opt/hpc-gateway:", "README.md", "openapi", "requirements.txt", "setup.py", "src",
                              "venv", "/opt/hpc-gateway/src:", "hpc"]
    # The package is installed (not run from a source tree) and carries its migrations.
    probe = podman("run", "--rm", "--entrypoint", "python", image, "-c",
                   "import json, hpc.store.db as db; print(json.dumps([str(db.MIGRATIONS), db.head_revision()]))")
    migrations, head = json.loads(probe.stdout)
    assert (migrations, head) == (
        "/opt/hpc-gateway/venv/lib/python3.11/site-packages/hpc/store/migrations", head_revision())
    # The entry point runs hpc-gateway commands, and anything else as a plain command.
    made = json.loads(podman("run", "--rm", image, "token", "ops", "--role", "admin", "--json").stdout)
    assert made["role"] == "admin"
    assert podman("run", "--rm", image, "echo", "plain command").stdout == "plain command\n"


def test_db_upgrade_in_the_image_adopts_a_release_1_0_database(image, tmp_path):
    data = owned_dir(tmp_path / "data")
    database = data / "gateway.db"
    engine = sa.create_engine(f"sqlite:///{database}")
    release_1_0.migrate(engine)
    engine.dispose()
    os.chown(database, UID, UID)
    upgraded = podman("run", "--rm", "-v", f"{data}:/var/lib/hpc-gateway", image, "db", "upgrade")
    assert upgraded.stdout.strip().endswith(f"upgraded from revision none to {head_revision()} (head)")
    with sqlite3.connect(database) as conn:
        assert conn.execute("select version_num from alembic_version").fetchall() == [(head_revision(),)]
    current = podman("run", "--rm", "-v", f"{data}:/var/lib/hpc-gateway", image, "db", "current")
    assert current.stdout.strip().endswith(f"revision {head_revision()} (head)")


def test_gateway_container_runs_a_job_and_a_transfer(image, testbed, tmp_path):
    data, staging = owned_dir(tmp_path / "data"), owned_dir(tmp_path / "staging")
    owned_dir(data / "keys")
    install_file(data / "keys" / "testbed_ed25519", Path(testbed["TESTBED_SSH_KEY"]).read_bytes())
    # The testbed's host key, known in advance under the address the container uses.
    install_file(data / "known_hosts", f"[{HOST_FROM_CONTAINER}]:{testbed['TESTBED_SSH_PORT']} "
                                       f"{testbed['TESTBED_HOST_KEY_TYPE']} {testbed['TESTBED_HOST_KEY_B64']}\n", 0o644)
    # A file for the transfer, served by the testbed's nginx.
    name = f"image-{uuid.uuid4().hex[:12]}"
    payload = os.urandom(512 * KiB)
    served = Path(testbed["TESTBED_HTTP_ROOT"]) / f"{name}.bin"
    served.write_bytes(payload)
    served.chmod(0o644)

    token = f"image-test-{uuid.uuid4().hex}"
    port = free_port()
    container = f"hpc-image-test-{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": f"Bearer {token}"}
    url = f"http://127.0.0.1:{port}"
    podman("run", "-d", "--name", container,
           "--network", "slirp4netns:allow_host_loopback=true", "-p", f"127.0.0.1:{port}:8080",
           "-v", f"{data}:/var/lib/hpc-gateway", "-v", f"{staging}:/var/spool/hpc-gateway",
           "-e", f"HPC_TOKENS=ops:admin:{hash_token(token)}",
           "-e", f"HPC_SOURCE_ALLOW_NETWORKS={HOST_FROM_CONTAINER}/32",
           "-e", "HPC_MIN_WATCH_PERIOD=0.5",
           image)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = requests.get(f"{url}/health", timeout=2)
                break
            except requests.ConnectionError:
                state = podman("inspect", "--format", "{{.State.Status}}", container).stdout.strip()
                assert state == "running" and time.monotonic() < deadline, podman("logs", container).stderr
                time.sleep(0.3)
        assert (health.status_code, health.json()["auth"]) == (200, True)
        assert requests.get(f"{url}/infrastructure", timeout=10).status_code == 401

        body = infrastructure_body(testbed, "tb-image", "slurm", host=HOST_FROM_CONTAINER,
                                   ssh_key={"type": "ssh-ed25519", "path": "testbed_ed25519"})
        registered = requests.post(f"{url}/infrastructure", json=body, headers=auth, timeout=60)
        assert registered.status_code == 201, registered.text

        job = requests.post(f"{url}/job", headers=auth, timeout=30, json={
            "infrastructure": "tb-image", "name": "image-job", "watch_period": 1,
            "script": "#!/bin/bash\necho hello from the image job on $(hostname)\n"})
        assert job.status_code == 201, job.text
        transfer = requests.post(f"{url}/data", headers=auth, timeout=30, json={
            "src": f"http://{HOST_FROM_CONTAINER}:8081/{name}.bin", "dst": f"hpcgw-image-test/{name}.bin",
            "infrastructure": "tb-image"})
        assert transfer.status_code == 201, transfer.text

        deadline = time.monotonic() + 120
        while True:
            job_now = requests.get(f"{url}/job/{job.json()['id']}", headers=auth, timeout=10).json()
            transfer_now = requests.get(f"{url}/data/{transfer.json()['id']}", headers=auth, timeout=10).json()
            if job_now["status"] == "completed" and transfer_now["status"] in ("completed", "failure"):
                break
            assert time.monotonic() < deadline, (job_now, transfer_now, podman("logs", container).stderr[-3000:])
            time.sleep(0.5)
        assert (job_now["state"], job_now["exit_code"]) == ("completed", 0)
        output = requests.get(f"{url}/job/{job.json()['id']}/output", headers=auth, timeout=10).json()
        assert output["data"] == f"hello from the image job on {testbed['TESTBED_HOSTNAME']}\n"
        assert (transfer_now["state"], transfer_now["bytes_done"]) == ("completed", len(payload))
        # The bytes on the cluster, read there (the testbed cluster is this machine), not the gateway's word.
        delivered = CLUSTER_HOME / "hpcgw-image-test" / f"{name}.bin"
        assert hashlib.sha256(delivered.read_bytes()).hexdigest() == hashlib.sha256(payload).hexdigest()

        # Non-root inside; its state on the volumes, owned by that user; the image's health check passes.
        assert podman("exec", container, "id", "-u").stdout.strip() == str(UID)
        assert podman("top", container, "user", "comm").stdout.split()[2:4] == ["hpc", "hpc-gateway"]
        database = data / "gateway.db"
        assert ((data / "secret.key").stat().st_uid, database.stat().st_uid) == (UID, UID)
        with sqlite3.connect(database) as conn:
            assert conn.execute("select version_num from alembic_version").fetchall() == [(head_revision(),)]
            assert conn.execute("select name, host from infrastructures").fetchall() == [
                ("tb-image", HOST_FROM_CONTAINER)]
        assert podman("healthcheck", "run", container, check=False).returncode == 0

        # SIGTERM reaches the gateway itself (the entry point execs it), which shuts down cleanly.
        podman("stop", "--time", "30", container, timeout=60)
        logs = podman("logs", container).stderr
        assert "Finished server process" in logs
        assert podman("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip() in ("0", "143")
    finally:
        podman("rm", "--force", container, check=False)
        served.unlink(missing_ok=True)
        (CLUSTER_HOME / "hpcgw-image-test" / f"{name}.bin").unlink(missing_ok=True)

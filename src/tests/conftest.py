"""Shared fixtures: the live testbed's coordinates and real gateway processes started against it.

Integration tests talk to the real testbed (``testbed/up.sh``: sshd, Slurm, the Torque wrappers, moto,
nginx on 127.0.0.1). Without it they are skipped, unless ``HPC_REQUIRE_TESTBED=1`` (set by the README's
test command), where a missing testbed is an error: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from hpc.security import hash_token
from tests.support import infrastructure_body

REPO = Path(__file__).resolve().parents[2]
TESTBED_ENV = Path(os.environ.get("HPC_TESTBED_DIR", "/var/lib/hpc-testbed")) / "testbed.env"


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def testbed() -> dict[str, str]:
    """The testbed's KEY=VALUE facts (ports, keys, S3 credentials); skips or fails when it is down."""
    required = os.environ.get("HPC_REQUIRE_TESTBED") == "1"
    if not TESTBED_ENV.exists() or not _port_open(2222):
        message = f"the local testbed is not up ({TESTBED_ENV}); run: bash testbed/up.sh"
        if required:
            pytest.fail(message)
        pytest.skip(message)
    return read_env_file(TESTBED_ENV)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class GatewayProcess:
    """A real gateway process (uvicorn) with its own data directory, tokens and log."""

    data_dir: Path
    port: int
    env: dict[str, str]
    tokens: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key_dir(self) -> Path:
        return self.data_dir / "keys"

    def start(self, timeout: float = 30) -> "GatewayProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hpc.api.run"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway did not answer within {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """Ends the process at once, as a crash would (no clean shutdown)."""
        self.stop(signal.SIGKILL)

    def restart(self) -> "GatewayProcess":
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(self, method: str, path: str, token: str | None = "admin", **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {self.tokens[token]}"
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, f"{self.url}{path}", headers=headers, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body=None, **kwargs) -> requests.Response:
        return self.request("POST", path, json=body, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


@pytest.fixture
def gateway_factory(tmp_path_factory, testbed):
    """Makes gateway processes; each gets its own data dir with the testbed keys in its key dir."""
    made: list[GatewayProcess] = []

    def make(*, auth: bool = True, extra_env: dict[str, str] | None = None, data_dir: Path | None = None,
             start: bool = True) -> GatewayProcess:
        data_dir = data_dir or tmp_path_factory.mktemp("gateway")
        key_dir = data_dir / "keys"
        key_dir.mkdir(parents=True, exist_ok=True)
        for name in ("id_ed25519", "id_ed25519_pw"):
            target = key_dir / name
            if not target.exists():
                shutil.copyfile(Path(testbed["TESTBED_DIR"]) / "keys" / name, target)
                target.chmod(0o600)
        shutil.copyfile(testbed["TESTBED_KNOWN_HOSTS"], data_dir / "known_hosts")
        tokens = {role: f"tok-{role}-{uuid.uuid4().hex}" for role in ("admin", "user", "user2")}
        roles = {"admin": "admin", "user": "user", "user2": "user"}
        hashes = ",".join(f"{name}:{roles[name]}:{hash_token(secret)}" for name, secret in tokens.items())
        port = free_port()
        env = {
            key: value for key, value in os.environ.items() if not key.startswith("HPC_")
        }
        env.update(
            {
                "PYTHONPATH": str(REPO / "src"),
                "HPC_DATA_DIR": str(data_dir),
                "HPC_LISTEN_PORT": str(port),
                "HPC_AUTH_ENABLED": "1" if auth else "0",
                "HPC_TOKENS": hashes,
                "HPC_LOG_LEVEL": "DEBUG",
                "HPC_MIN_WATCH_PERIOD": "0.5",
            }
        )
        env.update(extra_env or {})
        gateway = GatewayProcess(data_dir, port, env, tokens, data_dir / "gateway.log")
        made.append(gateway)
        return gateway.start() if start else gateway

    yield make
    for gateway in made:
        gateway.stop()


@pytest.fixture
def gateway(gateway_factory) -> GatewayProcess:
    return gateway_factory()


@pytest.fixture
def registered(gateway, testbed) -> GatewayProcess:
    """A gateway with the testbed registered twice: ``tb-slurm`` and ``tb-pbs``."""
    for name, scheduler in (("tb-slurm", "slurm"), ("tb-pbs", "pbs")):
        response = gateway.post("/infrastructure", infrastructure_body(testbed, name, scheduler))
        assert response.status_code == 201, response.text
    return gateway

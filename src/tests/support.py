"""Helpers shared by the tests and the benchmarks (importable as ``tests.support``)."""

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

import requests

from hpc.security import hash_token

REPO = Path(__file__).resolve().parents[2]
TESTBED_ENV = Path(os.environ.get("HPC_TESTBED_DIR", "/var/lib/hpc-testbed")) / "testbed.env"
# The testbed cluster as the gateway registers it, once per scheduler: (name, scheduler).
TESTBED_INFRASTRUCTURES = (("tb-slurm", "slurm"), ("tb-pbs", "pbs"), ("tb-sge", "sge"))


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


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


def new_gateway(testbed: dict[str, str], data_dir: Path, *, auth: bool = True,
                extra_env: dict[str, str] | None = None, start: bool = True) -> GatewayProcess:
    """A gateway process on its own port and data dir, with the testbed keys and three tokens."""
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
            # The testbed's HTTP and S3 servers listen on loopback, which sources may not use by default.
            "HPC_SOURCE_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
        }
    )
    env.update(extra_env or {})
    gateway = GatewayProcess(data_dir, port, env, tokens, data_dir / "gateway.log")
    return gateway.start() if start else gateway


def infrastructure_body(testbed: dict[str, str], name: str, scheduler: str, **overrides) -> dict:
    """A registration body for the testbed cluster (key path relative to the gateway's key dir)."""
    settings: dict = {"mpi_launcher": ""}
    if scheduler == "sge":
        # Grid Engine's programs are reached through its settings.sh: /usr/bin/qsub is the Torque wrapper.
        settings["command_setup_lines"] = [f". {testbed['TESTBED_SGE_SETTINGS']}"]
    body = {
        "name": name,
        "host": testbed["TESTBED_SSH_HOST"],
        "port": int(testbed["TESTBED_SSH_PORT"]),
        "username": testbed["TESTBED_SSH_USER"],
        "hostname": testbed["TESTBED_HOSTNAME"],
        "scheduler": scheduler,
        "ssh_key": {"type": "ssh-ed25519", "path": "id_ed25519"},
        "settings": settings,
    }
    body.update(overrides)
    return body

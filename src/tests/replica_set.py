"""Three gateway replicas behind nginx, started by ``scripts/replicas.sh`` (shared by the live test of
several replicas and ``bench/replicas.py``; importable as ``tests.replica_set``).

Besides driving the script it reads what the replicas share: the leases in the database and the
gateway logs, which tell who submitted a job, who ran a transfer, and how often.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import requests
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "replicas.sh"


def free_port_block(size: int, low: int = 20000, high: int = 30000) -> int:
    """A port P with P..P+size-1 all free on 127.0.0.1."""
    for base in range(low + (os.getpid() * 7) % (high - low), high, size + 1):
        if all(_free(base + offset) for offset in range(size)):
            return base
    raise RuntimeError(f"no {size} consecutive free ports in {low}..{high}")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class ReplicaSet:
    """``count`` replicas on ``port + 1..count`` behind a balancer on ``port``, state in ``directory``."""

    def __init__(self, directory: Path, port: int, database_url: str, count: int = 3, register: bool = True,
                 settings: dict[str, str] | None = None):
        self.directory = Path(directory)
        self.port = port
        self.count = count
        self.database_url = database_url
        env = {key: value for key, value in os.environ.items() if not key.startswith(("HPC_", "REPLICAS_"))}
        env.update(REPLICAS_DIR=str(self.directory), REPLICAS_PORT=str(port), REPLICAS_COUNT=str(count),
                   REPLICAS_DATABASE_URL=database_url, REPLICAS_REGISTER="1" if register else "0")
        env.update(settings or {})
        self.env = env
        self.tokens: dict[str, str] = {}
        self.session = requests.Session()
        self.engine = sa.create_engine(database_url, pool_size=2, max_overflow=2)

    # -- the script ---------------------------------------------------------------------------

    def script(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def up(self) -> str:
        result = self.script("up")
        if result.returncode != 0:
            raise RuntimeError(f"replicas.sh up failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        values = dict(line.split("=", 1) for line in (self.directory / "tokens.env").read_text().split())
        self.tokens = {"admin": values["HPC_TOKEN"], "user": values["HPC_USER_TOKEN"]}
        return result.stdout

    def down(self) -> str:
        result = self.script("down")
        self.engine.dispose()
        return result.stdout + result.stderr

    def kill(self, index: int) -> float:
        """``kill -9`` of replica ``index`` through the script; the time it was sent (time.time())."""
        sent = time.time()
        result = self.script("kill", str(index))
        if result.returncode != 0:
            raise RuntimeError(f"replicas.sh kill {index} failed:\n{result.stdout}\n{result.stderr}")
        return sent

    def pid(self, index: int) -> int:
        return int((self.directory / "pids" / f"replica-{index}.pid").read_text().strip())

    # -- HTTP ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def replica_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.port + index}"

    def request(self, method: str, path: str, token: str = "admin", replica: int | None = None,
                **kwargs) -> requests.Response:
        """Through the balancer, or straight to one replica."""
        base = self.replica_url(replica) if replica else self.url
        headers = {"Authorization": f"Bearer {self.tokens[token]}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, f"{base}{path}", headers=headers, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: dict, **kwargs) -> requests.Response:
        return self.request("POST", path, json=body, **kwargs)

    def stats(self, index: int) -> dict | None:
        """One replica's ``GET /stats``, or None when it does not answer."""
        try:
            response = requests.get(f"{self.replica_url(index)}/stats", timeout=5,
                                    headers={"Authorization": f"Bearer {self.tokens['admin']}"})
        except requests.RequestException:
            return None
        return response.json() if response.status_code == 200 else None

    # -- the shared database ------------------------------------------------------------------

    def poll_owners(self) -> dict[str, str | None]:
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.text("SELECT name, poll_owner FROM infrastructures")).all())

    def transfer_leases(self) -> dict[str, tuple[str | None, int, str]]:
        """Every transfer: (lease owner, bytes done, state)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, lease_owner, bytes_done, state FROM transfers")).all()
        return {row[0]: (row[1], row[2] or 0, row[3]) for row in rows}

    def submission_leases(self) -> dict[str, str]:
        """Jobs still being submitted, and who holds their submission."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT id, lease_owner FROM jobs WHERE state = 'submitting' AND lease_owner IS NOT NULL")).all()
        return dict(rows)

    def job_states(self) -> Counter:
        with self.engine.connect() as conn:
            return Counter(dict(conn.execute(sa.text("SELECT state, count(*) FROM jobs GROUP BY state")).all()))

    # -- the logs -----------------------------------------------------------------------------

    def log(self, index: int) -> str:
        path = self.directory / f"replica-{index}" / "gateway.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_counts(self, pattern: str) -> Counter:
        """How often each first group of ``pattern`` appears over every replica's log."""
        regex = re.compile(pattern)
        found: Counter = Counter()
        for index in range(1, self.count + 1):
            for match in regex.finditer(self.log(index)):
                found[match.group(1)] += 1
        return found

    def scheduler_ids(self) -> dict[str, set[str]]:
        """Per job id: the scheduler ids replicas logged for it. A replica that adopts an interrupted
        submission logs the same id again; a second submission would show a second id."""
        found: dict[str, set[str]] = {}
        for index in range(1, self.count + 1):
            for match in re.finditer(r"job (\S+) submitted to \S+ as (\S+)", self.log(index)):
                found.setdefault(match.group(1), set()).add(match.group(2))
        return found

    def completions(self) -> Counter:
        """Per transfer id: how many times a replica completed it."""
        return self.log_counts(r"transfer (\S+): completed, ")

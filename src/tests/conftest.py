"""Shared fixtures: the live testbed's coordinates and real gateway processes started against it.

Integration tests talk to the real testbed (``testbed/up.sh``: sshd, Slurm, the Torque wrappers, Grid
Engine, moto, nginx on 127.0.0.1). Without it they are skipped, unless ``HPC_REQUIRE_TESTBED=1`` (set by
the README's test command), where a missing testbed is an error: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.support import (
    TESTBED_ENV,
    TESTBED_INFRASTRUCTURES,
    GatewayProcess,
    infrastructure_body,
    new_gateway,
    read_env_file,
)


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


@pytest.fixture
def gateway_factory(tmp_path_factory, testbed):
    """Makes gateway processes; each gets its own data dir with the testbed keys in its key dir."""
    made: list[GatewayProcess] = []

    def make(*, auth: bool = True, extra_env: dict[str, str] | None = None, data_dir: Path | None = None,
             start: bool = True) -> GatewayProcess:
        gateway = new_gateway(testbed, data_dir or tmp_path_factory.mktemp("gateway"), auth=auth,
                              extra_env=extra_env, start=start)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        gateway.stop()


@pytest.fixture
def gateway(gateway_factory) -> GatewayProcess:
    return gateway_factory()


@pytest.fixture
def registered(gateway, testbed) -> GatewayProcess:
    """A gateway with the testbed registered three times: ``tb-slurm``, ``tb-pbs`` and ``tb-sge``."""
    for name, scheduler in TESTBED_INFRASTRUCTURES:
        response = gateway.post("/infrastructure", infrastructure_body(testbed, name, scheduler))
        assert response.status_code == 201, response.text
    return gateway


@pytest.fixture
def pg_url(testbed):
    """A fresh, empty PostgreSQL database on the testbed's server; dropped afterwards."""
    import uuid

    import sqlalchemy as sa

    server = testbed["TESTBED_PG_URL"]
    name = f"hpc_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield server.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()

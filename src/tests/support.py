"""Helpers shared by the tests (importable as ``tests.support``)."""

from __future__ import annotations


def infrastructure_body(testbed: dict[str, str], name: str, scheduler: str, **overrides) -> dict:
    """A registration body for the testbed cluster (key path relative to the gateway's key dir)."""
    body = {
        "name": name,
        "host": testbed["TESTBED_SSH_HOST"],
        "port": int(testbed["TESTBED_SSH_PORT"]),
        "username": testbed["TESTBED_SSH_USER"],
        "hostname": testbed["TESTBED_HOSTNAME"],
        "scheduler": scheduler,
        "ssh_key": {"type": "ssh-ed25519", "path": "id_ed25519"},
        "settings": {"mpi_launcher": ""},
    }
    body.update(overrides)
    return body

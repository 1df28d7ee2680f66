"""Writes a fixture file for the local testbed (``scripts/run-local.sh`` runs this).

    python examples/make_fixture.py OUT [--key KEY_PATH] [--testbed-env FILE]

Reads the testbed's facts (``/var/lib/hpc-testbed/testbed.env``: SSH address, S3 keys, HTTP root) and
writes OUT (mode 0600: it holds S3 keys) with the testbed's three registrations (``tb-slurm``, ``tb-pbs``,
``tb-sge``; ``KEY_PATH`` is the key file's name in the gateway's key directory), its S3 store and its HTTP
server.
The S3 keys change whenever the testbed's S3 server restarts: run it again then.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

DEFAULT_ENV = Path(os.environ.get("HPC_TESTBED_DIR", "/var/lib/hpc-testbed")) / "testbed.env"


def read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def testbed_fixture(env: dict[str, str], key_path: str) -> dict:
    def cluster(name: str, scheduler: str) -> dict:
        # The testbed has no MPI: SERRANO runs directly.
        settings: dict = {"mpi_launcher": ""}
        if scheduler == "sge":
            # Grid Engine's programs come with its settings.sh (the testbed's /usr/bin/qsub is Torque's).
            settings["command_setup_lines"] = [f". {env['TESTBED_SGE_SETTINGS']}"]
        return {
            "name": name,
            "host": env["TESTBED_SSH_HOST"],
            "port": int(env["TESTBED_SSH_PORT"]),
            "username": env["TESTBED_SSH_USER"],
            "hostname": env["TESTBED_HOSTNAME"],
            "scheduler": scheduler,
            "ssh_key": {"type": "ssh-ed25519", "path": key_path},
            "settings": settings,
        }

    return {
        "hpc": [cluster("tb-slurm", "slurm"), cluster("tb-pbs", "pbs"), cluster("tb-sge", "sge")],
        "s3": [{
            "name": "testbed",
            "endpoint": env["TESTBED_S3_ENDPOINT"],
            "region": env.get("TESTBED_S3_REGION", "us-east-1"),
            "access_key": env["TESTBED_S3_ACCESS_KEY"],
            "secret_key": env["TESTBED_S3_SECRET_KEY"],
            "bucket": "hpc-examples",
        }],
        "http": [{"name": "testbed", "url": env["TESTBED_HTTP_URL"], "root": env["TESTBED_HTTP_ROOT"]}],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--key", default="testbed_ed25519", help="key file name in the gateway's key dir")
    parser.add_argument("--testbed-env", type=Path, default=DEFAULT_ENV)
    args = parser.parse_args(argv)
    document = testbed_fixture(read_env(args.testbed_env), args.key)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write("# The local testbed, written by examples/make_fixture.py (format: "
                     "examples/fixture.infrastructure.example.yaml)\n")
        yaml.safe_dump(document, stream, sort_keys=False)
    os.chmod(args.out, 0o600)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every example shares: the gateway client, the fixture file, the S3 store, small printing helpers.

The examples take everything from the environment, so they run unchanged against the README's local
setup (``bash scripts/run-local.sh``) or any other gateway:

    HPC_URL, HPC_TOKEN   the gateway and a token (run-local.sh prints both)
    HPC_FIXTURE          the fixture file naming the clusters and the S3 store (default: the one
                         run-local.sh writes, /var/lib/hpc-gateway/fixture.infrastructure.yaml, else
                         examples/fixture.infrastructure.yaml)
    HPC_INFRASTRUCTURE   which of the fixture's clusters an example uses (default: the first)

The fixture has the seed's format, an ``hpc:`` list of infrastructures (the POST /infrastructure body)
and an ``s3:`` list of stores; an ``http:`` list names a web server the examples may publish files to.
``examples/fixture.infrastructure.example.yaml`` shows every field.

Run as a program, this module prints the fixture's S3 store and cluster as shell variables for the CLI
(``eval "$(python examples/common.py --shell)"``), creating the store's bucket if it is missing.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
try:
    from hpc.client import Client
except ImportError:  # a source checkout without the package installed: use its src/
    sys.path.append(str(REPO / "src"))
    from hpc.client import Client

FIXTURE_CANDIDATES = (
    Path("/var/lib/hpc-gateway/fixture.infrastructure.yaml"),
    HERE / "fixture.infrastructure.yaml",
)


def fixture_path() -> Path:
    """The fixture file in use: ``$HPC_FIXTURE`` (or the seed's variable), else the first that exists."""
    for variable in ("HPC_FIXTURE", "HPC_GATEWAY_TEST_INFRASTRUCTURE_FIXTURE"):
        if os.environ.get(variable):
            return Path(os.environ[variable])
    for candidate in FIXTURE_CANDIDATES:
        if candidate.exists():
            return candidate
    sys.exit("no fixture file: run 'bash scripts/run-local.sh' (it writes one), or point HPC_FIXTURE at one "
             "(format: examples/fixture.infrastructure.example.yaml)")


def fixture() -> dict[str, Any]:
    """The fixture's content: ``{"hpc": [...], "s3": [...], "http": [...]}``."""
    path = fixture_path()
    with open(path, encoding="utf-8") as stream:
        loaded = yaml.safe_load(stream) or {}
    if isinstance(loaded, list):  # the seed's oldest format: just the list of clusters
        loaded = {"hpc": loaded}
    return loaded


def client() -> Client:
    """A client of ``$HPC_URL`` with ``$HPC_TOKEN``."""
    if not os.environ.get("HPC_TOKEN"):
        print("note: HPC_TOKEN is not set; requests go without a token", file=sys.stderr)
    return Client()


def infrastructures() -> list[dict[str, Any]]:
    """The fixture's clusters, as POST /infrastructure bodies."""
    entries = fixture().get("hpc") or []
    if not entries:
        sys.exit(f"{fixture_path()} lists no cluster under 'hpc:'")
    return entries


def infrastructure() -> str:
    """The name of the cluster to use: ``$HPC_INFRASTRUCTURE``, else the fixture's first."""
    return os.environ.get("HPC_INFRASTRUCTURE") or infrastructures()[0]["name"]


def s3_store() -> dict[str, Any]:
    """The fixture's first S3 store: endpoint, region, access_key, secret_key, bucket."""
    stores = fixture().get("s3") or []
    if not stores:
        sys.exit(f"{fixture_path()} lists no S3 store under 's3:'")
    store = dict(stores[0])
    store.setdefault("region", "local")
    store.setdefault("bucket", "hpc-examples")
    return store


def s3_credentials(store: dict[str, Any]) -> dict[str, str]:
    """The fields every S3 transfer request repeats."""
    return {key: store[key] for key in ("endpoint", "region", "access_key", "secret_key")}


def s3_client(store: dict[str, Any]):
    """A boto3 client of the store, with its bucket created if missing."""
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=store["endpoint"], region_name=store["region"],
                      aws_access_key_id=store["access_key"], aws_secret_access_key=store["secret_key"],
                      config=Config(signature_version="s3v4", retries={"max_attempts": 3}))
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    if store["bucket"] not in existing:
        options = {}
        if store["region"] not in ("us-east-1", ""):
            options["CreateBucketConfiguration"] = {"LocationConstraint": store["region"]}
        s3.create_bucket(Bucket=store["bucket"], **options)
    return s3


def http_server() -> dict[str, Any]:
    """The fixture's first HTTP server: ``url`` and the local directory ``root`` it serves."""
    servers = fixture().get("http") or []
    if not servers or not servers[0].get("root"):
        sys.exit(f"{fixture_path()} names no HTTP server with a local 'root' under 'http:'")
    return servers[0]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def write_random_file(path: Path, size: int, seed: int = 7) -> None:
    """``size`` pseudo-random bytes (incompressible, reproducible), written in 1 MiB blocks."""
    import random

    generator = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        left = size
        while left > 0:
            block = min(left, 1024 * 1024)
            stream.write(generator.randbytes(block))
            left -= block


def large_size() -> int:
    """Bytes of the examples' "large" objects: ``$HPC_EXAMPLE_LARGE_MB`` MiB (default 64)."""
    return int(float(os.environ.get("HPC_EXAMPLE_LARGE_MB", "64")) * 1024 * 1024)


def heading(text: str) -> None:
    print(f"\n== {text}", flush=True)


def check(condition: bool, message: str) -> None:
    """Stops the example with ``message`` (exit 1) when ``condition`` is false."""
    if not condition:
        sys.exit(f"FAILED: {message}")


def _shell_exports() -> str:
    import shlex

    store = s3_store()
    s3_client(store)  # the bucket exists from here on
    values = {
        "HPC_S3_ENDPOINT": store["endpoint"], "HPC_S3_REGION": store["region"],
        "HPC_S3_ACCESS_KEY": store["access_key"], "HPC_S3_SECRET_KEY": store["secret_key"],
        "HPC_S3_BUCKET": store["bucket"], "HPC_INFRASTRUCTURE": infrastructure(),
    }
    servers = fixture().get("http") or []
    if servers:
        values["HPC_HTTP_URL"] = servers[0].get("url", "")
        values["HPC_HTTP_ROOT"] = servers[0].get("root", "")
    return "\n".join(f"export {key}={shlex.quote(str(value))}" for key, value in values.items())


if __name__ == "__main__":
    if sys.argv[1:] == ["--shell"]:
        print(_shell_exports())
    else:
        sys.exit("usage: python examples/common.py --shell")

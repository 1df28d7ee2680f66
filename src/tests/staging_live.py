"""What the live transfer tests share: random files served by nginx and stored in S3, a fresh directory
on the cluster, a gateway with the testbed registered, problem checks. The fixtures are made available to
every integration test by ``tests/integration/conftest.py``."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config as BotoConfig

from tests.support import infrastructure_body, new_gateway

MiB = 1024 * 1024
SIZES = {"empty": 0, "one": 1, "ten": 10 * MiB, "big": 300 * MiB}
CLUSTER_HOME = Path("/home/hpcuser")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


# -- shared data --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def www(testbed) -> dict[str, dict]:
    """Random files of 0 B, 1 B, 10 MiB and 300 MiB served by nginx (made once, kept between runs)."""
    root = Path(testbed["TESTBED_HTTP_ROOT"]) / "hpcgw-test"
    root.mkdir(mode=0o755, exist_ok=True)
    files = {}
    for name, size in SIZES.items():
        path = root / f"{name}.bin"
        sidecar = root / f"{name}.bin.sha256"
        if not (path.exists() and path.stat().st_size == size and sidecar.exists()):
            digest = hashlib.sha256()
            with open(path, "wb") as handle:
                left = size
                while left:
                    chunk = os.urandom(min(4 * MiB, left))
                    digest.update(chunk)
                    handle.write(chunk)
                    left -= len(chunk)
            sidecar.write_text(digest.hexdigest())
        path.chmod(0o644)
        files[name] = {
            "path": path,
            "size": size,
            "sha256": sidecar.read_text().strip(),
            "url": f"{testbed['TESTBED_HTTP_URL']}/hpcgw-test/{name}.bin",
        }
    return files


@pytest.fixture(scope="session")
def s3(testbed, www):
    """A bucket holding the same four files; removed with everything in it at the end."""
    client = boto3.client(
        "s3", endpoint_url=testbed["TESTBED_S3_ENDPOINT"], aws_access_key_id=testbed["TESTBED_S3_ACCESS_KEY"],
        aws_secret_access_key=testbed["TESTBED_S3_SECRET_KEY"], region_name="us-east-1",
        config=BotoConfig(s3={"addressing_style": "path"}),
    )
    bucket = f"hpcgw-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    for name, info in www.items():
        client.upload_file(str(info["path"]), bucket, f"in/{name}.bin")
    yield {"client": client, "bucket": bucket}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=bucket)


def s3_body(testbed, s3, **fields) -> dict:
    body = {
        "endpoint": testbed["TESTBED_S3_ENDPOINT"],
        "bucket": s3["bucket"],
        "region": "local",
        "access_key": testbed["TESTBED_S3_ACCESS_KEY"],
        "secret_key": testbed["TESTBED_S3_SECRET_KEY"],
        "infrastructure": "tb-slurm",
    }
    body.update(fields)
    return body


@pytest.fixture
def cluster_dir():
    """A fresh directory name under the cluster user's home (relative path, absolute path)."""
    base = CLUSTER_HOME / "hpcgw-test"
    base.mkdir(exist_ok=True)
    owner = CLUSTER_HOME.stat()
    os.chown(base, owner.st_uid, owner.st_gid)  # the gateway writes here as the cluster user
    relative = f"hpcgw-test/{uuid.uuid4().hex[:10]}"
    yield relative, CLUSTER_HOME / relative
    shutil.rmtree(CLUSTER_HOME / relative, ignore_errors=True)


def make_cluster_dir(path: Path) -> Path:
    """Creates ``path`` (and parents under the home) as the cluster user would own them."""
    owner = CLUSTER_HOME.stat()
    path.mkdir(parents=True, exist_ok=True)
    while path != CLUSTER_HOME:
        os.chown(path, owner.st_uid, owner.st_gid)
        path = path.parent
    return path


def start_gateway(tmp_path_factory, testbed, **env):
    gateway = new_gateway(testbed, tmp_path_factory.mktemp("gateway"), extra_env=env)
    response = gateway.post("/infrastructure", infrastructure_body(testbed, "tb-slurm", "slurm"))
    assert response.status_code == 201, response.text
    return gateway


def assert_problem(response, status: int, field: str | None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body.get("field") == field
    return body

"""Batches through the real API against the live testbed: an S3 prefix to a cluster directory, a cluster
directory to an S3 prefix, a list of URLs to a directory; include/exclude, nested paths, one file failing
among many, a gateway killed mid-batch, the manifest checked with sha256sum on the cluster."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.staging_live import assert_problem, make_cluster_dir, start_gateway

pytestmark = pytest.mark.integration
TREE = {
    "a.txt": 1000,
    "b.csv": 0,
    "sub/c.txt": 70_000,
    "sub/deeper/d.bin": 5 * 1024 * 1024 + 3,  # above the small-file size: the single-file sink
    "sub/deeper/e.txt": 12,
    "skip/f.log": 300,
    "odd name 'quoted' $(x).txt": 44,
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory, testbed):
    gateway = start_gateway(tmp_path_factory, testbed, HPC_TRANSFER_RETRY_DELAY="0.2", HPC_TRANSFER_RETRIES="2")
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def tree(s3):
    """The files of TREE under an S3 prefix: {relative path: bytes}."""
    prefix = f"tree-{uuid.uuid4().hex[:8]}"
    contents = {path: os.urandom(size) for path, size in TREE.items()}
    for path, data in contents.items():
        s3["client"].put_object(Bucket=s3["bucket"], Key=f"{prefix}/{path}", Body=data)
    s3["client"].put_object(Bucket=s3["bucket"], Key=f"{prefix}/emptydir/", Body=b"")  # a "directory" marker
    return prefix, contents


def keys(testbed, s3) -> dict:
    return {"endpoint": testbed["TESTBED_S3_ENDPOINT"], "bucket": s3["bucket"], "region": "us-east-1",
            "access_key": testbed["TESTBED_S3_ACCESS_KEY"], "secret_key": testbed["TESTBED_S3_SECRET_KEY"],
            "infrastructure": "tb-slurm"}


def wait_batch(gateway, batch_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = gateway.get(f"/batch/{batch_id}").json()
        if record["state"] in ("completed", "failed", "cancelled"):
            return record
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} did not end: {record}\n{gateway.log()[-3000:]}")


def all_files(gateway, batch_id: str, **params) -> list[dict]:
    items, offset = [], 0
    while True:
        page = gateway.get(f"/batch/{batch_id}/files", params={"limit": 3, "offset": offset, **params}).json()
        items += page["items"]
        offset += page["limit"]
        if offset >= page["total"]:
            return items


def sha256sum_check(directory: Path, manifest: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sha256sum", "--strict", "-c", manifest], cwd=directory, capture_output=True, text=True)


def test_an_s3_prefix_arrives_in_a_cluster_directory(gw, testbed, s3, tree, cluster_dir):
    prefix, contents = tree
    relative, absolute = cluster_dir
    created = gw.post("/batch/s3_data", {**keys(testbed, s3), "prefix": prefix, "dst": f"{relative}/in",
                                         "exclude": ["skip/*"]})
    assert created.status_code == 201, created.text
    record = created.json()
    assert (record["state"], record["kind"], record["src"]) == ("queued", "s3_data", f"s3://{s3['bucket']}/{prefix}/")
    assert "secret_key" not in record and "access_key" not in record
    final = wait_batch(gw, record["id"])
    expected = {p: d for p, d in contents.items() if not p.startswith("skip/")}
    assert final["state"] == "completed", final
    assert (final["files_total"], final["files_done"], final["files_failed"]) == (len(expected), len(expected), 0)
    assert final["bytes_done"] == final["bytes_total"] == sum(len(d) for d in expected.values())
    assert final["percent"] == 100.0
    files = all_files(gw, record["id"])
    assert sorted(f["path"] for f in files) == sorted(expected)
    for item in files:
        data = (absolute / "in" / item["path"]).read_bytes()
        assert data == expected[item["path"]]
        assert item["sha256"] == hashlib.sha256(data).hexdigest()
        assert (item["state"], item["size"]) == ("completed", len(data))
    assert not (absolute / "in" / "skip").exists()
    assert not (absolute / "in" / "emptydir").exists()
    assert [p.name for p in (absolute / "in").iterdir() if p.name.startswith(".hpcgw-") and p.is_dir()] == []
    manifest = Path(final["manifest"])
    assert manifest.parent == absolute / "in"
    check = sha256sum_check(absolute / "in", manifest.name)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == len(expected)
    listed = gw.get("/batch", params={"kind": "s3_data", "limit": 1000}).json()
    assert record["id"] in [b["id"] for b in listed["items"]]


def test_include_patterns_and_a_flat_listing(gw, testbed, s3, tree, cluster_dir):
    prefix, contents = tree
    relative, absolute = cluster_dir
    record = gw.post("/batch/s3_data", {**keys(testbed, s3), "prefix": prefix + "/", "dst": relative,
                                        "include": ["*.txt"], "recursive": False}).json()
    final = wait_batch(gw, record["id"])
    assert final["state"] == "completed", final
    assert sorted(f["path"] for f in all_files(gw, record["id"])) == sorted(
        p for p in contents if p.endswith(".txt") and "/" not in p)


def test_one_file_failing_among_many_fails_the_batch_and_keeps_the_others(gw, testbed, s3, tree, cluster_dir):
    prefix, contents = tree
    relative, absolute = cluster_dir
    make_cluster_dir(absolute / "a.txt")  # a directory where a file of the prefix must go
    record = gw.post("/batch/s3_data", {**keys(testbed, s3), "prefix": prefix, "dst": relative}).json()
    final = wait_batch(gw, record["id"])
    assert final["state"] == "failed"
    assert final["files_failed"] == 1
    assert final["files_done"] == len(contents) - 1
    assert final["reason"].startswith(f"1 of {len(contents)} file(s) failed")
    failed = all_files(gw, record["id"], state="failed")
    assert [(f["path"], f["state"]) for f in failed] == [("a.txt", "failed")]
    assert "is an existing directory" in failed[0]["reason"]
    assert (absolute / "sub" / "c.txt").read_bytes() == contents["sub/c.txt"]
    check = sha256sum_check(absolute, Path(final["manifest"]).name)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_cluster_directory_reaches_an_s3_prefix(gw, testbed, s3, tree, cluster_dir):
    _, contents = tree
    relative, absolute = cluster_dir
    for path, data in contents.items():
        make_cluster_dir((absolute / "out" / path).parent)
        (absolute / "out" / path).write_bytes(data)
    (absolute / "out" / "link.txt").symlink_to("/etc/passwd")  # never followed
    target = f"from-cluster-{uuid.uuid4().hex[:8]}"
    record = gw.post("/batch/s3_result", {**keys(testbed, s3), "src": f"{relative}/out", "prefix": target,
                                          "exclude": ["*.log"]}).json()
    final = wait_batch(gw, record["id"])
    expected = {p: d for p, d in contents.items() if not p.endswith(".log")}
    assert final["state"] == "completed", final
    assert final["files_done"] == len(expected)
    client = s3["client"]
    stored = {o["Key"][len(target) + 1 :] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=s3["bucket"], Prefix=target + "/") for o in page.get("Contents", [])}
    assert stored == set(expected)
    for path, data in expected.items():
        assert client.get_object(Bucket=s3["bucket"], Key=f"{target}/{path}")["Body"].read() == data
    for item in all_files(gw, record["id"]):
        assert item["sha256"] == hashlib.sha256(expected[item["path"]]).hexdigest()
    check = sha256sum_check(absolute / "out", Path(final["manifest"]).name)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_list_of_urls_arrives_with_a_missing_one_failing_alone(gw, testbed, www, cluster_dir):
    relative, absolute = cluster_dir
    body = {"dst": f"{relative}/urls", "infrastructure": "tb-slurm", "files": [
        {"src": www["one"]["url"]},
        {"src": www["ten"]["url"], "path": "nested/ten.bin"},
        {"src": www["one"]["url"].replace("one.bin", "no-such-file.bin")},
    ]}
    record = gw.post("/batch/data", body).json()
    assert record["files_total"] == 3
    final = wait_batch(gw, record["id"])
    assert final["state"] == "failed"
    files = {f["path"]: f for f in all_files(gw, record["id"])}
    assert files["one.bin"]["sha256"] == www["one"]["sha256"]
    assert files["nested/ten.bin"]["sha256"] == www["ten"]["sha256"]
    assert (absolute / "urls" / "nested" / "ten.bin").stat().st_size == www["ten"]["size"]
    assert files["no-such-file.bin"]["state"] == "failed"
    assert "HTTP 404" in files["no-such-file.bin"]["reason"]


def test_bad_batch_requests_are_refused_naming_the_field(gw, testbed, s3, www):
    assert_problem(gw.post("/batch/data", {"dst": "x", "infrastructure": "tb-slurm", "files": [
        {"src": www["one"]["url"]}, {"src": www["one"]["url"]}]}), 400, "files.1.path")
    assert_problem(gw.post("/batch/data", {"dst": "x", "infrastructure": "tb-slurm", "files": [
        {"src": www["one"]["url"], "path": "../escape"}]}), 400, "files.0.path")
    assert_problem(gw.post("/batch/data", {"dst": "x", "infrastructure": "tb-slurm", "files": [
        {"src": "http://169.254.169.254/latest"}]}), 400, "files.0.src")
    assert_problem(gw.post("/batch/s3_data", {**keys(testbed, s3), "dst": "../../etc"}), 400, "dst")
    assert_problem(gw.post("/batch/s3_result", {**keys(testbed, s3), "src": "x", "bucket": "a/b"}), 400, "bucket")
    assert_problem(gw.get(f"/batch/{uuid.uuid4()}"), 404, None)


def test_a_gateway_killed_mid_batch_resumes_with_the_files_it_had_not_finished(tmp_path_factory, testbed, s3,
                                                                                cluster_dir):
    relative, absolute = cluster_dir
    prefix = f"many-{uuid.uuid4().hex[:8]}"
    contents = {f"d{n % 4}/f{n:03d}.bin": os.urandom(16 * 1024) for n in range(160)}
    for path, data in contents.items():
        s3["client"].put_object(Bucket=s3["bucket"], Key=f"{prefix}/{path}", Body=data)
    gateway = start_gateway(tmp_path_factory, testbed, HPC_TRANSFER_MAX_RATE="500kB", HPC_TRANSFER_LEASE_SECONDS="3")
    try:
        record = gateway.post("/batch/s3_data", {**keys(testbed, s3), "prefix": prefix, "dst": relative}).json()
        deadline = time.monotonic() + 60
        while gateway.get(f"/batch/{record['id']}").json()["files_done"] < 20:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        gateway.kill()
        with sqlite3.connect(gateway.data_dir / "gateway.db") as db:
            before = [row[0] for row in db.execute(
                "SELECT path FROM transfer_files WHERE batch_id = ? AND state = 'completed'", (record["id"],))]
        assert 0 < len(before) < len(contents)
        written = {path: (absolute / path).stat().st_mtime_ns for path in before}
        gateway.start()
        final = wait_batch(gateway, record["id"], timeout=120)
    finally:
        gateway.stop()
    assert final["state"] == "completed", final
    assert final["attempts"] >= 2
    assert final["files_done"] == len(contents)
    for path, data in contents.items():
        assert (absolute / path).read_bytes() == data
    # What completed before the kill was not written again.
    assert {path: (absolute / path).stat().st_mtime_ns for path in before} == written
    check = sha256sum_check(absolute, Path(final["manifest"]).name)
    assert check.returncode == 0, check.stdout + check.stderr

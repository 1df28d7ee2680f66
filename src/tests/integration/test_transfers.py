"""Transfers through the real API against the live testbed: nginx (HTTP), moto (S3), sshd (the cluster).

Files are compared by sha256 on the cluster's file system itself (the testbed's "cluster" is this
machine, so the test reads ``~hpcuser`` directly) and in S3 with a separate boto3 client: nothing here
takes the gateway's word for it.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.staging_live import (
    assert_problem,
    make_cluster_dir,
    s3_body,
    sha256_file,
    start_gateway,
)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
TERMINAL_STATUSES = ("completed", "failure")


@pytest.fixture(scope="module")
def gw(tmp_path_factory, testbed):
    """A gateway with the testbed registered as tb-slurm (shared by this module's tests)."""
    gateway = start_gateway(tmp_path_factory, testbed)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def slow_gw(tmp_path_factory, testbed):
    """A gateway reading sources at 60 MB/s, so that faults can be injected mid-transfer, with short
    leases (a killed gateway's transfers are resumed 3 s later) and short backoffs."""
    gateway = start_gateway(tmp_path_factory, testbed, HPC_TRANSFER_MAX_RATE="60MB", HPC_TRANSFER_LEASE_SECONDS="3",
                            HPC_TRANSFER_RETRY_DELAY="0.5", HPC_TRANSFER_RETRIES="6")
    yield gateway
    gateway.stop()


def post(gateway, path: str, body: dict, token: str = "admin") -> dict:
    response = gateway.post(path, body, token=token)
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["status"] == "transferring"
    assert record["state"] == "queued"
    return record


def wait(gateway, path: str, transfer_id: str, timeout: float = 120, token: str = "admin",
         samples: list | None = None, period: float = 0.2) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = gateway.get(f"/{path}/{transfer_id}", token=token)
        assert response.status_code == 200, response.text
        record = response.json()
        if samples is not None:
            samples.append(record)
        if record["status"] in TERMINAL_STATUSES:
            return record
        time.sleep(period)
    raise AssertionError(f"transfer {transfer_id} did not end within {timeout}s: {record}\n{gateway.log()[-3000:]}")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*.part")) if directory.exists() else []


def spool_files(gateway) -> list[str]:
    spool = gateway.data_dir / "staging" / "spool"
    return sorted(p.name for p in spool.iterdir()) if spool.exists() else []


# -- delivery -----------------------------------------------------------------------------------


def test_http_files_arrive_byte_identical_with_parents_created(gw, www, cluster_dir):
    relative, absolute = cluster_dir
    records = {
        name: post(gw, "/data", {"src": info["url"], "dst": f"{relative}/http/{name}/deep/{name}.bin",
                                 "infrastructure": "tb-slurm"})
        for name, info in www.items()
    }
    for name, record in records.items():
        final = wait(gw, "data", record["id"])
        target = absolute / "http" / name / "deep" / f"{name}.bin"
        assert final["status"] == "completed", final
        assert final["state"] == "completed"
        assert final["reason"] == ""
        assert final["sha256"] == www[name]["sha256"]
        assert sha256_file(target) == www[name]["sha256"]
        assert target.stat().st_size == www[name]["size"]
        assert final["bytes_done"] == www[name]["size"]
        assert final["bytes_total"] == www[name]["size"]
        assert final["percent"] == 100.0
        assert final["eta"] == 0.0
        assert final["attempts"] == 1
        assert final["src"] == www[name]["url"]
        assert final["dst"] == f"{relative}/http/{name}/deep/{name}.bin"
        assert final["started_at"] >= final["created_at"]
        assert final["ended_at"] >= final["started_at"]
    assert leftovers(absolute) == []
    assert spool_files(gw) == []


def test_s3_objects_arrive_byte_identical(gw, www, s3, testbed, cluster_dir):
    relative, absolute = cluster_dir
    records = {
        name: post(gw, "/s3_data", s3_body(testbed, s3, object=f"in/{name}.bin", dst=f"{relative}/s3/{name}.bin"))
        for name in www
    }
    for name, record in records.items():
        assert record["region"] == "local"
        assert "access_key" not in record and "secret_key" not in record
        final = wait(gw, "s3_data", record["id"])
        assert final["status"] == "completed", final
        assert final["sha256"] == www[name]["sha256"]
        assert sha256_file(absolute / "s3" / f"{name}.bin") == www[name]["sha256"]
        assert final["bytes_done"] == www[name]["size"]
        assert final["object"] == f"in/{name}.bin"
    assert leftovers(absolute) == []


def test_cluster_files_reach_s3_multipart_for_the_large_one(gw, www, s3, testbed, cluster_dir):
    relative, absolute = cluster_dir
    make_cluster_dir(absolute / "results")
    for name, info in www.items():
        os.link(info["path"], absolute / "results" / f"{name}.bin")  # same bytes, no copy
    records = {
        name: post(gw, "/s3_result", s3_body(testbed, s3, object=f"out/{relative}/{name}.bin",
                                               src=f"{relative}/results/{name}.bin", region="us-east-1"))
        for name in www
    }
    client = s3["client"]
    for name, record in records.items():
        final = wait(gw, "s3_result", record["id"])
        assert final["status"] == "completed", final
        assert final["sha256"] == www[name]["sha256"]
        stored = client.get_object(Bucket=s3["bucket"], Key=f"out/{relative}/{name}.bin")
        digest = hashlib.sha256()
        for chunk in stored["Body"].iter_chunks(4 * MiB):
            digest.update(chunk)
        assert digest.hexdigest() == www[name]["sha256"]
        assert stored["ContentLength"] == www[name]["size"]
        parts = stored["ETag"].strip('"').partition("-")[2]
        assert parts == ("19" if name == "big" else "")  # 300 MiB in 16 MiB parts
    assert client.list_multipart_uploads(Bucket=s3["bucket"]).get("Uploads", []) == []


def test_parallel_sftp_streams_write_disjoint_ranges(tmp_path_factory, testbed, www, s3, cluster_dir):
    relative, absolute = cluster_dir
    gateway = start_gateway(tmp_path_factory, testbed, HPC_SFTP_STREAMS="3", HPC_SFTP_PARALLEL_THRESHOLD="4MiB")
    try:
        records = [
            ("data", post(gateway, "/data", {"src": www["ten"]["url"], "dst": f"{relative}/p/ten.bin",
                                             "infrastructure": "tb-slurm"}), "ten"),
            ("s3_data", post(gateway, "/s3_data", s3_body(testbed, s3, object="in/big.bin",
                                                          dst=f"{relative}/p/big.bin")), "big"),
        ]
        for path, record, name in records:
            final = wait(gateway, path, record["id"])
            assert final["status"] == "completed", final
            assert sha256_file(absolute / "p" / f"{name}.bin") == www[name]["sha256"]
        assert leftovers(absolute) == []
    finally:
        gateway.stop()
    assert gateway.log().count(" data session to ") >= 3  # three streams at once: three sessions


def test_the_paramiko_data_engine_delivers_the_same_bytes(tmp_path_factory, testbed, www, s3, cluster_dir):
    relative, absolute = cluster_dir
    gateway = start_gateway(tmp_path_factory, testbed, HPC_SSH_DATA_ENGINE="paramiko")
    try:
        into = post(gateway, "/data", {"src": www["ten"]["url"], "dst": f"{relative}/pk/ten.bin",
                                       "infrastructure": "tb-slurm"})
        final = wait(gateway, "data", into["id"])
        assert final["status"] == "completed", final
        out = post(gateway, "/s3_result", s3_body(testbed, s3, object=f"out/{relative}/pk.bin",
                                                  src=f"{relative}/pk/ten.bin"))
        assert wait(gateway, "s3_result", out["id"])["sha256"] == www["ten"]["sha256"]
    finally:
        gateway.stop()
    assert sha256_file(absolute / "pk" / "ten.bin") == www["ten"]["sha256"]
    assert "over paramiko" in gateway.log()
    assert "over openssh" not in gateway.log()


def test_progress_rises_monotonically_during_a_large_transfer(slow_gw, www, cluster_dir):
    relative, absolute = cluster_dir
    record = post(slow_gw, "/data", {"src": www["big"]["url"], "dst": f"{relative}/progress.bin",
                                     "infrastructure": "tb-slurm"})
    samples: list[dict] = []
    final = wait(slow_gw, "data", record["id"], samples=samples, period=0.1)
    assert final["status"] == "completed"
    done = [s["bytes_done"] for s in samples]
    assert done == sorted(done)
    percents = [s["percent"] for s in samples if s.get("percent") is not None]
    assert percents == sorted(percents)
    middle = [s for s in samples if 0 < s["bytes_done"] < www["big"]["size"]]
    assert len({s["bytes_done"] for s in middle}) >= 5
    assert all(s["state"] == "transferring" and s["status"] == "transferring" for s in middle)
    assert all(s["bytes_total"] == www["big"]["size"] for s in middle)
    rates = [s["rate"] for s in middle if s.get("rate")]
    assert rates != []
    assert all(0 < r < 200e6 for r in rates)  # the configured cap is 60 MB/s
    etas = [s["eta"] for s in middle if s.get("eta") is not None]
    assert etas != []
    assert etas[-1] < etas[0]
    assert sha256_file(absolute / "progress.bin") == www["big"]["sha256"]


# -- failures -----------------------------------------------------------------------------------


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """A real HTTP server answering 500s and redirects (nginx on the testbed serves files only)."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path.startswith("/no-length"):
            # HTTP/1.0 without Content-Length: the body ends when the server closes the connection.
            self.send_response(200)
            self.end_headers()
            for index in range(48):
                self.wfile.write(bytes([index]) * 65536)
            return
        if self.path.startswith("/redirect-metadata"):
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"<html>internal error page, not the data</html>"
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def misbehaving():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_source_errors_end_in_failure_and_save_nothing(gw, testbed, misbehaving, cluster_dir):
    relative, absolute = cluster_dir
    www_root = Path(testbed["TESTBED_HTTP_ROOT"]) / "hpcgw-test"
    secret = www_root / f"private-{uuid.uuid4().hex[:6]}.bin"
    secret.write_bytes(b"not for you")
    secret.chmod(0o600)  # nginx's worker cannot read it: 403
    try:
        cases = {
            "404": f"{testbed['TESTBED_HTTP_URL']}/hpcgw-test/no-such-file.bin",
            "403": f"{testbed['TESTBED_HTTP_URL']}/hpcgw-test/{secret.name}",
            "500": f"{misbehaving}/error",
        }
        records = {code: post(gw, "/data", {"src": url, "dst": f"{relative}/{code}/x.bin",
                                            "infrastructure": "tb-slurm"}) for code, url in cases.items()}
        for code, record in records.items():
            final = wait(gw, "data", record["id"])
            assert final["status"] == "failure"
            assert final["state"] == "failed"
            assert f"HTTP {code}" in final["reason"]
            assert not (absolute / code / "x.bin").exists()
        assert leftovers(absolute) == []
        assert spool_files(gw) == []
    finally:
        secret.unlink()


def test_a_source_of_unknown_length_is_read_to_its_end(gw, misbehaving, cluster_dir):
    relative, absolute = cluster_dir
    expected = b"".join(bytes([index]) * 65536 for index in range(48))
    record = post(gw, "/data", {"src": f"{misbehaving}/no-length", "dst": f"{relative}/stream.bin",
                                "infrastructure": "tb-slurm"})
    final = wait(gw, "data", record["id"])
    assert final["status"] == "completed", final
    assert final["sha256"] == hashlib.sha256(expected).hexdigest()
    assert (absolute / "stream.bin").read_bytes() == expected
    assert final["bytes_total"] == len(expected)


def test_a_redirect_to_the_metadata_service_is_never_followed(gw, misbehaving, cluster_dir):
    relative, absolute = cluster_dir
    record = post(gw, "/data", {"src": f"{misbehaving}/redirect-metadata", "dst": f"{relative}/meta.bin",
                                "infrastructure": "tb-slurm"})
    final = wait(gw, "data", record["id"])
    assert final["status"] == "failure"
    assert "refusing to connect to 169.254.169.254" in final["reason"]
    assert not (absolute / "meta.bin").exists()


def test_s3_faults_end_in_failure_naming_the_cause(gw, s3, testbed, cluster_dir):
    relative, absolute = cluster_dir
    cases = {
        "wrong secret": ("/s3_data", s3_body(testbed, s3, object="in/one.bin", dst=f"{relative}/a.bin",
                                              secret_key="wrong-secret")),
        "wrong access key": ("/s3_data", s3_body(testbed, s3, object="in/one.bin", dst=f"{relative}/b.bin",
                                                  access_key="AKIAIOSFODNN7EXAMPLE")),
        "no bucket": ("/s3_data", s3_body(testbed, s3, bucket="no-such-bucket-hpcgw", object="in/one.bin",
                                          dst=f"{relative}/c.bin")),
        "no object": ("/s3_data", s3_body(testbed, s3, object="in/no-such-object.bin", dst=f"{relative}/d.bin")),
        "no cluster file": ("/s3_result", s3_body(testbed, s3, object="out/e.bin",
                                                  src=f"{relative}/no-such-result.csv")),
        "wrong keys upload": ("/s3_result", s3_body(testbed, s3, object="out/f.bin", secret_key="wrong",
                                                    src=f"{relative}/present.csv")),
    }
    make_cluster_dir(absolute)
    (absolute / "present.csv").write_text("a,b\n1,2\n")
    (absolute / "present.csv").chmod(0o644)
    expected = {
        "wrong secret": "access denied (SignatureDoesNotMatch)",
        "wrong access key": "access denied (InvalidAccessKeyId)",
        "no bucket": "bucket 'no-such-bucket-hpcgw' does not exist",
        "no object": "object 'in/no-such-object.bin' does not exist",
        "no cluster file": f"no such file on the cluster: {absolute}/no-such-result.csv",
        "wrong keys upload": "access denied (SignatureDoesNotMatch)",
    }
    records = {case: (path, post(gw, path, body)) for case, (path, body) in cases.items()}
    for case, (path, record) in records.items():
        final = wait(gw, path.strip("/"), record["id"])
        assert final["status"] == "failure", case
        assert expected[case] in final["reason"], (case, final["reason"])
    assert sorted(p.name for p in absolute.iterdir()) == ["present.csv"]
    client = s3["client"]
    assert [o["Key"] for o in client.list_objects_v2(Bucket=s3["bucket"], Prefix="out/e").get("Contents", [])] == []
    assert client.list_multipart_uploads(Bucket=s3["bucket"]).get("Uploads", []) == []


def test_a_staging_quota_smaller_than_the_file_fails_before_the_transfer(tmp_path_factory, testbed, www, s3,
                                                                        cluster_dir):
    relative, absolute = cluster_dir
    gateway = start_gateway(tmp_path_factory, testbed, HPC_STAGING_QUOTA="5MiB")
    try:
        http_record = post(gateway, "/data", {"src": www["ten"]["url"], "dst": f"{relative}/q1.bin",
                                              "infrastructure": "tb-slurm"})
        s3_record = post(gateway, "/s3_data", s3_body(testbed, s3, object="in/ten.bin", dst=f"{relative}/q2.bin"))
        for path, record in (("data", http_record), ("s3_data", s3_record)):
            final = wait(gateway, path, record["id"])
            assert final["status"] == "failure"
            assert final["reason"].startswith("insufficient staging space")
            assert "10.0 MiB" in final["reason"]
            assert final["bytes_done"] == 0
        assert not absolute.exists()  # failed before anything reached the cluster
        small = post(gateway, "/data", {"src": www["one"]["url"], "dst": f"{relative}/fits.bin",
                                        "infrastructure": "tb-slurm"})
        assert wait(gateway, "data", small["id"])["status"] == "completed"
        assert spool_files(gateway) == []
    finally:
        gateway.stop()


# -- validation, ownership, secrets --------------------------------------------------------------


@pytest.mark.parametrize(
    "src, message",
    [
        ("file:///etc/passwd", "unsupported URL scheme 'file'"),
        ("ftp://127.0.0.1/x", "unsupported URL scheme 'ftp'"),
        ("127.0.0.1:8081/x", "malformed URL"),
        ("http:///nohost", "no host"),
        ("http://127.0.0.1:99999/x", "malformed URL"),
        ("http://169.254.169.254/latest/meta-data/", "link-local, metadata or reserved"),
        ("http://[fe80::1]/x", "link-local, metadata or reserved"),
        ("http://100.100.100.200/latest/meta-data/", "link-local, metadata or reserved"),
        ("http://[::ffff:169.254.169.254]/", "link-local, metadata or reserved"),
        ("http://10.11.12.13/x", "non-public"),
        ("http://192.168.1.1/x", "non-public"),
        ("http://0.0.0.0:8081/x", "link-local, metadata or reserved"),
    ],
)
def test_bad_sources_are_refused_with_400(gw, src, message):
    response = gw.post("/data", {"src": src, "dst": "hpcgw-test/x.bin", "infrastructure": "tb-slurm"})
    body = assert_problem(response, 400, "src")
    assert message in body["detail"]


@pytest.mark.parametrize("dst", ["../escape.bin", "hpcgw-test/../../escape.bin", "/etc/escape.bin", "/tmp/x.bin",
                                 "hpcgw-test/dir/", "~root/x", "a\nb"])
def test_destinations_outside_the_allowed_roots_are_refused(gw, www, dst):
    response = gw.post("/data", {"src": www["one"]["url"], "dst": dst, "infrastructure": "tb-slurm"})
    assert_problem(response, 400, "dst")


def test_s3_requests_are_validated(gw, s3, testbed):
    bad_endpoint = s3_body(testbed, s3, endpoint="http://169.254.169.254", object="x", dst="hpcgw-test/x")
    assert "link-local" in assert_problem(gw.post("/s3_data", bad_endpoint), 400, "endpoint")["detail"]
    private = s3_body(testbed, s3, endpoint="http://10.0.0.1:9000", object="x", dst="hpcgw-test/x")
    assert_problem(gw.post("/s3_data", private), 400, "endpoint")
    scheme = s3_body(testbed, s3, endpoint="file:///tmp", object="x", dst="hpcgw-test/x")
    assert_problem(gw.post("/s3_data", scheme), 400, "endpoint")
    bucket = s3_body(testbed, s3, bucket="../etc", object="x", dst="hpcgw-test/x")
    assert_problem(gw.post("/s3_data", bucket), 400, "bucket")
    escape = s3_body(testbed, s3, object="x", src="../../etc/shadow")
    assert_problem(gw.post("/s3_result", escape), 400, "src")
    missing = s3_body(testbed, s3, object="x")
    assert_problem(gw.post("/s3_data", missing), 400, "dst")
    unknown = s3_body(testbed, s3, object="x", dst="hpcgw-test/x", infrastructure="no-such-cluster")
    assert_problem(gw.post("/s3_data", unknown), 404, "infrastructure")


def test_transfers_belong_to_their_creator(gw, www, cluster_dir):
    relative, _ = cluster_dir
    mine = post(gw, "/data", {"src": www["one"]["url"], "dst": f"{relative}/mine.bin", "infrastructure": "tb-slurm"},
                token="user")
    assert gw.get(f"/data/{mine['id']}", token="user").status_code == 200
    assert_problem(gw.get(f"/data/{mine['id']}", token="user2"), 404, None)
    assert_problem(gw.delete(f"/data/{mine['id']}", token="user2"), 404, None)
    assert gw.get(f"/data/{mine['id']}", token="admin").status_code == 200
    assert_problem(gw.get(f"/s3_data/{mine['id']}", token="user"), 404, None)  # another kind's path
    assert_problem(gw.get(f"/data/{uuid.uuid4()}", token="admin"), 404, None)
    theirs = post(gw, "/data", {"src": www["one"]["url"], "dst": f"{relative}/theirs.bin",
                                "infrastructure": "tb-slurm"}, token="admin")
    assert_problem(gw.get(f"/data/{theirs['id']}", token="user"), 404, None)
    wait(gw, "data", mine["id"], token="user")
    wait(gw, "data", theirs["id"], token="admin")

    own = gw.get("/transfer", token="user").json()
    assert [t["id"] for t in own["items"]] == [mine["id"]]
    assert own["total"] == 1
    assert own["items"][0]["kind"] == "http"
    assert gw.get("/transfer", token="user2").json()["total"] == 0
    everyone = gw.get("/transfer", params={"kind": "http", "limit": 1000}, token="admin").json()
    assert {mine["id"], theirs["id"]} <= {t["id"] for t in everyone["items"]}
    assert everyone["total"] >= 2
    completed = gw.get("/transfer", params={"state": "completed", "infrastructure": "tb-slurm"}, token="user").json()
    assert [t["id"] for t in completed["items"]] == [mine["id"]]
    assert gw.get("/transfer", params={"state": "failed"}, token="user").json()["total"] == 0
    page = gw.get("/transfer", params={"limit": 1, "offset": 0}, token="admin").json()
    assert (len(page["items"]), page["limit"], page["offset"]) == (1, 1, 0)
    future = gw.get("/transfer", params={"since": "2999-01-01T00:00:00Z"}, token="admin").json()
    assert future["total"] == 0
    bad_since = gw.get("/transfer", params={"since": "yesterday"}, token="admin")
    assert bad_since.status_code == 400
    assert "date-time" in bad_since.json()["detail"]  # Connexion's own check of the format
    assert_problem(gw.delete(f"/data/{mine['id']}", token="user"), 409, None)  # already ended


def test_secrets_never_leave_the_gateway(gw, s3, testbed, www, cluster_dir):
    relative, _ = cluster_dir
    record = post(gw, "/s3_data", s3_body(testbed, s3, object="in/one.bin", dst=f"{relative}/k.bin"))
    url = www["one"]["url"].replace("http://", "http://reader:pa55word-xyz@")
    with_credentials = post(gw, "/data", {"src": url, "dst": f"{relative}/u.bin", "infrastructure": "tb-slurm"})
    assert with_credentials["src"] == www["one"]["url"].replace("http://", "http://reader:***@")
    database = gw.data_dir / "gateway.db"
    with sqlite3.connect(database) as db:
        stored = db.execute("SELECT secrets_enc FROM transfers WHERE id = ?", (record["id"],)).fetchone()[0]
    assert stored is not None
    assert testbed["TESTBED_S3_SECRET_KEY"] not in stored
    assert wait(gw, "s3_data", record["id"])["status"] == "completed"
    assert wait(gw, "data", with_credentials["id"])["status"] == "completed"
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT secrets_enc FROM transfers WHERE id IN (?, ?)",
                          (record["id"], with_credentials["id"])).fetchall()
    assert rows == [(None,), (None,)]
    listing = gw.get("/transfer", params={"limit": 1000}).text
    shown = gw.get(f"/s3_data/{record['id']}").text + listing
    log = gw.log()
    for secret in (testbed["TESTBED_S3_SECRET_KEY"], testbed["TESTBED_S3_ACCESS_KEY"], "pa55word-xyz"):
        assert secret not in shown
        assert secret not in log


# -- cancel and faults -------------------------------------------------------------------------


def test_cancel_stops_within_seconds_and_leaves_nothing(slow_gw, www, cluster_dir):
    relative, absolute = cluster_dir
    record = post(slow_gw, "/data", {"src": www["big"]["url"], "dst": f"{relative}/cancel/big.bin",
                                     "infrastructure": "tb-slurm"})
    wait_for(lambda: slow_gw.get(f"/data/{record['id']}").json()["bytes_done"] > 20 * MiB, 30, "progress")
    response = slow_gw.delete(f"/data/{record['id']}")
    assert response.status_code == 202, response.text
    asked = time.monotonic()
    final = wait(slow_gw, "data", record["id"], timeout=10, period=0.1)
    assert time.monotonic() - asked < 5
    assert final["status"] == "failure"
    assert final["state"] == "cancelled"
    assert "cancelled" in final["reason"]
    assert not (absolute / "cancel" / "big.bin").exists()
    assert leftovers(absolute) == []
    assert spool_files(slow_gw) == []
    assert_problem(slow_gw.delete(f"/data/{record['id']}"), 409, None)


def test_cancelling_an_upload_to_s3_aborts_its_multipart_upload(slow_gw, www, s3, testbed, cluster_dir):
    relative, absolute = cluster_dir
    make_cluster_dir(absolute)
    os.link(www["big"]["path"], absolute / "big.bin")
    key = f"out/{relative}/cancelled.bin"
    record = post(slow_gw, "/s3_result", s3_body(testbed, s3, object=key, src=f"{relative}/big.bin"))
    wait_for(lambda: slow_gw.get(f"/s3_result/{record['id']}").json()["bytes_done"] >= 32 * MiB, 30, "parts")
    client = s3["client"]
    assert [u["Key"] for u in client.list_multipart_uploads(Bucket=s3["bucket"]).get("Uploads", [])] == [key]
    assert slow_gw.delete(f"/s3_result/{record['id']}").status_code == 202
    final = wait(slow_gw, "s3_result", record["id"], timeout=10, period=0.1)
    assert (final["status"], final["state"]) == ("failure", "cancelled")
    assert client.list_multipart_uploads(Bucket=s3["bucket"]).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=s3["bucket"], Prefix=key).get("KeyCount") == 0
    assert spool_files(slow_gw) == []
    assert sha256_file(absolute / "big.bin") == www["big"]["sha256"]  # the source is left alone


def test_a_queued_transfer_is_cancelled_at_once(tmp_path_factory, testbed, www, cluster_dir):
    relative, absolute = cluster_dir
    gateway = start_gateway(tmp_path_factory, testbed, HPC_BACKGROUND="0")  # an API-only replica
    try:
        record = post(gateway, "/data", {"src": www["one"]["url"], "dst": f"{relative}/never.bin",
                                         "infrastructure": "tb-slurm"})
        response = gateway.delete(f"/data/{record['id']}")
        assert response.status_code == 202, response.text
        assert (response.json()["status"], response.json()["state"]) == ("failure", "cancelled")
        assert not absolute.exists()
    finally:
        gateway.stop()


def nginx_lines(testbed, name: str) -> list[tuple[int, int]]:
    """(status, body bytes sent) of each nginx access-log line for ``/hpcgw-test/<name>``."""
    log = Path(testbed["TESTBED_DIR"]) / "nginx" / "logs" / "access.log"
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if f"/hpcgw-test/{name} " in line:
            after = line.split('"', 2)[2].split()
            found.append((int(after[0]), int(after[1])))
    return found


@pytest.fixture
def unique_big(www):
    """The 300 MiB file under a name of its own, so nginx's log lines can be told apart."""
    name = f"resume-{uuid.uuid4().hex[:8]}.bin"
    path = www["big"]["path"].parent / name
    os.link(www["big"]["path"], path)
    yield name, www["big"]["url"].rsplit("/", 1)[0] + f"/{name}"
    path.unlink()


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the gateway's ``ssh`` data sessions)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def ssh_session_pids(client_pid: int, port: int = 2222) -> list[int]:
    """The sshd processes serving the SSH connections of ``client_pid`` and of its ``ssh`` children (found
    through their sockets)."""
    import subprocess

    def listing(*filters: str) -> list[str]:
        out = subprocess.run(["ss", "-Htnp", "state", "established", *filters], capture_output=True, text=True)
        return out.stdout.splitlines()

    clients = [client_pid, *children(client_pid)]
    local_ports = [
        line.split()[2].rsplit(":", 1)[1]
        for line in listing(f"( dport = :{port} )")
        if any(f"pid={pid}," in line for pid in clients)
    ]
    pids = set()
    for local in local_ports:
        for line in listing(f"( sport = :{port} and dport = :{local} )"):
            pids.update(int(part.split("=")[1]) for part in line.split() [-1].split(",") if part.startswith("pid="))
    return sorted(pids)


def log_lines(gateway, transfer_id: str, text: str) -> list[str]:
    return [line for line in gateway.log().splitlines() if f"transfer {transfer_id}: " in line and text in line]


@pytest.mark.slow
def test_sshd_stopped_mid_transfer_resumes_without_rereading(slow_gw, testbed, www, s3, unique_big, cluster_dir):
    import subprocess

    relative, absolute = cluster_dir
    name, url = unique_big
    make_cluster_dir(absolute / "results")
    os.link(www["big"]["path"], absolute / "results" / "big.bin")
    key = f"out/{relative}/ssh-drop.bin"
    transfers = {
        "data": post(slow_gw, "/data", {"src": url, "dst": f"{relative}/ssh-drop.bin", "infrastructure": "tb-slurm"}),
        "s3_data": post(slow_gw, "/s3_data", s3_body(testbed, s3, object="in/big.bin", dst=f"{relative}/s3.bin")),
        "s3_result": post(slow_gw, "/s3_result", s3_body(testbed, s3, object=key, src=f"{relative}/results/big.bin")),
    }

    def all_under_way():
        return all(slow_gw.get(f"/{path}/{t['id']}").json()["bytes_done"] > 48 * MiB for path, t in transfers.items())

    wait_for(all_under_way, 60, "progress of all three transfers")
    ctl = [str(Path(__file__).resolve().parents[3] / "testbed" / "ctl.sh")]
    try:
        subprocess.run(["bash", *ctl, "stop", "sshd"], check=True, capture_output=True)
        sessions = ssh_session_pids(slow_gw.process.pid)
        assert sessions != []
        for pid in sessions:
            os.kill(pid, 15)
        time.sleep(3)
    finally:
        subprocess.run(["bash", *ctl, "start", "sshd"], check=True, capture_output=True)
    for path, record in transfers.items():
        final = wait(slow_gw, path, record["id"], timeout=120)
        assert final["status"] == "completed", final
        assert final["sha256"] == www["big"]["sha256"]
        assert log_lines(slow_gw, record["id"], "starting over") == []
    # Writers to the cluster resumed from their last acknowledged byte (retries counted in attempts).
    assert slow_gw.get(f"/data/{transfers['data']['id']}").json()["attempts"] >= 2
    assert slow_gw.get(f"/s3_data/{transfers['s3_data']['id']}").json()["attempts"] >= 2
    assert sha256_file(absolute / "ssh-drop.bin") == www["big"]["sha256"]
    assert sha256_file(absolute / "s3.bin") == www["big"]["sha256"]
    # The HTTP source was read exactly once: the download went on into the spool while SSH was down.
    assert nginx_lines(testbed, name) == [(200, www["big"]["size"])]
    # The result read from the cluster went on from where the connection dropped, not from byte 0.
    again = log_lines(slow_gw, transfers["s3_result"]["id"], "again from byte")
    assert again != []
    assert all(int(line.rsplit(" ", 1)[1]) > 0 for line in again)
    stored = s3["client"].get_object(Bucket=s3["bucket"], Key=key)
    assert stored["ContentLength"] == www["big"]["size"]
    assert s3["client"].list_multipart_uploads(Bucket=s3["bucket"]).get("Uploads", []) == []
    assert leftovers(absolute) == []


def resumed_at(gateway, transfer_id: str) -> list[int]:
    """The byte offsets a transfer resumed at after a restart, from the gateway's log."""
    marker = f"transfer {transfer_id}: resuming at byte "
    return [int(line.split(marker, 1)[1].split()[0]) for line in gateway.log().splitlines() if marker in line]


@pytest.mark.slow
def test_gateway_killed_mid_transfer_resumes_from_its_checkpoint(slow_gw, testbed, www, s3, unique_big, cluster_dir):
    relative, absolute = cluster_dir
    name, url = unique_big
    size = www["big"]["size"]
    make_cluster_dir(absolute / "results")
    os.link(www["big"]["path"], absolute / "results" / "big.bin")
    key = f"out/{relative}/killed.bin"
    transfers = {
        "data": post(slow_gw, "/data", {"src": url, "dst": f"{relative}/killed.bin", "infrastructure": "tb-slurm"}),
        "s3_data": post(slow_gw, "/s3_data", s3_body(testbed, s3, object="in/big.bin", dst=f"{relative}/s3.bin")),
        "s3_result": post(slow_gw, "/s3_result", s3_body(testbed, s3, object=key, src=f"{relative}/results/big.bin")),
    }

    def all_under_way():
        return all(slow_gw.get(f"/{path}/{t['id']}").json()["bytes_done"] > 64 * MiB for path, t in transfers.items())

    wait_for(all_under_way, 60, "progress of all three transfers")
    slow_gw.kill()
    slow_gw.start()
    for path, record in transfers.items():
        final = wait(slow_gw, path, record["id"], timeout=120)
        assert final["status"] == "completed", final
        assert final["attempts"] >= 2
        assert final["sha256"] == www["big"]["sha256"]
        offsets = resumed_at(slow_gw, record["id"])
        assert len(offsets) == 1
        assert offsets[0] >= 32 * MiB  # resumed from a checkpoint, not from byte 0
    assert sha256_file(absolute / "killed.bin") == www["big"]["sha256"]
    assert sha256_file(absolute / "s3.bin") == www["big"]["sha256"]
    stored = s3["client"].get_object(Bucket=s3["bucket"], Key=key)
    digest = hashlib.sha256()
    for chunk in stored["Body"].iter_chunks(4 * MiB):
        digest.update(chunk)
    assert digest.hexdigest() == www["big"]["sha256"]
    assert s3["client"].list_multipart_uploads(Bucket=s3["bucket"]).get("Uploads", []) == []
    # nginx saw the killed read and then a ranged read of what the cluster did not have yet.
    lines = wait_for(lambda: len(nginx_lines(testbed, name)) >= 2 and nginx_lines(testbed, name), 10, "nginx log")
    first, resumed = lines[0], lines[-1]
    assert first[0] == 200  # the read the kill interrupted (or that had filled the spool already)
    assert resumed == (206, size - resumed_at(slow_gw, transfers["data"]["id"])[0])
    assert sum(sent for _, sent in lines) < 2 * size
    assert leftovers(absolute) == []

"""/metrics and the health endpoints of a live gateway, checked against what was done to it.

A job and a rate-limited HTTP transfer run while /metrics is scraped; the values are then compared with
what happened (requests made, bytes of the file, the job's end) and with the gateway's own independent
counters (/stats). The scrape must carry no secret and no per-resource label value.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, infrastructure_body

SIZE = 24 * 1024 * 1024
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def scrape(gateway) -> tuple[str, dict[tuple[str, frozenset], float]]:
    response = gateway.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response.text, samples


def get(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def source_file(testbed) -> dict:
    root = Path(testbed["TESTBED_HTTP_ROOT"]) / "hpcgw-ops"
    root.mkdir(mode=0o755, exist_ok=True)
    path = root / "metrics.bin"
    if not (path.exists() and path.stat().st_size == SIZE):
        path.write_bytes(os.urandom(SIZE))
    path.chmod(0o644)
    return {"path": path, "url": f"{testbed['TESTBED_HTTP_URL']}/hpcgw-ops/metrics.bin"}


def test_metrics_follow_a_job_and_a_transfer(gateway_factory, testbed, source_file):
    # 4 MiB/s: the 24 MiB transfer runs about 6 s, long enough to be scraped while it runs.
    gateway = gateway_factory(extra_env={"HPC_TRANSFER_MAX_RATE": "4MiB", "HPC_MAX_BODY_SIZE": "64KiB"})
    assert gateway.post("/infrastructure", infrastructure_body(testbed, "tb-slurm", "slurm")).status_code == 201
    canary = f"canary{uuid.uuid4().hex}"
    job = gateway.post("/job", {"infrastructure": "tb-slurm", "script": "sleep 3\necho done\n",
                                "watch_period": 1}, token="user").json()
    url = source_file["url"].replace("http://", f"http://reader:{canary}@")
    transfer = gateway.post("/data", {"src": url, "dst": f"ops-metrics/{uuid.uuid4()}.bin",
                                      "infrastructure": "tb-slurm"}, token="user").json()
    assert transfer["status"] == "transferring"

    job_gets = transfer_gets = 0
    during = []
    deadline = time.monotonic() + 180
    while True:
        job_state = gateway.get(f"/job/{job['id']}", token="user").json()
        job_gets += 1
        transfer_state = gateway.get(f"/data/{transfer['id']}", token="user").json()
        transfer_gets += 1
        if transfer_state["state"] == "transferring" or job_state["state"] in ("queued", "running"):
            during.append(scrape(gateway)[1])
        if job_state["status"] == "completed" and transfer_state["status"] != "transferring":
            break
        assert time.monotonic() < deadline, gateway.log()[-3000:]
        time.sleep(0.3)
    assert (job_state["state"], transfer_state["state"]) == ("completed", "completed")

    # While they ran: the store's census saw them active, the transfer moving with a rate.
    assert any(get(s, "hpc_store_transfers", infrastructure="tb-slurm", kind="http", state="transferring") == 1
               for s in during)
    assert any(get(s, "hpc_store_transfer_rate_bytes_per_second", infrastructure="tb-slurm", kind="http") > 0
               for s in during)
    assert any(get(s, "hpc_store_jobs", infrastructure="tb-slurm", state="running") == 1 for s in during)
    moving = [get(s, "hpc_transfer_bytes_total", infrastructure="tb-slurm", kind="http") for s in during]
    assert moving == sorted(moving)
    assert any(0 < m < SIZE for m in moving), moving  # counted as it moves, not only at the end

    # Requests the guard answers itself are counted too: 413 (body too large), 405, 401 (bad token).
    too_large = gateway.request("POST", "/job", token="user", data=b"x" * 100_000,
                                headers={"Content-Type": "application/json"})
    assert too_large.status_code == 413
    assert gateway.request("PUT", "/job", token="user").status_code == 405
    refused = requests.post(f"{gateway.url}/job", json={"infrastructure": "tb-slurm"},
                            headers={"Authorization": "Bearer not-a-token"}, timeout=30)
    assert refused.status_code == 401
    stats = gateway.get("/stats").json()
    text, after = scrape(gateway)

    assert get(after, "hpc_store_jobs", infrastructure="tb-slurm", state="completed") == 1
    assert get(after, "hpc_jobs_ended_total", infrastructure="tb-slurm", state="completed") == 1
    assert get(after, "hpc_job_submissions_total", infrastructure="tb-slurm", outcome="submitted") == 1
    assert get(after, "hpc_job_submission_duration_seconds_count", infrastructure="tb-slurm") == 1
    polls = get(after, "hpc_job_polls_total", infrastructure="tb-slurm", outcome="ok")
    assert polls >= 1
    assert get(after, "hpc_job_scheduler_commands_total", infrastructure="tb-slurm", kind="status") == \
        stats["jobs"]["tb-slurm"]["status"]
    assert get(after, "hpc_job_scheduler_commands_total", infrastructure="tb-slurm", kind="submit") == 1
    assert get(after, "hpc_store_transfers", infrastructure="tb-slurm", kind="http", state="completed") == 1
    assert get(after, "hpc_transfers_ended_total", infrastructure="tb-slurm", kind="http", state="completed") == 1
    assert get(after, "hpc_transfer_bytes_total", infrastructure="tb-slurm", kind="http") == SIZE
    # SSH: the meter agrees with the connection's own counters.
    assert get(after, "hpc_ssh_commands_total", infrastructure="tb-slurm") == stats["ssh"]["tb-slurm"]["commands_run"]
    # Connections: the pooled one(s) /stats knows, plus those opened for data: an ssh process per SFTP
    # session of the OpenSSH engine, or a dedicated connection per big file with paramiko (hpc.ssh.files).
    ssh_stats = stats["ssh"]["tb-slurm"]
    assert ssh_stats["data_connections_opened"] >= 1  # the 24 MiB file went over a connection of its own
    assert get(after, "hpc_ssh_connections_opened_total", infrastructure="tb-slurm") == \
        ssh_stats["connections_opened"] + ssh_stats["data_connections_opened"]
    assert get(after, "hpc_ssh_commands_total", infrastructure="(registration)") >= 1
    # Requests: every poll made above, whether the fast path or Connexion answered it.
    assert get(after, "hpc_http_requests_total", operation="get_job", method="GET", status="200") == job_gets
    assert get(after, "hpc_http_requests_total", operation="get_data_transfer", method="GET", status="200") == \
        transfer_gets
    assert get(after, "hpc_http_request_duration_seconds_count", operation="get_job", method="GET") == job_gets
    assert get(after, "hpc_http_requests_total", operation="create_job", method="POST", status="201") == 1
    assert get(after, "hpc_http_requests_total", operation="create_infrastructure", method="POST", status="201") == 1
    assert get(after, "hpc_http_requests_total", operation="create_job", method="POST", status="413") == 1
    assert get(after, "hpc_http_requests_total", operation="unmatched", method="PUT", status="405") == 1
    assert get(after, "hpc_http_requests_total", operation="create_job", method="POST", status="401") == 1
    assert get(after, "hpc_auth_failures_total", reason="unknown") == 1
    assert get(after, "hpc_http_requests_total", operation="get_metrics", method="GET", status="200") == len(during)
    assert get(after, "hpc_background_workers_alive", worker="transfer") == 4
    assert get(after, "hpc_staging_spool_bytes") == 0  # released once the transfer ended

    # Never a secret, never a per-resource label value.
    for secret in [*gateway.tokens.values(), canary]:
        assert secret not in text
    for name, labels in after:
        for label, label_value in labels:
            assert UUID.search(label_value) is None, (name, label)
            assert "/" not in label_value, (name, label)
    assert job["id"] not in text and transfer["id"] not in text and "metrics.bin" not in text


def test_metrics_access(gateway_factory):
    gateway = gateway_factory()
    assert gateway.get("/metrics", token=None).status_code == 401
    forbidden = gateway.get("/metrics", token="user")
    assert (forbidden.status_code, forbidden.json()["detail"]) == \
        (403, "the metrics are for admins (or serve them on metrics_listen_port)")
    port = free_port()
    separate = gateway_factory(extra_env={"HPC_METRICS_LISTEN_PORT": str(port)})
    open_scrape = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    assert open_scrape.status_code == 200
    assert "hpc_gateway_info{" in open_scrape.text
    assert separate.get("/metrics").status_code == 404


def test_health_live_and_ready(gateway):
    assert gateway.get("/health/live", token=None).json() == {"status": "ok"}
    ready = gateway.get("/health/ready", token=None)
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "checks": {
        "store": "ok", "job_scheduler": "ok", "transfer": "ok"}})
    assert gateway.get("/health", token=None).json()["status"] == "ok"  # unchanged


def test_ready_goes_503_while_the_store_is_unreachable_and_back(gateway_factory, pg_url, testbed):
    gateway = gateway_factory(extra_env={"HPC_DATABASE_URL": pg_url, "HPC_READY_TIMEOUT": "2"})
    assert gateway.get("/health/ready", token=None).status_code == 200
    name = pg_url.rsplit("/", 1)[1]
    admin = sa.create_engine(testbed["TESTBED_PG_URL"], isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                         {"name": name})
        started = time.monotonic()
        down = gateway.get("/health/ready", token=None)
        assert time.monotonic() - started < 10
        assert down.status_code == 503
        assert down.headers["Content-Type"].startswith("application/problem+json")
        body = down.json()
        assert body["checks"]["store"].startswith("unreachable: ")
        assert (body["checks"]["job_scheduler"], body["checks"]["transfer"]) == ("ok", "ok")
        assert body["detail"].startswith("not ready: store: unreachable")
        assert "postgres" not in down.text and "5433" not in down.text  # no address or user leaks out
        assert gateway.get("/health/live", token=None).status_code == 200
        scraped = gateway.get("/metrics")  # configured tokens still work; the census says the store is down
        assert scraped.status_code == 200
        assert "hpc_store_up 0.0" in scraped.text
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    deadline = time.monotonic() + 30
    while gateway.get("/health/ready", token=None).status_code != 200:
        assert time.monotonic() < deadline, gateway.log()[-3000:]
        time.sleep(0.5)

"""Metrics and readiness, the pure parts: operation labels, the request middleware, the SSH meter, the
store census, the readiness verdict."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hpc.api.app import load_spec
from hpc.api.metrics import OperationMap, RequestMetrics
from hpc.services import metrics
from hpc.services.health import StoreProbe, judge
from hpc.ssh import SSHAuthFailed, SSHTimeout, SSHUnreachable
from hpc.store import open_store
from hpc.store.tables import utcnow

SPEC = load_spec(True)
JOB = str(uuid.uuid4())


def value(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("method, path, operation", [
    ("GET", f"/job/{JOB}", "get_job"),
    ("HEAD", f"/job/{JOB}", "get_job"),
    ("DELETE", f"/job/{JOB}", "cancel_job"),
    ("GET", f"/job/{JOB}/output", "get_job_output"),
    ("GET", "/job", "list_jobs"),
    ("POST", "/data", "create_data_transfer"),
    ("GET", f"/s3_result/{JOB}", "get_s3_result_transfer"),
    ("GET", "/infrastructure/tb-slurm/telemetry", "get_infrastructure_telemetry"),
    ("GET", "/health/ready", "get_readiness"),
    ("GET", "/metrics", "get_metrics"),
    ("DELETE", f"/token/{JOB}", "revoke_token"),
    ("PUT", "/job", "unmatched"),
    ("GET", "/job/a/b/c", "unmatched"),
    ("GET", "/no/such/path", "unmatched"),
    ("GET", "/", "unmatched"),
    ("GET", "/ui/index.html", "swagger_ui"),
    ("GET", "/openapi.json", "spec"),
])
def test_operation_labels_come_from_the_contract(method, path, operation):
    assert OperationMap(SPEC).operation(method, path) == operation


def run(app, method: str, path: str) -> None:
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
    asyncio.run(app(scope, receive, send))


def test_the_middleware_counts_what_the_inner_layers_answer():
    async def inner(scope, receive, send):
        status = 413 if scope["method"] == "POST" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    app = RequestMetrics(inner, SPEC)
    before_get = value("hpc_http_requests_total", operation="get_job", method="GET", status="200")
    before_post = value("hpc_http_requests_total", operation="create_job", method="POST", status="413")
    before_odd = value("hpc_http_requests_total", operation="unmatched", method="OTHER", status="200")
    timed = value("hpc_http_request_duration_seconds_count", operation="get_job", method="GET")
    for _ in range(3):
        run(app, "GET", f"/job/{uuid.uuid4()}")
    run(app, "POST", "/job")
    run(app, "BREW", "/job")
    assert value("hpc_http_requests_total", operation="get_job", method="GET", status="200") == before_get + 3
    assert value("hpc_http_request_duration_seconds_count", operation="get_job", method="GET") == timed + 3
    assert value("hpc_http_requests_total", operation="create_job", method="POST", status="413") == before_post + 1
    assert value("hpc_http_requests_total", operation="unmatched", method="OTHER", status="200") == before_odd + 1


def test_a_failing_app_is_counted_as_500():
    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    before = value("hpc_http_requests_total", operation="list_jobs", method="GET", status="500")
    with pytest.raises(RuntimeError):
        run(RequestMetrics(broken, SPEC), "GET", "/job")
    assert value("hpc_http_requests_total", operation="list_jobs", method="GET", status="500") == before + 1


class FakeConnection:
    """Stands for an SSHConnection: counts connections like it, fails on demand."""

    def __init__(self):
        self.connections_opened = 0
        self.failures = []
        self.target = "fake-target"

    def run(self, command, **kwargs):
        if self.connections_opened == 0:
            self.connections_opened += 1
        if self.failures:
            raise self.failures.pop(0)
        return SimpleNamespace(exit_code=0, stdout=command, stderr="")

    def open_stream(self, *args, **kwargs):
        if self.failures:
            raise self.failures.pop(0)
        return "sftp"

    def open_dedicated(self):
        other = FakeConnection()
        other.connections_opened = 1
        return other


def test_the_ssh_meter_counts_commands_connections_and_failures_by_kind():
    name = f"infra-{uuid.uuid4().hex[:6]}"
    connection = FakeConnection()
    view = metrics.metered(connection, name)
    assert metrics.metered(connection, name) is view  # one view per pooled connection
    assert view.run("true").stdout == "true"
    view.run("true")
    connection.failures = [SSHTimeout("slow"), SSHUnreachable("gone"), SSHAuthFailed("no")]
    for _ in range(2):
        with pytest.raises(Exception):
            view.run("true")
    with pytest.raises(SSHAuthFailed):
        view.open_stream("sftp")
    dedicated = view.open_dedicated()
    dedicated.run("true")
    assert view.target == "fake-target"  # everything else passes through
    assert value("hpc_ssh_commands_total", infrastructure=name) == 5
    assert value("hpc_ssh_command_duration_seconds_count", infrastructure=name) == 5
    assert value("hpc_ssh_connections_opened_total", infrastructure=name) == 2  # pooled + dedicated
    assert value("hpc_ssh_failures_total", infrastructure=name, kind="timeout") == 1
    assert value("hpc_ssh_failures_total", infrastructure=name, kind="unreachable") == 1
    assert value("hpc_ssh_failures_total", infrastructure=name, kind="auth_failed") == 1


def test_webhook_outcomes_are_a_fixed_set():
    before_other = value("hpc_webhook_deliveries_total", outcome="other")
    before_ok = value("hpc_webhook_deliveries_total", outcome="delivered")
    metrics.webhook_delivery("delivered", 0.05)
    metrics.webhook_delivery("https://hooks.example.org/secret-path", 0.05)  # never becomes a label
    assert value("hpc_webhook_deliveries_total", outcome="delivered") == before_ok + 1
    assert value("hpc_webhook_deliveries_total", outcome="other") == before_other + 1
    assert b"hooks.example.org" not in metrics.exposition()


def test_the_census_counts_the_store(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'gateway.db'}")
    now = utcnow()
    for state in ("queued", "running", "running", "completed"):
        store.jobs.insert({"id": str(uuid.uuid4()), "infrastructure": "tb-slurm", "owner": "u", "kind": "script",
                           "name": "n", "spec": {}, "scheduler_id": "", "state": state, "watch_period": 1.0,
                           "cancel_requested": False, "created_at": now, "updated_at": now, "poll_failures": 0,
                           "missing_polls": 0, "submit_attempts": 0})
    for state, rate in (("transferring", 1000.0), ("transferring", 500.0), ("completed", None)):
        store.transfers.insert({"id": str(uuid.uuid4()), "kind": "http", "infrastructure": "tb-slurm", "owner": "u",
                                "state": state, "reason": "", "bytes_done": 0, "attempts": 0, "rate": rate,
                                "cancel_requested": False, "created_at": now, "updated_at": now})
    quota = SimpleNamespace(used=5, limit=10)
    gateway = SimpleNamespace(store=store, config=SimpleNamespace(resolved_instance_id="test:1"),
                              transfers=SimpleNamespace(quota=quota, workers=lambda: (4, 4)),
                              jobs=SimpleNamespace(workers=lambda: (1, 1)))
    metrics.bind(gateway)
    try:
        families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    finally:
        metrics.bind(None)
    jobs = {s.labels["state"]: s.value for s in families["hpc_store_jobs"].samples}
    assert jobs == {"queued": 1, "running": 2, "completed": 1}
    transfers = {s.labels["state"]: s.value for s in families["hpc_store_transfers"].samples}
    assert transfers == {"transferring": 2, "completed": 1}
    rates = [(s.labels, s.value) for s in families["hpc_store_transfer_rate_bytes_per_second"].samples]
    assert rates == [({"infrastructure": "tb-slurm", "kind": "http"}, 1500.0)]
    assert families["hpc_staging_spool_bytes"].samples[0].value == 5
    assert families["hpc_staging_spool_quota_bytes"].samples[0].value == 10
    assert families["hpc_store_up"].samples[0].value == 1


@pytest.mark.parametrize("store, workers, ready, problems", [
    ("ok", {"job_scheduler": (1, 1), "transfer": (4, 4)}, True, []),
    ("ok", {"job_scheduler": (0, 0), "transfer": (0, 0)}, True, []),  # background: false
    ("unreachable: OperationalError", {"job_scheduler": (1, 1), "transfer": (4, 4)}, False,
     ["store: unreachable: OperationalError"]),
    ("ok", {"job_scheduler": (0, 1), "transfer": (3, 4)}, False,
     ["job_scheduler: 1 of 1 thread(s) not running", "transfer: 1 of 4 thread(s) not running"]),
])
def test_readiness_verdict(store, workers, ready, problems):
    verdict = judge(store, workers)
    assert (verdict.ready, verdict.problems) == (ready, problems)


def test_a_hanging_store_is_judged_in_bounded_time():
    release = threading.Event()
    probe = StoreProbe(SimpleNamespace(ping=lambda: release.wait(10)), timeout=0.2)
    started = time.monotonic()
    assert probe.check() == "unreachable: no answer within 0.2s"
    assert probe.check().startswith("unreachable: an earlier check")  # no second thread piles up
    assert time.monotonic() - started < 1.0
    release.set()
    probe._pending.join(1)
    assert probe.check() == "ok"  # the store answers again


@pytest.mark.parametrize("state, outcome", [("queued", "submitted"), ("running", "submitted"),
                                            ("submitting", "retry"), ("failed", "failed"),
                                            ("cancelled", "cancelled")])
def test_submission_outcomes(state, outcome):
    name = f"infra-{uuid.uuid4().hex[:6]}"
    metrics.job_submission(name, state, 0.5)
    assert value("hpc_job_submissions_total", infrastructure=name, outcome=outcome) == 1
    assert value("hpc_job_submission_duration_seconds_sum", infrastructure=name) == 0.5

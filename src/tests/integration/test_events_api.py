"""Push notifications through live gateway processes: webhooks (signed, retried, dead-lettered) and SSE.

Webhook receivers are small HTTP servers in the test that check every signature themselves (HMAC-SHA256
computed here, not with the gateway's code). Events come from real flows (a Slurm job and an HTTP
transfer through the testbed) where the flow matters, and otherwise from rows written through the
store's repositories by the test process into the gateway's own database (the same code path the
services use, and a second process writing, as a second replica would).
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from hpc.client.events import abort
from hpc.store import open_store
from hpc.store.tables import utcnow
from tests.support import free_port, infrastructure_body

pytestmark = pytest.mark.integration

CLUSTER_HOME = Path("/home/hpcuser")
FAST_RETRIES = {"HPC_WEBHOOK_RETRY_DELAY": "0.3", "HPC_WEBHOOK_RETRY_MAX_DELAY": "1.5"}


# -- helpers ---------------------------------------------------------------------------------------


class Receiver:
    """A webhook endpoint: records each POST, answers ``status`` after ``delay`` seconds."""

    def __init__(self, status: int = 204, delay: float = 0.0, port: int | None = None):
        self.status, self.delay = status, delay
        self.port = port or free_port()
        self.posts: list[tuple[float, str, dict, bytes]] = []
        self.lock = threading.Lock()
        self.server: http.server.ThreadingHTTPServer | None = None
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.posts.append((time.monotonic(), self.path, dict(self.headers), body))
                time.sleep(receiver.delay)
                try:
                    self.send_response(receiver.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.handler = Handler

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def events(self, path: str, secret: str) -> list[dict]:
        """Every event POSTed to ``path``, in arrival order, after checking its signature here."""
        found = []
        with self.lock:
            posts = list(self.posts)
        for _, got_path, headers, body in posts:
            if got_path != path:
                continue
            fields = dict(part.split("=", 1) for part in headers["X-HPC-Signature"].split(","))
            expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(expected, fields["v1"]) is True
            assert abs(time.time() - int(fields["t"])) < 300
            event = json.loads(body)
            assert headers["X-HPC-Event-Id"] == str(event["id"])
            found.append(event)
        return found


class SSEReader:
    """Reads ``GET /events`` in a thread, collecting event documents."""

    def __init__(self, gateway, token: str = "user", params: dict | None = None, headers: dict | None = None):
        headers = {"Authorization": f"Bearer {gateway.tokens[token]}", **(headers or {})}
        self.response = requests.get(f"{gateway.url}/events", params=params or {}, headers=headers, stream=True,
                                     timeout=(5, 60))
        assert self.response.status_code == 200, self.response.text
        self.events: list[dict] = []
        self.comments = 0
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        data = None
        try:
            for line in _lines(self.response):
                if line.startswith(b":"):
                    self.comments += 1
                elif line.startswith(b"data: "):
                    data = json.loads(line[6:])
                elif not line and data is not None:
                    self.events.append(data)
                    data = None
        except Exception:
            pass
        self.ended.set()

    def close(self) -> None:
        abort(self.response)  # response.close() would wait for the reading thread


def _lines(response):
    buffer = b""
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line


def wait_until(condition, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def store_of(gateway):
    return open_store(f"sqlite:///{gateway.data_dir / 'gateway.db'}")


def fake_job(store, owner: str = "user") -> str:
    """A job row on an infrastructure nobody registered: the gateway's workers leave it alone."""
    now = utcnow()
    job_id = str(uuid.uuid4())
    store.jobs.insert({"id": job_id, "infrastructure": "ghost", "owner": owner, "kind": "script", "name": "n",
                       "spec": {}, "scheduler_id": "", "state": "queued", "watch_period": 1.0,
                       "cancel_requested": False, "created_at": now, "updated_at": now, "poll_failures": 0,
                       "missing_polls": 0, "submit_attempts": 0})
    return job_id


def flip(store, job_id: str, times: int, reason: str = "") -> None:
    """``times`` state changes of a fake job (each one job.state event; each move to running one more)."""
    row = store.jobs.get(job_id)
    for _ in range(times):
        state = "running" if row["state"] == "queued" else "queued"
        store.jobs.update(job_id, state=state, reason=reason or None)
        row = store.jobs.get(job_id)


def subscribe(gateway, url: str, token: str = "user", **fields) -> dict:
    response = gateway.post("/subscription", {"url": url, **fields}, token=token)
    assert response.status_code == 201, response.text
    return response.json()


def stored_events(gateway, token: str = "user", **params) -> list[dict]:
    reader = SSEReader(gateway, token, {"follow": "false", **params})
    assert reader.ended.wait(30) is True
    return reader.events


# -- webhooks --------------------------------------------------------------------------------------


@pytest.fixture
def www_file(testbed):
    root = Path(testbed["TESTBED_HTTP_ROOT"]) / "hpcgw-events"
    root.mkdir(mode=0o755, exist_ok=True)
    path = root / "twenty.bin"
    if not path.exists() or path.stat().st_size != 20 * 1024 * 1024:
        path.write_bytes(os.urandom(20 * 1024 * 1024))
        path.chmod(0o644)
    return f"{testbed['TESTBED_HTTP_URL']}/hpcgw-events/twenty.bin"


@pytest.fixture
def cluster_dir():
    relative = f"hpcgw-test/events-{uuid.uuid4().hex[:8]}"
    yield relative
    shutil.rmtree(CLUSTER_HOME / relative, ignore_errors=True)


def test_every_event_of_a_flow_arrives_once_per_id_signed_after_a_kill_9(gateway_factory, testbed, www_file,
                                                                         cluster_dir):
    gateway = gateway_factory(extra_env=FAST_RETRIES)
    assert gateway.post("/infrastructure", infrastructure_body(testbed, "tb-slurm", "slurm")).status_code == 201
    receiver = Receiver(delay=0.05).start()
    try:
        everything = subscribe(gateway, f"{receiver.url}/all")
        job = gateway.post("/job", {"infrastructure": "tb-slurm", "script": "sleep 3\necho done\n",
                                    "watch_period": 0.5, "callback_url": f"{receiver.url}/job"}, token="user").json()
        assert set(job["callback"]) == {"subscription_id", "secret"}
        transfer = gateway.post("/data", {"src": www_file, "dst": f"{cluster_dir}/twenty.bin",
                                          "infrastructure": "tb-slurm"}, token="user").json()
        wait_until(lambda: len(receiver.events("/all", everything["secret"])) >= 3, 30, "the first deliveries")
        gateway.kill()
        gateway.start()
        wait_until(lambda: gateway.get(f"/job/{job['id']}", token="user").json()["status"] == "completed", 90,
                   "the job's end")
        wait_until(lambda: gateway.get(f"/data/{transfer['id']}", token="user").json()["status"] != "transferring",
                   90, "the transfer's end")
        for subscription_id in (everything["id"], job["callback"]["subscription_id"]):
            wait_until(lambda: gateway.get(f"/subscription/{subscription_id}", token="user").json()  # noqa: B023 (called in this iteration)
                       ["deliveries"]["pending"] == 0, 60, "the outbox to drain")

        expected = stored_events(gateway, resource_id=f"{job['id']},{transfer['id']}")
        assert gateway.get(f"/job/{job['id']}", token="user").json()["state"] == "completed"
        assert gateway.get(f"/data/{transfer['id']}", token="user").json()["state"] == "completed"
        kinds = {(e["resource"]["kind"], e["type"], e["data"].get("state")) for e in expected}
        assert {("job", "job.state", "completed"), ("transfer", "transfer.state", "completed"),
                ("job", "job.output", "completed")} <= kinds
        for path, secret, wanted in (
            ("/all", everything["secret"], expected),
            ("/job", job["callback"]["secret"], [e for e in expected if e["resource"]["id"] == job["id"]]),
        ):
            got = receiver.events(path, secret)
            unique = {event["id"]: event for event in got}
            assert sorted(unique) == [event["id"] for event in wanted]
            assert [unique[e["id"]]["data"] for e in wanted] == [e["data"] for e in wanted]
            # At least once: a repeat only for a delivery under way when the process was killed.
            assert len(got) - len(unique) <= 8
        counts = gateway.get(f"/subscription/{everything['id']}", token="user").json()["deliveries"]
        assert counts == {"pending": 0, "delivered": len(expected), "dead": 0}
    finally:
        receiver.stop()


def test_a_receiver_down_then_up_gets_the_deliveries_late(gateway):
    port = free_port()
    subscription = subscribe(gateway, f"http://127.0.0.1:{port}/hook")
    store = store_of(gateway)
    try:
        job_id = fake_job(store)
        flip(store, job_id, 2)
        failing = wait_until(lambda: gateway.get(f"/subscription/{subscription['id']}", token="user").json()
                             if gateway.get(f"/subscription/{subscription['id']}", token="user").json()["last_error"]
                             else None, 30, "a failed try")
        assert failing["last_error"] == "cannot connect: connection refused"
        assert failing["deliveries"]["pending"] == 4
        receiver = Receiver(port=port).start()
        try:
            # The retry delay starts at 2 s and doubles: the deliveries come on the next tries.
            got = wait_until(lambda: len({e["id"] for e in receiver.events("/hook", subscription["secret"])}) == 4
                             and receiver.events("/hook", subscription["secret"]), 60, "the late deliveries")
            assert sorted({e["id"] for e in got}) == [e["id"] for e in stored_events(gateway)]
        finally:
            receiver.stop()
    finally:
        store.close()


def test_failing_and_slow_endpoints_do_not_hold_up_a_healthy_one(gateway_factory):
    gateway = gateway_factory(extra_env={"HPC_WEBHOOK_TIMEOUT": "2", "HPC_WEBHOOK_MAX_ATTEMPTS": "3",
                                         **FAST_RETRIES})
    healthy, failing, slow = Receiver().start(), Receiver(status=500).start(), Receiver(delay=6).start()
    store = store_of(gateway)
    try:
        subscriptions = {name: subscribe(gateway, f"{receiver.url}/{name}")
                         for name, receiver in (("healthy", healthy), ("failing", failing), ("slow", slow))}
        job_id = fake_job(store)
        started = time.monotonic()
        flip(store, job_id, 10)  # 15 events (10 job.state, 5 job.output), plus the creation's
        wanted = [e["id"] for e in stored_events(gateway)]
        assert len(wanted) == 16
        got = wait_until(lambda: len(healthy.events("/healthy", subscriptions["healthy"]["secret"])) >= 16
                         and healthy.events("/healthy", subscriptions["healthy"]["secret"]), 30, "healthy deliveries")
        elapsed = time.monotonic() - started
        assert sorted(e["id"] for e in got) == wanted
        # The slow endpoint gets 2 deliveries at a time, each cut at 2 s: 16 take 16 s or more. The
        # healthy one was done well before: nothing it waited for was the slow one's.
        slow_state = gateway.get(f"/subscription/{subscriptions['slow']['id']}", token="user").json()
        assert (elapsed < 12, slow_state["deliveries"]["pending"] > 0) == (True, True)

        dead = wait_until(lambda: (lambda s: s if s["deliveries"]["dead"] == 16 else None)(
            gateway.get(f"/subscription/{subscriptions['failing']['id']}", token="user").json()), 60, "dead letters")
        assert dead["deliveries"] == {"pending": 0, "delivered": 0, "dead": 16}
        assert dead["last_error"] == "gave up after 3 tries: HTTP 500 Internal Server Error"
        assert {(d["attempts"], d["last_status"]) for d in dead["dead_letters"]} == {(3, 500)}
        assert len(failing.posts) == 48
        slow_now = wait_until(lambda: (lambda s: s if s["last_error"] else None)(
            gateway.get(f"/subscription/{subscriptions['slow']['id']}", token="user").json()), 20, "a slow timeout")
        assert slow_now["last_error"] in ("no answer within 2s", "gave up after 3 tries: no answer within 2s")
        health = requests.get(f"{gateway.url}/health", timeout=5)
        assert health.status_code == 200
    finally:
        store.close()
        for receiver in (healthy, failing, slow):
            receiver.stop()


def test_refused_callback_addresses_are_a_400_naming_the_field_before_any_connection(gateway_factory, testbed):
    # Only 127.0.0.1 is admitted here; a listener on 127.0.0.2 must never see a connection.
    gateway = gateway_factory(extra_env={"HPC_SOURCE_ALLOW_NETWORKS": "127.0.0.1/32"})
    assert gateway.post("/infrastructure", infrastructure_body(testbed, "tb-slurm", "slurm")).status_code == 201
    listener = socket.socket()
    listener.bind(("127.0.0.2", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    unlisted = f"http://127.0.0.2:{listener.getsockname()[1]}/hook"
    try:
        for url in (unlisted, "http://169.254.169.254/latest/meta-data/", "http://10.20.30.40/hook",
                    "http://[fe80::1]/hook", "ftp://127.0.0.1/hook", "http://user:pw@127.0.0.1/hook"):
            for path, body in (("/job", {"infrastructure": "tb-slurm", "script": "true\n"}),
                               ("/data", {"src": f"{testbed['TESTBED_HTTP_URL']}/x", "dst": "x",
                                          "infrastructure": "tb-slurm"})):
                response = gateway.post(path, {**body, "callback_url": url}, token="user")
                assert (url, response.status_code, response.json().get("field")) == (url, 400, "callback_url")
            response = gateway.post("/subscription", {"url": url}, token="user")
            assert (url, response.status_code, response.json().get("field")) == (url, 400, "url")
        with pytest.raises(socket.timeout):
            listener.accept()
        assert gateway.get("/job", token="user").json()["total"] == 0
        assert gateway.get("/transfer", token="user").json()["total"] == 0
    finally:
        listener.close()


def test_subscriptions_are_private_and_never_show_their_secret(gateway):
    store = store_of(gateway)
    receiver = Receiver().start()
    try:
        mine = subscribe(gateway, f"{receiver.url}/mine", types=["job.state"])
        theirs = subscribe(gateway, f"{receiver.url}/theirs", token="user2")
        job_id = fake_job(store, owner="user")
        response = gateway.post("/subscription", {"url": receiver.url, "resource_ids": [job_id]}, token="user2")
        assert (response.status_code, response.json()["field"]) == (400, "resource_ids")
        assert gateway.get(f"/subscription/{mine['id']}", token="user2").status_code == 404
        assert gateway.delete(f"/subscription/{mine['id']}", token="user2").status_code == 404
        assert [s["id"] for s in gateway.get("/subscription", token="user2").json()["items"]] == [theirs["id"]]
        shown = gateway.get(f"/subscription/{mine['id']}", token="user").json()
        assert "secret" not in shown and mine["secret"] not in json.dumps(shown)
        assert mine["secret"] not in gateway.log()
        flip(store, job_id, 2)
        wait_until(lambda: len(receiver.events("/mine", mine["secret"])) == 3, 20, "deliveries")
        time.sleep(1.5)
        assert receiver.events("/theirs", theirs["secret"]) == []
        assert {e["type"] for e in receiver.events("/mine", mine["secret"])} == {"job.state"}
        assert gateway.delete(f"/subscription/{mine['id']}", token="user").status_code == 204
        assert gateway.get(f"/subscription/{mine['id']}", token="user").status_code == 404
        response = gateway.post("/subscription", {"url": receiver.url, "types": ["job.nope"]}, token="user")
        assert (response.status_code, response.json()["field"]) == (400, "types.0")
    finally:
        store.close()
        receiver.stop()


# -- server-sent events ----------------------------------------------------------------------------


def test_sse_resume_with_last_event_id_misses_nothing_and_repeats_nothing(gateway):
    store = store_of(gateway)
    try:
        first = SSEReader(gateway)
        job_id = fake_job(store)
        flip(store, job_id, 8)  # 13 events with the creation's
        wait_until(lambda: len(first.events) >= 12, 20, "the live events")
        first.close()
        seen = first.events[:7]
        flip(store, job_id, 6)  # 9 more while away
        # Header form, as an EventSource sends it on reconnect.
        second = SSEReader(gateway, headers={"Last-Event-ID": str(seen[-1]["id"])})
        flip(store, job_id, 4)  # 6 more, live
        every = [e["id"] for e in stored_events(gateway) if e["resource"]["id"] == job_id]
        wait_until(lambda: len(second.events) >= len(every) - 7, 20, "the resumed stream")
        time.sleep(0.5)
        assert [e["id"] for e in seen + second.events] == every
        third = SSEReader(gateway, params={"last_event_id": str(every[3]), "follow": "false"})
        assert third.ended.wait(20) is True
        assert [e["id"] for e in third.events] == every[4:]
        second.close()
    finally:
        store.close()


def test_a_stream_ends_within_seconds_of_its_token_being_revoked_or_expiring(gateway):
    """Default event_token_recheck (5 s) and token_cache_seconds (0.5 s): a stream outlives its token by
    at most ~5.5 s; a stream on a valid token stays open."""
    from datetime import timedelta

    made = {}
    for key, expires in (("revoked", None), ("expiring", utcnow() + timedelta(seconds=3)), ("kept", None)):
        body = {"name": "user", "role": "user", **({"expires_at": expires.isoformat()} if expires else {})}
        response = gateway.post("/token", body, token="admin")
        assert response.status_code == 201, response.text
        made[key] = response.json()
        gateway.tokens[key] = made[key]["token"]
    streams = {key: SSEReader(gateway, token=key) for key in made}
    try:
        assert gateway.delete(f"/token/{made['revoked']['id']}", token="admin").status_code == 200
        revoked_at = time.monotonic()
        assert streams["revoked"].ended.wait(12) is True
        assert time.monotonic() - revoked_at < 8
        assert streams["expiring"].ended.wait(12) is True
        assert streams["kept"].ended.is_set() is False
        assert "event stream ended: the token is no longer valid (revoked)" in gateway.log()
        assert "event stream ended: the token is no longer valid (expired)" in gateway.log()
        again = requests.get(f"{gateway.url}/events", headers={"Authorization": f"Bearer {gateway.tokens['revoked']}"},
                             timeout=10)
        assert again.status_code == 401
    finally:
        for stream in streams.values():
            stream.close()


def test_a_user_sees_only_their_own_events_and_an_admin_all(gateway):
    store = store_of(gateway)
    try:
        readers = {token: SSEReader(gateway, token) for token in ("user", "user2", "admin")}
        mine, theirs = fake_job(store, "user"), fake_job(store, "user2")
        flip(store, mine, 2)
        flip(store, theirs, 2)
        wait_until(lambda: len(readers["admin"].events) >= 8, 20, "the admin's events")
        time.sleep(0.5)
        assert {e["resource"]["id"] for e in readers["user"].events} == {mine}
        assert {e["resource"]["id"] for e in readers["user2"].events} == {theirs}
        assert len(readers["admin"].events) == 8
        # Filtering on another user's resource shows nothing; a filter does not widen visibility.
        assert stored_events(gateway, "user2", resource_id=mine) == []
        assert len(stored_events(gateway, "user", resource_id=mine, type="job.state")) == 3
        for reader in readers.values():
            reader.close()
        bad = requests.get(f"{gateway.url}/events", params={"type": "job.nope"},
                           headers={"Authorization": f"Bearer {gateway.tokens['user']}"}, timeout=10)
        assert (bad.status_code, bad.json()["field"]) == (400, "type")
        # A malformed Last-Event-ID is refused even beside a valid last_event_id (which wins when both are
        # good): found by the fuzz test once it read stored events instead of waiting on live streams.
        both = requests.get(f"{gateway.url}/events", params={"last_event_id": "1", "follow": "false"},
                            headers={"Authorization": f"Bearer {gateway.tokens['user']}",
                                     "Last-Event-ID": "RTFj}92 b"}, timeout=10)
        assert both.status_code == 400
        assert requests.get(f"{gateway.url}/events", timeout=10).status_code == 401
        assert requests.get(f"{gateway.url}/events", headers={"Authorization": "Bearer nope"},
                            timeout=10).status_code == 401
    finally:
        store.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_stalled_sse_reader_is_dropped_with_memory_bounded(gateway_factory):
    gateway = gateway_factory(extra_env={"HPC_EVENT_QUEUE_SIZE": "128", "HPC_EVENT_SEND_TIMEOUT": "3",
                                         "HPC_LOG_LEVEL": "INFO"})
    store = store_of(gateway)
    stalled = socket.socket()
    try:
        healthy = SSEReader(gateway)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", gateway.port))
        stalled.sendall(f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gateway.tokens['user']}\r\n\r\n"
                        .encode())
        wait_until(lambda: gateway.get("/stats").json()["events"]["sse"].get("subscribers") == 2, 10, "two streams")
        before = rss_kib(gateway.process.pid)
        job_id = fake_job(store)
        # About 8 kB a frame: 600 events are 5 MB, more than the socket buffers hold for a client that
        # never reads (tcp_wmem allows 4 MB).
        reason = "x" * 8000
        for _ in range(4):
            flip(store, job_id, 100, reason)
        total = len(stored_events(gateway, resource_id=job_id))
        wait_until(lambda: len(healthy.events) >= total, 60, "the healthy reader's events")
        sse = wait_until(lambda: (lambda s: s if s.get("subscribers") == 1 else None)(
            gateway.get("/stats").json()["events"]["sse"]), 30, "the stalled stream to be dropped")
        assert sse["dropped_streams"] == 1
        assert [e["id"] for e in healthy.events] == [e["id"] for e in stored_events(gateway, resource_id=job_id)]
        assert rss_kib(gateway.process.pid) - before < 20 * 1024
        assert "event stream dropped" in gateway.log()
        healthy.close()
    finally:
        stalled.close()
        store.close()


def test_dozens_of_idle_streams_leave_the_api_answering_and_all_get_the_next_event(gateway):
    store = store_of(gateway)
    try:
        job_id = fake_job(store)
        readers = [SSEReader(gateway, params={"resource_id": job_id}) for _ in range(40)]
        wait_until(lambda: gateway.get("/stats").json()["events"]["sse"].get("subscribers") == 40, 20, "40 streams")
        started = time.monotonic()
        for _ in range(50):
            assert gateway.get(f"/job/{job_id}", token="user").status_code == 200
        assert time.monotonic() - started < 10
        flip(store, job_id, 1)
        wait_until(lambda: all(len(r.events) == 2 for r in readers), 20, "every stream's events")
        for reader in readers:
            reader.close()
        wait_until(lambda: gateway.get("/stats").json()["events"]["sse"].get("subscribers") == 0, 20, "streams closed")
    finally:
        store.close()


def test_client_and_cli_wait_on_the_event_stream(registered, testbed):
    from hpc.client import Client

    client = Client(registered.url, registered.tokens["user"])
    job = client.submit_job("tb-slurm", script="sleep 2\n", watch_period=1)
    reads = []
    started = time.monotonic()
    final = client.wait_for_job(job, timeout=120, poll=60, on_update=reads.append)
    # A poll period of 60 s: only the event stream can have told the client sooner.
    assert (final["state"], final["reason"], time.monotonic() - started < 40) == ("completed", None, True)
    assert len(reads) <= 8
    events = list(client.events(resource_id=job["id"], follow=False))
    assert [e["data"]["state"] for e in events if e["type"] == "job.state"][-1] == "completed"
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "hpc.cli", "events", "--job", job["id"], "--json"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HPC_URL": registered.url, "HPC_TOKEN": registered.tokens["user"]})
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["id"] for line in out.stdout.splitlines()] == [e["id"] for e in events]

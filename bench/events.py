"""Push notifications: events per second delivered to webhooks and to SSE clients, and GET /job/{id}
latency with 200 idle SSE subscribers.

Events are recorded by writing state changes through the store's repositories from this process into the
gateway's database (the code path the services use; the gateway sees them as another replica's). The
references, measured in the same run:

- webhooks: the same receiver fed by a plain ``requests`` loop in this process (one connection, no
  signing, no store): what the receiver and the loopback allow;
- SSE: the rate at which this process recorded the events (no reader can go faster);
- latency: GET /job/{id} at the goal's fixed rate (hey, 64 clients x 16 req/s) with no stream open.

    .venv/bin/python bench/events.py [--rounds 3] [--events 2000] [--subscribers 200] [--smoke]
"""

from __future__ import annotations

import http.server
import shutil
import socket
import sys
import threading
import time
import uuid

import requests

from common import arguments, row, start_gateway, testbed
from api import hey

from hpc.store import open_store
from hpc.store.tables import utcnow
from tests.support import free_port


class Receiver:
    """Counts POSTs, answering 204 at once."""

    def __init__(self):
        self.count = 0
        self.last = 0.0
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.count += 1
                    receiver.last = time.monotonic()
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.count >= count:
                    return self.last
            time.sleep(0.01)
        sys.exit(f"webhook receiver got {self.count} of {count} deliveries in {timeout}s")


def fake_job(store) -> str:
    now = utcnow()
    job_id = str(uuid.uuid4())
    store.jobs.insert({"id": job_id, "infrastructure": "ghost", "owner": "user", "kind": "script", "name": "bench",
                       "spec": {}, "scheduler_id": "", "state": "queued", "watch_period": 1.0,
                       "cancel_requested": False, "created_at": now, "updated_at": now, "poll_failures": 0,
                       "missing_polls": 0, "submit_attempts": 0})
    return job_id


def record(store, job_id: str, events: int) -> float:
    """Records ``events`` job.state events (queued/completed flips: no job.output); returns the seconds."""
    started = time.monotonic()
    for number in range(events):
        store.jobs.update(job_id, state="completed" if number % 2 == 0 else "queued")
    return time.monotonic() - started


class StreamCounter:
    """An SSE client counting the events it receives (raw socket: no parsing cost in the way)."""

    def __init__(self, port: int, token: str, job_id: str):
        self.count = 0
        self.last = 0.0
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(f"GET /events?resource_id={job_id} HTTP/1.1\r\nHost: x\r\n"
                          f"Authorization: Bearer {token}\r\n\r\n".encode())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while data := self.sock.recv(1 << 16):
                self.count += data.count(b"\nevent: ")
                self.last = time.monotonic()
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def idle_streams(port: int, token: str, count: int) -> list[socket.socket]:
    streams = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        streams.append(sock)
    return streams


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--events", type=int, default=2000, help="events per round")
    parser.add_argument("--subscribers", type=int, default=200, help="idle SSE streams during the latency run")
    parser.add_argument("--streams", type=int, default=10, help="SSE clients counting events")
    parser.add_argument("--seconds", type=int, default=10, help="seconds of each latency run")
    args = parser.parse_args()
    if not shutil.which("hey"):
        sys.exit("hey is missing: apt-get install hey (scripts/setup.sh installs it)")
    rounds, events, seconds = (1, 100, 2) if args.smoke else (args.rounds, args.events, args.seconds)
    subscribers = 20 if args.smoke else args.subscribers
    gateway = start_gateway(testbed())
    store = open_store(f"sqlite:///{gateway.data_dir / 'gateway.db'}")
    receiver = Receiver()
    results: dict[str, list[float]] = {k: [] for k in ("plain", "webhook", "recorded", "sse", "p99_0", "p99_n",
                                                       "rate_n")}
    streams: list = []
    try:
        user = gateway.tokens["user"]
        response = gateway.post("/subscription", {"url": f"http://127.0.0.1:{receiver.port}/hook"}, token="user")
        if response.status_code != 201:
            sys.exit(f"subscribing failed: {response.status_code} {response.text}")
        session = requests.Session()
        for _ in range(rounds):
            # Reference: the receiver fed directly.
            base = receiver.count
            started = time.monotonic()
            for _ in range(events):
                session.post(f"http://127.0.0.1:{receiver.port}/plain", data=b"{}", timeout=10)
            results["plain"].append(events / (time.monotonic() - started))
            # Webhooks and SSE from the same recorded events (plus the job's creation event).
            base = receiver.count + 1
            job_id = fake_job(store)
            counters = [StreamCounter(gateway.port, user, job_id) for _ in range(args.streams)]
            time.sleep(1.0)
            started = time.monotonic()
            spent = record(store, job_id, events)
            results["recorded"].append(events / spent)
            last = receiver.wait_for(base + events, 300)
            results["webhook"].append(events / (last - started))
            deadline = time.monotonic() + 120
            while min(c.count for c in counters) < events and time.monotonic() < deadline:
                time.sleep(0.01)
            if min(c.count for c in counters) < events:
                sys.exit(f"SSE clients got {[c.count for c in counters]} of {events} events")
            results["sse"].append(events / (max(c.last for c in counters) - started))
            for counter in counters:
                counter.close()
        # Latency of the status poll with no stream, then with idle streams open.
        job_id = fake_job(store)
        url = f"{gateway.url}/job/{job_id}"
        auth = {"Authorization": f"Bearer {user}"}
        hey(url, 1, auth)  # warm-up
        for _ in range(rounds):
            results["p99_0"].append(hey(url, seconds, auth)["p99"])
        streams = idle_streams(gateway.port, user, subscribers)
        deadline = time.monotonic() + 30
        while gateway.get("/stats").json()["events"]["sse"].get("subscribers", 0) < subscribers:
            if time.monotonic() > deadline:
                sys.exit("the idle streams did not all open")
            time.sleep(0.1)
        for _ in range(rounds):
            run = hey(url, seconds, auth)
            results["p99_n"].append(run["p99"])
            results["rate_n"].append(run["rps"])
        open_now = gateway.get("/stats").json()["events"]["sse"]["subscribers"]
    finally:
        for sock in streams:
            sock.close()
        store.close()
        gateway.stop()

    def middle(key):
        return sorted(results[key])[len(results[key]) // 2]

    print(f"# events: {rounds} round(s) of {events} job.state events recorded through the store")
    print(row("receiver fed directly (reference)", results["plain"], "req/s"))
    print(row("webhook deliveries (signed, from the outbox)", results["webhook"], "events/s", middle("plain"),
              "receiver fed directly"))
    print(row("events recorded (reference)", results["recorded"], "events/s"))
    print(row(f"SSE, each of {args.streams} clients (the slowest)", results["sse"], "events/s", middle("recorded"),
              "recorded"))
    print(f"# GET /job/{{id}} at 64 clients x 16 req/s (hey); goal p99 < 50 ms")
    print(row("p99 with no stream open (reference)", results["p99_0"], "ms"))
    print(row(f"p99 with {subscribers} idle SSE subscribers", results["p99_n"], "ms", middle("p99_0"),
              "no stream", higher_is_better=False))
    print(row(f"achieved rate with {subscribers} subscribers", results["rate_n"], "req/s"))
    print(f"streams open at the end of the latency run: {open_now}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

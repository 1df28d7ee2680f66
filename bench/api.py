"""API latency and throughput: GET /job/{id} and POST /job (acknowledgement) under 64 clients.

Load comes from separate processes (Debian packages): wrk, closed loop, for the most requests per second
64 clients get; hey at a fixed rate (64 clients x 16 req/s = 1024 req/s, the goal's load) for latency.
Closed-loop latency at saturation says little: on 2 shared cores even a bare uvicorn app has a p99 of
hundreds of ms there, from scheduling, not from the app. The reference is that bare uvicorn ASGI app
answering the same JSON document, measured the same ways in the same run. POST /job runs against a
gateway with background work off, so the 201 is proven to come before any SSH work.

    .venv/bin/python bench/api.py [--rounds 3] [--seconds 10] [--smoke]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from common import arguments, row, start_gateway, testbed
from tests.support import free_port

CLIENTS = 64
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}

BARE_APP = '''
import json, sys, uvicorn
body = json.dumps(json.loads(sys.argv[2])).encode()
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False, lifespan="off")
'''


def wrk(url: str, seconds: int, headers: dict[str, str], script: str | None = None) -> dict[str, float]:
    command = ["wrk", "-t2", f"-c{CLIENTS}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if script:
        command += ["-s", script]
    out = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout
    latency = {m.group(1): float(m.group(2)) * _UNITS[m.group(3)]
               for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": latency["50"],
            "p99": latency["99"], "errors": int(non2xx.group(1)) if non2xx else 0}


def hey(url: str, seconds: int, headers: dict[str, str], per_client_rate: int = 16) -> dict[str, float]:
    command = ["hey", "-z", f"{seconds}s", "-c", str(CLIENTS), "-q", str(per_client_rate)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout
    percent = {m.group(1): float(m.group(2)) * 1000 for m in re.finditer(r"^\s+(50|99)% in ([\d.]+) secs", out, re.M)}
    codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
    errors = sum(int(n) for code, n in codes if not code.startswith("2"))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": percent["50"],
            "p99": percent["99"], "errors": errors}


def measure(name: str, url: str, rounds: int, seconds: int, headers, script=None, tool=wrk) -> list[dict]:
    wrk(url, 1, headers, script)  # warm-up
    results = [tool(url, seconds, headers, script) if script else tool(url, seconds, headers)
               for _ in range(rounds)]
    if any(r["errors"] for r in results):
        sys.exit(f"{name}: non-2xx answers during the run: {results}")
    return results


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("hey"):
        sys.exit("wrk or hey is missing: apt-get install wrk hey (scripts/setup.sh installs them)")
    rounds, seconds = (1, 2) if args.smoke else (args.rounds, args.seconds)
    bed = testbed()
    gateway = start_gateway(bed)
    acks = start_gateway(bed, HPC_BACKGROUND="0")
    bare = None
    try:
        auth = {"Authorization": f"Bearer {gateway.tokens['user']}"}
        job = gateway.post("/job", {"infrastructure": "tb-slurm", "script": "true\n"}, token="user").json()
        deadline = time.monotonic() + 60
        while gateway.get(f"/job/{job['id']}", token="user").json()["status"] != "completed":
            if time.monotonic() > deadline:
                sys.exit("the probe job did not finish")
            time.sleep(0.5)
        document = gateway.get(f"/job/{job['id']}", token="user").json()
        port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port), json.dumps(document)])
        time.sleep(1.5)
        reference = measure("bare", f"http://127.0.0.1:{port}/", rounds, seconds, {})
        reference_rate = measure("bare", f"http://127.0.0.1:{port}/", rounds, seconds, {}, tool=hey)
        gets = measure("GET /job/{id}", f"{gateway.url}/job/{job['id']}", rounds, seconds, auth)
        gets_rate = measure("GET /job/{id}", f"{gateway.url}/job/{job['id']}", rounds, seconds, auth, tool=hey)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
            body = json.dumps({"infrastructure": "tb-slurm", "script": "true\n"})
            lua.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
        posts = measure("POST /job", f"{acks.url}/job", rounds, seconds,
                        {"Authorization": f"Bearer {acks.tokens['user']}"}, lua.name)
        os.unlink(lua.name)
        ssh_work = acks.get("/stats", token="admin").json()["jobs"]
    finally:
        gateway.stop()
        acks.stop()
        if bare:
            bare.terminate()
            bare.wait()
    def middle(results, key):
        return sorted(r[key] for r in results)[len(results) // 2]

    ref = middle(reference, "rps")
    print(f"# API under {CLIENTS} concurrent clients, {rounds} x {seconds}s; reference: bare uvicorn app")
    print("# closed loop (wrk): throughput")
    print(row("bare uvicorn, same document (reference)", [r["rps"] for r in reference], "req/s"))
    print(row("GET /job/{id}", [r["rps"] for r in gets], "req/s", ref, "bare uvicorn"))
    print(f"# fixed rate (hey, {CLIENTS} x 16 req/s): latency")
    print(row("bare uvicorn p99 (reference)", [r["p99"] for r in reference_rate], "ms"))
    print(row("GET /job/{id} achieved rate", [r["rps"] for r in gets_rate], "req/s"))
    print(row("GET /job/{id} p50", [r["p50"] for r in gets_rate], "ms"))
    print(row("GET /job/{id} p99", [r["p99"] for r in gets_rate], "ms", middle(reference_rate, "p99"),
              "bare uvicorn p99", higher_is_better=False))
    print("# closed loop (wrk): acknowledgement of new jobs")
    print(row("POST /job (201 acknowledgement)", [r["rps"] for r in posts], "req/s", ref, "bare uvicorn"))
    print(row("POST /job p50", [r["p50"] for r in posts], "ms"))
    print(row("POST /job p99", [r["p99"] for r in posts], "ms"))
    print(f"SSH commands sent by the acknowledging gateway: {sum(sum(c.values()) for c in ssh_work.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

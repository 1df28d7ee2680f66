"""The cluster's files through the API, against the live testbed: list, stat, read, download with Range,
upload, mkdir, move, remove, SHA-256; escapes refused (``..``, an absolute path elsewhere, a symbolic link
made on the cluster that leads out) with nothing written; the role policy for removing and moving.

Each test works in a directory of its own in the testbed user's home (``files-<id>``), registered as the
only allowed root of an infrastructure ``tb-files`` (job root inside it); a sibling ``outside`` holds what
no request may reach. The cluster side is checked independently of the gateway, over OpenSSH.
"""

from __future__ import annotations

import hashlib
import uuid

import pytest

from tests.integration.test_jobs_api import ssh
from tests.integration.test_templates_api import problem
from tests.support import infrastructure_body

pytestmark = pytest.mark.integration

UPLOAD_MAX = 64 * 1024
BASE = "/infrastructure/tb-files/files"


@pytest.fixture
def cluster(gateway_factory, testbed):
    """(gateway, home-relative base directory, absolute base directory) with the layout described above."""
    base = f"files-{uuid.uuid4().hex[:10]}"
    made = ssh(testbed, f"mkdir -p {base}/root/data/sub {base}/outside && printf 'top secret' > {base}/outside/secret "
                        f"&& printf 'hello\\nworld\\n' > {base}/root/data/hello.txt && echo $HOME")
    assert made.returncode == 0, made.stderr
    home = made.stdout.strip()
    gateway = gateway_factory(extra_env={"HPC_BACKGROUND": "0", "HPC_FILES_UPLOAD_MAX": str(UPLOAD_MAX)})
    body = infrastructure_body(testbed, "tb-files", "slurm")
    body["settings"].update({"allowed_roots": [f"{base}/root"], "job_root": f"{base}/root/jobs"})
    response = gateway.post("/infrastructure", body)
    assert response.status_code == 201, response.text
    yield gateway, base, f"{home}/{base}"
    ssh(testbed, f"rm -rf {base}")


def on_cluster(testbed, command: str) -> str:
    result = ssh(testbed, command)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_list_stat_read_and_checksum(cluster, testbed):
    gateway, base, absolute = cluster
    on_cluster(testbed, f"cd {base}/root/data && for i in 1 2 3 4 5; do printf %0${{i}}d 0 > f$i; done && "
                        "ln -s hello.txt link")
    page = gateway.get(BASE, params={"path": f"{base}/root/data", "limit": 3, "offset": 1}, token="user")
    assert page.status_code == 200, page.text
    listing = page.json()
    assert listing["path"] == f"{absolute}/root/data"
    assert listing["total"] == 8  # f1..f5, hello.txt, link, sub
    assert [e["name"] for e in listing["items"]] == ["f2", "f3", "f4"]
    assert [e["size"] for e in listing["items"]] == [2, 3, 4]
    assert {e["type"] for e in listing["items"]} == {"file"}
    everything = gateway.get(BASE, params={"path": f"{base}/root/data"}, token="user").json()
    types = {e["name"]: e["type"] for e in everything["items"]}
    assert (types["link"], types["sub"], types["hello.txt"]) == ("symlink", "directory", "file")

    stat = gateway.get(f"{BASE}/stat", params={"path": f"{base}/root/data/link"}, token="user").json()
    assert (stat["type"], stat["realpath"]) == ("symlink", f"{absolute}/root/data/hello.txt")
    stat = gateway.get(f"{BASE}/stat", params={"path": f"{absolute}/root/data/hello.txt"}, token="user").json()
    assert (stat["type"], stat["size"], stat["mode"]) == ("file", 12, "0644")

    head = gateway.get(f"{BASE}/content", params={"path": f"{base}/root/data/hello.txt", "length": 5}).json()
    assert (head["data"], head["offset"], head["next_offset"], head["size"], head["eof"]) == ("hello", 0, 5, 12, False)
    tail = gateway.get(f"{BASE}/content", params={"path": f"{base}/root/data/hello.txt", "tail": 6}).json()
    assert (tail["data"], tail["offset"], tail["eof"]) == ("world\n", 6, True)
    whole = gateway.get(f"{BASE}/content", params={"path": f"{base}/root/data/hello.txt"}).json()
    assert (whole["data"], whole["next_offset"], whole["eof"]) == ("hello\nworld\n", 12, True)
    past = gateway.get(f"{BASE}/content", params={"path": f"{base}/root/data/hello.txt", "offset": 50}).json()
    assert (past["data"], past["offset"], past["eof"]) == ("", 50, True)
    middle = gateway.get(f"{BASE}/content", params={"path": f"{base}/root/data/hello.txt", "offset": 3,
                                                    "length": 4, "encoding": "base64"}).json()
    assert middle["data"] == "bG8Kdw=="  # "lo\nw"
    problem(gateway.get(f"{BASE}/content", params={"path": f"{base}/root/data/hello.txt", "offset": 1, "tail": 2}),
            400, "tail")
    problem(gateway.get(f"{BASE}/content", params={"path": f"{base}/root/data"}), 400, "path")
    problem(gateway.get(f"{BASE}/content", params={"path": f"{base}/root/data/nope"}), 404, "path")
    problem(gateway.get(BASE, params={"path": f"{base}/root/data/hello.txt"}), 400, "path")

    digest = gateway.get(f"{BASE}/sha256", params={"path": f"{base}/root/data/hello.txt"}, token="user").json()
    assert digest == {"path": f"{absolute}/root/data/hello.txt", "size": 12,
                      "sha256": hashlib.sha256(b"hello\nworld\n").hexdigest()}


def test_download_whole_and_ranges(cluster, testbed):
    gateway, base, _ = cluster
    # 3 MiB + 5 bytes of varied content: more than one 1 MiB chunk of the stream.
    on_cluster(testbed, f"head -c 3145733 /dev/urandom > {base}/root/data/big.bin")
    expected = bytes.fromhex(on_cluster(testbed, f"od -An -v -tx1 {base}/root/data/big.bin").replace(" ", "")
                             .replace("\n", ""))
    params = {"path": f"{base}/root/data/big.bin"}
    whole = gateway.get(f"{BASE}/download", params=params, token="user")
    assert whole.status_code == 200
    assert (whole.headers["Content-Type"], whole.headers["Accept-Ranges"]) == ("application/octet-stream", "bytes")
    assert whole.content == expected
    for header, start, end in (("bytes=0-99", 0, 100), ("bytes=1048570-2097160", 1048570, 2097161),
                               ("bytes=3145700-", 3145700, 3145733), ("bytes=-10", 3145723, 3145733),
                               ("bytes=3145730-9999999", 3145730, 3145733)):
        part = gateway.get(f"{BASE}/download", params=params, headers={"Range": header})
        assert part.status_code == 206, (header, part.text[:200])
        assert part.headers["Content-Range"] == f"bytes {start}-{end - 1}/3145733"
        assert part.content == expected[start:end]
    for header in ("bytes=3145733-", "bytes=5-2", "bytes=-0", "bytes=x-y"):
        refused = gateway.get(f"{BASE}/download", params=params, headers={"Range": header})
        problem(refused, 416, "Range")
        assert refused.headers["Content-Range"] == "bytes */3145733"
    several = gateway.get(f"{BASE}/download", params=params, headers={"Range": "bytes=0-1,5-6"})
    assert (several.status_code, len(several.content)) == (200, 3145733)
    problem(gateway.get(f"{BASE}/download", params={"path": f"{base}/root/data"}), 400, "path")
    problem(gateway.get(f"{BASE}/download", params={"path": f"{base}/root/none"}), 404, "path")


def test_upload_mkdir_move_and_remove(cluster, testbed):
    gateway, base, absolute = cluster
    made = gateway.post(f"{BASE}/directory", {"path": f"{base}/root/new/a/b"}, token="user")
    assert made.status_code == 201, made.text
    assert (made.json()["type"], made.json()["path"]) == ("directory", f"{absolute}/root/new/a/b")
    assert gateway.post(f"{BASE}/directory", {"path": f"{base}/root/new/a/b"}).status_code == 201  # as mkdir -p
    problem(gateway.post(f"{BASE}/directory", {"path": f"{base}/root/data/hello.txt/x"}), 409, "path")

    payload = bytes(range(256)) * 40  # not UTF-8
    url = f"{BASE}/upload"
    params = {"path": f"{base}/root/new/a/b/payload.bin"}
    sent = gateway.request("POST", url, params=params, data=payload, token="user",
                           headers={"Content-Type": "application/octet-stream"})
    assert sent.status_code == 201, sent.text
    assert sent.json()["size"] == len(payload)
    on_disk = on_cluster(testbed, f"sha256sum < {base}/root/new/a/b/payload.bin").split()[0]
    assert on_disk == hashlib.sha256(payload).hexdigest()
    again = gateway.request("POST", url, params=params, data=b"other", token="user",
                            headers={"Content-Type": "application/octet-stream"})
    problem(again, 409, "path")
    replaced = gateway.request("POST", url, params={**params, "overwrite": "true"}, data=b"other",
                               headers={"Content-Type": "application/octet-stream"})
    assert replaced.status_code == 201, replaced.text
    assert on_cluster(testbed, f"cat {base}/root/new/a/b/payload.bin") == "other"
    empty = gateway.request("POST", url, params={"path": f"{base}/root/new/empty"}, data=b"",
                            headers={"Content-Type": "application/octet-stream"})
    assert (empty.status_code, empty.json()["size"]) == (201, 0)
    assert gateway.delete(BASE, params={"path": f"{base}/root/new/empty"}).status_code == 204
    problem(gateway.request("POST", url, params={"path": f"{base}/root/missing/x"}, data=b"x",
                            headers={"Content-Type": "application/octet-stream"}), 404, "path")

    too_big = gateway.request("POST", url, params={"path": f"{base}/root/new/big"}, data=b"x" * (UPLOAD_MAX + 1),
                              headers={"Content-Type": "application/octet-stream"})
    assert too_big.status_code == 413
    assert "files_upload_max" in too_big.json()["detail"]

    def chunks():
        for _ in range(UPLOAD_MAX // 1024 + 2):
            yield b"y" * 1024

    chunked = gateway.request("POST", url, params={"path": f"{base}/root/new/big"}, data=chunks(),
                              headers={"Content-Type": "application/octet-stream"})
    assert chunked.status_code == 413
    listing = on_cluster(testbed, f"ls -A {base}/root/new {base}/root/new/a/b")
    assert "big" not in listing and ".part" not in listing

    moved = gateway.post(f"{BASE}/move", {"src": f"{base}/root/new/a/b/payload.bin", "dst": f"{base}/root/new/p"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["path"] == f"{absolute}/root/new/p"
    problem(gateway.post(f"{BASE}/move", {"src": f"{base}/root/new/p", "dst": f"{base}/root/data/hello.txt"}),
            409, "dst")
    problem(gateway.post(f"{BASE}/move", {"src": f"{base}/root/new/gone", "dst": f"{base}/root/new/q"}), 404, "src")

    problem(gateway.delete(BASE, params={"path": f"{base}/root/new"}), 400, "recursive")
    assert on_cluster(testbed, f"cat {base}/root/new/p") == "other"
    assert gateway.delete(BASE, params={"path": f"{base}/root/new/p"}).status_code == 204
    assert gateway.delete(BASE, params={"path": f"{base}/root/new", "recursive": "true"}).status_code == 204
    assert on_cluster(testbed, f"ls -A {base}/root") == "data\n"
    problem(gateway.delete(BASE, params={"path": f"{base}/root/new"}), 404, "path")
    problem(gateway.delete(BASE, params={"path": f"{base}/root", "recursive": "true"}), 400, "path")

    audit = gateway.get("/audit", params={"limit": 50}).json()["items"]
    actions = [(entry["action"], entry["principal"]) for entry in audit]
    assert ("file.upload", "user") in actions and ("file.mkdir", "user") in actions
    assert ("file.move", "admin") in actions and ("file.remove", "admin") in actions


def test_escapes_are_refused_and_nothing_is_written(cluster, testbed):
    gateway, base, absolute = cluster
    on_cluster(testbed, f"ln -s ../../outside/secret {base}/root/data/out && ln -s {absolute}/outside "
                        f"{base}/root/data/outdir")
    spellings = {"dotdot": f"{base}/root/../outside/secret", "absolute": f"{absolute}/outside/secret",
                 "home": "~/.bashrc", "symlink": f"{base}/root/data/out",
                 "symlinked_dir": f"{base}/root/data/outdir/secret"}
    for spelling, path in spellings.items():
        refuse_everywhere(gateway, base, spelling, path)
    assert on_cluster(testbed, f"cat {base}/outside/secret") == "top secret"
    assert on_cluster(testbed, f"ls -A {base}/outside") == "secret\n"
    assert on_cluster(testbed, f"cat {base}/root/data/hello.txt") == "hello\nworld\n"


def refuse_everywhere(gateway, base: str, spelling: str, path: str) -> None:
    for method, url, kwargs in (
        ("GET", BASE, {"params": {"path": path}}),
        ("GET", f"{BASE}/content", {"params": {"path": path}}),
        ("GET", f"{BASE}/download", {"params": {"path": path}}),
        ("GET", f"{BASE}/sha256", {"params": {"path": path}}),
        ("POST", f"{BASE}/upload", {"params": {"path": path, "overwrite": "true"}, "data": b"pwned",
                                    "headers": {"Content-Type": "application/octet-stream"}}),
        ("POST", f"{BASE}/directory", {"json": {"path": f"{path}/x"}}),
        ("POST", f"{BASE}/move", {"json": {"src": f"{base}/root/data/hello.txt", "dst": f"{path}/moved"}}),
    ):
        refused = gateway.request(method, url, **kwargs)
        assert (spelling, method, url, refused.status_code) == (spelling, method, url, 400)
        problem(refused, 400, "dst" if url.endswith("move") else "path")
    if spelling != "symlink":  # the link itself lies inside the root: removing it removes the link only
        problem(gateway.delete(BASE, params={"path": path}), 400, "path")


def test_hostile_names_are_data(cluster, testbed):
    gateway, base, absolute = cluster
    name = "a b'c\"$(touch PWNED)`id`;x"
    sent = gateway.request("POST", f"{BASE}/upload", params={"path": f"{base}/root/{name}"}, data=b"1",
                           headers={"Content-Type": "application/octet-stream"})
    assert sent.status_code == 201, sent.text
    digest = gateway.get(f"{BASE}/sha256", params={"path": f"{base}/root/{name}"}).json()
    assert digest["sha256"] == hashlib.sha256(b"1").hexdigest()
    assert gateway.post(f"{BASE}/directory", {"path": f"{base}/root/{name}.d/x"}).status_code == 201
    assert gateway.delete(BASE, params={"path": f"{base}/root/{name}.d", "recursive": "true"}).status_code == 204
    problem(gateway.get(BASE, params={"path": f"{base}/root/a\nb"}), 400, "path")
    assert sorted(on_cluster(testbed, f"ls -A {base}/root").splitlines()) == sorted(["data", name])
    assert on_cluster(testbed, "find ~ -maxdepth 3 -name PWNED | wc -l").strip() == "0"


def test_role_policy_for_removing_and_moving(cluster, testbed):
    gateway, base, absolute = cluster
    job = gateway.post("/job", {"infrastructure": "tb-files", "script": "true"}, token="user")
    assert job.status_code == 201, job.text
    job_dir = f"{base}/root/jobs/{job.json()['id']}"
    assert gateway.post(f"{BASE}/directory", {"path": f"{job_dir}/out"}, token="user").status_code == 201
    for name in ("a", "b", "c"):
        sent = gateway.request("POST", f"{BASE}/upload", params={"path": f"{job_dir}/out/{name}"}, data=b"x",
                               token="user", headers={"Content-Type": "application/octet-stream"})
        assert sent.status_code == 201, sent.text

    # Another user may read there, but not remove, move away or overwrite.
    assert gateway.get(BASE, params={"path": f"{job_dir}/out"}, token="user2").json()["total"] == 3
    problem(gateway.delete(BASE, params={"path": f"{job_dir}/out/a"}, token="user2"), 403, "path")
    problem(gateway.post(f"{BASE}/move", {"src": f"{job_dir}/out/a", "dst": f"{base}/root/a"}, token="user2"),
            403, "src")
    problem(gateway.request("POST", f"{BASE}/upload", params={"path": f"{job_dir}/out/a", "overwrite": "true"},
                            data=b"y", token="user2", headers={"Content-Type": "application/octet-stream"}),
            403, "path")
    # Outside its job directories a user may not remove either; the admin may.
    problem(gateway.delete(BASE, params={"path": f"{base}/root/data/hello.txt"}, token="user"), 403, "path")
    # The owner may, in its own job's directory.
    assert gateway.delete(BASE, params={"path": f"{job_dir}/out/a"}, token="user").status_code == 204
    moved = gateway.post(f"{BASE}/move", {"src": f"{job_dir}/out/b", "dst": f"{job_dir}/b"}, token="user")
    assert moved.status_code == 200, moved.text
    assert gateway.delete(BASE, params={"path": job_dir, "recursive": "true"}, token="user").status_code == 204
    assert gateway.delete(BASE, params={"path": f"{base}/root/data/hello.txt"}, token="admin").status_code == 204
    assert on_cluster(testbed, f"ls -A {base}/root/jobs {base}/root/data") == \
        f"{base}/root/data:\nsub\n\n{base}/root/jobs:\n"

"""PATCH /infrastructure/{name} against the live testbed: new values are verified over SSH before they are
written, a refusal leaves the old ones in force (and working), and running jobs keep being tracked over
the new connection (the pooled one is closed: its TCP connection is seen to go away).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hpc.ssh import SSHChannelError, SSHPool, SSHTarget
from tests.integration.test_jobs_api import submit, wait_job
from tests.integration.test_templates_api import problem
from tests.support import free_port

pytestmark = pytest.mark.integration


def patch(gateway, name: str, body, token: str = "admin"):
    return gateway.request("PATCH", f"/infrastructure/{name}", json=body, token=token)


def ssh_ports(pid: int, sshd_port: int) -> set[int]:
    """Local ports of the process's established TCP connections to the testbed's sshd (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if inode in inodes and state == "01" and int(remote.rsplit(":", 1)[1], 16) == sshd_port:
            ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def eventually(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def stored(gateway, name: str) -> dict:
    with sqlite3.connect(gateway.data_dir / "gateway.db") as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM infrastructures WHERE name = ?", (name,)).fetchone())


def stranger_key(gateway) -> Path:
    """A key the testbed's sshd has never seen, in the gateway's key directory."""
    path = gateway.key_dir / "stranger"
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "stranger", "-f", str(path)], check=True)
    return path


def test_wrong_key_refused_right_key_taken_while_jobs_keep_being_tracked(registered, testbed):
    sshd_port = int(testbed["TESTBED_SSH_PORT"])
    pid = registered.process.pid
    infras = ["tb-slurm", "tb-pbs"]
    jobs = [submit(registered, infra, script="sleep 8; echo tracked\n") for infra in infras]
    for job in jobs:
        wait_job(registered, job["id"], until=lambda j: j["state"] == "running", timeout=60)
    before = ssh_ports(pid, sshd_port)
    assert len(before) >= 2  # one pooled connection per infrastructure

    stranger_key(registered)
    summary = registered.get("/infrastructure/tb-slurm").json()
    refused = problem(patch(registered, "tb-slurm", {"ssh_key": {"path": "stranger"}}), 422, "ssh_key")
    assert "refused the SSH key" in refused["detail"]
    wrong_passphrase = patch(registered, "tb-slurm", {"ssh_key": {"path": "id_ed25519_pw", "password": "nope"}})
    problem(wrong_passphrase, 400, "ssh_key.password")
    assert stored(registered, "tb-slurm")["key_path"].endswith("/id_ed25519")
    assert registered.get("/infrastructure/tb-slurm").json() == summary
    assert before <= ssh_ports(pid, sshd_port)  # the old connection was left alone
    assert registered.get("/infrastructure/tb-slurm/telemetry").status_code == 200  # and still works

    for infra in infras:
        changed = patch(registered, infra, {"ssh_key": {"path": "id_ed25519_pw",
                                                        "password": testbed["TESTBED_SSH_KEY_PASSPHRASE"]}})
        assert changed.status_code == 200, changed.text
        assert changed.json()["host_key_fingerprint"] == summary["host_key_fingerprint"]
    eventually(lambda: not before & ssh_ports(pid, sshd_port))  # the pooled connections with the old key close
    row = stored(registered, "tb-slurm")
    assert row["key_path"].endswith("/id_ed25519_pw")
    assert testbed["TESTBED_SSH_KEY_PASSPHRASE"] not in row["passphrase_enc"]
    # The old key is no longer needed: without its file, tracking and new jobs use the new one.
    (registered.key_dir / "id_ed25519").unlink()
    for job in jobs:
        done = wait_job(registered, job["id"], timeout=120)
        assert (done["state"], done["exit_code"]) == ("completed", 0), done
        assert registered.get(f"/job/{job['id']}/output", token="user").json()["data"] == "tracked\n"
    after = submit(registered, "tb-pbs", script="echo after\n")
    assert wait_job(registered, after["id"])["state"] == "completed"


def test_connection_refusals_keep_the_old_values(registered, testbed):
    summary = registered.get("/infrastructure/tb-slurm").json()
    pinned = f"{testbed['TESTBED_HOST_KEY_TYPE']} {testbed['TESTBED_HOST_KEY_B64']}"
    other_host_key = " ".join(stranger_key(registered).with_suffix(".pub").read_text().split()[:2])
    problem(patch(registered, "tb-slurm", {"host_key": other_host_key}), 422, "host_key")
    problem(patch(registered, "tb-slurm", {"host_key": "not a key"}), 400, "host_key")
    problem(patch(registered, "tb-slurm", {"port": free_port()}), 422, "host")
    problem(patch(registered, "tb-slurm", {"host": "169.254.169.254"}), 400, "host")
    problem(patch(registered, "tb-slurm", {"host": "a..b"}), 400, "host")
    problem(patch(registered, "tb-slurm", {"username": "nobody"}), 422, "ssh_key")
    problem(patch(registered, "tb-slurm", {"ssh_key": {"type": "ssh-ed25519"}}), 400, "ssh_key")
    problem(patch(registered, "tb-slurm", {"ssh_key": {"path": "../../etc/passwd"}}), 400, "ssh_key.path")
    # All or nothing: a good settings change in a request whose key is refused is not applied either.
    problem(patch(registered, "tb-slurm", {"settings": {"job_root": "elsewhere"}, "ssh_key": {"path": "stranger"}}),
            422, "ssh_key")
    assert registered.get("/infrastructure/tb-slurm").json() == summary
    assert stored(registered, "tb-slurm")["port"] == int(testbed["TESTBED_SSH_PORT"])

    for host_key in ("", pinned):
        changed = patch(registered, "tb-slurm", {"host_key": host_key})
        assert changed.status_code == 200, changed.text
        assert changed.json()["host_key_fingerprint"] == testbed["TESTBED_HOST_KEY_FINGERPRINT"]
    assert stored(registered, "tb-slurm")["host_key"] == pinned


def test_settings_and_other_fields(registered):
    registered_settings = registered.get("/infrastructure/tb-slurm").json()["settings"]
    for body, field in [
        ({"settings": {"mpi_launcher": "mpirun 'unbalanced"}}, "settings.mpi_launcher"),
        ({"settings": {"job_root": "jobs\nrm -rf ~"}}, "settings.job_root"),
        ({"settings": {"allowed_roots": ["ok", "bad\x7f"]}}, "settings.allowed_roots.1"),
        ({"settings": {"min_watch_period": 0}}, "settings.min_watch_period"),
        ({"reset_settings": ["job_rot"]}, "reset_settings.0"),
        ({"scheduler": "pbs"}, "scheduler"),
        ({"name": "renamed"}, "name"),
        ({}, None),
    ]:
        problem(patch(registered, "tb-slurm", body), 400, field)
    problem(patch(registered, "tb-slurm", {"hostname": "x"}, token="user"), 403, None)
    problem(patch(registered, "nowhere", {"hostname": "x"}), 404, "infrastructure")
    assert registered.get("/infrastructure/tb-slurm").json()["settings"] == registered_settings

    changed = patch(registered, "tb-slurm", {"hostname": "cluster-7",
                                             "settings": {"job_root": "gw jobs", "min_watch_period": 1}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["hostname"] == "cluster-7"
    assert changed.json()["settings"] == {**registered_settings, "job_root": "gw jobs", "min_watch_period": 1}
    shown = registered.post("/job/dry_run", {"infrastructure": "tb-slurm", "script": "true"}, token="user").json()
    assert shown["job_dir"] == f"{shown['home']}/gw jobs/{shown['job_id']}"
    job = submit(registered, "tb-slurm", script="pwd\n")
    assert wait_job(registered, job["id"])["state"] == "completed"
    output = registered.get(f"/job/{job['id']}/output", token="user").json()
    assert output["data"].startswith(f"{shown['home']}/gw jobs/")

    # Registration stored the contract's defaults (pbs_flavour among them since arrays came).
    reset = patch(registered, "tb-slurm", {"reset_settings": ["job_root", "mpi_launcher", "pbs_flavour"]})
    assert reset.json()["settings"] == {"min_watch_period": 1}  # the defaults apply again

    # Each change that took is in the audit log with the names of the fields given; the refusals are not.
    audit = registered.get("/audit", params={"action": "infrastructure.update"}).json()
    assert [(e["target"], e["details"]) for e in audit["items"]] == [
        ("tb-slurm", {"fields": ["reset_settings"]}), ("tb-slurm", {"fields": ["hostname", "settings"]})]


def test_a_retired_pool_connection_finishes_its_command_then_closes(testbed):
    """What PATCH does to the pool: the next caller gets a new connection, a command already running on
    the old one still completes, and the old one then closes and never reconnects."""
    target = SSHTarget(host=testbed["TESTBED_SSH_HOST"], port=int(testbed["TESTBED_SSH_PORT"]),
                       username=testbed["TESTBED_SSH_USER"], key_path=testbed["TESTBED_SSH_KEY"],
                       known_hosts=testbed["TESTBED_KNOWN_HOSTS"], connect_timeout=5.0)
    pool = SSHPool()
    old = pool.get("tb", target)
    results = []
    running = threading.Thread(target=lambda: results.append(old.run("sleep 2; echo finished", timeout=30)))
    running.start()
    eventually(lambda: old.commands_run == 1)
    pool.retire("tb", grace=30)
    new = pool.get("tb", target)
    assert new is not old
    assert new.run("echo new").stdout == "new\n"
    assert old.is_alive()  # still serving the command in progress
    running.join(timeout=30)
    assert (results[0].exit_code, results[0].stdout) == (0, "finished\n")
    eventually(lambda: not old.is_alive())
    with pytest.raises(SSHChannelError):
        old.run("true", timeout=5)
    assert new.run("echo still").stdout == "still\n"
    pool.close_all()

"""Infrastructures through the real API, against the real testbed sshd, Slurm, Torque wrappers and Grid Engine."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.support import infrastructure_body

pytestmark = pytest.mark.integration


def assert_problem(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert "Traceback" not in response.text
    if field is not None:
        assert body.get("field") == field, body
    return body


def test_swagger_ui_and_health(gateway):
    ui = gateway.get("/ui/", token=None)
    assert ui.status_code == 200
    assert "swagger-ui" in ui.text.lower()
    health = gateway.get("/health", token=None).json()
    assert health["status"] == "ok"
    assert health["auth"] is True
    assert health["database"] == "sqlite"


def test_register_get_list_telemetry_delete(gateway, testbed):
    created = gateway.post("/infrastructure", infrastructure_body(testbed, "tb-slurm", "slurm"))
    assert created.status_code == 201, created.text
    summary = created.json()
    assert summary["name"] == "tb-slurm"
    assert summary["scheduler"] == "slurm"
    assert summary["hostname"] == testbed["TESTBED_HOSTNAME"]
    assert summary["host_key_fingerprint"] == testbed["TESTBED_HOST_KEY_FINGERPRINT"]
    assert "ssh_key" not in summary

    assert gateway.get("/infrastructure/tb-slurm").json() == summary
    assert [i["name"] for i in gateway.get("/infrastructure").json()] == ["tb-slurm"]

    telemetry = gateway.get("/infrastructure/tb-slurm/telemetry")
    assert telemetry.status_code == 200, telemetry.text
    body = telemetry.json()
    partitions = {p["name"]: p for p in body["partitions"]}
    debug = partitions[testbed["TESTBED_SLURM_PARTITION"]]
    assert debug["total_cpus"] == int(testbed["TESTBED_SLURM_CPUS"])
    assert debug["total_nodes"] == 1
    for key in ("total_nodes", "avail_nodes", "total_cpus", "avail_cpus", "running_jobs", "queued_jobs"):
        assert isinstance(debug[key], int)

    assert gateway.delete("/infrastructure/tb-slurm").status_code == 204
    assert_problem(gateway.get("/infrastructure/tb-slurm"), 404)
    assert gateway.get("/infrastructure").json() == []


def test_pbs_telemetry_from_pbsnodes(gateway, testbed):
    created = gateway.post("/infrastructure", infrastructure_body(testbed, "tb-pbs", "pbs"))
    assert created.status_code == 201, created.text
    body = gateway.get("/infrastructure/tb-pbs/telemetry").json()
    assert body["scheduler"] == "pbs"
    assert len(body["partitions"]) >= 1
    assert sum(p["total_cpus"] for p in body["partitions"][:1]) == int(testbed["TESTBED_SLURM_CPUS"])


def test_sge_telemetry_from_qstat_and_its_programs_from_the_setup_lines(gateway, testbed):
    created = gateway.post("/infrastructure", infrastructure_body(testbed, "tb-sge", "sge"))
    assert created.status_code == 201, created.text
    assert created.json()["settings"]["command_setup_lines"] == [f". {testbed['TESTBED_SGE_SETTINGS']}"]
    body = gateway.get("/infrastructure/tb-sge/telemetry").json()
    assert body["scheduler"] == "sge"
    queue = {p["name"]: p for p in body["partitions"]}[testbed["TESTBED_SGE_QUEUE"]]
    assert (queue["total_nodes"], queue["total_cpus"]) == (1, int(testbed["TESTBED_SLURM_CPUS"]))
    # Without the setup lines the login shell has only the Torque wrappers' qsub, and no qconf.
    plain = infrastructure_body(testbed, "tb-sge-plain", "sge", settings={"mpi_launcher": ""})
    assert "'qconf'" in assert_problem(gateway.post("/infrastructure", plain), 422, "scheduler")["detail"]
    # A setup whose last line fails stops the command (which could be another scheduler's qsub).
    broken = infrastructure_body(testbed, "tb-sge-broken", "sge", settings={
        "command_setup_lines": [f". {testbed['TESTBED_SGE_SETTINGS']}", "test -d /nonexistent"]})
    assert_problem(gateway.post("/infrastructure", broken), 422, "settings.command_setup_lines")
    assert [i["name"] for i in gateway.get("/infrastructure").json()] == ["tb-sge"]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"scheduler": "lsf"}, "scheduler"),
        ({"name": None}, "name"),
        ({"port": "twenty-two"}, "port"),
        ({"ssh_key": {"type": "ssh-dsa", "path": "id_ed25519"}}, "ssh_key.type"),
        ({"name": "bad name/with slash"}, "name"),
    ],
)
def test_invalid_bodies_are_400_naming_the_field(gateway, testbed, change, field):
    body = infrastructure_body(testbed, "tb-bad", "slurm")
    body.update(change)
    body = {key: value for key, value in body.items() if value is not None}
    assert_problem(gateway.post("/infrastructure", body), 400, field)
    assert gateway.get("/infrastructure").json() == []


def test_missing_body_and_wrong_content_type(gateway):
    response = gateway.request("POST", "/infrastructure", data="not json", headers={"Content-Type": "text/plain"})
    assert 400 <= response.status_code < 500
    assert response.headers["Content-Type"].startswith("application/problem+json")


def test_name_taken_is_409(gateway, testbed):
    body = infrastructure_body(testbed, "tb-dup", "slurm")
    assert gateway.post("/infrastructure", body).status_code == 201
    assert_problem(gateway.post("/infrastructure", body), 409, "name")


def test_unknown_infrastructure_is_404(gateway):
    assert_problem(gateway.get("/infrastructure/nope"), 404)
    assert_problem(gateway.get("/infrastructure/nope/telemetry"), 404)
    assert_problem(gateway.delete("/infrastructure/nope"), 404)


@pytest.mark.parametrize("path", ["/etc/shadow", "../../../../etc/passwd", "/var/lib/hpc-testbed/keys/id_ed25519"])
def test_key_path_outside_key_dir_is_refused(gateway, testbed, path):
    body = infrastructure_body(testbed, "tb-escape", "slurm", ssh_key={"type": "ssh-ed25519", "path": path})
    assert_problem(gateway.post("/infrastructure", body), 400, "ssh_key.path")


def test_symlink_out_of_key_dir_is_refused(gateway, testbed):
    (gateway.key_dir / "sneaky").symlink_to("/etc/hostname")
    body = infrastructure_body(testbed, "tb-link", "slurm", ssh_key={"type": "ssh-ed25519", "path": "sneaky"})
    assert_problem(gateway.post("/infrastructure", body), 400, "ssh_key.path")


def test_missing_key_file(gateway, testbed):
    body = infrastructure_body(testbed, "tb-nokey", "slurm", ssh_key={"type": "ssh-ed25519", "path": "absent"})
    problem = assert_problem(gateway.post("/infrastructure", body), 400, "ssh_key.path")
    assert "not found" in problem["detail"]


def test_passphrase_key_right_and_wrong(gateway, testbed):
    passphrase = testbed["TESTBED_SSH_KEY_PASSPHRASE"]
    wrong = infrastructure_body(testbed, "tb-pw", "slurm",
                                ssh_key={"type": "ssh-ed25519", "path": "id_ed25519_pw", "password": "nope"})
    problem = assert_problem(gateway.post("/infrastructure", wrong), 400, "ssh_key.password")
    assert "passphrase" in problem["detail"]
    missing = infrastructure_body(testbed, "tb-pw", "slurm", ssh_key={"type": "ssh-ed25519", "path": "id_ed25519_pw"})
    assert_problem(gateway.post("/infrastructure", missing), 400, "ssh_key.password")
    right = infrastructure_body(testbed, "tb-pw", "slurm",
                                ssh_key={"type": "ssh-ed25519", "path": "id_ed25519_pw", "password": passphrase})
    assert gateway.post("/infrastructure", right).status_code == 201
    assert gateway.get("/infrastructure/tb-pw/telemetry").status_code == 200


def test_key_not_authorized_is_refused(gateway, testbed):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(gateway.key_dir / "stranger")],
                   check=True)
    body = infrastructure_body(testbed, "tb-stranger", "slurm", ssh_key={"type": "ssh-ed25519", "path": "stranger"})
    problem = assert_problem(gateway.post("/infrastructure", body), 422, "ssh_key")
    assert "refused" in problem["detail"]


def test_host_key_mismatch_and_unknown(gateway, testbed):
    wrong_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    body = infrastructure_body(testbed, "tb-mitm", "slurm", host_key=wrong_key)
    problem = assert_problem(gateway.post("/infrastructure", body), 422, "host_key")
    assert "mismatch" in problem["detail"]
    assert testbed["TESTBED_HOST_KEY_FINGERPRINT"] in problem["detail"]

    (gateway.data_dir / "known_hosts").unlink()
    unknown = assert_problem(gateway.post("/infrastructure", infrastructure_body(testbed, "tb-new", "slurm")),
                             422, "host_key")
    assert "not known" in unknown["detail"]
    pinned = infrastructure_body(
        testbed, "tb-pinned", "slurm",
        host_key=f"{testbed['TESTBED_HOST_KEY_TYPE']} {testbed['TESTBED_HOST_KEY_B64']}",
    )
    assert gateway.post("/infrastructure", pinned).status_code == 201


def test_trust_on_first_use_pins_the_key(gateway_factory, testbed):
    gateway = gateway_factory(extra_env={"HPC_TRUST_ON_FIRST_USE": "1"})
    (gateway.data_dir / "known_hosts").unlink()
    created = gateway.post("/infrastructure", infrastructure_body(testbed, "tb-tofu", "slurm"))
    assert created.status_code == 201, created.text
    assert created.json()["host_key_fingerprint"] == testbed["TESTBED_HOST_KEY_FINGERPRINT"]


def test_unreachable_host_fails_fast(gateway, testbed):
    body = infrastructure_body(testbed, "tb-down", "slurm", port=1)
    problem = assert_problem(gateway.post("/infrastructure", body), 422, "host")
    assert "reach" in problem["detail"]


def test_roles_and_tokens(gateway, testbed):
    body = infrastructure_body(testbed, "tb-roles", "slurm")
    assert_problem(gateway.post("/infrastructure", body, token=None), 401)
    bad = gateway.request("POST", "/infrastructure", json=body, token=None,
                          headers={"Authorization": "Bearer not-a-token"})
    assert_problem(bad, 401)
    assert_problem(gateway.post("/infrastructure", body, token="user"), 403)
    assert gateway.post("/infrastructure", body, token="admin").status_code == 201
    assert gateway.get("/infrastructure/tb-roles", token="user").status_code == 200
    assert_problem(gateway.delete("/infrastructure/tb-roles", token="user"), 403)


def test_auth_off_is_loud_in_the_log(gateway_factory, testbed):
    gateway = gateway_factory(auth=False)
    assert gateway.get("/infrastructure", token=None).status_code == 200
    assert "AUTHENTICATION IS OFF" in gateway.log()


def test_restart_keeps_infrastructures(gateway, testbed):
    assert gateway.post("/infrastructure", infrastructure_body(testbed, "tb-keep", "pbs")).status_code == 201
    gateway.kill()
    gateway.start()
    assert gateway.get("/infrastructure/tb-keep").json()["scheduler"] == "pbs"
    assert gateway.get("/infrastructure/tb-keep/telemetry").status_code == 200


def test_inline_key_and_passphrase_never_leak(gateway, testbed):
    passphrase = testbed["TESTBED_SSH_KEY_PASSPHRASE"]
    key_text = Path(testbed["TESTBED_SSH_KEY_PW"]).read_text()
    key_marker = key_text.splitlines()[2]  # a line of the key's base64 body
    body = infrastructure_body(
        testbed, "tb-inline", "slurm",
        ssh_key={"type": "ssh-ed25519", "private_key": key_text, "password": passphrase},
    )
    created = gateway.post("/infrastructure", body)
    assert created.status_code == 201, created.text
    responses = [
        created.text,
        gateway.get("/infrastructure/tb-inline").text,
        gateway.get("/infrastructure").text,
        gateway.get("/infrastructure/tb-inline/telemetry").text,
    ]
    for text in responses:
        assert passphrase not in text
        assert key_marker not in text
    log = gateway.log()
    assert passphrase not in log
    assert key_marker not in log
    gateway.stop()  # flush the WAL into the database file before reading it raw
    for path in gateway.data_dir.glob("gateway.db*"):
        raw = path.read_bytes()
        assert passphrase.encode() not in raw
        assert key_marker.encode() not in raw
    with sqlite3.connect(gateway.data_dir / "gateway.db") as db:
        key_enc, pass_enc = db.execute(
            "select key_data_enc, passphrase_enc from infrastructures where name='tb-inline'"
        ).fetchone()
    assert key_enc.startswith("gAAAA")  # Fernet tokens
    assert pass_enc.startswith("gAAAA")

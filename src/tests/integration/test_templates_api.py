"""Job templates and dry runs through the real API on the live testbed, on every testbed scheduler.

A template is registered, a dry run shows what a job from it would send, the job is submitted under the
id the dry run reserved, and the files the gateway wrote on the cluster (``job.sh``, ``payload.sh`` in the
job directory, read back with OpenSSH) are the dry run's, byte for byte.
"""

from __future__ import annotations

import uuid

import pytest

from tests import support
from tests.integration.test_jobs_api import ssh, wait_job

pytestmark = pytest.mark.integration

# Every testbed infrastructure (three once Grid Engine's tb-sge is part of the testbed).
SCHEDULERS = [name for name, _ in getattr(support, "TESTBED_INFRASTRUCTURES", (("tb-slurm", "slurm"),
                                                                                ("tb-pbs", "pbs")))]

BODY = """#!/bin/bash
# greeting for {{who}}
set -e
printf '%s|' {{who}} {{files}}
printf 'threads=%s\\n' {{threads}}
"""
SCHEMA = {
    "type": "object",
    "required": ["who"],
    "properties": {
        "who": {"type": "string", "minLength": 1, "maxLength": 4096},
        "threads": {"type": "integer", "minimum": 1, "maximum": 8, "default": 2},
        "files": {"type": "array", "items": {"type": "string"}, "maxItems": 16, "default": []},
    },
    "additionalProperties": False,
}
TEMPLATE = {"name": "greet", "description": "prints its parameters", "body": BODY, "parameters": SCHEMA,
            "resources": {"walltime": "00:05:00"}}


def problem(response, status: int, field: str | None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body = response.json()
    assert body.get("field") == field, body
    return body


@pytest.fixture
def templated(registered):
    response = registered.post("/template", TEMPLATE, token="admin")
    assert response.status_code == 201, response.text
    return registered


def cluster_file(testbed, path: str) -> bytes:
    result = ssh(testbed, f"cat '{path}'")
    assert result.returncode == 0, result.stderr
    return result.stdout.encode()


def test_register_read_version_and_deprecate(registered):
    problem(registered.post("/template", TEMPLATE, token="user"), 403, None)
    created = registered.post("/template", TEMPLATE, token="admin")
    assert created.status_code == 201, created.text
    first = created.json()
    assert (first["name"], first["version"], first["latest_version"], first["builtin"], first["deprecated"]) == \
        ("greet", 1, 1, False, False)
    assert first["placeholders"] == ["who", "files", "threads"]
    assert first["resources"] == {"walltime": "00:05:00"}
    problem(registered.post("/template", TEMPLATE, token="admin"), 409, "name")
    problem(registered.post("/template", {**TEMPLATE, "name": "serrano"}, token="admin"), 409, "name")

    listing = registered.get("/template", token="user").json()
    assert [(t["name"], t["version"], t["builtin"]) for t in listing["items"]] == \
        [("serrano", 1, True), ("greet", 1, False)]
    assert listing["total"] == 2
    assert registered.get("/template", params={"offset": 1}, token="user").json()["items"][0]["name"] == "greet"
    builtin = registered.get("/template/serrano", token="user").json()
    assert builtin["placeholders"] == ["services", "root_dir", "clear_binary_data", "make_binary_input",
                                       "run_kernel", "pack_csv_output"]

    update = {"description": "v2", "body": BODY.replace("threads=", "t="), "parameters": SCHEMA}
    problem(registered.post("/template/greet/versions", update, token="user"), 403, None)
    second = registered.post("/template/greet/versions", update, token="admin")
    assert second.status_code == 201, second.text
    assert (second.json()["version"], second.json()["resources"]) == (2, {})
    assert registered.get("/template/greet", token="user").json()["version"] == 2
    old = registered.get("/template/greet/versions/1", token="user").json()
    assert (old["version"], old["latest_version"], old["body"]) == (1, 2, BODY)
    versions = registered.get("/template/greet/versions", token="user").json()
    assert [v["version"] for v in versions["items"]] == [2, 1]
    problem(registered.get("/template/greet/versions/3", token="user"), 404, "version")
    problem(registered.get("/template/nope", token="user"), 404, "template_name")
    problem(registered.post("/template/nope/versions", update, token="admin"), 404, "template_name")

    problem(registered.delete("/template/greet", token="user"), 403, None)
    assert registered.delete("/template/greet", token="admin").status_code == 204
    assert registered.delete("/template/greet", token="admin").status_code == 204
    assert registered.get("/template/greet", token="user").json()["deprecated"] is True
    refused = registered.post("/job", {"infrastructure": "tb-slurm", "template": "greet",
                                       "parameters": {"who": "x"}}, token="user")
    problem(refused, 409, "template")
    problem(registered.delete("/template/serrano", token="admin"), 409, "template_name")
    assert registered.post("/template/greet/versions", update, token="admin").json()["deprecated"] is False
    assert registered.get("/job", token="admin").json()["total"] == 0
    # Admin actions that took are audited, newest first; refused ones (403, 409) are not.
    audit = [(e["action"], e["target"], e.get("details")) for e in registered.get("/audit").json()["items"]
             if e["action"].startswith("template.")]
    assert audit == [("template.version", "greet", {"version": 3}), ("template.deprecate", "greet", None),
                     ("template.deprecate", "greet", None), ("template.version", "greet", {"version": 2}),
                     ("template.register", "greet", {"version": 1})]


BAD_TEMPLATES = [
    ({**TEMPLATE, "parameters": {"type": "object", "properties": {"who": {"type": "strnig"}}}},
     "parameters.properties.who.type"),
    ({**TEMPLATE, "parameters": {"type": "object", "properties": {"who": {"$ref": "http://127.0.0.1:8081/s"}}}},
     "parameters.properties.who.$ref"),
    ({**TEMPLATE, "body": "echo {{who}} {{nobody}}\n"}, "body"),
    ({**TEMPLATE, "body": "echo \"{{who}}\"\n"}, "body"),
    ({**TEMPLATE, "body": "cat <<EOF\n{{who}}\nEOF\n"}, "body"),
    ({**TEMPLATE, "body": "echo {{who}\n"}, "body"),
    ({**TEMPLATE, "parameters": {"type": "string"}}, "parameters.type"),
    ({**TEMPLATE, "resources": {"walltime": "00:00:00"}}, "resources.walltime"),
    ({**TEMPLATE, "name": "bad name"}, "name"),
    ({**TEMPLATE, "body": ""}, "body"),
    ({**TEMPLATE, "parameters": {"type": "object", "properties": {"who": {"type": "string"}}, "x": "y" * 70000}},
     "parameters"),
]


def test_bad_templates_are_refused_naming_the_field(registered):
    for body, field in BAD_TEMPLATES:
        problem(registered.post("/template", body, token="admin"), 400, field)
    assert registered.get("/template", token="admin").json()["total"] == 1  # the built-in one only


@pytest.mark.parametrize("infra", SCHEDULERS)
def test_template_job_runs_the_script_its_dry_run_showed(templated, testbed, infra):
    marker = f"/tmp/hpc-marker-{uuid.uuid4().hex}"
    who = f"it's \"me\" $(touch {marker}) `touch {marker}`\nEOF\n;touch {marker}"
    files = ["a b", f"$(touch {marker})", "--help"]
    request = {"infrastructure": infra, "template": "greet", "parameters": {"who": who, "files": files},
               "watch_period": 1}
    jobs_before = templated.get("/job", token="admin").json()["total"]
    dry = templated.post("/job/dry_run", request, token="user")
    assert dry.status_code == 200, dry.text
    shown = dry.json()
    assert templated.get("/job", token="admin").json()["total"] == jobs_before
    assert ssh(testbed, f"test -e '{shown['job_dir']}'").returncode == 1  # nothing written
    assert (shown["kind"], shown["template"], shown["template_version"]) == ("template", "greet", 1)
    assert shown["resources"] == {"walltime": "00:05:00"}
    assert shown["job_dir"].endswith("/" + shown["job_id"])
    assert shown["payload_path"] == shown["job_dir"] + "/payload.sh"
    assert f"cd {shown['job_dir']} && (" in shown["submit_command"]  # after any per-infrastructure set-up
    assert "threads=%s\\n' 2\n" in shown["payload"]

    again = templated.post("/job/dry_run", {**request, "reservation": shown["reservation"]}, token="user").json()
    assert (again["job_id"], again["script"], again["payload"]) == (shown["job_id"], shown["script"],
                                                                    shown["payload"])
    assert again["cluster_contacted"] is False  # the home directory is known by now

    created = templated.post("/job", {**request, "reservation": shown["reservation"]}, token="user")
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["id"] == shown["job_id"]
    assert (job["kind"], job["template"], job["template_version"]) == ("template", "greet", 1)
    done = wait_job(templated, job["id"])
    assert done["state"] == "completed", done
    assert done["template"] == "greet"
    assert cluster_file(testbed, shown["script_path"]) == shown["script"].encode()
    assert cluster_file(testbed, shown["payload_path"]) == shown["payload"].encode()
    out = templated.get(f"/job/{job['id']}/output", token="user").json()["data"]
    assert out == "".join(v + "|" for v in [who, *files]) + "threads=2\n"
    assert ssh(testbed, f"test -e {marker}").returncode == 1

    reused = templated.post("/job", {**request, "reservation": shown["reservation"]}, token="user")
    problem(reused, 409, "reservation")
    problem(templated.post("/job/dry_run", {**request, "reservation": shown["reservation"]}, token="user"),
            409, "reservation")


def test_dry_run_of_each_kind_creates_nothing(registered, testbed):
    requests = [
        {"infrastructure": "tb-slurm", "script": "echo hi\n", "resources": {"walltime": "00:01:00"}},
        {"infrastructure": "tb-pbs", "command": ["printf", "%s", "a b"], "name": "cmd"},
        {"infrastructure": "tb-slurm", "services": ["fft"],
         "params": {"read_input_data": "/Init_Data/raw_data_input_fft/input.csv", "num_mpi_procs": 1}},
    ]
    first = registered.post("/job/dry_run", requests[0], token="user")
    assert first.status_code == 200, first.text
    assert first.json()["cluster_contacted"] is True
    home = first.json()["home"]
    shown = [first.json()] + [registered.post("/job/dry_run", r, token="user").json() for r in requests[1:]]
    assert [s["kind"] for s in shown] == ["script", "command", "serrano"]
    assert shown[0]["payload"] == "echo hi\n"
    assert shown[0]["script_on_stdin"] is True and shown[1]["script_on_stdin"] is False
    assert shown[1]["payload"] == "#!/bin/bash\nexec printf %s 'a b'\n"
    assert shown[2]["payload"].splitlines()[3] == f"cd {home}/serrano"
    assert shown[2]["workdir"] == f"{home}/serrano"
    assert registered.get("/job", token="admin").json()["total"] == 0
    listing = ssh(testbed, f"ls {home}/.hpc-gateway/jobs 2>/dev/null").stdout.split()
    assert not {s["job_id"] for s in shown} & set(listing)


def test_serrano_job_runs_the_script_its_dry_run_showed(registered, testbed):
    request = {"infrastructure": "tb-slurm", "services": ["fft"], "watch_period": 1,
               "params": {"read_input_data": "/Init_Data/raw_data_input_fft/input.csv", "num_mpi_procs": 1}}
    shown = registered.post("/job/dry_run", request, token="user").json()
    job = registered.post("/job", {**request, "reservation": shown["reservation"]}, token="user").json()
    done = wait_job(registered, job["id"], timeout=180)
    assert done["state"] == "completed", done
    assert cluster_file(testbed, shown["script_path"]) == shown["script"].encode()
    assert cluster_file(testbed, shown["payload_path"]) == shown["payload"].encode()


BAD_PARAMETERS = [
    ({}, "parameters.who"),
    ({"who": 5}, "parameters.who"),
    ({"who": "x", "threads": 99}, "parameters.threads"),
    ({"who": "x", "files": "a"}, "parameters.files"),
    ({"who": "x", "files": ["a", {"b": 1}]}, "parameters.files.1"),
    ({"who": "x", "surprise": "$(id)"}, "parameters.surprise"),
    ({"who": "a\u0000b"}, "parameters.who"),
]


def test_bad_parameters_are_400_and_nothing_is_created(templated):
    for parameters, field in BAD_PARAMETERS:
        for path in ("/job", "/job/dry_run"):
            body = problem(templated.post(path, {"infrastructure": "tb-slurm", "template": "greet",
                                                 "parameters": parameters}, token="user"), 400, field)
            assert "$(id)" not in body["detail"]
    assert templated.get("/job", token="admin").json()["total"] == 0


def test_template_request_mistakes(templated):
    base = {"infrastructure": "tb-slurm", "template": "greet", "parameters": {"who": "x"}}
    problem(templated.post("/job", {**base, "template": "nope"}, token="user"), 404, "template")
    problem(templated.post("/job", {**base, "template_version": 7}, token="user"), 404, "template_version")
    problem(templated.post("/job", {**base, "script": "true"}, token="user"), 400, "services")
    problem(templated.post("/job", {"infrastructure": "tb-slurm", "script": "true", "parameters": {}}, token="user"),
            400, "parameters")
    problem(templated.post("/job", {**base, "template": "serrano"}, token="user"), 400, "template")
    problem(templated.post("/job", {**base, "reservation": "not-a-reservation"}, token="user"), 400, "reservation")
    theirs = templated.post("/job/dry_run", base, token="user2").json()["reservation"]
    problem(templated.post("/job", {**base, "reservation": theirs}, token="user"), 400, "reservation")
    assert templated.get("/job", token="admin").json()["total"] == 0

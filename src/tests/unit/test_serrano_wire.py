"""The wire check of the template refactor: SERRANO requests send the same bytes as before templates.

``fixtures/serrano/*.json`` were captured by ``fixtures/serrano/capture.py`` from the code before SERRANO
became the built-in template. Each case goes here through the path every submission and every dry run
takes (``JobService._draft`` then ``JobService._plan``), and the payload script, the batch script and the
submit command must be the captured ones, byte for byte.

The payload (what runs) is the capture of commit 688a828 unchanged. The batch script's wrapper and the
submit command were re-captured when job arrays merged (issue 12): the wrapper writes its job files through
``$hpc_files`` (a task's go under ``tasks/``) and the submit command keeps itself in ``submit.cmd``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpc.api.models import JobRequest
from hpc.schedulers import serrano, template
from hpc.services.jobs import JobService
from hpc.services.templates import check_template

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "serrano"
CASES = sorted(path.stem for path in FIXTURES.glob("*.json"))


def service_with_home(infra: dict, home: str) -> JobService:
    """A JobService that knows the cluster's home already (so nothing here needs SSH)."""
    service = JobService.__new__(JobService)
    service.templates = None
    service._homes = {JobService._home_key(infra): home}
    return service


@pytest.mark.parametrize("case", CASES)
def test_serrano_request_renders_the_captured_bytes(case):
    captured = json.loads((FIXTURES / f"{case}.json").read_text())
    infra = {"name": "tb", "host": "h", "port": 22, "username": "u", "scheduler": captured["scheduler"],
             "settings": captured["settings"]}
    service = service_with_home(infra, captured["home"])
    request = JobRequest.model_validate({"infrastructure": "tb", **captured["request"]})
    kind, name, spec = service._draft(request, infra)
    job_dir = service._job_dir(infra, captured["home"], captured["job_id"])
    plan = service._plan({"id": captured["job_id"], "name": name, "spec": spec}, infra, captured["home"], job_dir)
    assert kind == "serrano"
    assert job_dir == captured["job_dir"]
    assert plan.payload == captured["payload"]
    assert plan.script == captured["script"]
    assert plan.command == captured["submit_command"]
    assert (plan.stdin is not None) == captured["script_on_stdin"]
    if plan.stdin is not None:
        assert plan.stdin == plan.script.encode()


def test_five_cases_cover_both_schedulers_three_and_four_runs():
    documents = [json.loads((FIXTURES / f"{case}.json").read_text()) for case in CASES]
    assert len(documents) == 5
    assert {d["scheduler"] for d in documents} == {"slurm", "pbs"}
    assert {d["request"]["params"].get("csv_output", 1) for d in documents} == {0, 1}  # three runs and four


def test_the_builtin_template_passes_the_registration_checks():
    names = check_template(serrano.TEMPLATE_BODY, serrano.PARAMETERS_SCHEMA)
    assert names == ["services", "root_dir", "clear_binary_data", "make_binary_input", "run_kernel",
                     "pack_csv_output"]
    contexts = {ph.name: ph.context for ph in template.scan(serrano.TEMPLATE_BODY)}
    assert contexts["services"] == template.COMMENT
    assert contexts["run_kernel"] == template.WORD

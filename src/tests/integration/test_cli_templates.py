"""``hpc-gateway template``, ``job submit --template/--dry-run/--reservation`` and ``infra patch`` as a
person or a script runs them, against a real gateway and the live testbed."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_cli import cli, cli_json, gateway  # noqa: F401 (gateway: the module's fixture)
from tests.integration.test_jobs_api import ssh

pytestmark = pytest.mark.integration

BODY = "#!/bin/bash\nprintf '%s|' {{who}}\nprintf 'n=%s\\n' {{n}}\n"
SCHEMA = "type: object\nrequired: [who]\nproperties:\n  who: {type: string}\n  n: {type: integer, default: 1}\n"


def test_template_add_list_show_and_a_dry_run_then_the_same_job(gateway, testbed, tmp_path):  # noqa: F811
    (tmp_path / "greet.sh").write_text(BODY)
    (tmp_path / "greet.schema.yaml").write_text(SCHEMA)
    args = ["template", "add", "greet", "--body", str(tmp_path / "greet.sh"), "--parameters",
            str(tmp_path / "greet.schema.yaml"), "--resource", "walltime=00:05:00", "--description", "says who"]
    refused = cli(gateway, *args, token="user")
    assert (refused.returncode, "403" in refused.stderr) == (3, True)
    added = cli(gateway, *args)
    assert (added.returncode, added.stdout) == (0, "registered greet version 1 (parameters: who, n)\n")
    listed = cli_json(gateway, "template", "list")
    assert [(t["name"], t["version"]) for t in listed["items"]] == [("serrano", 1), ("greet", 1)]
    shown = cli(gateway, "template", "show", "greet")
    assert shown.returncode == 0
    assert shown.stdout.endswith("==> body <==\n" + BODY)

    who = "it's $(id) `id`\nEOF"
    submit = ["job", "submit", "-i", "tb-slurm", "--template", "greet", "--param", f"who={who}", "--param", "n=3"]
    human = cli(gateway, *submit, "--dry-run", token="user")
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith("# dry run on tb-slurm (slurm): nothing was submitted\n")
    assert "# resources: walltime=00:05:00\n" in human.stdout
    assert "/payload.sh <==\n#!/bin/bash\nprintf '%s|' 'it'\"'\"'s $(id) `id`\nEOF'\nprintf 'n=%s\\n' 3\n" in human.stdout
    dry = cli_json(gateway, *submit, "--dry-run", token="user")
    assert cli_json(gateway, "job", "list", token="admin")["total"] == 0
    done = cli_json(gateway, *submit, "--reservation", dry["reservation"], "--wait", "--poll", "0.3", token="user")
    assert (done["id"], done["state"], done["template"], done["template_version"]) == \
        (dry["job_id"], "completed", "greet", 1)
    assert ssh(testbed, f"cat {dry['script_path']}").stdout == dry["script"]
    output = cli(gateway, "job", "logs", done["id"], token="user")
    assert output.stdout == f"{who}|n=3\n"

    (tmp_path / "greet2.sh").write_text(BODY.replace("n=", "count="))
    again = cli_json(gateway, "template", "add", "greet", "--new-version", "--body", str(tmp_path / "greet2.sh"),
                     "--parameters", str(tmp_path / "greet.schema.yaml"))
    assert (again["version"], again["latest_version"]) == (2, 2)
    versions = cli_json(gateway, "template", "show", "greet", "--versions")
    assert [v["version"] for v in versions["items"]] == [2, 1]
    assert cli_json(gateway, "template", "show", "greet", "--version", "1")["body"] == BODY
    assert cli(gateway, "template", "rm", "greet").stdout == "deprecated greet\n"
    gone = cli(gateway, *submit, token="user")
    assert (gone.returncode, "deprecated" in gone.stderr) == (3, True)
    bad = cli(gateway, *submit[:6], "--param", "who=5", "--dry-run", token="user")
    assert bad.returncode == 3


def test_infra_patch(gateway, testbed, tmp_path):  # noqa: F811
    changed = cli_json(gateway, "infra", "patch", "tb-pbs", "--setting", "min_watch_period=1",
                       "--hostname", "cluster-b")
    assert (changed["hostname"], changed["settings"]["min_watch_period"]) == ("cluster-b", 1)
    assert changed["settings"]["mpi_launcher"] == ""  # untouched
    refused = cli(gateway, "infra", "patch", "tb-pbs", "--port", "1")
    assert refused.returncode == 3
    assert "cannot be reached" in refused.stderr
    assert cli_json(gateway, "infra", "show", "tb-pbs")["port"] == int(testbed["TESTBED_SSH_PORT"])
    pinned = cli(gateway, "infra", "patch", "tb-pbs", "--unpin-host-key")
    assert (pinned.returncode, testbed["TESTBED_HOST_KEY_FINGERPRINT"] in pinned.stdout) == (0, True)
    reset = cli_json(gateway, "infra", "patch", "tb-pbs", "--reset-setting", "min_watch_period")
    assert "min_watch_period" not in reset["settings"]
    usage = cli(gateway, "infra", "patch", "tb-pbs", "--host-key", "x", "--unpin-host-key")
    assert usage.returncode == 2
    assert json.loads(cli(gateway, "--json", "infra", "show", "tb-pbs").stdout)["hostname"] == "cluster-b"

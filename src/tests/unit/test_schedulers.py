"""Contract suite run against every scheduler adapter, plus every captured fixture parsed."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
from pathlib import Path

import pytest

from hpc.schedulers import (
    JobSpec,
    JobState,
    NativeDependency,
    Resources,
    SchedulerCommandError,
    SchedulerParseError,
    get_scheduler,
    parse_array,
)
from hpc.schedulers.pbs import PbsScheduler
from hpc.schedulers.sge import SgeScheduler
from hpc.schedulers.slurm import SlurmScheduler

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "schedulers"
NAMES = ["slurm", "pbs", "sge"]
OWN_PREFIX = {"slurm": "#SBATCH ", "pbs": "#PBS ", "sge": "#$ "}
CANCEL_PROGRAM = {"slurm": "scancel", "pbs": "qdel", "sge": "qdel"}
# The scheduler reads the script from stdin (else it is uploaded and passed by path).
SCRIPT_ON_STDIN = {"slurm": True, "pbs": False, "sge": True}
Q, R, C, F, X = JobState.QUEUED, JobState.RUNNING, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED
HOSTILE = ["it's", '"dq"', "$(touch /tmp/x)", "`id`", "a\nEOF\nb", ";rm -rf ~", "%x %j", "#not a comment"]


def fixture(sched: str, case: str) -> dict:
    return json.loads((FIXTURES / sched / f"{case}.json").read_text())


def all_fixtures() -> list[tuple[str, str]]:
    return sorted((p.parent.name, p.stem) for p in FIXTURES.glob("*/*.json"))


def parse(sched: str, case: str):
    fx = fixture(sched, case)
    return get_scheduler(sched), fx, (fx["exit_code"], fx["stdout"], fx["stderr"])


def bash_syntax_ok(text: str) -> bool:
    return subprocess.run(["bash", "-n"], input=text.encode(), capture_output=True, check=False).returncode == 0


def spec(**kwargs) -> JobSpec:
    base = dict(name="demo", job_dir="/home/u/jobs/j1", payload="/home/u/jobs/j1/payload.sh")
    base.update(kwargs)
    return JobSpec(**base)


@pytest.fixture(params=NAMES)
def sched(request):
    return get_scheduler(request.param)


# --- contract: every adapter -------------------------------------------------------------------------


def test_get_scheduler_names():
    assert isinstance(get_scheduler("slurm"), SlurmScheduler)
    assert isinstance(get_scheduler("pbs"), PbsScheduler)
    assert isinstance(get_scheduler("sge"), SgeScheduler)
    with pytest.raises(ValueError):
        get_scheduler("lsf")


def test_script_uses_only_own_directives(sched):
    script = sched.render_script(spec(resources=Resources(nodes=1, tasks=2, walltime_s=90, partition="debug")))
    lines = script.splitlines()
    others = tuple(prefix for name, prefix in OWN_PREFIX.items() if name != sched.name)
    assert lines[0] == "#!/bin/bash"
    assert any(line.startswith(OWN_PREFIX[sched.name]) for line in lines)
    assert [line for line in lines if line.startswith(others)] == []
    assert bash_syntax_ok(script) is True


def test_directives_come_before_the_first_command(sched):
    # sbatch and qsub stop reading directives at the first non-comment line.
    lines = sched.render_script(spec()).splitlines()
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    last_directive = max(i for i, line in enumerate(lines) if line.startswith(OWN_PREFIX[sched.name]))
    assert last_directive < first_command


def test_script_body_protocol(sched):
    script = sched.render_script(spec(env={"A": "1", "B_2": "x y"}, setup_lines=["module load x", "ulimit -s 1"]))
    lines = script.splitlines()
    payload_line = lines.index("bash /home/u/jobs/j1/payload.sh &")
    assert lines.index("module load x") < lines.index("ulimit -s 1") < payload_line
    assert lines.index("export A=1") < payload_line
    assert "export B_2='x y'" in lines
    assert "hpc_job_dir=/home/u/jobs/j1" in lines
    assert "trap hpc_on_term TERM" in lines
    assert 'wait "$hpc_child"' in lines
    assert "cd /home/u/jobs/j1 || exit 1" in lines


def test_workdir_defaults_to_job_dir_and_can_be_set(sched):
    assert "cd /scratch/w || exit 1" in sched.render_script(spec(workdir="/scratch/w")).splitlines()


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_env_values_are_one_shell_word(sched, value):
    script = sched.render_script(spec(env={"V": value}))
    assert bash_syntax_ok(script) is True
    body = script[script.index("export V=") :]
    line = body[: body.index("\nbash ")]
    assert shlex.split(line.removeprefix("export ")) == [f"V={value}"]


@pytest.mark.parametrize("bad", ["1A", "A-B", "A B", "A=B", "", "$(x)", "A\nB"])
def test_env_names_are_validated(bad):
    with pytest.raises(ValueError):
        spec(env={bad: "v"})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("my job $(touch /tmp/x)", "myjobtouchtmpx"),
        ("-rf", "rf"),
        ("..x", "x"),
        ("`id`;\nEOF", "idEOF"),
        ("", "job"),
        ("$$$", "job"),
        ("a" * 100, "a" * 64),
        ("ok.name_1-2", "ok.name_1-2"),
    ],
)
def test_job_name_is_sanitized(sched, name, expected):
    lines = sched.render_script(spec(name=name)).splitlines()
    line = {"slurm": f"#SBATCH --job-name={expected}", "pbs": f"#PBS -N {expected}", "sge": f"#$ -N {expected}"}
    assert line[sched.name] in lines


def test_submit_command_keeps_id_in_submit_out(sched):
    command, stdin = sched.submit_command(spec(), "/home/u/jobs/j1/job.sh")
    assert command.startswith("cd /home/u/jobs/j1 && printf '%s\\n' ")
    assert " > submit.cmd && (" in command
    assert "> submit.out; rc=$?; cat submit.out; exit $rc)" in command
    assert bash_syntax_ok(command) is True
    if SCRIPT_ON_STDIN[sched.name]:
        assert stdin == sched.render_script(spec()).encode()
    else:
        assert stdin is None
        assert command.endswith("/home/u/jobs/j1/job.sh > submit.out; rc=$?; cat submit.out; exit $rc)")


def test_status_command_is_one_command_for_many_ids(sched):
    command = sched.status_command(["1", "2", "3"])
    expected = {
        "slurm": [
            "squeue",
            "-r",
            "-h",
            "-t",
            "all",
            "-j",
            "1,2,3",
            "-O",
            "JobArrayID:|,State:|,exit_code:|,StartTime:|,EndTime:|,Reason:|",
        ],
        "pbs": ["qstat", "-f", "1", "2", "3"],
    }
    if sched.name == "sge":
        # One qstat for all; the accounting file only for the ids it no longer lists (test_sge_status_command_*).
        assert command.count("qstat -xml") == 1
        assert "for j in 1 2 3; do" in command
    else:
        assert shlex.split(command) == expected[sched.name]
    assert bash_syntax_ok(command) is True


@pytest.mark.parametrize("bad", ["1;rm -rf ~", "$(id)", "1 2", "", "-1", "1,2"])
def test_ids_are_validated(sched, bad):
    with pytest.raises(ValueError):
        sched.status_command([bad])
    with pytest.raises(ValueError):
        sched.cancel_command(["1", bad])


def test_no_ids_is_an_error(sched):
    with pytest.raises(ValueError):
        sched.status_command([])


def test_cancel_command(sched):
    command = sched.cancel_command(["4", "5"])
    assert shlex.split(command) == [CANCEL_PROGRAM[sched.name], "4", "5"]


def test_telemetry_command_is_valid_shell(sched):
    assert bash_syntax_ok(sched.telemetry_command()) is True


@pytest.mark.parametrize("stdout", ["", "garbage\n", "@@hpc-rc=0\n"])
def test_telemetry_without_all_sections_is_a_parse_error(sched, stdout):
    with pytest.raises(SchedulerParseError):
        sched.parse_telemetry(0, stdout, "")


def test_submit_refusal_carries_scheduler_message(sched):
    with pytest.raises(SchedulerCommandError) as err:
        sched.parse_submit(1, "", "something went wrong\n")
    assert err.value.message == "something went wrong"


def test_submit_without_id_is_refused(sched):
    with pytest.raises(SchedulerCommandError):
        sched.parse_submit(0, "Submitted nothing\n", "")


def test_submit_marker_file_reconciles_with_parse_submit(sched):
    # A gateway that crashed after submitting re-reads submit.out and parses it with rc 0.
    content = fixture(sched.name, "submit_ok")["stdout"]
    assert sched.parse_submit(0, content, "") == content.strip()


# --- every fixture -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("sched_name", "case"), all_fixtures())
def test_fixture_is_well_formed(sched_name, case):
    fx = fixture(sched_name, case)
    assert sorted(k for k in fx if k in ("command", "stdout", "stderr", "exit_code", "captured")) == [
        "captured",
        "command",
        "exit_code",
        "stderr",
        "stdout",
    ]
    assert fx["captured"].startswith(("testbed ", "documented: "))
    assert isinstance(fx["exit_code"], int)


@pytest.mark.parametrize(("sched_name", "case"), [f for f in all_fixtures() if f[1].startswith("status_")])
def test_every_status_fixture_parses_or_is_unusable(sched_name, case):
    sched, fx, result = parse(sched_name, case)
    if "controller_down" in case:
        with pytest.raises(SchedulerParseError):
            sched.parse_status(*result, fx["ids"])
    else:
        found = sched.parse_status(*result, fx["ids"])
        assert set(found) <= set(fx["ids"])
        assert all(status.scheduler_id == job_id for job_id, status in found.items())


@pytest.mark.parametrize(("sched_name", "case"), [f for f in all_fixtures() if f[1].startswith("telemetry_")])
def test_every_telemetry_fixture_parses_or_is_unusable(sched_name, case):
    sched, fx, result = parse(sched_name, case)
    if "controller_down" in case:
        with pytest.raises(SchedulerParseError):
            sched.parse_telemetry(*result)
        return
    parts = sched.parse_telemetry(*result)
    assert parts != []
    for p in parts:
        assert 0 <= p.avail_nodes <= p.total_nodes
        assert 0 <= p.avail_cpus <= p.total_cpus


@pytest.mark.parametrize(
    ("sched_name", "case", "expected"),
    [
        ("slurm", "status_queued", {"ok": JobState.QUEUED, "fail3": JobState.QUEUED}),
        ("slurm", "status_running", {"timeout": JobState.RUNNING}),
        ("slurm", "status_running_2", {"cancel": JobState.RUNNING}),
        ("slurm", "status_cancelled_queued", {"cancelq": JobState.CANCELLED}),
        ("slurm", "status_cancelled_running", {"cancel": JobState.CANCELLED}),
        ("slurm", "status_timeout", {"timeout": JobState.TIMEOUT}),
        ("slurm", "status_completed", {"ok": JobState.COMPLETED}),
        ("slurm", "status_failed", {"fail3": JobState.FAILED}),
        (
            "slurm",
            "status_mixed_unknown",
            {
                "ok": JobState.COMPLETED,
                "fail3": JobState.FAILED,
                "timeout": JobState.TIMEOUT,
                "cancel": JobState.CANCELLED,
            },
        ),
        ("slurm", "status_single_unknown", {}),
        # The Torque wrapper prints every ended job as "C" without an exit status: reported absent.
        ("pbs", "status_queued", {"ok": JobState.QUEUED, "fail3": JobState.QUEUED}),
        ("pbs", "status_running", {"timeout": JobState.RUNNING}),
        ("pbs", "status_running_2", {"cancel": JobState.RUNNING}),
        ("pbs", "status_cancelled_queued", {}),
        ("pbs", "status_cancelled_running", {}),
        ("pbs", "status_timeout", {}),
        ("pbs", "status_completed", {}),
        ("pbs", "status_failed", {}),
        ("pbs", "status_mixed_unknown", {}),
        ("pbs", "status_single_unknown", {}),
        # Grid Engine: qstat while queued/running, then the accounting record of each ended job.
        ("sge", "status_queued", {"ok": JobState.QUEUED, "fail3": JobState.QUEUED}),
        ("sge", "status_running", {"timeout": JobState.RUNNING}),
        ("sge", "status_running_2", {"cancel": JobState.RUNNING}),
        ("sge", "status_cancelled_queued", {}),  # deleted before it ran: no accounting record
        ("sge", "status_cancelled_running", {"cancel": JobState.FAILED}),  # failed 100, 137: the service's cancel
        ("sge", "status_timeout", {"timeout": JobState.TIMEOUT}),
        ("sge", "status_completed", {"ok": JobState.COMPLETED}),
        ("sge", "status_failed", {"fail3": JobState.FAILED}),
        (
            "sge",
            "status_mixed_unknown",
            {
                "ok": JobState.COMPLETED,
                "fail3": JobState.FAILED,
                "timeout": JobState.TIMEOUT,
                "cancel": JobState.FAILED,
            },
        ),
        ("sge", "status_single_unknown", {}),
        ("sge", "status_error_state", {"error": JobState.QUEUED}),
        (
            "pbs",
            "status_pbspro_history",
            {
                "ok": JobState.COMPLETED,
                "fail3": JobState.FAILED,
                "walltime": JobState.TIMEOUT,
                "killed": JobState.CANCELLED,
                "queued": JobState.QUEUED,
                "running": JobState.RUNNING,
                "held": JobState.QUEUED,
                "moved": JobState.UNKNOWN,
                "mem": JobState.FAILED,
            },
        ),
        (
            "pbs",
            "status_pbspro_json",
            {
                "ok": JobState.COMPLETED,
                "fail3": JobState.FAILED,
                "walltime": JobState.TIMEOUT,
                "killed": JobState.CANCELLED,
                "queued": JobState.QUEUED,
                "running": JobState.RUNNING,
            },
        ),
        (
            "pbs",
            "status_torque_completed",
            {
                "ok": JobState.COMPLETED,
                "fail3": JobState.FAILED,
                "walltime": JobState.TIMEOUT,
                "killed": JobState.FAILED,
                "exiting": JobState.RUNNING,
                "waiting": JobState.QUEUED,
            },
        ),
    ],
)
def test_status_fixture_states(sched_name, case, expected):
    sched, fx, result = parse(sched_name, case)
    found = sched.parse_status(*result, fx["ids"])
    assert {role: found[job_id].state for role, job_id in fx["roles"].items() if job_id in found} == expected
    assert "999999" not in found


@pytest.mark.parametrize(
    ("sched_name", "case", "role", "exit_code"),
    [
        ("slurm", "status_completed", "ok", 0),
        ("slurm", "status_failed", "fail3", 3),
        ("slurm", "status_timeout", "timeout", 143),
        ("slurm", "status_cancelled_running", "cancel", 143),
        ("slurm", "status_cancelled_queued", "cancelq", None),
        ("pbs", "status_pbspro_history", "ok", 0),
        ("pbs", "status_pbspro_history", "fail3", 3),
        ("pbs", "status_pbspro_history", "walltime", -29),
        ("pbs", "status_pbspro_history", "killed", 143),
        ("pbs", "status_pbspro_json", "fail3", 3),
        ("pbs", "status_torque_completed", "walltime", -11),
        ("pbs", "status_torque_completed", "killed", 137),
        ("sge", "status_completed", "ok", 0),
        ("sge", "status_failed", "fail3", 3),
        ("sge", "status_timeout", "timeout", 137),
        ("sge", "status_cancelled_running", "cancel", 137),
        ("sge", "status_queued", "ok", None),
    ],
)
def test_status_fixture_exit_codes(sched_name, case, role, exit_code):
    sched, fx, result = parse(sched_name, case)
    assert sched.parse_status(*result, fx["ids"])[fx["roles"][role]].exit_code == exit_code


def test_slurm_status_fields():
    sched, fx, result = parse("slurm", "status_failed")
    status = sched.parse_status(*result, fx["ids"])[fx["roles"]["fail3"]]
    assert (status.native_state, status.reason) == ("FAILED", "NonZeroExitCode")
    assert status.start_time is not None
    assert status.end_time is not None


def test_slurm_queued_job_has_no_exit_code_nor_start_time():
    sched, fx, result = parse("slurm", "status_queued")
    status = sched.parse_status(*result, fx["ids"])[fx["roles"]["ok"]]
    assert (status.native_state, status.exit_code, status.start_time, status.end_time) == ("PENDING", None, None, None)
    assert status.reason == "Resources"


def test_pbspro_times_and_reason():
    sched, fx, result = parse("pbs", "status_pbspro_history")
    found = sched.parse_status(*result, fx["ids"])
    ok, wall = found[fx["roles"]["ok"]], found[fx["roles"]["walltime"]]
    assert (ok.start_time, ok.end_time) == ("Wed Nov 25 02:25:01 2026", "Wed Nov 25 02:25:02 2026")
    assert wall.reason == "exit status -29"


def test_pbs_id_with_longer_server_suffix_maps_back():
    sched = PbsScheduler()
    found = sched.parse_status(0, "Job Id: 42.srv.example.org\n    job_state = R\n", "", ["42.srv"])
    assert found["42.srv"].state is JobState.RUNNING


def test_unknown_native_state_is_kept_and_logged_not_raised(caplog):
    sched = SlurmScheduler()
    out = "1|WIBBLE|0|N/A|N/A|None|\n2|RUNNING|0|2026-11-25T02:00:00|NONE|None|\n"
    with caplog.at_level(logging.WARNING):
        found = sched.parse_status(0, out, "", ["1", "2"])
    assert (found["1"].state, found["1"].native_state) == (JobState.UNKNOWN, "WIBBLE")
    assert found["2"].state is JobState.RUNNING
    assert "WIBBLE" in caplog.text


def test_pbs_unknown_state_and_odd_exit_status_do_not_abort(caplog):
    out = (
        "Job Id:\t1\n\tjob_state = U\n\n"
        "Job Id:\t2\n\tjob_state = F\n\tExit_status = weird\n\n"
        "Job Id:\t3\n\tjob_state = R\n"
    )
    with caplog.at_level(logging.WARNING):
        found = PbsScheduler().parse_status(0, out, "", ["1", "2", "3"])
    assert {k: v.state for k, v in found.items()} == {"1": JobState.UNKNOWN, "3": JobState.RUNNING}
    assert "weird" in caplog.text


def test_slurm_odd_line_is_skipped(caplog):
    out = "garbage line\n2|RUNNING|0|2026-11-25T02:00:00|NONE|None|\n"
    found = SlurmScheduler().parse_status(0, out, "", ["2"])
    assert list(found) == ["2"]


@pytest.mark.parametrize(
    ("sched_name", "stdout"),
    [("slurm", "this is not squeue output\n"), ("pbs", "this is not qstat output\n"), ("pbs", '{"Jobs": 3')],
)
def test_unusable_status_output_raises(sched_name, stdout):
    with pytest.raises(SchedulerParseError):
        get_scheduler(sched_name).parse_status(0, stdout, "", ["1"])


def test_slurm_reason_with_commas_and_colons():
    out = "5|PENDING|0|N/A|N/A|ReqNodeNotAvail, UnavailableNodes:localhost|\n"
    assert SlurmScheduler().parse_status(0, out, "", ["5"])["5"].reason == "ReqNodeNotAvail, UnavailableNodes:localhost"


# --- submit fixtures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sched_name", "case", "job_id"),
    [("pbs", "submit_pbspro_ok", "123.pbsserver")],
)
def test_submit_documented_ids(sched_name, case, job_id):
    sched, _, result = parse(sched_name, case)
    assert sched.parse_submit(*result) == job_id


@pytest.mark.parametrize("sched_name", NAMES)
def test_submit_ok_fixture(sched_name):
    sched, fx, result = parse(sched_name, "submit_ok")
    assert sched.parse_submit(*result) == fx["stdout"].strip()
    assert sched.parse_submit(*result).isdigit() is True


def test_slurm_parsable_with_cluster_suffix():
    assert SlurmScheduler().parse_submit(0, "123;cluster1\n", "") == "123"


@pytest.mark.parametrize(
    ("sched_name", "case", "message"),
    [
        (
            "slurm",
            "submit_bad_partition",
            "sbatch: error: invalid partition specified: nosuch\n"
            "sbatch: error: Batch job submission failed: Invalid partition name specified",
        ),
        (
            "slurm",
            "submit_over_limit",
            "sbatch: error: Batch job submission failed: More processors requested than permitted",
        ),
        (
            "slurm",
            "submit_controller_down",
            "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
        ),
        (
            "pbs",
            "submit_bad_partition",
            "sbatch: error: invalid partition specified: nosuch\n"
            "sbatch: error: Batch job submission failed: Invalid partition name specified",
        ),
        (
            "pbs",
            "submit_over_limit",
            "sbatch: error: Batch job submission failed: More processors requested than permitted",
        ),
        ("pbs", "submit_pbspro_bad_queue", "qsub: Unknown queue"),
        (
            "sge",
            "submit_bad_partition",
            'Unable to run job: Job was rejected because job requests unknown queue "nosuch"',
        ),
        ("sge", "submit_over_limit", "Unable to run job: error: no suitable queues"),
        (
            "sge",
            "submit_controller_down",
            "error: commlib error: got select error (Connection refused)\n"
            'Unable to run job: unable to send message to qmaster using port 6444 on host "vm": got send error',
        ),
    ],
)
def test_submit_refusals(sched_name, case, message):
    sched, _, result = parse(sched_name, case)
    with pytest.raises(SchedulerCommandError) as err:
        sched.parse_submit(*result)
    assert err.value.message == message


def test_slurm_hostile_partition_reaches_sbatch_verbatim():
    # Captured: sbatch's #SBATCH tokenizer undoes quote() exactly, so the partition comes back unchanged.
    sched, _, result = parse("slurm", "submit_hostile_partition")
    with pytest.raises(SchedulerCommandError) as err:
        sched.parse_submit(*result)
    assert (
        err.value.message.splitlines()[0] == 'sbatch: error: invalid partition specified: it\'s x#y "z" $(id) `id`;rm'
    )


# --- cancel fixtures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sched_name", "case"),
    [(s, c) for s in NAMES for c in ("cancel_running", "cancel_queued", "cancel_unknown", "cancel_finished")]
    + [("pbs", "cancel_pbspro_unknown")],
)
def test_cancel_fixtures_are_not_errors(sched_name, case):
    sched, _, result = parse(sched_name, case)
    assert sched.parse_cancel(*result) is None


@pytest.mark.parametrize(
    ("sched_name", "stderr", "stdout"),
    [
        ("slurm", "scancel: error: Unable to contact slurm controller (connect failure)\n", ""),
        ("pbs", "", "qdel: Kill job error on job id 5: Access/permission denied\n"),
        ("pbs", "qdel: Unauthorized Request  5.server\n", ""),
    ],
)
def test_cancel_real_errors(sched_name, stderr, stdout):
    with pytest.raises(SchedulerCommandError) as err:
        get_scheduler(sched_name).parse_cancel(1, stdout, stderr)
    assert err.value.message == (stderr or stdout).strip()


def test_slurm_verbose_gone_message_is_not_an_error():
    SlurmScheduler().parse_cancel(1, "", "scancel: error: Kill job error on job id 9999: Invalid job id specified\n")


# --- telemetry fixtures ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["telemetry_busy", "telemetry_after"])
def test_slurm_telemetry_captured(case):
    sched, fx, result = parse("slurm", case)
    (debug,) = sched.parse_telemetry(*result)
    assert (debug.name, debug.total_nodes, debug.total_cpus) == ("debug", 1, 2)
    assert (debug.running_jobs, debug.queued_jobs) == (fx["stdout"].count("|RUNNING"), fx["stdout"].count("|PENDING"))


@pytest.mark.parametrize("case", ["telemetry_busy", "telemetry_after"])
def test_pbs_telemetry_captured(case):
    sched, fx, result = parse("pbs", case)
    (debug,) = sched.parse_telemetry(*result)
    assert (debug.name, debug.total_nodes, debug.total_cpus) == ("debug", 1, 2)
    assert (debug.running_jobs, debug.queued_jobs) == (fx["stdout"].count(" R debug"), fx["stdout"].count(" Q debug"))
    free = "state = free" in fx["stdout"]
    assert (debug.avail_nodes, debug.avail_cpus) == ((1, 2) if free else (0, 0))


def test_slurm_telemetry_busy_values():
    sched, _, result = parse("slurm", "telemetry_busy")
    (debug,) = sched.parse_telemetry(*result)
    assert (debug.avail_nodes, debug.avail_cpus) == (0, 0)
    assert debug.running_jobs >= 2
    assert debug.queued_jobs >= 1


def test_slurm_telemetry_sums_lines_and_ignores_down_partitions():
    out = (
        "debug|up|1/1/0/2|3/5/0/8\nlong|down|0/4/0/4|0/16/0/16\ndebug|up|0/1/1/2|0/4/4/8\n@@hpc-rc=0\n"
        "debug|RUNNING\ndebug,long|PENDING\nlong|PENDING\nother|RUNNING\n@@hpc-rc=0\n"
    )
    parts = {p.name: p for p in SlurmScheduler().parse_telemetry(0, out, "")}
    assert vars(parts["debug"]) == dict(
        name="debug", total_nodes=4, avail_nodes=2, total_cpus=16, avail_cpus=9, running_jobs=1, queued_jobs=1
    )
    assert vars(parts["long"]) == dict(
        name="long", total_nodes=4, avail_nodes=0, total_cpus=16, avail_cpus=0, running_jobs=0, queued_jobs=2
    )


def test_pbspro_telemetry_documented():
    sched, _, result = parse("pbs", "telemetry_pbspro")
    parts = {p.name: vars(p) for p in sched.parse_telemetry(*result)}
    assert parts == {
        "workq": dict(
            name="workq", total_nodes=3, avail_nodes=1, total_cpus=24, avail_cpus=7, running_jobs=1, queued_jobs=2
        ),
        "gpuq": dict(
            name="gpuq", total_nodes=4, avail_nodes=2, total_cpus=40, avail_cpus=23, running_jobs=0, queued_jobs=0
        ),
    }


def test_torque_jobs_attribute_counts_used_cores():
    out = (
        "n1\n     state = free\n     np = 8\n     jobs = 0-1/12.srv,3/13.srv\n\n@@hpc-rc=0\n"
        "Queue Max\n----- ---\nbatch 0\n@@hpc-rc=0\n@@hpc-rc=153\n"
    )
    (batch,) = PbsScheduler().parse_telemetry(0, out, "")
    assert (batch.total_cpus, batch.avail_cpus, batch.running_jobs) == (8, 5, 0)


def test_pbs_telemetry_failed_part_is_unusable():
    with pytest.raises(SchedulerParseError):
        PbsScheduler().parse_telemetry(0, "@@hpc-rc=1\n@@hpc-rc=0\n@@hpc-rc=0\n", "pbsnodes: cannot connect\n")


# --- Grid Engine -------------------------------------------------------------------------------------


def test_sge_status_fields():
    sched, fx, result = parse("sge", "status_timeout")
    status = sched.parse_status(*result, fx["ids"])[fx["roles"]["timeout"]]
    assert (status.native_state, status.reason) == (
        "failed=37",
        "qmaster enforced h_rt, h_cpu, or h_vmem limit (failed 37)",
    )
    assert int(status.end_time) - int(status.start_time) >= 60  # epoch seconds, h_rt 00:01:00
    running = parse("sge", "status_running")
    assert running[0].parse_status(*running[2], running[1]["ids"])[running[1]["roles"]["timeout"]].start_time


def accounting_line(
    job: str, failed: str, exit_status: str, category: str = "NONE", wallclock: str = "5", owner: str = "me"
) -> str:
    """An accounting(5) record as Son of Grid Engine 8.1.9 writes it (45 fields; captured on the testbed)."""
    fields = [
        "all.q",
        "vm",
        "grp",
        owner,
        "name",
        job,
        "sge",
        "0",
        "1796138304",
        "1796138304",
        "1796138308",
        failed,
        exit_status,
        wallclock,
        *["0"] * 17,
        "NONE",
        "defaultdepartment",
        "NONE",
        "1",
        "0",
        "0.0",
        "0.0",
        "0.0",
        category,
        "0.0",
        "NONE",
        "0.0",
        "0",
        "0",
    ]
    return ":".join(fields) + "\n"


def test_sge_status_command_reads_accounting_only_for_ids_qstat_does_not_list(tmp_path):
    # The command's shell logic, run by bash with a stand-in qstat and a cell's accounting file.
    (tmp_path / "bin").mkdir()
    qstat = tmp_path / "bin" / "qstat"
    qstat.write_text(
        "#!/bin/sh\necho '<job_info><job_list><JB_job_number>7</JB_job_number><state>r</state>"
        "</job_list></job_info>'\n"
    )
    qstat.chmod(0o755)
    me = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "c" / "common").mkdir(parents=True)
    (tmp_path / "c" / "common" / "accounting").write_text(
        "# Version: 8.1.9\n"
        + accounting_line("7", "0", "1", owner=me)
        + accounting_line("8", "0", "2", owner="other")
        + accounting_line("70", "0", "3", owner=me)
        + accounting_line("8", "0", "4", owner=me)
    )
    command = SgeScheduler().status_command(["7", "70", "8", "9"])
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "SGE_ROOT": str(tmp_path), "SGE_CELL": "c"}
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=False, env=env)
    found = SgeScheduler().parse_status(proc.returncode, proc.stdout, proc.stderr, ["7", "70", "8", "9"])
    # 7 is still in qstat (its old record is ignored), 8's other owner's record too, 9 has none.
    assert {k: (v.state, v.exit_code) for k, v in found.items()} == {
        "7": (JobState.RUNNING, None),
        "70": (JobState.FAILED, 3),
        "8": (JobState.FAILED, 4),
    }


def test_sge_status_command_without_accounting_file_reports_ended_jobs_absent(tmp_path):
    (tmp_path / "qstat").write_text("#!/bin/sh\necho '<job_info/>'\n")
    (tmp_path / "qstat").chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SGE_ROOT": str(tmp_path / "none")}
    proc = subprocess.run(
        ["bash", "-c", SgeScheduler().status_command(["5"])], capture_output=True, text=True, check=False, env=env
    )
    assert SgeScheduler().parse_status(proc.returncode, proc.stdout, proc.stderr, ["5"]) == {}


@pytest.mark.parametrize(
    ("record", "state", "exit_code"),
    [
        (accounting_line("9", "0", "0"), JobState.COMPLETED, 0),
        (accounting_line("9", "0", "3"), JobState.FAILED, 3),
        (accounting_line("9", "37", "137", "-l h_rt=5", "6"), JobState.TIMEOUT, 137),
        # Killed at a limit before h_rt was reached (h_vmem or h_cpu): not a timeout.
        (accounting_line("9", "37", "137", "-l h_rt=60,h_vmem=1G", "6"), JobState.FAILED, 137),
        # A category holding ":" still leaves the fields after it in place.
        (accounting_line("9", "37", "137", "-l h_rt=5 -ac a=b:c", "6"), JobState.TIMEOUT, 137),
        (accounting_line("9", "100", "137"), JobState.FAILED, 137),
        # The shepherd failed before the job: the payload never ran, its exit code is unknown.
        (accounting_line("9", "26", "0"), JobState.FAILED, None),
    ],
)
def test_sge_accounting_outcomes(record, state, exit_code):
    out = f"<job_info/>\n@@hpc-rc=0\n{record}@@hpc-rc=0\n"
    status = SgeScheduler().parse_status(0, out, "", ["9"])["9"]
    assert (status.state, status.exit_code) == (state, exit_code)


def test_sge_reused_job_number_takes_the_last_accounting_record():
    out = f"<job_info/>\n@@hpc-rc=0\n{accounting_line('9', '0', '5')}{accounting_line('9', '0', '0')}@@hpc-rc=0\n"
    assert SgeScheduler().parse_status(0, out, "", ["9"])["9"].exit_code == 0


def test_sge_failed_accounting_read_reports_nothing_ended():
    out = f"<job_info/>\n@@hpc-rc=0\nawk: cannot open file\n@@hpc-rc=2\n"
    assert SgeScheduler().parse_status(0, out, "", ["9"]) == {}


def test_sge_unknown_state_and_odd_accounting_do_not_abort(caplog):
    out = (
        "<job_info><job_list><JB_job_number>1</JB_job_number><state>zz</state></job_list>"
        "<job_list><JB_job_number>2</JB_job_number><state>r</state></job_list></job_info>\n@@hpc-rc=0\n"
        + accounting_line("3", "weird", "0")
        + "short:line\n@@hpc-rc=0\n"
    )
    with caplog.at_level(logging.WARNING):
        found = SgeScheduler().parse_status(0, out, "", ["1", "2", "3"])
    assert {k: v.state for k, v in found.items()} == {
        "1": JobState.UNKNOWN,
        "2": JobState.RUNNING,
        "3": JobState.UNKNOWN,
    }
    assert "zz" in caplog.text


@pytest.mark.parametrize("stdout", ["", "not xml\n@@hpc-rc=0\n", "<job_info>\n@@hpc-rc=0\n"])
def test_sge_unusable_status_output_raises(stdout):
    with pytest.raises(SchedulerParseError):
        SgeScheduler().parse_status(0, stdout, "", ["1"])


def test_sge_array_task_running_wins_over_pending_rest():
    out = (
        "<job_info><job_list><JB_job_number>4</JB_job_number><state>r</state></job_list>"
        "<job_list><JB_job_number>4</JB_job_number><state>qw</state></job_list></job_info>\n@@hpc-rc=0\n"
    )
    assert SgeScheduler().parse_status(0, out, "", ["4"])["4"].state is JobState.RUNNING


@pytest.mark.parametrize(("case", "busy"), [("telemetry_busy", True), ("telemetry_after", False)])
def test_sge_telemetry_captured(case, busy):
    sched, fx, result = parse("sge", case)
    (queue,) = sched.parse_telemetry(*result)
    assert (queue.name, queue.total_nodes, queue.total_cpus) == ("all.q", 1, 2)
    assert (queue.avail_nodes, queue.avail_cpus) == ((0, 0) if busy else (1, 2))
    assert queue.running_jobs == (1 if busy else 0)  # the 2-slot time-limit job fills the host
    assert queue.queued_jobs == fx["stdout"].count("<state>qw</state>") + fx["stdout"].count("<state>Eqw</state>")


def test_sge_telemetry_counts_queue_states_and_requested_queues():
    out = """<job_info><queue_info>
      <Queue-List><name>a.q@n1</name><slots_used>1</slots_used><slots_resv>0</slots_resv><slots_total>4</slots_total>
        <job_list state="running"><JB_job_number>1</JB_job_number></job_list></Queue-List>
      <Queue-List><name>a.q@n2</name><slots_used>0</slots_used><slots_resv>0</slots_resv><slots_total>4</slots_total>
        <state>d</state></Queue-List>
      <Queue-List><name>b.q@n1</name><slots_used>0</slots_used><slots_resv>0</slots_resv><slots_total>2</slots_total>
      </Queue-List></queue_info>
      <job_info><job_list state="pending"><JB_job_number>2</JB_job_number><hard_req_queue>b.q</hard_req_queue>
      </job_list><job_list state="pending"><JB_job_number>3</JB_job_number></job_list></job_info></job_info>"""
    parts = {p.name: vars(p) for p in SgeScheduler().parse_telemetry(0, out, "")}
    assert parts == {
        "a.q": dict(
            name="a.q", total_nodes=2, avail_nodes=0, total_cpus=8, avail_cpus=3, running_jobs=1, queued_jobs=1
        ),
        "b.q": dict(
            name="b.q", total_nodes=1, avail_nodes=1, total_cpus=2, avail_cpus=2, running_jobs=0, queued_jobs=2
        ),
    }


def test_sge_cancel_message_names_both_lines():
    sched, _, result = parse("sge", "cancel_controller_down")
    with pytest.raises(SchedulerCommandError) as err:
        sched.parse_cancel(*result)
    assert "unable to send message to qmaster" in err.value.message


# --- contract: arrays and dependencies ---------------------------------------------------------------

ARRAY_VARIABLE = {"slurm": ("SLURM_ARRAY_TASK_ID", 0), "pbs": ("PBS_ARRAYID", 0), "sge": ("SGE_TASK_ID", 1)}


def array_spec(text: str = "0-9:2%3", **kwargs) -> JobSpec:
    return spec(array=parse_array(text, 10000), **kwargs)


def submitted_text(sched, job: JobSpec) -> str:
    """Everything the scheduler is given: the script and the submit command."""
    command, _ = sched.submit_command(job, "/home/u/jobs/j1/job.sh")
    return sched.render_script(job) + "\n" + command


def test_array_is_rendered_natively(sched):
    text = submitted_text(sched, array_spec())
    expected = {
        "slurm": ["#SBATCH --array=0-8:2%3"],
        "pbs": ["-t 0,2,4,6,8%3"],  # Torque's -t takes no step: the stepped range becomes a list
        "sge": ["#$ -t 1-9:2", "#$ -tc 3"],  # Grid Engine numbers tasks from 1
    }[sched.name]
    assert [part for part in expected if part in text] == expected
    assert bash_syntax_ok(sched.render_script(array_spec())) is True


def test_plain_job_has_no_array_or_dependency_options(sched):
    text = submitted_text(sched, spec())
    for word in ("--array", " -t ", "-tc", "-J ", "--dependency", "depend=", "-hold_jid", "HPC_ARRAY_TASK_ID"):
        assert word not in text


def test_pbs_pro_flavour_renders_j():
    pro = PbsScheduler("pbspro")
    command, _ = pro.submit_command(array_spec(), "/home/u/jobs/j1/job.sh")
    assert "-J 0-8:2%3" in command
    assert 'HPC_ARRAY_TASK_ID="${PBS_ARRAY_INDEX:-$SLURM_ARRAY_TASK_ID}"' in pro.render_script(array_spec())
    with pytest.raises(ValueError):
        pro.submit_command(array_spec("4"), "/home/u/jobs/j1/job.sh")  # PBS Pro arrays need two subjobs
    with pytest.raises(ValueError):
        PbsScheduler("lsf")


def test_torque_refuses_a_stepped_range_too_long_for_a_list():
    with pytest.raises(ValueError):
        PbsScheduler().submit_command(array_spec("0-9999:2"), "/home/u/jobs/j1/job.sh")


def test_get_scheduler_reads_the_pbs_flavour():
    assert get_scheduler("pbs").flavour == "torque"
    assert get_scheduler("pbs", {"pbs_flavour": "pbspro"}).flavour == "pbspro"


@pytest.mark.parametrize("index", [0, 3])
def test_task_runs_under_its_schedulers_variable(sched, tmp_path, index):
    """The rendered script, run by bash with the scheduler's task variable set: the payload sees the
    gateway's index and the task's files land under tasks/ and output/."""
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "payload.sh").write_text('echo "i=$HPC_ARRAY_TASK_ID n=$HPC_ARRAY_TASK_COUNT"; exit 4\n')
    job = JobSpec(name="t", job_dir=str(job_dir), payload=str(job_dir / "payload.sh"),
                  array=parse_array("0-9%2", 100))
    variable, offset = ARRAY_VARIABLE[sched.name]
    env = {"PATH": "/usr/bin:/bin", variable: str(index + offset), "SLURM_JOB_ID": "77", "JOB_ID": "77"}
    proc = subprocess.run(["bash", "-c", sched.render_script(job)], env=env, capture_output=True, timeout=20)
    assert proc.returncode == 4
    assert (job_dir / "output" / f"{index}.stdout").read_text() == f"i={index} n=10\n"
    assert (job_dir / "tasks" / f"{index}.exit_code").read_text() == "4\n"
    started, own = (job_dir / "tasks" / f"{index}.started").read_text().split()
    assert int(started) <= int((job_dir / "tasks" / f"{index}.ended").read_text())
    assert own == ("77" if sched.name != "sge" else f"77.{index + 1}")
    assert not (job_dir / "exit_code").exists()


def test_task_without_an_array_variable_stops(sched, tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "payload.sh").write_text("touch ran\n")
    job = JobSpec(name="t", job_dir=str(job_dir), payload=str(job_dir / "payload.sh"), array=parse_array("0-1", 9))
    env = {"PATH": "/usr/bin:/bin", "SGE_TASK_ID": "undefined"}
    proc = subprocess.run(["bash", "-c", sched.render_script(job)], env=env, cwd=tmp_path, capture_output=True)
    assert proc.returncode == 1
    assert b"no array task id" in proc.stderr
    assert sorted(p.name for p in job_dir.iterdir()) == ["payload.sh"]


def test_dependencies_are_rendered_natively(sched):
    deps = (NativeDependency("any", "11"), NativeDependency("any", "12"))
    text = submitted_text(sched, spec(dependencies=deps))
    expected = {"slurm": "#SBATCH --dependency=afterany:11:12", "pbs": "-W depend=afterany:11:12",
                "sge": "#$ -hold_jid 11,12"}[sched.name]
    assert expected in text


def test_ok_and_notok_where_the_scheduler_has_them(sched):
    deps = (NativeDependency("ok", "11"), NativeDependency("notok", "12"), NativeDependency("ok", "13"))
    if sched.name == "sge":
        assert sched.native_conditions == frozenset({"any"})
        with pytest.raises(ValueError):
            sched.render_script(spec(dependencies=deps))
        return
    expected = {"slurm": "--dependency=afterok:11:13,afternotok:12", "pbs": "-W depend=afterok:11:13,afternotok:12"}
    assert sched.dependency_option(deps) == expected[sched.name]


def test_torque_names_array_predecessors_with_array_types():
    deps = (NativeDependency("ok", "10[].srv", array=True), NativeDependency("ok", "11"))
    assert PbsScheduler().dependency_option(deps) == "-W depend=afterok:11,afterokarray:10[].srv"
    assert PbsScheduler("pbspro").dependency_option(deps) == "-W depend=afterok:10[].srv:11"


@pytest.mark.parametrize("bad", ["1;id", "$(id)", "1 2", ""])
def test_dependency_ids_are_validated(sched, bad):
    with pytest.raises(ValueError):
        sched.dependency_option([NativeDependency("any", bad)] if bad else [NativeDependency("any", "x")])


def test_status_reports_array_tasks_or_says_it_does_not(sched):
    assert sched.reports_array_tasks is (sched.name != "pbs")


# --- captured array and dependency outputs ---------------------------------------------------------------


@pytest.mark.parametrize(("sched_name", "expected"), [("slurm", "16103"), ("pbs", "16252"), ("sge", "96")])
def test_array_submission_output(sched_name, expected):
    sched, _, result = parse(sched_name, "submit_array")
    assert sched.parse_submit(*result) == expected


def tasks_of(sched_name: str, case: str, ids=None) -> dict:
    sched, fx, result = parse(sched_name, case)
    found = sched.parse_status(*result, ids or fx["ids"])
    return {job: {i: (t.state, t.native_state, t.exit_code) for i, t in (s.tasks or {}).items()}
            for job, s in found.items()}


def test_slurm_array_tasks():
    running = tasks_of("slurm", "status_array_running")
    assert running["16103"] == {0: (C, "COMPLETED", 0), 1: (F, "FAILED", 3), 2: (C, "COMPLETED", 0),
                                3: (C, "COMPLETED", 0)}
    assert running["16158"] == {0: (R, "RUNNING", None), 1: (Q, "PENDING", None), 2: (Q, "PENDING", None),
                                3: (Q, "PENDING", None)}
    sched, fx, result = parse("slurm", "status_array_running")
    waiting = sched.parse_status(*result, fx["ids"])["16158"]
    assert (waiting.state, waiting.tasks[1].reason) == (R, "JobArrayTaskLimit")
    assert tasks_of("slurm", "status_array_cancelled")["16158"] == {
        0: (X, "CANCELLED", 143), 1: (X, "CANCELLED", None), 2: (X, "CANCELLED", None), 3: (X, "CANCELLED", None)}


def test_sge_array_tasks_from_qstat_and_accounting():
    # Task numbers from 1 in Grid Engine are the gateway's indexes from 0.
    running = tasks_of("sge", "status_array_running")
    assert running["97"] == {0: (R, "r", None), 1: (Q, "qw", None), 2: (Q, "qw", None), 3: (Q, "qw", None)}
    assert running["96"] == {2: (R, "r", None), 3: (Q, "qw", None)}  # 0 and 1 had left qstat
    assert tasks_of("sge", "status_array_done")["96"] == {0: (C, "failed=0", 0), 1: (F, "failed=0", 3),
                                                        2: (C, "failed=0", 0), 3: (C, "failed=0", 0)}
    # qdel kills a running task (failed 100, SIGKILL); the tasks that never ran have no record.
    assert tasks_of("sge", "status_array_cancelled")["97"] == {0: (F, "failed=100", 137)}


def test_sge_status_command_looks_up_arrays_in_accounting():
    command = SgeScheduler().status_command(["5", "6"], arrays=["6"])
    assert 'gone=" 6 "' in command
    assert bash_syntax_ok(command) is True
    assert 'gone=" "' in SgeScheduler().status_command(["5", "6"])


def test_pbs_lists_only_the_arrays_own_record():
    sched, fx, result = parse("pbs", "status_array_running")
    found = sched.parse_status(*result, fx["ids"])
    assert {job: (s.state, s.tasks) for job, s in found.items()} == {"16252": (R, None), "16375": (Q, None)}


def test_pbs_pro_subjobs_are_tasks_of_their_array():
    stdout = ("Job Id: 10[].srv\n    job_state = B\n\nJob Id: 10[1].srv\n    job_state = R\n\n"
              "Job Id: 10[2].srv\n    job_state = Q\n")
    found = PbsScheduler("pbspro").parse_status(0, stdout, "", ["10[].srv"])
    assert found["10[].srv"].state is R
    assert {i: t.state for i, t in found["10[].srv"].tasks.items()} == {1: R, 2: Q}


def test_dependency_that_can_never_be_satisfied():
    sched, fx, result = parse("slurm", "status_dependency_waiting")
    waiting = sched.parse_status(*result, fx["ids"])["18569"]
    assert (waiting.state, waiting.reason, sched.never_satisfied(waiting)) == (Q, "Dependency", False)
    sched, fx, result = parse("slurm", "status_dependency_after_failure")
    never = sched.parse_status(*result, fx["ids"])["18569"]
    assert (never.state, never.reason, sched.never_satisfied(never)) == (Q, "DependencyNeverSatisfied", True)
    # The Torque wrapper shows such a job queued, without a reason; Grid Engine's hold is "any" only.
    for name, case, job_id, native in [("pbs", "status_dependency_after_failure", "18719", "Q"),
                                       ("sge", "status_dependency_waiting", "99", "hqw")]:
        sched, fx, result = parse(name, case)
        status = sched.parse_status(*result, fx["ids"])[job_id]
        assert (status.state, status.native_state, sched.never_satisfied(status)) == (Q, native, False)


@pytest.mark.parametrize(("sched_name", "option"), [("slurm", None), ("pbs", "-W depend=afterok:18424"),
                                                    ("sge", None)])
def test_dependency_submission_was_accepted(sched_name, option):
    sched, fx, result = parse(sched_name, "submit_dependency")
    assert sched.parse_submit(*result).isdigit()
    if option:
        assert option in fx["command"]


def test_pbs_subjob_polled_by_its_own_id():
    stdout = "Job Id: 10[3].srv\n    job_state = R\n"
    found = PbsScheduler("pbspro").parse_status(0, stdout, "", ["10[3].srv"])
    assert {job: s.state for job, s in found.items()} == {"10[3].srv": R}

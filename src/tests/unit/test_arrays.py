"""Arrays and dependencies, the pure parts: the array spec, the array-state rule, conditions, the hold
decision, and the poller's task decisions (the task-file reader runs in a real bash here)."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, UTC
from pathlib import Path

import pytest

from hpc.schedulers import JobState, NativeStatus
from hpc.schedulers.arrays import (
    MAX_INDEX,
    ArraySpec,
    ArraySpecError,
    array_state,
    condition_outcome,
    expand_ranges,
    index_runs,
    parse_array,
)
from hpc.services import job_arrays, job_dependencies
from hpc.services.job_arrays import TaskFiles, decide_task, needs_files, parse_task_line, read_command, summary

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "schedulers"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


# -- the array spec ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "indexes", "cap", "canonical"),
    [
        ("0-99", list(range(100)), None, "0-99"),
        ("0-99%10", list(range(100)), 10, "0-99%10"),
        ("1-9:2", [1, 3, 5, 7, 9], None, "1-9:2"),
        ("0-9:4%2", [0, 4, 8], 2, "0-8:4%2"),  # the end is normalized to the last index run
        ("7", [7], None, "7"),
        ("7%1", [7], 1, "7%1"),
        ("5-5", [5], None, "5"),
        ("0-3:1", [0, 1, 2, 3], None, "0-3"),
    ],
)
def test_array_specs(text, indexes, cap, canonical):
    spec = parse_array(text, 10000)
    assert list(spec.indexes()) == indexes
    assert spec.count == len(indexes)
    assert spec.cap == cap
    assert spec.text == canonical
    assert parse_array(spec.text, 10000) == ArraySpec(spec.start, spec.last, spec.step, spec.cap)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "START-END"),
        ("1,3,5", "START-END"),
        ("a-b", "START-END"),
        ("-1-5", "START-END"),
        ("0-", "START-END"),
        ("0-9%", "START-END"),
        ("0-9:2:3", "START-END"),
        ("0-9\n", "START-END"),
        (" 0-3", "START-END"),
        ("٣", "START-END"),  # a non-ASCII digit
        ("9-0", "start <= end"),
        ("0-9:0", "step"),
        ("0-9%0", "cap"),
        ("0-4000001", "end <="),
        ("12345678", "START-END"),  # more than 7 digits
        ("0-10000", "more than this gateway's limit of 10000"),
    ],
)
def test_bad_array_specs_say_what_is_wrong(text, words):
    with pytest.raises(ArraySpecError) as caught:
        parse_array(text, 10000)
    assert words in str(caught.value)


def test_array_cap_counts_tasks_not_indexes():
    assert parse_array(f"0-{MAX_INDEX}:{MAX_INDEX // 4}", 10).count == 5
    assert parse_array("0-19999:2", 10000).count == 10000


def test_array_membership():
    spec = parse_array("2-10:4", 100)
    assert [i for i in range(12) if i in spec] == [2, 6, 10]
    assert "2" not in spec


def test_index_runs_compress_and_expand_back():
    assert index_runs([]) == []
    assert index_runs([5]) == [(5, 5, 1)]
    assert index_runs([9, 1, 2, 3, 5, 7, 20, 3]) == [(1, 3, 1), (5, 9, 2), (20, 20, 1)]
    assert index_runs(range(0, 10000, 3)) == [(0, 9999, 3)]


@pytest.mark.parametrize(("text", "indexes"), [("5,6", [5, 6]), ("2-9:1", list(range(2, 10))), ("1-7:3", [1, 4, 7]),
                                               ("3", [3]), ("1-2,8", [1, 2, 8])])
def test_scheduler_task_lists(text, indexes):
    assert list(expand_ranges(text)) == indexes


@pytest.mark.parametrize("text", ["x", "5-2", "1-9:0", "1-4000000"])
def test_unreadable_or_huge_task_lists(text):
    with pytest.raises(ValueError):
        list(expand_ranges(text, limit=1000))


# -- the array-state rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "cancel", "state"),
    [
        ({"queued": 4}, False, "queued"),
        ({"queued": 3, "running": 1}, False, "running"),
        ({"queued": 3, "completed": 1}, False, "running"),  # a task ran: the array has started
        ({"completed": 4}, False, "completed"),
        ({"completed": 3, "failed": 1}, False, "failed"),
        ({"completed": 2, "timeout": 1, "failed": 1}, False, "failed"),
        ({"completed": 3, "timeout": 1}, False, "timeout"),
        ({"completed": 3, "cancelled": 1}, False, "cancelled"),
        ({"completed": 3, "unknown": 1}, False, "unknown"),
        ({"completed": 1, "failed": 1, "cancelled": 2}, True, "cancelled"),  # cancelled through the gateway
        ({"completed": 4}, True, "completed"),  # every task had completed before the cancel took effect
    ],
)
def test_array_state_rule(counts, cancel, state):
    assert array_state(counts, 4, cancel) == state


# -- dependency conditions and the hold ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "predecessor", "outcome"),
    [
        ("ok", "completed", True), ("ok", "failed", False), ("ok", "cancelled", False), ("ok", "timeout", False),
        ("ok", "unknown", False), ("ok", "running", None), ("ok", "held", None), ("ok", "submitting", None),
        ("notok", "completed", False), ("notok", "failed", True), ("notok", "cancelled", True),
        ("notok", "timeout", True), ("notok", "unknown", True), ("notok", "queued", None),
        ("any", "completed", True), ("any", "failed", True), ("any", "running", None),
    ],
)
def test_condition_outcome(condition, predecessor, outcome):
    assert condition_outcome(condition, predecessor) is outcome


def test_condition_must_be_known():
    with pytest.raises(ValueError):
        condition_outcome("afterok", "completed")


@pytest.mark.parametrize(
    ("condition", "same", "native", "mode"),
    [("ok", True, frozenset({"ok", "notok", "any"}), "native"), ("ok", False, frozenset({"ok"}), "gateway"),
     ("ok", True, frozenset({"any"}), "gateway"), ("any", True, frozenset({"any"}), "native")],
)
def test_mode_choice(condition, same, native, mode):
    assert job_dependencies.choose_mode(condition, same, native) == mode


def dep(position=0, condition="ok", mode="gateway", target_state="running", scheduler_id="12", target="t-1"):
    return {"position": position, "condition": condition, "mode": mode, "target_state": target_state,
            "target_scheduler_id": scheduler_id, "target_id": target}


def test_held_job_waits_for_a_gateway_dependency():
    decision = job_dependencies.decide("held", [dep()])
    assert (decision.release, decision.unsatisfiable, decision.satisfied) == (False, None, [])
    assert decision.reason == "waiting for job t-1 to end (after ok; it is running)"


def test_held_job_goes_once_native_predecessors_are_submitted():
    waiting = job_dependencies.decide("held", [dep(mode="native", target_state="submitting", scheduler_id="")])
    assert waiting.release is False
    assert "to be submitted" in waiting.reason
    assert job_dependencies.decide("held", [dep(mode="native", target_state="running")]).release is True


def test_satisfied_and_unsatisfiable():
    decision = job_dependencies.decide("held", [dep(0, "any", target_state="failed"),
                                                dep(1, "ok", target_state="completed")])
    assert (decision.satisfied, decision.release) == ([0, 1], True)
    decision = job_dependencies.decide("held", [dep(0, "any", target_state="failed"),
                                                dep(1, "ok", target_state="failed", target="t-2")])
    assert decision.unsatisfiable["target_id"] == "t-2"
    assert job_dependencies.unsatisfiable_reason(decision.unsatisfiable) == (
        "dependency on job t-2 (after ok) can never be satisfied: that job ended failed")
    missing = job_dependencies.decide("queued", [dep(target_state=None)])
    assert "no longer exists" in job_dependencies.unsatisfiable_reason(missing.unsatisfiable)


def test_submitted_job_only_records_outcomes():
    decision = job_dependencies.decide("queued", [dep(mode="native", target_state="completed")])
    assert (decision.satisfied, decision.release, decision.reason) == ([0], False, None)


# -- the task-file reader, in a real shell -----------------------------------------------------------------


def test_read_command_prints_started_tasks_only(tmp_path):
    tasks = tmp_path / "job" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "0.started").write_text("1796142421 16105\n")
    (tasks / "0.ended").write_text("1796142424\n")
    (tasks / "0.exit_code").write_text("3\n")
    (tasks / "4.started").write_text("1796142430 16110\n")  # running
    (tasks / "5.exit_code").write_text("0\n")  # no started file: not reported
    command = read_command(str(tmp_path / "job"), [0, 2, 4, 5, 6])
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["t 0|1796142421 16105|1796142424|3", "t 4|1796142430 16110||"]
    parsed = dict(parse_task_line(line) for line in out.splitlines())
    assert parsed[0] == TaskFiles(datetime.fromtimestamp(1796142421, UTC), "16105",
                                  datetime.fromtimestamp(1796142424, UTC), 3)
    assert parsed[4] == TaskFiles(datetime.fromtimestamp(1796142430, UTC), "16110", None, None)


def test_read_command_with_no_task_directory_prints_nothing(tmp_path):
    command = read_command(str(tmp_path / "never submitted"), range(0, 10000))
    assert len(command) < 500  # one run for ten thousand indexes
    assert subprocess.run(["bash", "-c", command], capture_output=True, text=True).stdout == ""


@pytest.mark.parametrize("sched", ["slurm", "pbs", "sge"])
def test_task_files_read_on_the_testbed(sched):
    fx = json.loads((FIXTURES / sched / "tasks_read_array.json").read_text())
    parsed = dict(parse_task_line(line) for line in fx["stdout"].splitlines())
    assert sorted(parsed) == [0, 1, 2, 3]
    assert [parsed[i].exit_code for i in range(4)] == [0, 3, 0, 0]
    assert all(p.started <= p.ended for p in parsed.values())
    assert all(p.own_id for p in parsed.values())


@pytest.mark.parametrize("line", ["", "x 1|2|3|4", "t a|1|2|3", "t 1|2|3", "t 1|x y|z|w"])
def test_odd_task_lines(line):
    parsed = parse_task_line(line)
    if parsed is not None:  # "t 1|x y|z|w": index kept, every unreadable field empty
        assert parsed == (1, TaskFiles(None, "y", None, None))


# -- task decisions --------------------------------------------------------------------------------------


def task(state="queued", **kw):
    row = {"task_index": 0, "state": state, "native_state": None, "started_at": None, "scheduler_id": None,
           "missing_polls": 0, "exit_code": None}
    row.update(kw)
    return row


def native(state, word="X", reason=None, exit_code=None):
    return NativeStatus("1_0", state, word, reason=reason, exit_code=exit_code)


def files(started=True, ended=True, code=None, own="77"):
    return TaskFiles(NOW - timedelta(seconds=30) if started else None, own,
                     NOW - timedelta(seconds=5) if ended else None,
                     code)


def decide(t, observed, f, cancel=False, walltime=None):
    return decide_task(t, observed, f, cancel_requested=cancel, walltime_s=walltime, now=NOW)


def test_listed_task_moves_forward_only():
    assert decide(task(), native(JobState.RUNNING, "RUNNING"), None)["state"] == "running"
    assert decide(task("running"), native(JobState.QUEUED, "PENDING"), None)["state"] == "running"
    change = decide(task(), native(JobState.QUEUED, "PENDING", "JobArrayTaskLimit"), None)
    assert (change["state"], change["reason"]) == ("queued", "JobArrayTaskLimit")


def test_started_file_proves_a_start_the_scheduler_does_not_list():
    change = decide(task(), native(JobState.QUEUED, "Q"), files(ended=False))
    assert (change["state"], change["scheduler_id"], change["started_at"]) == ("running", "77",
                                                                                NOW - timedelta(seconds=30))


@pytest.mark.parametrize(("code", "state"), [(0, "completed"), (3, "failed"), (137, "failed"), (143, "cancelled")])
def test_gone_task_ends_by_its_exit_code(code, state):
    change = decide(task("running", started_at=NOW - timedelta(seconds=30)), None, files(code=code))
    assert (change["state"], change["exit_code"], change["ended_at"]) == (state, code, NOW - timedelta(seconds=5))


def test_gone_task_killed_at_walltime_times_out():
    assert decide(task("running"), None, files(code=143), walltime=20)["state"] == "timeout"


def test_terminal_listing_that_is_not_completed_wins_over_the_exit_code():
    # As for a plain job: the scheduler's TIMEOUT/FAILED stands; a cancel through the gateway is cancelled.
    assert decide(task("running"), native(JobState.TIMEOUT, "TIMEOUT"), files(code=0))["state"] == "timeout"
    assert decide(task("running"), native(JobState.COMPLETED, "COMPLETED"), files(code=0))["state"] == "completed"
    assert decide(task("running"), native(JobState.TIMEOUT, "TIMEOUT"), files(code=143))["state"] == "timeout"
    decided = decide(task("running"), native(JobState.FAILED, "FAILED"), files(code=143), cancel=True)
    assert decided["state"] == "cancelled"


def test_killed_task_without_exit_code_takes_the_schedulers_outcome():
    # Grid Engine: qdel SIGKILLs the task; the accounting record says failed=100, exit 137.
    change = decide(task("running"), native(JobState.FAILED, "failed=100", "assumedly after job", 137),
                    files(ended=False), cancel=True)
    assert (change["state"], change["exit_code"]) == ("cancelled", 137)


def test_vanished_task_without_files_becomes_unknown_after_three_polls():
    assert decide(task(), None, TaskFiles()) == {"missing_polls": 1}
    assert decide(task(missing_polls=1), None, TaskFiles()) == {"missing_polls": 2}
    change = decide(task(missing_polls=2), None, TaskFiles())
    assert (change["state"], change["reason"]) == ("unknown",
                                                   "the task left the scheduler's queue without an exit code")
    change = decide(task(missing_polls=2), None, TaskFiles(), cancel=True)
    assert (change["state"], change["reason"]) == ("cancelled", "cancelled before it ran")


def test_gone_task_whose_files_were_not_read_waits():
    assert decide(task("running"), None, None) == {}


def test_which_tasks_are_read():
    running = native(JobState.RUNNING, "RUNNING")
    assert needs_files(task(), None, True) is True
    assert needs_files(task(), native(JobState.COMPLETED, "COMPLETED"), True) is True
    assert needs_files(task(), running, True) is True  # its start is not recorded yet
    assert needs_files(task(started_at=NOW), running, True) is False
    assert needs_files(task(), native(JobState.QUEUED, "PENDING"), True) is False
    assert needs_files(task(), native(JobState.QUEUED, "Q"), False) is True  # PBS: files show starts


def test_summary_of_an_ended_array():
    rows = [task("completed", task_index=0, exit_code=0), task("failed", task_index=3, exit_code=3),
            task("failed", task_index=1, exit_code=7), task("timeout", task_index=2, exit_code=143)]
    counts = {"completed": 1, "failed": 2, "timeout": 1}
    assert summary(rows, counts, 4, False) == {
        "state": "failed", "exit_code": 7,
        "reason": "3 of 4 tasks did not complete (2 failed, 1 timeout); first: task 1 failed with exit code 7"}
    assert summary([task("completed", exit_code=0)], {"completed": 1}, 1, False) == {
        "state": "completed", "exit_code": 0, "reason": None}
    assert summary([], {"queued": 1, "running": 1}, 2, False) == {"state": "running"}


def test_task_read_bound():
    assert job_arrays.MAX_TASK_READS * 40 < 4 * 1024 * 1024  # one poll's output stays far under the SSH cap


def test_decided_dependencies_of_a_held_job_release_it_again():
    # A gateway stopped after recording the decisions but before releasing the job: the next look does.
    decision = job_dependencies.decide("held", [{**dep(0, target_state="completed"), "state": "satisfied"},
                                                {**dep(1, "any", target_state="failed"), "state": "satisfied"}])
    assert (decision.release, decision.satisfied, decision.unsatisfiable) == (True, [], None)
    recorded = job_dependencies.decide("held", [{**dep(0, "notok", target_state="completed"),
                                                 "state": "unsatisfiable"}])
    assert recorded.unsatisfiable["position"] == 0


# -- the tables behind them (a real SQLite store) ----------------------------------------------------------


def job_row(job_id: str, state: str, **extra) -> dict:
    from hpc.store.tables import utcnow

    now = utcnow()
    row = {"id": job_id, "infrastructure": "a", "owner": "me", "kind": "script", "name": job_id, "spec": {},
           "scheduler_id": "", "state": state, "watch_period": 1.0, "cancel_requested": False, "created_at": now,
           "updated_at": now, "poll_failures": 0, "missing_polls": 0, "submit_attempts": 0}
    row.update(extra)
    return row


def test_task_and_dependency_tables(tmp_path):
    from hpc.store import open_store
    from hpc.store.tables import utcnow

    store = open_store(f"sqlite:///{tmp_path / 'gw.db'}")
    assert store.tasks.insert_missing("j1", range(5)) == 5
    assert store.tasks.insert_missing("j1", range(7)) == 2  # after a crash: only what is missing
    ended = ("completed", "failed", "cancelled", "timeout", "unknown")
    store.tasks.update_many("j1", {0: {"state": "completed", "exit_code": 0}, 3: {"state": "failed", "exit_code": 2}},
                            ended)
    assert store.tasks.update_many("j1", {0: {"state": "running"}}, ended) == 0  # an ended task stays ended
    assert store.tasks.counts("j1") == {"completed": 1, "failed": 1, "queued": 5}
    assert [t["task_index"] for t in store.tasks.unfinished("j1", ended)] == [1, 2, 4, 5, 6]
    rows, total = store.tasks.page("j1", state=None, limit=2, offset=3)
    assert ([r["task_index"] for r in rows], total) == ([3, 4], 7)
    assert store.tasks.end_unfinished("j1", ended, state="cancelled") == 5
    assert store.tasks.counts("j1") == {"cancelled": 5, "completed": 1, "failed": 1}

    now = utcnow()
    store.jobs.insert(job_row("pred", "completed", scheduler_id="12"))
    store.jobs.insert(job_row("held-1", "held", spec={"after": [{"job": "pred", "condition": "ok"}]}))
    store.jobs.insert(job_row("done", "completed"))
    store.jobs.insert(job_row("runner", "running", scheduler_id="13"))
    store.jobs.insert(job_row("done-early", "cancelled"))
    dep = {"kind": "job", "condition": "ok", "mode": "gateway", "native": None, "updated_at": now}
    store.dependencies.insert_many([{**dep, "job_id": "held-1", "position": 0, "target_id": "pred",
                                     "state": "satisfied"},
                                    {**dep, "job_id": "done", "position": 0, "target_id": "pred", "state": "pending"},
                                    {**dep, "job_id": "held-1", "position": 1, "target_id": "gone",
                                     "state": "satisfied"},
                                    {**dep, "job_id": "done-early", "position": 0, "target_id": "runner",
                                     "state": "pending"}])
    pending = store.dependencies.pending(ended)
    # A held job is looked at although every dependency is decided. An ended job's undecided dependency
    # is looked at once its target has ended too (a native dependant may end in the poll that sees its
    # predecessor end), not while the target runs.
    assert [(d["job_id"], d["position"], d["target_state"]) for d in pending] == [
        ("done", 0, "completed"), ("held-1", 0, "completed"), ("held-1", 1, None)]
    assert job_dependencies.decide("completed", pending[:1]).satisfied == [0]
    assert store.dependencies.update("done", 0, state="satisfied") is True
    pending = store.dependencies.pending(ended)
    assert [(d["job_id"], d["position"]) for d in pending] == [("held-1", 0), ("held-1", 1)]
    assert job_dependencies.decide("held", pending).release is True
    assert store.dependencies.update("held-1", 1, state="unsatisfiable") is True
    assert [d["state"] for d in store.dependencies.for_jobs(["held-1"])["held-1"]] == ["satisfied", "unsatisfiable"]

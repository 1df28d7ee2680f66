"""States, ordering, final-state rules, exit-code conventions and validation of the scheduler protocol."""

from __future__ import annotations

import pytest

from hpc.schedulers import (
    CANCEL_REQUESTED,
    ORDER,
    JobSpec,
    JobState,
    Resources,
    SchedulerCommandError,
    advance,
    final_state_from_exit_code,
    is_terminal,
)
from hpc.schedulers import pbs, sge, slurm
from hpc.schedulers.base import sanitize_job_name, split_rc_sections

Q, R, C, F, X, T, U = (
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.COMPLETED,
    JobState.FAILED,
    JobState.CANCELLED,
    JobState.TIMEOUT,
    JobState.UNKNOWN,
)


def test_terminal_states():
    assert [s for s in JobState if is_terminal(s)] == [C, F, X, T]


def test_order_is_forward_only():
    assert ORDER[Q] < ORDER[R] < ORDER[C] == ORDER[F] == ORDER[X] == ORDER[T]
    assert U not in ORDER


@pytest.mark.parametrize(
    ("current", "observed", "expected"),
    [
        (None, Q, Q),
        (Q, R, R),
        (R, Q, R),  # Slurm requeue: stays running
        (R, C, C),
        (Q, T, T),
        (C, F, C),  # terminal is final
        (X, R, X),
        (R, U, R),  # an odd code never moves a job
        (U, R, R),
        (None, U, U),
    ],
)
def test_advance(current, observed, expected):
    assert advance(current, observed) == expected


@pytest.mark.parametrize(
    ("exit_code", "hint", "kwargs", "expected"),
    [
        (0, None, {}, C),
        (0, CANCEL_REQUESTED, {}, C),
        (3, None, {}, F),
        (3, "RUNNING", {}, F),
        (3, CANCEL_REQUESTED, {}, X),
        (None, None, {}, F),
        (None, "R", {}, F),
        (None, CANCEL_REQUESTED, {}, X),
        (None, "CANCELLED", {}, X),
        (143, None, {}, X),
        (143, CANCEL_REQUESTED, {"runtime_s": 100, "walltime_s": 60}, X),
        (143, "R", {"runtime_s": 73, "walltime_s": 60}, T),
        (143, "R", {"runtime_s": 30, "walltime_s": 60}, X),
        (143, "timeout", {}, T),
        (None, "TIMEOUT", {}, T),
        (137, None, {}, F),
        (137, None, {"runtime_s": 100, "walltime_s": 60}, F),
        (-29, None, {}, F),
    ],
)
def test_final_state_from_exit_code(exit_code, hint, kwargs, expected):
    assert final_state_from_exit_code(exit_code, hint, **kwargs) == expected


@pytest.mark.parametrize(("raw", "code"), [(0, 0), (768, 3), (36608, 143), (15, 143), (9, 137), (65280, 255)])
def test_slurm_raw_wait_status(raw, code):
    # Testbed: squeue exit_code 768 for `exit 3`, 36608 for the trapped TERM (143:0), "0:15" is raw 15.
    assert slurm.wait_status_exit(raw) == code


@pytest.mark.parametrize(("raw", "code"), [(0, 0), (3, 3), (143, 143), (271, 143), (265, 137), (-29, -29), (256, 256)])
def test_pbs_exit_status_convention(raw, code):
    assert pbs.normalize_exit(raw) == code


@pytest.mark.parametrize(
    ("seconds", "slurm_time", "pbs_time"),
    [(60, "00:01:00", "00:01:00"), (86400, "1-00:00:00", "24:00:00"), (59, "00:00:59", "00:00:59")],
)
def test_walltime_formats(seconds, slurm_time, pbs_time):
    assert (slurm.format_walltime(seconds), pbs.format_walltime(seconds)) == (slurm_time, pbs_time)
    assert sge.format_walltime(seconds) == pbs_time  # h_rt takes HH:MM:SS with hours past 24


@pytest.mark.parametrize("field", ["nodes", "tasks", "cpus_per_task", "memory_mb", "walltime_s"])
@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_resources_must_be_positive_ints(field, bad):
    with pytest.raises(ValueError):
        Resources(**{field: bad})


def test_spec_defaults():
    spec = JobSpec(name="n", job_dir="/j/", payload="/j/p.sh")
    assert (spec.stdout_path, spec.stderr_path, dict(spec.env), tuple(spec.setup_lines)) == (
        "/j/stdout",
        "/j/stderr",
        {},
        (),
    )
    assert spec.resources == Resources()


def test_sanitize_keeps_allowed_characters():
    assert sanitize_job_name("A-b_c.9") == "A-b_c.9"


def test_command_error_keeps_message():
    assert SchedulerCommandError("sbatch: error: x").message == "sbatch: error: x"


def test_rc_sections():
    assert split_rc_sections("a\nb\n@@hpc-rc=0\n@@hpc-rc=153\n", 2) == [(0, ["a", "b"]), (153, [])]


@pytest.mark.parametrize("table", [slurm.STATES, pbs.STATES, sge.STATES])
def test_state_tables_map_to_known_states(table):
    assert set(table.values()) <= set(JobState) - {U}

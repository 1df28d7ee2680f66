"""Array jobs: how the poller reads its tasks' files and decides each task's state. Pure functions.

A task's state comes from two sources, as a plain job's does: what the scheduler lists (Slurm and Grid
Engine list an array's tasks under its id; PBS does not, so a started task is polled under its own id,
which it wrote into its ``started`` file) and the files the task wrote into ``<job_dir>/tasks``
(``<index>.started`` = ``<epoch> <own id>``, ``.ended``, ``.exit_code``). A task the scheduler no longer
lists, or lists as ended, takes its outcome from its ``exit_code`` file by the rules of
:func:`hpc.schedulers.final_state_from_exit_code`; without one, it becomes ``unknown`` (``cancelled`` if
the array was being cancelled) after :data:`MISSING_POLLS_LIMIT` polls, as a plain job does.

The files of many tasks are read by ONE command per poll for all the infrastructure's jobs; it loops
over index runs (``first:last:step``) with shell builtins only (``[ -e ]``, ``read``), so its length
and cost stay small however many tasks an array has, and it prints a line only for tasks that started.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, UTC
from typing import Any
from collections.abc import Iterable, Mapping

from hpc.schedulers import CANCEL_REQUESTED, JobState, NativeStatus, advance, final_state_from_exit_code, is_terminal
from hpc.schedulers.arrays import array_state, index_runs
from hpc.shell import quote
from hpc.states import JOB_ENDED_STATES

MISSING_POLLS_LIMIT = 3
# Task files read per array per poll: bounds the command's output (a line of ~40 bytes per task); the
# rest are read at the next poll.
MAX_TASK_READS = 5000


@dataclass(frozen=True)
class TaskFiles:
    """What a task wrote: when it started (and its own scheduler id), ended, and its exit code."""

    started: datetime | None = None
    own_id: str | None = None
    ended: datetime | None = None
    exit_code: int | None = None


def _epoch(text: str | None) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(text.strip()), UTC) if text and text.strip() else None
    except (ValueError, OverflowError):
        return None


def read_command(job_dir: str, indexes: Iterable[int]) -> str:
    """Shell text printing ``t <index>|<started>|<ended>|<exit_code>`` for each listed task that started."""
    runs = " ".join(f"{first}:{last}:{step}" for first, last, step in index_runs(indexes))
    return (
        f"(cd {quote(job_dir + '/tasks')} 2>/dev/null && for r in {runs}; do "
        'i=${r%%:*}; r=${r#*:}; e=${r%%:*}; s=${r#*:}; while [ "$i" -le "$e" ]; do '
        'if [ -e "$i.started" ]; then a=; b=; c=; read -r a < "$i.started"; '
        '[ -e "$i.ended" ] && read -r b < "$i.ended"; [ -e "$i.exit_code" ] && read -r c < "$i.exit_code"; '
        'echo "t $i|$a|$b|$c"; fi; i=$((i + s)); done; done)'
    )


def parse_task_line(line: str) -> tuple[int, TaskFiles] | None:
    """One ``t <index>|<started>|<ended>|<exit_code>`` line; None if it is not one."""
    if not line.startswith("t "):
        return None
    fields = line[2:].split("|")
    if len(fields) != 4 or not fields[0].strip().isdigit():
        return None
    index, started, ended, code = fields
    words = started.split()
    raw = code.strip()
    return int(index), TaskFiles(
        started=_epoch(words[0]) if words else None,
        own_id=words[1] if len(words) > 1 and len(words[1]) <= 64 else None,
        ended=_epoch(ended),
        exit_code=int(raw) if raw.lstrip("-").isdigit() and len(raw) < 8 else None,
    )


def _reason(state: JobState, exit_code: int | None) -> str | None:
    return {
        JobState.FAILED: f"exited with code {exit_code}" if exit_code is not None else "failed",
        JobState.TIMEOUT: "killed at its walltime limit",
        JobState.CANCELLED: "cancelled",
    }.get(state)


def decide_task(task: Mapping[str, Any], observed: NativeStatus | None, files: TaskFiles | None, *,
                cancel_requested: bool, walltime_s: int | None, now: datetime) -> dict[str, Any]:
    """The changes to one unfinished task's row.

    ``observed``: how the scheduler lists the task (None: it does not, i.e. the task left the queue);
    ``files``: what the task wrote, when they were read this poll (None: not read).
    """
    changes: dict[str, Any] = {}
    if files is not None:
        if files.started and task["started_at"] is None:
            changes["started_at"] = files.started
        if files.own_id and not task["scheduler_id"]:
            changes["scheduler_id"] = files.own_id
    if observed is not None and not is_terminal(observed.state):
        new = advance(JobState(task["state"]), observed.state)
        if new is JobState.QUEUED and (files and files.started or task["started_at"]):
            new = JobState.RUNNING  # its started file proves it runs (PBS lists only the array's record)
        changes.update(state=new.value, native_state=observed.native_state, reason=observed.reason,
                       missing_polls=0)
        return changes
    if files is None:
        return changes  # left the queue, but its files were not read this poll
    started = files.started or task["started_at"]
    if files.exit_code is not None:
        ended = files.ended or now
        runtime = int((ended - started).total_seconds()) if started else None
        hint = CANCEL_REQUESTED if cancel_requested else (observed.native_state if observed else task["native_state"])
        state = final_state_from_exit_code(files.exit_code, hint, runtime_s=runtime, walltime_s=walltime_s)
        if observed is not None and observed.state is not JobState.COMPLETED:
            state = JobState.CANCELLED if cancel_requested else observed.state
        changes.update(state=state.value, exit_code=files.exit_code, ended_at=ended,
                       native_state=observed.native_state if observed else None,
                       reason=(observed.reason if observed else None) or _reason(state, files.exit_code))
    elif observed is not None:  # ended by the scheduler's account, without an exit_code file
        state = JobState.CANCELLED if cancel_requested and observed.state is not JobState.COMPLETED else observed.state
        changes.update(state=state.value, exit_code=observed.exit_code, native_state=observed.native_state,
                       ended_at=files.ended or now,
                       reason=observed.reason or (_reason(state, observed.exit_code)
                                                  if observed.exit_code is not None else None))
    elif task["missing_polls"] + 1 >= MISSING_POLLS_LIMIT:
        state = "cancelled" if cancel_requested else "unknown"
        never_ran = started is None
        changes.update(state=state, ended_at=now,
                       reason="cancelled before it ran" if cancel_requested and never_ran else
                       "the task left the scheduler's queue without an exit code")
    else:
        changes["missing_polls"] = task["missing_polls"] + 1
    return changes


def needs_files(task: Mapping[str, Any], observed: NativeStatus | None, reports_tasks: bool) -> bool:
    """Whether this poll reads the task's files: it left the queue or ended, it started and its start
    is not recorded, or the scheduler does not list tasks (PBS: files are how a start is seen)."""
    if not reports_tasks:
        return True
    if observed is None or is_terminal(observed.state):
        return True
    return observed.state is JobState.RUNNING and task["started_at"] is None


def summary(tasks: Iterable[Mapping[str, Any]], counts: Mapping[str, int], total: int,
            cancel_requested: bool) -> dict[str, Any]:
    """The array job's own fields from its tasks: ``state`` (the documented rule), and once every task
    ended ``exit_code`` (0, or the lowest-index task's that did not complete) and ``reason``."""
    state = array_state(dict(counts), total, cancel_requested)
    result: dict[str, Any] = {"state": state}
    if state not in JOB_ENDED_STATES:
        return result
    failed = sorted((t for t in tasks if t["state"] != "completed"), key=lambda t: t["task_index"])
    if not failed:
        result.update(exit_code=0, reason=None)
        return result
    first = failed[0]
    parts = ", ".join(f"{counts[s]} {s}" for s in ("failed", "timeout", "cancelled", "unknown") if counts.get(s))
    result.update(exit_code=first["exit_code"],
                  reason=f"{len(failed)} of {total} tasks did not complete ({parts}); first: task "
                         f"{first['task_index']} {first['state']}"
                         + (f" with exit code {first['exit_code']}" if first["exit_code"] is not None else ""))
    return result

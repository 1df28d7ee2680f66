"""Job arrays and job dependencies as the gateway models them: pure values, no scheduler syntax.

An array is ``START-END[:STEP][%CAP]`` (or one index ``N[%CAP]``): the tasks ``START, START+STEP, ...
<= END``, at most ``CAP`` running at once. Every scheduler adapter renders it in its own syntax (Slurm
``--array``, PBS ``-t``/``-J``, Grid Engine ``-t``/``-tc``) and maps its own task variable to
``HPC_ARRAY_TASK_ID``, which always holds the gateway's index (Grid Engine numbers tasks from 1: its
adapter shifts by one both ways). A list form (``1,3,5``) is not offered: Grid Engine's ``-t`` and PBS
Pro's ``-J`` take ranges only.

A dependency names a predecessor job and a condition: ``ok`` (it completed: exit code 0; an array: every
task completed), ``notok`` (it ended in any other way: failed, cancelled, timeout, unknown; an array: it
ended and at least one task did not complete), ``any`` (it ended). :func:`condition_outcome` is the one
rule, used for dependencies the gateway holds and to detect dependencies no scheduler will ever satisfy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

from hpc.states import JOB_ENDED_STATES as JOB_ENDED

# Slurm's largest MaxArraySize is 4000001 (indexes 0..4000000); the other schedulers allow at least that.
MAX_INDEX = 4_000_000
_SPEC = re.compile(r"(\d{1,7})(?:-(\d{1,7})(?::(\d{1,7}))?)?(?:%(\d{1,7}))?", re.ASCII)

CONDITIONS = ("ok", "notok", "any")


class ArraySpecError(ValueError):
    """An array specification that is malformed, out of range or too large."""


@dataclass(frozen=True)
class ArraySpec:
    """The tasks ``start, start+step, ... <= end``; ``cap`` (None: no limit) of them running at once."""

    start: int
    end: int
    step: int = 1
    cap: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end <= MAX_INDEX:
            raise ArraySpecError(f"indexes must satisfy 0 <= start <= end <= {MAX_INDEX}")
        if self.step < 1:
            raise ArraySpecError("the step must be at least 1")
        if self.cap is not None and self.cap < 1:
            raise ArraySpecError("the concurrency cap (%N) must be at least 1")

    @property
    def last(self) -> int:
        """The highest index actually run (``end`` rounded down to the step)."""
        return self.start + (self.end - self.start) // self.step * self.step

    @property
    def count(self) -> int:
        return (self.end - self.start) // self.step + 1

    def indexes(self) -> range:
        return range(self.start, self.last + 1, self.step)

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and self.start <= index <= self.last and (index - self.start) % self.step == 0

    @property
    def range_text(self) -> str:
        """``START-END[:STEP]`` (or ``N`` for one task), with ``end`` normalized to the last index."""
        if self.count == 1:
            return str(self.start)
        return f"{self.start}-{self.last}" + (f":{self.step}" if self.step > 1 else "")

    @property
    def text(self) -> str:
        """The canonical spelling, as stored and shown."""
        return self.range_text + (f"%{self.cap}" if self.cap else "")


def parse_array(text: str, max_tasks: int) -> ArraySpec:
    """``"0-99:2%10"`` -> :class:`ArraySpec`; raises :class:`ArraySpecError` saying what is wrong."""
    if not isinstance(text, str):
        raise ArraySpecError("array must be a string such as 0-99 or 0-99:2%10")
    match = _SPEC.fullmatch(text)
    if not match:
        raise ArraySpecError("array must read START-END[:STEP][%CAP] or N[%CAP], for example 0-99:2%10")
    start, end, step, cap = match.groups()
    spec = ArraySpec(int(start), int(end) if end is not None else int(start), int(step or 1),
                     int(cap) if cap is not None else None)
    if spec.count > max_tasks:
        raise ArraySpecError(f"{spec.count} tasks is more than this gateway's limit of {max_tasks} (max_array_tasks)")
    return spec


def index_runs(indexes: Iterable[int]) -> list[tuple[int, int, int]]:
    """Sorted indexes as ``(first, last, step)`` runs, so a long list becomes a short command."""
    values = sorted(set(indexes))
    runs: list[tuple[int, int, int]] = []
    i = 0
    while i < len(values):
        first = values[i]
        if i + 1 == len(values):
            runs.append((first, first, 1))
            break
        step = values[i + 1] - first
        j = i + 1
        while j + 1 < len(values) and values[j + 1] - values[j] == step:
            j += 1
        runs.append((first, values[j], step))
        i = j + 1
    return runs


def expand_ranges(text: str, limit: int = 1_000_000) -> Iterator[int]:
    """Indexes of a scheduler's task list such as ``5,6`` or ``2-9:1`` (at most ``limit``; ValueError if
    unreadable)."""
    produced = 0
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        span, _, step = part.partition(":")
        low, _, high = span.partition("-")
        first, last, stride = int(low), int(high or low), int(step or 1)
        if stride < 1 or last < first:
            raise ValueError(f"not a task range: {part!r}")
        for index in range(first, last + 1, stride):
            produced += 1
            if produced > limit:
                raise ValueError(f"more than {limit} tasks in {text[:60]!r}")
            yield index


# -- the state of an array from its tasks ------------------------------------------------------------


def array_state(counts: dict[str, int], total: int, cancel_requested: bool) -> str:
    """The state of an array job from the counts of its tasks' states (the documented rule).

    While some task has not ended: ``running`` once any task has started (running or ended), else
    ``queued``. Once every task has ended, first match wins: ``completed`` if every task completed;
    ``cancelled`` if the gateway was asked to cancel the array; ``failed`` if any task failed;
    ``timeout`` if any timed out; ``cancelled`` if any was cancelled (outside the gateway); else
    ``unknown``.
    """
    ended = sum(counts.get(state, 0) for state in JOB_ENDED)
    if ended < total:
        return "running" if counts.get("running", 0) or ended else "queued"
    if counts.get("completed", 0) == total:
        return "completed"
    if cancel_requested:
        return "cancelled"
    for state in ("failed", "timeout", "cancelled"):
        if counts.get(state, 0):
            return state
    return "unknown"


# -- dependency conditions ---------------------------------------------------------------------------


def condition_outcome(condition: str, predecessor_state: str) -> bool | None:
    """Whether ``condition`` holds for a predecessor in ``predecessor_state``: True (satisfied), False
    (never will be) or None (not decided yet: the predecessor has not ended)."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown dependency condition {condition!r}")
    if predecessor_state not in JOB_ENDED:
        return None
    if condition == "any":
        return True
    return (predecessor_state == "completed") == (condition == "ok")


@dataclass(frozen=True)
class NativeDependency:
    """A dependency the scheduler enforces: ``condition`` on the job the scheduler calls ``scheduler_id``
    (``array``: that job is an array)."""

    condition: str
    scheduler_id: str
    array: bool = False

    def __post_init__(self) -> None:
        if self.condition not in CONDITIONS:
            raise ValueError(f"unknown dependency condition {self.condition!r}")
        if not isinstance(self.scheduler_id, str) or not self.scheduler_id:
            raise ValueError("a native dependency needs the predecessor's scheduler id")


def group_by_condition(dependencies: Iterable[NativeDependency]) -> dict[str, list[NativeDependency]]:
    """Dependencies per condition, conditions and ids in their first-seen order, duplicates dropped."""
    grouped: dict[str, list[NativeDependency]] = {}
    for dep in dependencies:
        bucket = grouped.setdefault(dep.condition, [])
        if all(d.scheduler_id != dep.scheduler_id for d in bucket):
            bucket.append(dep)
    return grouped

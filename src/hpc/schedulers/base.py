"""The scheduler protocol, documented once, and what every adapter shares.

A scheduler adapter is pure: it builds command strings and batch scripts and parses what those commands
printed, given as ``(exit_code, stdout, stderr)``. It never runs anything, reads no clock and touches no
file or database; only the service layer runs the commands (through the SSH runner) and stores results.

Every value that reaches a remote shell goes through :func:`hpc.shell.quote` exactly once.
"""

from __future__ import annotations

import abc
import enum
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from hpc.schedulers.arrays import ArraySpec, NativeDependency
from hpc.shell import quote
from hpc.states import JOB_ENDED_STATES

log = logging.getLogger(__name__)


class JobState(str, enum.Enum):
    """Normalized job state; the native state and reason are kept beside it in :class:`NativeStatus`."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"


# Observed native states that end a job with a known outcome. An UNKNOWN *observation* (a native code
# this adapter does not know) is not one: it never ends a job nor aborts a poll.
TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT})
# Job states after which nothing changes (hpc.states, the one definition): the terminal ones and
# UNKNOWN, the state of a job that left the queue without an exit code.
ENDED_STATES = frozenset(JobState(state) for state in JOB_ENDED_STATES)

# Forward-only order: queued < running < any terminal state. UNKNOWN has no rank: it never replaces a
# known state (an odd native code seen once must not move a job backwards or end it).
ORDER: Mapping[JobState, int] = MappingProxyType(
    {JobState.QUEUED: 0, JobState.RUNNING: 1, **{s: 2 for s in TERMINAL_STATES}}
)


def is_terminal(state: JobState) -> bool:
    """Tell whether an observed native state ends the job with a known outcome (see ENDED_STATES for
    whether a job's own state is final)."""
    return state in TERMINAL_STATES


def advance(current: JobState | None, observed: JobState) -> JobState:
    """Return the state a job moves to when ``observed`` is reported while it is in ``current``.

    States only move forward; a terminal state is final; UNKNOWN never replaces a known state. A Slurm
    requeue (RUNNING -> PENDING) therefore keeps the job RUNNING in the gateway.
    """
    if current is None or current is JobState.UNKNOWN:
        return observed
    if observed is JobState.UNKNOWN or is_terminal(current):
        return current
    return observed if ORDER[observed] > ORDER[current] else current


@dataclass(frozen=True)
class Resources:
    """What a job asks for. ``memory_mb`` is per node (Slurm ``--mem``); ``walltime_s`` in seconds."""

    nodes: int | None = None
    tasks: int | None = None
    cpus_per_task: int | None = None
    memory_mb: int | None = None
    walltime_s: int | None = None
    partition: str | None = None
    account: str | None = None

    def __post_init__(self) -> None:
        for name in ("nodes", "tasks", "cpus_per_task", "memory_mb", "walltime_s"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("partition", "account"):
            value = getattr(self, name)
            if value is not None:
                check_directive_value(name, value)


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class JobSpec:
    """One job as the gateway submits it. Paths are absolute paths on the cluster.

    ``job_dir`` holds the gateway's job files (created by the caller): the rendered script writes
    ``started`` and ``ended`` (epoch seconds) and ``exit_code`` there; the submit command writes
    ``submit.out``. ``setup_lines`` are trusted site configuration, inserted verbatim.

    ``array``: the job is an array (see :mod:`hpc.schedulers.arrays`); each task writes its job files as
    ``tasks/<index>.started|ended|exit_code`` and its payload's output to ``output/<index>.stdout|stderr``
    (``stdout``/``stderr`` of the job then get only what the scheduler itself writes).
    ``dependencies``: conditions on other jobs the scheduler enforces (the adapter's
    ``native_conditions`` says which it can).
    """

    name: str
    job_dir: str
    payload: str
    resources: Resources = field(default_factory=Resources)
    workdir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    stdout: str | None = None
    stderr: str | None = None
    setup_lines: Sequence[str] = ()
    array: ArraySpec | None = None
    dependencies: Sequence[NativeDependency] = ()

    def __post_init__(self) -> None:
        for name in ("job_dir", "payload", "workdir", "stdout", "stderr"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.startswith("/")):
                raise ValueError(f"{name} must be an absolute path, got {value!r}")
        for key in self.env:
            if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
                raise ValueError(f"invalid environment variable name {key!r}")

    @property
    def stdout_path(self) -> str:
        return self.stdout or self.job_dir.rstrip("/") + "/stdout"

    @property
    def stderr_path(self) -> str:
        return self.stderr or self.job_dir.rstrip("/") + "/stderr"


@dataclass
class NativeStatus:
    """One job as the scheduler reports it. ``exit_code`` uses the shell convention (128+N = signal N)
    and is set only once the job has ended; times are passed through as the scheduler printed them."""

    scheduler_id: str
    state: JobState
    native_state: str
    reason: str | None = None
    exit_code: int | None = None
    start_time: str | None = None
    end_time: str | None = None
    # An array job: its tasks the scheduler lists, by the gateway's task index (None: not an array, or
    # the scheduler does not list tasks under the array's id; see Scheduler.reports_array_tasks).
    tasks: dict[int, NativeStatus] | None = None


@dataclass
class Partition:
    """Load of one partition (Slurm) or queue (PBS)."""

    name: str
    total_nodes: int
    avail_nodes: int
    total_cpus: int
    avail_cpus: int
    running_jobs: int
    queued_jobs: int


class SchedulerParseError(Exception):
    """The whole output of a scheduler command is unusable (e.g. the controller is down)."""


class SchedulerCommandError(Exception):
    """The scheduler refused a request; ``message`` is the scheduler's own text, trimmed."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class SchedulerUnavailable(SchedulerCommandError):
    """The scheduler could not be asked (its controller is down, restarting or overloaded): nothing was
    decided, and the same request may succeed later. Raised instead of a refusal when the scheduler's
    own error text matches the adapter's :attr:`Scheduler.transient_errors`."""


def refusal(message: str, transient: re.Pattern[str] | None) -> SchedulerCommandError:
    """The error to raise for the scheduler's ``message``: :class:`SchedulerUnavailable` when it matches
    ``transient``, else a refusal."""
    if transient is not None and transient.search(message):
        return SchedulerUnavailable(message)
    return SchedulerCommandError(message)


class Scheduler(abc.ABC):
    """The protocol every scheduler adapter implements; all methods are pure functions of strings.

    Submitting: the caller creates ``spec.job_dir`` and uploads the payload, renders the script with
    :meth:`render_script`, runs ``command, stdin = submit_command(spec, script_path)`` (uploading the
    script to ``script_path`` first when ``stdin`` is None) and hands the result to :meth:`parse_submit`,
    which returns the scheduler's job id or raises :class:`SchedulerCommandError`. The submit command
    also leaves the scheduler's stdout in ``<job_dir>/submit.out``: a gateway that crashed after
    submitting reconciles by reading that file with ``parse_submit(0, content, "")`` instead of
    submitting twice.

    Job files written by the rendered script in ``job_dir``: ``started`` (epoch seconds, when the body
    began), ``ended`` (epoch seconds, when it exited) and ``exit_code`` (the payload's exit code in the
    shell convention; 143 when the job was sent SIGTERM by a cancel or a time limit). ``exit_code`` is
    written through a temporary file and ``mv``, so a reader sees it whole or not at all; ``ended`` is
    written before it.

    Polling: ONE :meth:`status_command` for many ids; :meth:`parse_status` returns the ids the scheduler
    still reports. An absent id has left the queue (or finished with an outcome the scheduler does not
    report, such as PBS ``C`` without an exit status): the caller reads ``exit_code`` and asks
    :func:`final_state_from_exit_code`. An unknown native state becomes UNKNOWN (logged), never an
    exception; :class:`SchedulerParseError` means the whole output is unusable. Apply :func:`advance`
    so states only move forward.

    Before submitting a job again (its earlier attempt left ``job_dir`` but no id in ``submit.out``), the
    caller asks :meth:`lookup_command` / :meth:`parse_lookup` whether the scheduler has a job from that
    directory: a submission whose answer timed out may have been accepted.

    Cancelling: :meth:`parse_cancel` accepts "already finished/unknown" as success.

    Refusals: :meth:`parse_submit` and :meth:`parse_cancel` raise :class:`SchedulerUnavailable` (a
    :class:`SchedulerCommandError`) when the scheduler could not be reached at all (the adapter's
    :attr:`transient_errors` match its message): the caller retries later instead of failing the job.

    Telemetry: ONE :meth:`telemetry_command`; :meth:`parse_telemetry` returns one :class:`Partition`
    per partition/queue. Multi-part commands print a ``@@hpc-rc=N`` line after each part so every
    part's exit code survives in stdout.

    Arrays: the adapter renders ``spec.array`` natively and :meth:`array_task_lines` sets
    ``HPC_ARRAY_TASK_ID`` (the gateway's index) and ``hpc_task_job_id`` (the task's own scheduler id)
    from the scheduler's variables. Each task writes ``tasks/<index>.started`` (``<epoch> <own id>``),
    ``.ended`` and ``.exit_code``. When ``reports_array_tasks`` is true, :meth:`parse_status` lists an
    array's tasks in :attr:`NativeStatus.tasks` of the array's id; otherwise the caller polls each
    started task under its own id. Cancelling the array's id cancels every task.

    Dependencies: ``spec.dependencies`` are rendered natively for the conditions in
    ``native_conditions``; :meth:`never_satisfied` tells when the scheduler itself reports that a
    pending job's dependency can no longer be satisfied.
    """

    name: str
    # Dependency conditions this scheduler enforces itself (see hpc.schedulers.arrays).
    native_conditions: frozenset[str] = frozenset({"ok", "notok", "any"})
    # parse_status lists array tasks under the array's id.
    reports_array_tasks: bool = True
    # The scheduler's own error texts that mean "not reached, try again" rather than "refused".
    transient_errors: re.Pattern[str] | None = None
    # Capabilities, checked by :meth:`unsupported` when a job is accepted (so a request the adapter
    # cannot express is refused up front, naming the field, instead of failing at submission).
    max_nodes: int | None = None  # most nodes one job may span; None: no limit known to the adapter
    max_nodes_why: str = ""  # why, in the scheduler's words, for the caller

    def unsupported(self, resources: Resources) -> tuple[str, str] | None:
        """``(field, why)`` of the first of ``resources`` this adapter cannot express, else None."""
        if self.max_nodes is not None and resources.nodes is not None and resources.nodes > self.max_nodes:
            why = f": {self.max_nodes_why}" if self.max_nodes_why else ""
            return "nodes", f"{self.name} jobs span at most {self.max_nodes} node(s), not {resources.nodes}{why}"
        return None

    @abc.abstractmethod
    def directives(self, spec: JobSpec) -> list[str]:
        """The scheduler's own directive lines (``#SBATCH ...`` or ``#PBS ...``) for ``spec``."""

    def render_script(self, spec: JobSpec) -> str:
        """Render the batch script: shebang, the scheduler's directives, then the common body."""
        array_lines = self.array_task_lines(spec) if spec.array is not None else ()
        return "\n".join(["#!/bin/bash", *self.directives(spec), *render_body(spec, array_lines)]) + "\n"

    @abc.abstractmethod
    def submit_command(self, spec: JobSpec, script_path: str) -> tuple[str, bytes | None]:
        """Return ``(command, stdin)``; stdin is the script when the scheduler reads it from stdin."""

    @abc.abstractmethod
    def parse_submit(self, exit_code: int, stdout: str, stderr: str) -> str:
        """Return the scheduler's job id, or raise :class:`SchedulerCommandError`."""

    @abc.abstractmethod
    def status_command(self, ids: Sequence[str], arrays: Sequence[str] = ()) -> str:
        """One command reporting all ``ids``; ``arrays`` are those of them whose tasks the caller could
        not find (an adapter may look further for them, e.g. in an accounting file)."""

    @abc.abstractmethod
    def parse_status(self, exit_code: int, stdout: str, stderr: str, ids: Sequence[str]) -> dict[str, NativeStatus]:
        """Map each id the scheduler still reports to its status."""

    @abc.abstractmethod
    def array_task_lines(self, spec: JobSpec) -> list[str]:
        """Shell lines setting ``HPC_ARRAY_TASK_ID`` and ``hpc_task_job_id`` inside a task."""

    @abc.abstractmethod
    def dependency_option(self, dependencies: Sequence[NativeDependency]) -> str:
        """The option that carries ``dependencies`` (as in the script or on the submit command line);
        ValueError for a condition outside ``native_conditions``."""

    def never_satisfied(self, status: NativeStatus) -> bool:
        """Whether the scheduler reports that this pending job's dependency can never be satisfied."""
        return False

    def check_dependencies(self, dependencies: Sequence[NativeDependency]) -> None:
        """Raise ValueError for a dependency this adapter cannot render."""
        for dep in dependencies:
            if dep.condition not in self.native_conditions:
                raise ValueError(f"{self.name} cannot enforce the condition {dep.condition!r} itself")

    @abc.abstractmethod
    def cancel_command(self, ids: Sequence[str]) -> str:
        """One command cancelling all ``ids``."""

    @abc.abstractmethod
    def parse_cancel(self, exit_code: int, stdout: str, stderr: str) -> None:
        """Raise :class:`SchedulerCommandError` on a real refusal; jobs already gone are fine."""

    def lookup_command(self, job_dir: str) -> str | None:
        """One command finding the job submitted from ``job_dir`` whose answer was lost (a submission
        that timed out after the scheduler accepted it prints no id); None when the adapter has none."""
        return None

    def parse_lookup(self, exit_code: int, stdout: str, stderr: str, job_dir: str) -> str | None:
        """The scheduler id of the job submitted from ``job_dir``, or None when there is none; raises
        :class:`SchedulerParseError` when the scheduler could not be asked (it is then unknown)."""
        return None

    @abc.abstractmethod
    def telemetry_command(self) -> str:
        """One command reporting nodes, CPUs and job counts of every partition/queue."""

    @abc.abstractmethod
    def parse_telemetry(self, exit_code: int, stdout: str, stderr: str) -> list[Partition]:
        """Parse :meth:`telemetry_command` output."""


def array_status(scheduler_id: str, tasks: dict[int, NativeStatus]) -> NativeStatus:
    """The status of an array's id from its listed tasks: RUNNING if any task runs, else QUEUED if any
    waits, else UNKNOWN if any is odd, else ended (COMPLETED if every listed task completed, else FAILED;
    the caller decides the array's outcome from all its tasks). Native state and reason are those of the
    first task in the chosen state (e.g. a pending task's ``JobArrayTaskLimit``)."""
    order = [JobState.RUNNING, JobState.QUEUED, JobState.UNKNOWN]
    listed = [tasks[index] for index in sorted(tasks)]
    for state in order:
        first = next((task for task in listed if task.state is state), None)
        if first is not None:
            break
    else:
        state = JobState.COMPLETED if all(t.state is JobState.COMPLETED for t in listed) else JobState.FAILED
        first = next((t for t in listed if t.state is state), listed[0] if listed else None)
    return NativeStatus(
        scheduler_id=scheduler_id,
        state=state,
        native_state=first.native_state if first else "",
        reason=first.reason if first else None,
        tasks=tasks,
    )


# Hint for final_state_from_exit_code: the gateway itself asked the scheduler to cancel the job.
CANCEL_REQUESTED = "cancel-requested"

# Native states (either scheduler) that tell how a job that left the queue ended.
_CANCEL_HINTS = frozenset({CANCEL_REQUESTED, "CANCELLED", "CA"})
_TIMEOUT_HINTS = frozenset({"TIMEOUT", "TO", "DEADLINE"})
SIGTERM_EXIT = 128 + 15


def final_state_from_exit_code(
    exit_code: int | None,
    native_hint: str | None,
    *,
    runtime_s: int | None = None,
    walltime_s: int | None = None,
) -> JobState:
    """Decide how a job that left the queue ended, from its ``exit_code`` file.

    Rules, first match wins:

    1. ``exit_code == 0`` -> COMPLETED.
    2. ``native_hint`` is :data:`CANCEL_REQUESTED` or a native cancelled state -> CANCELLED.
    3. ``native_hint`` is a native timeout state, or the job ran at least its walltime
       (``runtime_s >= walltime_s``, e.g. ``ended - started``) while the exit code is 143 -> TIMEOUT.
    4. ``exit_code is None`` (no file: the script never ran, or was SIGKILLed before its trap ran,
       e.g. node failure) -> FAILED.
    5. 143 (SIGTERM; the script's trap records 143 whenever the scheduler terminates it) without
       evidence of a time limit -> CANCELLED (cancelled outside the gateway, e.g. by an admin).
    6. Anything else (1-255, 137 = SIGKILL e.g. by the OOM killer) -> FAILED.

    ``native_hint`` is the last native state seen by a poll (``"RUNNING"``, ``"R"``, ``"TIMEOUT"``) or
    :data:`CANCEL_REQUESTED`.
    """
    hint = (native_hint or "").strip().upper() if native_hint != CANCEL_REQUESTED else CANCEL_REQUESTED
    if exit_code == 0:
        return JobState.COMPLETED
    if hint in _CANCEL_HINTS:
        return JobState.CANCELLED
    ran_out = runtime_s is not None and walltime_s is not None and runtime_s >= walltime_s
    if hint in _TIMEOUT_HINTS or (exit_code == SIGTERM_EXIT and ran_out):
        return JobState.TIMEOUT
    if exit_code == SIGTERM_EXIT:
        return JobState.CANCELLED
    return JobState.FAILED


# ---------------------------------------------------------------------------------------------------
# Helpers shared by the adapters.

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_ids(ids: Sequence[str], pattern: re.Pattern[str], scheduler: str) -> list[str]:
    """``ids`` as a list, each a full match of the scheduler's job id ``pattern`` (ValueError otherwise:
    an id reaches a command line)."""
    if not ids:
        raise ValueError("no job ids given")
    for job_id in ids:
        if not isinstance(job_id, str) or not pattern.fullmatch(job_id):
            raise ValueError(f"not a {scheduler} job id: {job_id!r}")
    return list(ids)


def hours_minutes_seconds(seconds: int) -> str:
    """``HH:MM:SS``, the hours past 24 if need be (PBS walltime, Grid Engine h_rt, Slurm's time of day)."""
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def check_directive_value(name: str, value: str) -> str:
    """Refuse what no directive line can carry the same way for the scheduler and for bash.

    A newline would end the directive and start a shell line; sbatch's directive tokenizer treats a
    backslash as an escape even inside single quotes (unlike bash); a leading dash would read as an
    option. Everything else is carried by :func:`quote`.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    if _CONTROL.search(value) or "\\" in value:
        raise ValueError(f"{name} must not contain control characters or backslashes: {value!r}")
    if value.startswith("-"):
        raise ValueError(f"{name} must not start with '-': {value!r}")
    return value


_NAME_DROP = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_job_name(name: str) -> str:
    """Job name for a directive: only ``[A-Za-z0-9._-]``, starting with a letter or digit, at most 64."""
    cleaned = _NAME_DROP.sub("", name or "").lstrip(".-")[:64]
    return cleaned or "job"


def render_body(spec: JobSpec, array_lines: Sequence[str] = ()) -> list[str]:
    """The scheduler-independent part of the batch script (see :class:`Scheduler` for the files).

    ``array_lines`` (from :meth:`Scheduler.array_task_lines`) are used when ``spec.array`` is set: the
    task's files then go to ``tasks/<index>.*`` and its payload's output to ``output/<index>.*``.
    """
    lines = [
        "# Written by hpc-gateway. Job files in the job directory: started, ended, exit_code.",
        f"hpc_job_dir={quote(spec.job_dir)}",
        "hpc_child=",
    ]
    if spec.array is not None:
        array = spec.array
        lines += [
            *array_lines,
            # The index names files: anything but a plain number (no array context) stops the task.
            'case "$HPC_ARRAY_TASK_ID" in ""|*[!0-9]*) echo "hpc-gateway: no array task id" >&2; exit 1;; esac',
            f"export HPC_ARRAY_TASK_ID HPC_ARRAY_TASK_COUNT={array.count} HPC_ARRAY_TASK_MIN={array.start}"
            f" HPC_ARRAY_TASK_MAX={array.last} HPC_ARRAY_TASK_STEP={array.step}",
            'mkdir -p "$hpc_job_dir/tasks" "$hpc_job_dir/output" || exit 1',
            'hpc_files="$hpc_job_dir/tasks/$HPC_ARRAY_TASK_ID."',
        ]
        started = '"$(date +%s) $hpc_task_job_id"'
    else:
        lines.append('hpc_files="$hpc_job_dir/"')
        started = '"$(date +%s)"'
    lines += [
        "hpc_put() {",
        '    printf \'%s\\n\' "$2" > "$hpc_files$1.tmp" && mv -f "$hpc_files$1.tmp" "$hpc_files$1"',
        "}",
        'hpc_on_exit() { hpc_put ended "$(date +%s)"; hpc_put exit_code "$1"; }',
        "hpc_on_term() {",
        "    trap '' TERM",
        "    hpc_on_exit 143",
        '    if [ -n "$hpc_child" ]; then kill -TERM "$hpc_child" 2>/dev/null; wait "$hpc_child"; fi',
        "    exit 143",
        "}",
        "trap 'hpc_on_exit \"$?\"' EXIT",
        "trap hpc_on_term TERM",
        f"hpc_put started {started}",
        f"cd {quote(spec.workdir or spec.job_dir)} || exit 1",
    ]
    lines += [f"export {key}={quote(value)}" for key, value in spec.env.items()]
    lines += list(spec.setup_lines)
    run = f"bash {quote(spec.payload)}"
    if spec.array is not None:
        run += ' > "$hpc_job_dir/output/$HPC_ARRAY_TASK_ID.stdout" 2> "$hpc_job_dir/output/$HPC_ARRAY_TASK_ID.stderr"'
    lines += [
        f"{run} &",
        "hpc_child=$!",
        'wait "$hpc_child"',
        "exit $?",
    ]
    return lines


def submit_wrapper(job_dir: str, submit: str) -> str:
    """Run ``submit`` in ``job_dir``, keeping its stdout in ``submit.out``, printing it, keeping its rc.

    stdout goes to the file first, so the job id is persisted even when the SSH session dies before
    the gateway reads it. The command itself is kept in ``submit.cmd`` (what was asked of the scheduler,
    e.g. its dependency options).
    """
    return (f"cd {quote(job_dir)} && printf '%s\\n' {quote(submit)} > submit.cmd && "
            f"({submit} > submit.out; rc=$?; cat submit.out; exit $rc)")


RC_MARK = "@@hpc-rc="


def with_rc_marks(*commands: str) -> str:
    """Join commands so that each one's exit code is printed after its output."""
    return "; ".join(f'{c}; echo "{RC_MARK}$?"' for c in commands)


def split_rc_sections(stdout: str, count: int) -> list[tuple[int, list[str]]]:
    """Split output of :func:`with_rc_marks` into ``count`` ``(exit_code, lines)`` sections."""
    sections: list[tuple[int, list[str]]] = []
    lines: list[str] = []
    for line in stdout.splitlines():
        if line.startswith(RC_MARK):
            try:
                sections.append((int(line[len(RC_MARK) :].strip()), lines))
            except ValueError:
                raise SchedulerParseError(f"bad exit code mark {line!r}") from None
            lines = []
        else:
            lines.append(line)
    if len(sections) != count:
        raise SchedulerParseError(f"expected {count} command outputs, found {len(sections)} (output cut?)")
    return sections


def message_of(stdout: str, stderr: str, limit: int = 2000) -> str:
    """The scheduler's own error text: stderr, else stdout, trimmed."""
    text = (stderr or "").strip() or (stdout or "").strip() or "no output"
    return text[:limit]


def signal_exit(signal: int) -> int:
    """Shell convention for a process ended by ``signal``."""
    return 128 + signal


def none_if_unset(value: str | None) -> str | None:
    """Map the placeholders schedulers print for an unset time or reason to None."""
    if value is None:
        return None
    value = value.strip()
    return None if value in ("", "N/A", "NONE", "None", "Unknown", "(null)", "--") else value

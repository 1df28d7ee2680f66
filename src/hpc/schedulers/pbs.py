"""PBS adapter: Torque commands, verified against the Slurm-backed Torque wrappers (slurm-wlm-torque
22.05.8); the parsers also read Torque and PBS Pro/OpenPBS ``qstat -f`` text and ``qstat -f -F json``.

Two flavours differ in arrays (the infrastructure setting ``pbs_flavour``): ``torque`` (default; what
the testbed's wrapper takes) renders ``qsub -t 0-9%2`` (Torque has no step: a step becomes a list such
as ``0,2,4``) and the task reads ``PBS_ARRAYID`` (the wrapper: ``SLURM_ARRAY_TASK_ID``); ``pbspro``
renders ``qsub -J 0-9:2%2`` and reads ``PBS_ARRAY_INDEX``. Dependencies go on the command line as
``-W depend=afterok:ID`` (Torque names array predecessors ``afterokarray:ID[]``). Both are given to qsub
as options, not ``#PBS`` lines: the wrapper hands the script to sbatch, which ignores ``#PBS -W``
(tested: the dependency was dropped). The ``pbspro`` flavour is written from the PBS Professional
reference guide and not run on the testbed.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence

from hpc.schedulers.arrays import group_by_condition
from hpc.schedulers.base import (
    check_ids,
    hours_minutes_seconds,
    JobSpec,
    JobState,
    NativeStatus,
    Partition,
    Scheduler,
    SchedulerParseError,
    array_status,
    check_directive_value,
    final_state_from_exit_code,
    message_of,
    refusal,
    sanitize_job_name,
    signal_exit,
    split_rc_sections,
    submit_wrapper,
    with_rc_marks,
)
from hpc.schedulers.pbs_formats import (
    job_list_states,
    node_cpus,
    parse_blocks,
    parse_jobs,
    queue_names,
    requested_id,
)
from hpc.schedulers.slurm import TRANSIENT as SLURM_TRANSIENT
from hpc.shell import quote

log = logging.getLogger(__name__)

# qstat(1B) job states: Torque (Q R C E H W T S) and PBS Pro/OpenPBS (adds B F M U X).
STATES: dict[str, JobState] = {
    "Q": JobState.QUEUED,  # queued, eligible to run
    "H": JobState.QUEUED,  # held
    "W": JobState.QUEUED,  # waiting for its execution time
    "T": JobState.QUEUED,  # in transit to a new location
    "R": JobState.RUNNING,  # running
    "E": JobState.RUNNING,  # exiting after having run; the final state follows
    "S": JobState.RUNNING,  # suspended
    "B": JobState.RUNNING,  # PBS Pro: array job has begun
    # "U" is PBS Pro "suspended, workstation busy" but the Slurm Torque wrapper's "unknown Slurm state";
    # "M" is PBS Pro "moved to another server". Both are left out on purpose and become UNKNOWN.
}
# Ended states whose outcome is read from the exit status: Torque "C" completed, PBS Pro "F" finished
# (qstat -x) and "X" (finished subjob). Without an exit status (the Slurm wrapper never prints one) the
# job is reported absent, so the caller reads the exit_code file.
ENDED = frozenset({"C", "F", "X"})

# Negative exit statuses set by the MOM instead of the job script.
# Torque (lower-case exit_status): Torque 6.1 admin guide "Job exit status"; -11 JOB_EXEC_OVERLIMIT_WT.
# PBS Pro/OpenPBS (Exit_status): PBS Pro reference guide, src/include/job.h; -29 JOB_EXEC_KILL_WALLTIME.
# Every other negative value (exec/prologue failures, -10/-27 memory, -12/-28 cput...) is FAILED.
TORQUE_TIMEOUT = -11
PBSPRO_TIMEOUT = -29

JOB_ID = re.compile(r"[0-9]+(\[[0-9]*\])?(\.[A-Za-z0-9_.-]+)?")
# The Slurm Torque wrapper pastes qsub's arguments unquoted into a /bin/sh command line, so paths handed
# to qsub are kept to characters that need no quoting in any shell ("%" would also be a Slurm pattern).
PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./+@-]*")
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.@+][A-Za-z0-9_.@+-]*")
SUBJOB = re.compile(r"([0-9]+)\[([0-9]+)\](\..*)?")
DEPENDENCY_TYPES = {"ok": "afterok", "notok": "afternotok", "any": "afterany"}
FLAVOURS = ("torque", "pbspro")
# Longest Torque task list rendered for a stepped range (Torque's -t takes lists, not steps).
MAX_TASK_LIST = 4096
_WRAPPER_ERROR = "There was an error running the Slurm sbatch command."
_GONE = ("Unknown Job Id", "Job has finished", "Request invalid for state of job")
# Server not reached: the Torque wrappers print Slurm's own texts (fixtures *_controller_down); PBS Pro
# and Torque print "qsub: cannot connect to server HOST (errno=N)" (pbs_connect failed).
TRANSIENT = re.compile(f"{SLURM_TRANSIENT.pattern}|cannot connect to server")


def normalize_exit(raw: int) -> int:
    """Exit status to the shell convention: Torque/PBS report "killed by signal N" as 256+N."""
    return signal_exit(raw - 256) if raw > 256 else raw


def _plain_path(name: str, value: str) -> str:
    if not PLAIN_PATH.fullmatch(value):
        raise ValueError(f"{name} for PBS must be an absolute path of [A-Za-z0-9_./+@-]: {value!r}")
    return quote(value)


def _plain_value(name: str, value: str) -> str:
    # Torque and PBS Pro qsub handle quotes in #PBS lines differently, so only plain values are used.
    if not PLAIN_VALUE.fullmatch(check_directive_value(name, value)):
        raise ValueError(f"{name} for PBS must be made of [A-Za-z0-9_.@+-]: {value!r}")
    return quote(value)


def _check_ids(ids: Sequence[str]) -> list[str]:
    return check_ids(ids, JOB_ID, "PBS")


def format_walltime(seconds: int) -> str:
    """PBS walltime ``HH:MM:SS`` (hours may exceed 24)."""
    return hours_minutes_seconds(seconds)


class PbsScheduler(Scheduler):
    """PBS/Torque through qsub/qstat/qdel/pbsnodes; the script is uploaded and passed by path."""

    name = "pbs"
    transient_errors = TRANSIENT

    # Neither the wrapper's qstat nor a plain `qstat -f ID` lists an array's tasks: the caller polls each
    # started task under its own id (PBS_JOBID, the wrapper's SLURM_JOB_ID).
    reports_array_tasks = False

    def __init__(self, flavour: str = "torque"):
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown PBS flavour {flavour!r}; expected one of {FLAVOURS}")
        self.flavour = flavour

    def array_option(self, spec: JobSpec) -> str | None:
        """``-t 0-9%2`` (torque) or ``-J 0-9:2%2`` (pbspro); None for a plain job."""
        array = spec.array
        if array is None:
            return None
        cap = f"%{array.cap}" if array.cap else ""
        if self.flavour == "pbspro":
            if array.count < 2:
                raise ValueError("PBS Pro arrays (-J) need at least two tasks")
            return f"-J {array.range_text}{cap}"
        tasks = array.range_text
        if array.step > 1:
            tasks = ",".join(str(i) for i in array.indexes())
            if len(tasks) > MAX_TASK_LIST:
                raise ValueError("Torque arrays take no step: this stepped range is too long as a task list")
        return f"-t {tasks}{cap}"

    def dependency_option(self, dependencies) -> str:
        """``-W depend=afterok:1:2,afternotok:3`` (every listed condition must hold)."""
        self.check_dependencies(dependencies)
        _check_ids([d.scheduler_id for d in dependencies])
        parts = []
        for condition, deps in group_by_condition(dependencies).items():
            # Torque names array predecessors ("10[].srv") with the ...array types; PBS Pro takes them as
            # they are. The wrapper's array ids are plain numbers: Slurm's afterok on one covers every task.
            split = self.flavour == "torque"
            for array in (False, True) if split else (None,):
                ids = [d.scheduler_id for d in deps if array is None or ("[" in d.scheduler_id) == array]
                if ids:
                    parts.append(":".join([DEPENDENCY_TYPES[condition] + ("array" if array else ""), *ids]))
        return f"-W depend={','.join(parts)}"

    def array_task_lines(self, spec: JobSpec) -> list[str]:
        index = "PBS_ARRAY_INDEX" if self.flavour == "pbspro" else "PBS_ARRAYID"
        # The Slurm Torque wrapper sets only Slurm's variables in the job (testbed).
        return [f'HPC_ARRAY_TASK_ID="${{{index}:-$SLURM_ARRAY_TASK_ID}}"',
                'hpc_task_job_id="${PBS_JOBID:-$SLURM_JOB_ID}"']

    def directives(self, spec: JobSpec) -> list[str]:
        res = spec.resources
        lines = ["-S /bin/bash", f"-N {sanitize_job_name(spec.name)}"]
        resources = []
        if res.nodes or res.tasks or res.cpus_per_task:
            nodes = res.nodes or 1
            ppn = math.ceil((res.tasks or nodes) / nodes) * (res.cpus_per_task or 1)
            resources.append(f"nodes={nodes}:ppn={ppn}")
        if res.walltime_s:
            resources.append(f"walltime={format_walltime(res.walltime_s)}")
        if res.memory_mb:
            resources.append(f"mem={res.memory_mb * (res.nodes or 1)}mb")  # pbs_resources: mem is job-wide
        if resources:
            lines.append("-l " + ",".join(resources))  # one -l: the Torque wrapper keeps only the last
        if res.partition:
            lines.append(f"-q {_plain_value('partition', res.partition)}")
        if res.account:
            lines.append(f"-A {_plain_value('account', res.account)}")
        lines.append(f"-o {_plain_path('stdout', spec.stdout_path)}")
        lines.append(f"-e {_plain_path('stderr', spec.stderr_path)}")
        return [f"#PBS {line}" for line in lines]

    def submit_command(self, spec: JobSpec, script_path: str) -> tuple[str, bytes | None]:
        # The Torque wrapper refuses a script on stdin and passes its own "-o/-e <script>.o<id>" to
        # sbatch, which override #PBS -o/-e: so -o/-e are repeated on the qsub command line.
        options = [self.array_option(spec), self.dependency_option(spec.dependencies) if spec.dependencies else None]
        qsub = " ".join(
            [
                "qsub",
                f"-o {_plain_path('stdout', spec.stdout_path)}",
                f"-e {_plain_path('stderr', spec.stderr_path)}",
                *(quote(word) for option in options if option for word in option.split(" ", 1)),
                _plain_path("script_path", script_path),
            ]
        )
        return submit_wrapper(spec.job_dir, qsub), None

    def parse_submit(self, exit_code: int, stdout: str, stderr: str) -> str:
        lines = [line.strip() for line in (stdout or "").splitlines() if line.strip()]
        if exit_code == 0 and lines and JOB_ID.fullmatch(lines[-1]):
            return lines[-1]
        if _WRAPPER_ERROR in (stdout or ""):
            # Testbed: the wrapper prints sbatch's own messages, quoted, on stdout with rc 1.
            errors = [line.strip(" '") for line in stdout.splitlines() if "error:" in line]
            raise refusal("\n".join(errors) or message_of(stdout, stderr), TRANSIENT)
        raise refusal(message_of(stdout, stderr), TRANSIENT)

    def status_command(self, ids: Sequence[str], arrays: Sequence[str] = ()) -> str:
        return "qstat -f " + " ".join(quote(i) for i in _check_ids(ids))

    def parse_status(self, exit_code: int, stdout: str, stderr: str, ids: Sequence[str]) -> dict[str, NativeStatus]:
        # rc 153 (PBSE_UNKJOBID & 0xff) = some id unknown; the known ones are still printed (Torque
        # wrapper: silently; PBS Pro: "qstat: Unknown Job Id X" on stderr per unknown id).
        complaints = [line for line in (stderr or "").splitlines() if line.strip() and "Unknown Job Id" not in line]
        if exit_code not in (0, 153) or (exit_code == 153 and complaints):
            raise SchedulerParseError(message_of(stdout, stderr))
        found: dict[str, NativeStatus] = {}
        tasks: dict[str, dict[int, NativeStatus]] = {}
        for printed, attrs in parse_jobs(stdout).items():
            subjob = SUBJOB.fullmatch(printed)
            if subjob:
                # A subjob "10[3].srv" (Torque/PBS Pro) is reported under its own id when that was asked
                # for (a task polled by its PBS_JOBID), and as a task of the array "10[].srv" if that was.
                array_id = requested_id(f"{subjob.group(1)}[]{subjob.group(3) or ''}", ids)
                own_id = printed if printed in ids else None
                status = self._status(own_id or printed, attrs) if array_id or own_id else None
                if status is not None and own_id:
                    found[own_id] = status
                if status is not None and array_id:
                    tasks.setdefault(array_id, {})[int(subjob.group(2))] = status
                continue
            job_id = requested_id(printed, ids)
            status = self._status(job_id, attrs) if job_id else None
            if status is not None:
                found[job_id] = status
        for array_id, listed in tasks.items():
            found.setdefault(array_id, array_status(array_id, listed)).tasks = listed
        return found

    @staticmethod
    def _status(job_id: str, attrs: dict) -> NativeStatus | None:
        native = str(attrs.get("job_state", "")).strip()
        start = attrs.get("stime") or attrs.get("start_time")  # PBS Pro / Torque; the wrapper has neither
        end = attrs.get("obittime") or attrs.get("comp_time")
        if native not in ENDED:
            state = STATES.get(native, JobState.UNKNOWN)
            if state is JobState.UNKNOWN:
                log.warning("qstat: job %s has unknown state %r", job_id, native)
            return NativeStatus(job_id, state, native, start_time=start and str(start))
        pro = "Exit_status" in attrs
        raw = attrs.get("Exit_status", attrs.get("exit_status"))
        try:
            raw = int(raw)
        except (TypeError, ValueError):
            if raw is not None:
                log.warning("qstat: job %s has unparsable exit status %r", job_id, raw)
            return None
        if raw == (PBSPRO_TIMEOUT if pro else TORQUE_TIMEOUT):
            state = JobState.TIMEOUT
        elif raw < 0:
            state = JobState.FAILED
        else:
            state = final_state_from_exit_code(normalize_exit(raw), None)
        return NativeStatus(
            job_id,
            state,
            native,
            reason=f"exit status {raw}" if raw < 0 else None,
            exit_code=normalize_exit(raw),
            start_time=start and str(start),
            end_time=end and str(end),
        )

    def cancel_command(self, ids: Sequence[str]) -> str:
        return "qdel " + " ".join(quote(i) for i in _check_ids(ids))

    def parse_cancel(self, exit_code: int, stdout: str, stderr: str) -> None:
        # Torque wrapper: unknown or finished ids are silent with rc 1 (it prints only other errors).
        lines = [line for line in f"{stdout or ''}\n{stderr or ''}".splitlines() if line.strip()]
        if exit_code == 0 or all(any(text in line for text in _GONE) for line in lines):
            return
        raise refusal(message_of(stdout, stderr), TRANSIENT)

    def telemetry_command(self) -> str:
        return with_rc_marks("pbsnodes -a", "qstat -Q", "qstat")

    def parse_telemetry(self, exit_code: int, stdout: str, stderr: str) -> list[Partition]:
        (nodes_rc, nodes), (queues_rc, queues), (jobs_rc, jobs) = split_rc_sections(stdout, 3)
        # The Torque wrapper's qstat exits 153 when no job at all is known.
        if nodes_rc != 0 or queues_rc != 0 or jobs_rc not in (0, 153) or (jobs_rc == 153 and jobs):
            raise SchedulerParseError(message_of("", stderr))
        parts = {name: Partition(name, 0, 0, 0, 0, 0, 0) for name in queue_names(queues)}
        for node, attrs in parse_blocks("\n".join(nodes), jobs=False).items():
            cpus, used = node_cpus(node, attrs)
            states = set(attrs.get("state", "").split(","))
            free = states == {"free"}
            idle = max(cpus - used, 0) if free else 0
            if states == {"mixed"}:
                # The Slurm Torque wrapper's word for a partly allocated node (testbed, 22.05: one 1-CPU
                # job on 2 CPUs); it lists no jobs per node, so at least one CPU is taken and one idle.
                idle = min(max(cpus - used, 1), cpus - 1) if cpus > 1 else 0
            # A PBS Pro node may name its queue; other nodes serve every queue.
            for part in [parts[attrs["queue"]]] if attrs.get("queue") in parts else parts.values():
                part.total_nodes += 1
                part.avail_nodes += int(free)
                part.total_cpus += cpus
                part.avail_cpus += idle
        for state, queue in job_list_states(jobs):
            if queue in parts and state == "R":
                parts[queue].running_jobs += 1
            elif queue in parts and STATES.get(state) is JobState.QUEUED:
                parts[queue].queued_jobs += 1
        return list(parts.values())

"""Slurm adapter (verified against Slurm 22.05.8 on the local testbed)."""

from __future__ import annotations

import logging
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
    is_terminal,
    message_of,
    refusal,
    none_if_unset,
    sanitize_job_name,
    signal_exit,
    split_rc_sections,
    submit_wrapper,
    with_rc_marks,
)
from hpc.shell import quote

log = logging.getLogger(__name__)

# squeue(1), JOB STATE CODES (extended form, as printed by %T / -O State).
STATES: dict[str, JobState] = {
    "PENDING": JobState.QUEUED,  # PD: awaiting resource allocation
    "CONFIGURING": JobState.QUEUED,  # CF: allocated, nodes still booting; the script has not started
    "REQUEUED": JobState.QUEUED,  # RQ: completing job being requeued (advance() keeps RUNNING)
    "REQUEUE_HOLD": JobState.QUEUED,  # RH: held job being requeued
    "REQUEUE_FED": JobState.QUEUED,  # RF: requeued by a federation
    "RESV_DEL_HOLD": JobState.QUEUED,  # RD: held after its reservation was deleted
    "RUNNING": JobState.RUNNING,  # R: has an allocation
    "COMPLETING": JobState.RUNNING,  # CG: processes still being killed; the final state follows
    "SUSPENDED": JobState.RUNNING,  # S: allocation kept, execution suspended
    "STOPPED": JobState.RUNNING,  # ST: SIGSTOPped, CPUs retained
    "SIGNALING": JobState.RUNNING,  # SI: being signaled
    "RESIZING": JobState.RUNNING,  # RS: about to change size
    "STAGE_OUT": JobState.RUNNING,  # SO: staging out files; not ended yet
    "COMPLETED": JobState.COMPLETED,  # CD: all processes exited 0
    "FAILED": JobState.FAILED,  # F: non-zero exit or other failure
    "NODE_FAIL": JobState.FAILED,  # NF: an allocated node failed
    "BOOT_FAIL": JobState.FAILED,  # BF: launch failure
    "OUT_OF_MEMORY": JobState.FAILED,  # OOM: out of memory
    "DEADLINE": JobState.FAILED,  # DL: terminated on its --deadline
    "PREEMPTED": JobState.FAILED,  # PR: terminated by preemption; the user must resubmit
    "SPECIAL_EXIT": JobState.FAILED,  # SE: requeued in a special state after a particular exit value
    "CANCELLED": JobState.CANCELLED,  # CA: cancelled by a user or an admin (also while pending)
    "TIMEOUT": JobState.TIMEOUT,  # TO: reached its time limit
    # REVOKED (RV, federation sibling removed) is left out on purpose: it becomes UNKNOWN.
}

# One field per column, each ending in "|" ("Name:|" = no padding, no truncation: tested on 22.05).
# Reason is last because it is free text ("ReqNodeNotAvail, UnavailableNodes:localhost"). JobArrayID is
# the job id of a plain job and "<array id>_<index>" of an array task (one row per task with -r, the
# pending ones included; without -r they would share a row "<id>_[2-5%2]").
STATUS_FORMAT = "JobArrayID:|,State:|,exit_code:|,StartTime:|,EndTime:|,Reason:|"
JOB_ID = re.compile(r"[0-9]+(_[0-9]+)?(\+[0-9]+)?")
TASK_ROW = re.compile(r"([0-9]+)_([0-9]+)")
# sbatch(1) --dependency types for the gateway's conditions.
DEPENDENCY_TYPES = {"ok": "afterok", "notok": "afternotok", "any": "afterany"}
# squeue(1) reason of a pending job whose dependency can never be satisfied (a predecessor ended the
# wrong way; tested on 22.05: the job stays PENDING with this reason until cancelled).
NEVER_SATISFIED = "DependencyNeverSatisfied"
# Jobs of the user with the directory sbatch ran in (the submit wrapper cds into the job directory).
LOOKUP_FORMAT = "JobID:|,WorkDir:|"
SUBMIT_ID = re.compile(r"([0-9]+)(;\S+)?")  # sbatch --parsable prints "id" or "id;cluster"
# Benign "already gone" texts of scancel (printed only with -v; rc stays 0 on 22.05).
_GONE = ("Invalid job id specified", "Job/step already completing or completed")
# Slurm's own texts (slurm_strerror, src/common/slurm_errno.c) for a controller that is down, restarting
# or overloaded: the request was not decided. Testbed 22.05, slurmctld stopped: sbatch rc 1 "Batch job
# submission failed: Unable to contact slurm controller (connect failure)", scancel rc 8 "Kill job error
# on job id N: Unable to contact ..." (fixtures *_controller_down).
TRANSIENT = re.compile(
    r"Unable to contact slurm controller|Socket timed out on send/recv operation"
    r"|Slurm temporarily unable to accept job|Slurm backup controller in standby mode"
)


def wait_status_exit(raw: int) -> int:
    """Shell-convention exit code from a raw wait(2) status (squeue exit_code: exit 3 -> 768)."""
    return signal_exit(raw & 0x7F) if raw & 0x7F else (raw >> 8) & 0xFF


def format_walltime(seconds: int) -> str:
    """``--time`` value: ``HH:MM:SS`` or ``D-HH:MM:SS`` (Slurm rounds up to whole minutes)."""
    days, rest = divmod(seconds, 86400)
    hms = hours_minutes_seconds(rest)
    return f"{days}-{hms}" if days else hms


def _path(name: str, value: str) -> str:
    # sbatch(1) filename pattern: "%%" is a literal "%"; any other "%x" would be expanded.
    return quote(check_directive_value(name, value).replace("%", "%%"))


def _check_ids(ids: Sequence[str]) -> list[str]:
    return check_ids(ids, JOB_ID, "Slurm")


class SlurmScheduler(Scheduler):
    """Slurm through sbatch/squeue/scancel/sinfo; the script is piped to sbatch on stdin."""

    name = "slurm"
    transient_errors = TRANSIENT

    def directives(self, spec: JobSpec) -> list[str]:
        res = spec.resources
        opts = [f"--job-name={sanitize_job_name(spec.name)}"]
        if res.nodes:
            opts.append(f"--nodes={res.nodes}")
        if res.tasks:
            opts.append(f"--ntasks={res.tasks}")
        if res.cpus_per_task:
            opts.append(f"--cpus-per-task={res.cpus_per_task}")
        if res.memory_mb:
            opts.append(f"--mem={res.memory_mb}M")
        if res.walltime_s:
            opts.append(f"--time={format_walltime(res.walltime_s)}")
        if res.partition:
            opts.append(f"--partition={quote(res.partition)}")
        if res.account:
            opts.append(f"--account={quote(res.account)}")
        opts.append(f"--output={_path('stdout', spec.stdout_path)}")
        opts.append(f"--error={_path('stderr', spec.stderr_path)}")
        if spec.array is not None:
            opts.append(f"--array={spec.array.text}")
            opts.append("--open-mode=append")  # every task's scheduler messages kept, not the last one's
        if spec.dependencies:
            opts.append(self.dependency_option(spec.dependencies))
        return [f"#SBATCH {opt}" for opt in opts]

    def dependency_option(self, dependencies) -> str:
        """``--dependency=afterok:1:2,afternotok:3``: every listed condition must hold (``,`` is AND in
        sbatch(1)). An array's id stands for all its tasks."""
        self.check_dependencies(dependencies)
        _check_ids([d.scheduler_id for d in dependencies])
        return "--dependency=" + ",".join(
            ":".join([DEPENDENCY_TYPES[condition], *(d.scheduler_id for d in deps)])
            for condition, deps in group_by_condition(dependencies).items()
        )

    def array_task_lines(self, spec: JobSpec) -> list[str]:
        return ['HPC_ARRAY_TASK_ID="$SLURM_ARRAY_TASK_ID"', 'hpc_task_job_id="$SLURM_JOB_ID"']

    def never_satisfied(self, status: NativeStatus) -> bool:
        return status.state is JobState.QUEUED and (status.reason or "").startswith(NEVER_SATISFIED)

    def submit_command(self, spec: JobSpec, script_path: str) -> tuple[str, bytes | None]:
        # script_path is unused: the script goes to sbatch on stdin, so no upload is needed.
        return submit_wrapper(spec.job_dir, "sbatch --parsable"), self.render_script(spec).encode()

    def parse_submit(self, exit_code: int, stdout: str, stderr: str) -> str:
        lines = [line.strip() for line in (stdout or "").splitlines() if line.strip()]
        match = SUBMIT_ID.fullmatch(lines[-1]) if lines else None
        if exit_code != 0 or match is None:
            raise refusal(message_of(stdout, stderr), TRANSIENT)
        return match.group(1)

    def lookup_command(self, job_dir: str) -> str | None:
        # First line: the directory as sbatch's getcwd() saw it (symlinks resolved), empty when it does not
        # exist (then nothing was submitted from it). -t all: also jobs that already ended (MinJobAge).
        return (f"(cd {quote(job_dir)} 2>/dev/null && pwd -P || echo); "
                f"squeue --me -h -t all -O {quote(LOOKUP_FORMAT)}")

    def parse_lookup(self, exit_code: int, stdout: str, stderr: str, job_dir: str) -> str | None:
        lines = (stdout or "").splitlines()
        physical = lines[0].strip() if lines else ""
        if not physical:
            return None
        if exit_code != 0:
            raise SchedulerParseError(message_of("\n".join(lines[1:]), stderr))
        found = set()
        for line in lines[1:]:
            job_id, sep, workdir = line.partition("|")
            if sep and workdir.removesuffix("|") in (job_dir, physical) and JOB_ID.fullmatch(job_id.strip()):
                found.add(int(re.split(r"[_+]", job_id.strip())[0]))
        if len(found) > 1:
            log.warning("squeue: several jobs ran from %s: %s", job_dir, sorted(found))
        return str(min(found)) if found else None

    def status_command(self, ids: Sequence[str], arrays: Sequence[str] = ()) -> str:
        # -t all: finished jobs are listed (until MinJobAge) only with it, also with -j. -r: one row per
        # array task. An array's id selects all its tasks.
        return f"squeue -r -h -t all -j {quote(','.join(_check_ids(ids)))} -O {quote(STATUS_FORMAT)}"

    def parse_status(self, exit_code: int, stdout: str, stderr: str, ids: Sequence[str]) -> dict[str, NativeStatus]:
        if exit_code != 0:
            # Testbed 22.05: `squeue -j ONE_PURGED_ID` -> "slurm_load_jobs error: Invalid job id specified"
            # rc 1; with several ids the unknown ones are just left out (rc 0).
            if "Invalid job id specified" in (stderr or "") and not (stdout or "").strip():
                return {}
            raise SchedulerParseError(message_of(stdout, stderr))
        wanted = set(ids)
        found: dict[str, NativeStatus] = {}
        tasks: dict[str, dict[int, NativeStatus]] = {}
        lines = [line for line in (stdout or "").splitlines() if line.strip()]
        for line in lines:
            fields = line.split("|", 5)
            if len(fields) != 6:
                log.warning("squeue: skipping unparsable line %r", line)
                continue
            job_id, native, raw_exit, start, end, reason = (f.strip() for f in fields)
            task = TASK_ROW.fullmatch(job_id)
            if task and task.group(1) in wanted:
                tasks.setdefault(task.group(1), {})[int(task.group(2))] = self._status(
                    job_id, native, raw_exit, start, end, reason.removesuffix("|"))
            elif job_id in wanted:
                found[job_id] = self._status(job_id, native, raw_exit, start, end, reason.removesuffix("|"))
        for array_id, listed in tasks.items():
            found[array_id] = array_status(array_id, listed)
        if lines and not found and not any(line.count("|") >= 5 for line in lines):
            raise SchedulerParseError(f"squeue output not in the expected format: {lines[0][:200]!r}")
        return found

    @staticmethod
    def _status(job_id: str, native: str, raw_exit: str, start: str, end: str, reason: str) -> NativeStatus:
        native = native.split()[0] if native.split() else native
        state = STATES.get(native, JobState.UNKNOWN)
        if state is JobState.UNKNOWN:
            log.warning("squeue: job %s has unknown state %r", job_id, native)
        exit_code = None
        if is_terminal(state):
            try:
                exit_code = wait_status_exit(int(raw_exit))
            except ValueError:
                log.warning("squeue: job %s has unparsable exit code %r", job_id, raw_exit)
            if state is JobState.CANCELLED and exit_code == 0:
                exit_code = None  # testbed: a job cancelled while pending reports 0:0 although nothing ran
        return NativeStatus(
            scheduler_id=job_id,
            state=state,
            native_state=native,
            reason=none_if_unset(reason),
            exit_code=exit_code,
            start_time=none_if_unset(start) if state is not JobState.QUEUED else None,
            end_time=none_if_unset(end) if is_terminal(state) else None,
        )

    def cancel_command(self, ids: Sequence[str]) -> str:
        return "scancel " + " ".join(quote(i) for i in _check_ids(ids))

    def parse_cancel(self, exit_code: int, stdout: str, stderr: str) -> None:
        # Testbed 22.05: scancel of unknown or finished ids is silent with rc 0.
        if exit_code == 0:
            return
        lines = [line for line in message_of(stdout, stderr).splitlines() if line.strip()]
        if all(any(text in line for text in _GONE) for line in lines):
            return
        raise refusal(message_of(stdout, stderr), TRANSIENT)

    def telemetry_command(self) -> str:
        return with_rc_marks(
            f"sinfo -h -o {quote('%R|%a|%F|%C')}",
            f"squeue -h -t PENDING,RUNNING -o {quote('%P|%T')}",
        )

    def parse_telemetry(self, exit_code: int, stdout: str, stderr: str) -> list[Partition]:
        (sinfo_rc, sinfo), (squeue_rc, squeue) = split_rc_sections(stdout, 2)
        if sinfo_rc != 0 or squeue_rc != 0:
            raise SchedulerParseError(message_of("", stderr))
        parts: dict[str, Partition] = {}
        for line in sinfo:
            fields = line.strip().split("|")
            try:
                name, avail = fields[0], fields[1]
                alloc_n, idle_n, other_n, total_n = (int(x) for x in fields[2].split("/"))
                alloc_c, idle_c, other_c, total_c = (int(x) for x in fields[3].split("/"))
            except (IndexError, ValueError):
                log.warning("sinfo: skipping unparsable line %r", line)
                continue
            up = avail == "up"  # a partition that is not up starts no job: nothing is available
            part = parts.setdefault(name, Partition(name, 0, 0, 0, 0, 0, 0))
            part.total_nodes += total_n
            part.avail_nodes += idle_n if up else 0
            part.total_cpus += total_c
            part.avail_cpus += idle_c if up else 0
        if sinfo and not parts:
            raise SchedulerParseError(f"sinfo output not in the expected format: {sinfo[0][:200]!r}")
        for line in squeue:
            names, _, native = line.strip().partition("|")
            for name in names.split(","):  # a pending job may name several partitions
                if name in parts and native == "RUNNING":
                    parts[name].running_jobs += 1
                elif name in parts and native == "PENDING":
                    parts[name].queued_jobs += 1
        return list(parts.values())

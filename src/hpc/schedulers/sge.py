"""Grid Engine adapter (verified against Son of Grid Engine 8.1.9, Debian 12's build, on the local testbed).

Jobs that left ``qstat`` are looked up in the accounting file (accounting(5), what ``qacct -j`` reads) in
the same status command: on a default queue (``terminate_method`` NONE) both ``qdel`` and an exceeded
``h_rt`` end the job with SIGKILL, so the batch script's trap never writes ``exit_code``; the accounting
record has the outcome. One ``awk`` pass finds every such job's record (``qacct -j`` would read the whole
file once per job). Records are written ``accounting_flush_time`` (default 15 s) after a job ends, and a
job deleted while pending gets none: until then, or without one, the job is reported absent and the
caller falls back to the job files, as for the other schedulers.

Arrays: Grid Engine numbers tasks from 1 (``-t 0-3`` is refused: "0 is an invalid task id"), so the
gateway's index ``i`` is Grid Engine's task ``i + 1`` both ways (rendered ``-t``, ``SGE_TASK_ID`` in the
job, task numbers in ``qstat`` and the accounting file). ``-tc`` caps the tasks running at once.
``qstat -xml`` lists a running task per row and the pending ones as one row (``<tasks>5,6</tasks>`` or
``2-9:1``); ended tasks are looked up in the accounting file when the caller asks (``arrays``).

Dependencies: ``-hold_jid`` waits until the predecessors ended, however they ended (there is no
afterok/afternotok; a predecessor ending with exit code 100 keeps the dependant waiting, sge_types(1)):
the adapter enforces only ``any`` natively; the gateway holds ``ok``/``notok`` itself.
"""

from __future__ import annotations

import logging
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from hpc.schedulers.arrays import expand_ranges
from hpc.schedulers.base import (
    check_ids,
    hours_minutes_seconds,
    RC_MARK,
    JobSpec,
    JobState,
    NativeStatus,
    Partition,
    Scheduler,
    SchedulerParseError,
    array_status,
    check_directive_value,
    final_state_from_exit_code,
    refusal,
    message_of,
    sanitize_job_name,
    submit_wrapper,
)
from hpc.shell import quote

log = logging.getLogger(__name__)

# sge_status(5) "Job states" (the codes qstat(1) prints in its "state" column): d(eletion), E(rror),
# h(old), r(unning), R(estarted), s/S(uspended), t(ransferring), T(hreshold), w(aiting), q(ueued).
STATES: dict[str, JobState] = {
    "qw": JobState.QUEUED,  # pending
    "hqw": JobState.QUEUED,  # pending, user and/or system hold
    "hRwq": JobState.QUEUED,  # pending, user and/or system hold, re-submit
    "Eqw": JobState.QUEUED,  # pending in error state: cannot start until an admin clears it (qmod -cj)
    "Ehqw": JobState.QUEUED,  # error state, held
    "EhRqw": JobState.QUEUED,  # error state, held, re-submit
    "r": JobState.RUNNING,  # running
    "t": JobState.RUNNING,  # transferring to the execution host (sge_status(5) counts it as running)
    "Rr": JobState.RUNNING,  # running, re-submitted
    "Rt": JobState.RUNNING,  # transferring, re-submitted
    "s": JobState.RUNNING,  # suspended (qmod -sj); the allocation is kept
    "ts": JobState.RUNNING,  # transferring, suspended
    "S": JobState.RUNNING,  # suspended by its queue (subordination or qmod -sq)
    "tS": JobState.RUNNING,  # transferring, suspended by its queue
    "T": JobState.RUNNING,  # suspended: the queue's suspend threshold was exceeded
    "tT": JobState.RUNNING,  # transferring, threshold suspended
    "Rs": JobState.RUNNING,  # re-submitted, suspended
    "Rts": JobState.RUNNING,  # re-submitted, transferring, suspended
    "RS": JobState.RUNNING,  # re-submitted, queue suspended
    "RtS": JobState.RUNNING,  # re-submitted, transferring, queue suspended
    "RT": JobState.RUNNING,  # re-submitted, threshold suspended
    "RtT": JobState.RUNNING,  # re-submitted, transferring, threshold suspended
    "dr": JobState.RUNNING,  # being deleted while running: the outcome comes from accounting
    "dt": JobState.RUNNING,  # being deleted while transferring
    "dRr": JobState.RUNNING,  # being deleted, re-submitted, running
    "dRt": JobState.RUNNING,  # being deleted, re-submitted, transferring
    "ds": JobState.RUNNING,  # being deleted while suspended
    "dS": JobState.RUNNING,  # being deleted while queue suspended
    "dT": JobState.RUNNING,  # being deleted while threshold suspended
    "dRs": JobState.RUNNING,  # being deleted, re-submitted, suspended
    "dRS": JobState.RUNNING,  # being deleted, re-submitted, queue suspended
    "dRT": JobState.RUNNING,  # being deleted, re-submitted, threshold suspended
}

# accounting(5) "failed" (the texts qacct(1) prints): 0 = the job ran, exit_status is its own; 37 = a limit
# was enforced; 100 = killed by a signal once started (qdel, ...). Any other value is a failure of the
# shepherd around the job (output file, shell, working directory, prolog ...): FAILED, exit code unknown.
FAILED_NONE, FAILED_LIMIT, FAILED_AFTER_JOB = 0, 37, 100
FAILED_TEXT: dict[int, str] = {
    1: "assumedly before job",
    8: "in prolog",
    15: "in epilog",
    19: "before writing exit_status",
    26: "opening output file",
    27: "searching requested shell",
    28: "changing to working directory",
    37: "qmaster enforced h_rt, h_cpu, or h_vmem limit",
    100: "assumedly after job",
}
# accounting(5) fields, ":"-separated (a job name cannot hold ":", the category might): indices from the
# left up to the category, and how many fields follow it.
F_JOB, F_START, F_END, F_FAILED, F_EXIT, F_WALLCLOCK, F_CATEGORY, F_AFTER_CATEGORY = 5, 9, 10, 11, 12, 13, 39, 5
F_TASK = 35  # 0 for a plain job, the task number (from 1) for an array task

JOB_ID = re.compile(r"[0-9]+")
# qsub -terse prints "80" for a job and "80.1-6:1" for an array (testbed).
SUBMITTED = re.compile(r"([0-9]+)(\.[0-9]+-[0-9]+:[0-9]+)?")
# qsub expands $HOME, $JOB_ID ... in -o/-e/-wd paths and reads "host:path": only plain paths are passed.
PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./+@-]*")
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.@+][A-Za-z0-9_.@+-]*")
ACCOUNTING = '"$SGE_ROOT/${SGE_CELL:-default}/common/accounting"'
PARALLEL_ENVIRONMENT = "smp"  # one host, all slots together (allocation_rule $pe_slots)
# qmaster not reached (testbed 8.1.9, sge_qmaster stopped: qsub and qdel print "commlib error: got select
# error (Connection refused)" and "unable to send message to qmaster ...", rc 1; *_controller_down).
TRANSIENT = re.compile(r"unable to (send message to|contact) qmaster|commlib error")
_GONE = re.compile(r'denied: job "[0-9]+" does not exist|job [0-9]+ is already in deletion')


def _plain(name: str, value: str, pattern: re.Pattern) -> str:
    if not pattern.fullmatch(check_directive_value(name, value)):
        raise ValueError(f"{name} for Grid Engine must match {pattern.pattern}: {value!r}")
    return quote(value)


def _check_ids(ids: Sequence[str]) -> list[str]:
    return check_ids(ids, JOB_ID, "Grid Engine")


def format_walltime(seconds: int) -> str:
    """``h_rt`` as ``HH:MM:SS`` (hours may exceed 24)."""
    return hours_minutes_seconds(seconds)


def _xml(text: str, what: str) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise SchedulerParseError(f"{what} output is not XML ({exc}): {text.strip()[:200]!r}") from None


def _leading_int(text: str | None) -> int | None:
    match = re.match(r"\s*(-?[0-9]+)", text or "")
    return int(match.group(1)) if match else None


def parse_accounting(lines: Sequence[str], wanted: set[str]) -> dict[str, dict[int, list[str]]]:
    """The last accounting(5) record of each wanted job number, per task number (0 for a plain job; a
    number reused after a reset has several records)."""
    records: dict[str, dict[int, list[str]]] = {}
    for line in lines:
        fields = line.rstrip("\n").split(":")
        if len(fields) > F_CATEGORY + F_AFTER_CATEGORY and fields[F_JOB] in wanted:
            task = _leading_int(fields[F_TASK]) or 0
            records.setdefault(fields[F_JOB], {})[task] = fields
    return records


class SgeScheduler(Scheduler):
    """Grid Engine through qsub/qstat/qdel and the accounting file; the script is piped to qsub on stdin."""

    name = "sge"
    native_conditions = frozenset({"any"})
    transient_errors = TRANSIENT
    max_nodes = 1
    max_nodes_why = f"Grid Engine jobs run on one host (parallel environment {PARALLEL_ENVIRONMENT})"

    def directives(self, spec: JobSpec) -> list[str]:
        res = spec.resources
        problem = self.unsupported(res)
        if problem:
            raise ValueError(f"{problem[0]}: {problem[1]}")
        slots = (res.tasks or 1) * (res.cpus_per_task or 1)
        opts = [
            "-S /bin/bash",
            f"-N {sanitize_job_name(spec.name)}",
            f"-wd {_plain('job_dir', spec.job_dir, PLAIN_PATH)}",
            f"-o {_plain('stdout', spec.stdout_path, PLAIN_PATH)}",
            f"-e {_plain('stderr', spec.stderr_path, PLAIN_PATH)}",
            "-w e",  # refuse at submit what no queue could ever run, instead of pending forever
        ]
        if slots > 1:
            opts.append(f"-pe {PARALLEL_ENVIRONMENT} {slots}")
        if res.walltime_s:
            opts.append(f"-l h_rt={format_walltime(res.walltime_s)}")
        if res.memory_mb:
            opts.append(f"-l h_vmem={math.ceil(res.memory_mb / slots)}M")  # h_vmem is per slot
        if res.partition:
            opts.append(f"-q {_plain('partition', res.partition, PLAIN_VALUE)}")
        if res.account:
            opts.append(f"-A {_plain('account', res.account, PLAIN_VALUE)}")
        if spec.array is not None:
            array = spec.array
            first, last = array.start + 1, array.last + 1  # Grid Engine tasks count from 1
            opts.append(f"-t {first}-{last}:{array.step}")
            if array.cap:
                opts.append(f"-tc {array.cap}")
        if spec.dependencies:
            opts.append(self.dependency_option(spec.dependencies))
        return [f"#$ {opt}" for opt in opts]

    def dependency_option(self, dependencies) -> str:
        """``-hold_jid 1,2``: waits until every listed job ended, however (only ``any``)."""
        self.check_dependencies(dependencies)
        return f"-hold_jid {','.join(_check_ids(list(dict.fromkeys(d.scheduler_id for d in dependencies))))}"

    def array_task_lines(self, spec: JobSpec) -> list[str]:
        # SGE_TASK_ID is "undefined" outside an array: the id then stays empty and the task stops.
        return ['case "$SGE_TASK_ID" in ""|*[!0-9]*) HPC_ARRAY_TASK_ID= ;; '
                '*) HPC_ARRAY_TASK_ID=$((SGE_TASK_ID - 1)) ;; esac',
                'hpc_task_job_id="$JOB_ID.$SGE_TASK_ID"']

    def submit_command(self, spec: JobSpec, script_path: str) -> tuple[str, bytes | None]:
        # script_path is unused: qsub reads the script (and its #$ lines) from stdin.
        return submit_wrapper(spec.job_dir, "qsub -terse"), self.render_script(spec).encode()

    def parse_submit(self, exit_code: int, stdout: str, stderr: str) -> str:
        lines = [line.strip() for line in (stdout or "").splitlines() if line.strip()]
        submitted = SUBMITTED.fullmatch(lines[-1]) if exit_code == 0 and lines else None
        if submitted:
            return submitted.group(1)
        # Testbed: "Unable to run job: Job was rejected because job requests unknown queue ..." + "Exiting."
        message = "\n".join(line for line in message_of(stdout, stderr).splitlines() if line.strip() != "Exiting.")
        raise refusal(message or message_of(stdout, stderr), TRANSIENT)

    def status_command(self, ids: Sequence[str], arrays: Sequence[str] = ()) -> str:
        # qstat lists the user's pending and running jobs; the ids it does not list, and the ``arrays``
        # (some of whose tasks ended), are looked up in the accounting file, in one pass, among the
        # user's records.
        words = " ".join(quote(i) for i in _check_ids(ids))
        always = " ".join(_check_ids(list(arrays))) if arrays else ""
        return (
            f'q=$(qstat -xml); rc=$?; printf \'%s\\n\' "$q"; echo "{RC_MARK}$rc"; [ $rc -eq 0 ] || exit 0; '
            f'gone=" {always + " " if always else ""}"; '
            f'for j in {words}; do case $q in *"<JB_job_number>$j</JB_job_number>"*) ;; '
            f'*) gone="$gone$j " ;; esac; done; '
            f'[ "$gone" = " " ] || {{ awk -F: -v ids="$gone" -v me="$(id -un)" '
            f'\'$4 == me && index(ids, " " $6 " ")\' {ACCOUNTING}; echo "{RC_MARK}$?"; }}'
        )

    def parse_status(self, exit_code: int, stdout: str, stderr: str, ids: Sequence[str]) -> dict[str, NativeStatus]:
        lines = (stdout or "").splitlines()
        marks = [i for i, line in enumerate(lines) if line.startswith(RC_MARK)]
        if not marks or _leading_int(lines[marks[0]][len(RC_MARK) :]) != 0:
            raise SchedulerParseError(message_of("\n".join(lines[: marks[0]] if marks else lines), stderr))
        wanted, found = set(ids), {}
        tasks: dict[str, dict[int, NativeStatus]] = {}
        for job in _xml("\n".join(lines[: marks[0]]), "qstat -xml").iter("job_list"):
            job_id, native = job.findtext("JB_job_number", ""), job.findtext("state", "")
            if job_id not in wanted:
                continue
            listed = job.findtext("tasks")
            if listed:
                # An array: one row per running task, one row for the pending ones ("5,6" or "2-9:1").
                status = self._queue_status(job_id, native, job.findtext("JAT_start_time"))
                try:
                    for number in expand_ranges(listed):
                        tasks.setdefault(job_id, {})[number - 1] = status
                except ValueError:
                    log.warning("qstat: job %s has an unreadable task list %r", job_id, listed[:100])
            elif not (job_id in found and found[job_id].state is JobState.RUNNING):
                found[job_id] = self._queue_status(job_id, native, job.findtext("JAT_start_time"))
        # No accounting section (nothing left qstat), or awk failed (no accounting file yet): absent.
        if len(marks) > 1 and _leading_int(lines[marks[1]][len(RC_MARK) :]) == 0:
            records = parse_accounting(lines[marks[0] + 1 : marks[1]], wanted - set(found))
            for job_id, by_task in records.items():
                if 0 in by_task and job_id not in tasks:
                    found[job_id] = self._accounting_status(job_id, by_task[0])
                for number, fields in by_task.items():
                    if number > 0 and number - 1 not in tasks.get(job_id, {}):
                        tasks.setdefault(job_id, {})[number - 1] = self._accounting_status(job_id, fields)
        for job_id, listed in tasks.items():
            found[job_id] = array_status(job_id, dict(sorted(listed.items())))
        return found

    @staticmethod
    def _queue_status(job_id: str, native: str, start: str | None) -> NativeStatus:
        state = STATES.get(native, JobState.UNKNOWN)
        if state is JobState.UNKNOWN:
            log.warning("qstat: job %s has unknown state %r", job_id, native)
        reason = f"error state {native}: qstat -j {job_id} shows why, qmod -cj clears it" if "E" in native else None
        return NativeStatus(
            job_id, state, native, reason=reason, start_time=start if state is JobState.RUNNING else None
        )

    @staticmethod
    def _accounting_status(job_id: str, fields: list[str]) -> NativeStatus:
        failed, exit_status = _leading_int(fields[F_FAILED]), _leading_int(fields[F_EXIT])
        if failed is None or exit_status is None:
            log.warning("accounting: job %s has no usable failed/exit_status: %r", job_id, fields)
            return NativeStatus(job_id, JobState.UNKNOWN, "accounting")
        exit_code: int | None = exit_status
        if failed == FAILED_LIMIT:
            # Killed at h_rt, or at an h_cpu/h_vmem limit before it: the run time tells which.
            category = ":".join(fields[F_CATEGORY:-F_AFTER_CATEGORY])
            limit, ran = re.search(r"h_rt=([0-9]+)", category), _leading_int(fields[F_WALLCLOCK])
            timed_out = limit is not None and ran is not None and ran >= int(limit.group(1))
            state = JobState.TIMEOUT if timed_out else JobState.FAILED
        elif failed in (FAILED_NONE, FAILED_AFTER_JOB):
            state = final_state_from_exit_code(exit_status, None)
        else:
            state, exit_code = JobState.FAILED, None  # the shepherd failed: the payload's code is unknown
        return NativeStatus(
            job_id,
            state,
            f"failed={failed}",
            reason=f"{FAILED_TEXT.get(failed, 'see accounting(5)')} (failed {failed})" if failed else None,
            exit_code=exit_code,
            start_time=fields[F_START],
            end_time=fields[F_END],
        )

    def cancel_command(self, ids: Sequence[str]) -> str:
        return "qdel " + " ".join(quote(i) for i in _check_ids(ids))

    def parse_cancel(self, exit_code: int, stdout: str, stderr: str) -> None:
        # Testbed: qdel of an unknown or finished id prints 'denied: job "N" does not exist', rc 1.
        lines = [line for line in f"{stdout or ''}\n{stderr or ''}".splitlines() if line.strip()]
        if exit_code == 0 or (lines and all(_GONE.search(line) or "for deletion" in line for line in lines)):
            return
        # qmaster down: the cause is on stderr ("commlib error ...") and the consequence on stdout.
        raise refusal("\n".join(line.strip() for line in lines)[:2000] or message_of(stdout, stderr), TRANSIENT)

    def telemetry_command(self) -> str:
        return f"qstat -f -xml -r -u {quote('*')}"

    def parse_telemetry(self, exit_code: int, stdout: str, stderr: str) -> list[Partition]:
        if exit_code != 0:
            raise SchedulerParseError(message_of(stdout, stderr))
        root = _xml(stdout or "", "qstat -f -xml")
        parts: dict[str, Partition] = {}
        running: dict[str, set[str]] = {}
        for instance in root.iter("Queue-List"):
            queue = instance.findtext("name", "").partition("@")[0]
            total, used, resv = (
                _leading_int(instance.findtext(k)) or 0 for k in ("slots_total", "slots_used", "slots_resv")
            )
            usable = not (instance.findtext("state") or "").strip()  # any queue state letter (u, a, d, E, s ...)
            part = parts.setdefault(queue, Partition(queue, 0, 0, 0, 0, 0, 0))
            part.total_nodes += 1
            part.total_cpus += total
            part.avail_nodes += int(usable and used + resv == 0)
            part.avail_cpus += max(total - used - resv, 0) if usable else 0
            running.setdefault(queue, set()).update(j.findtext("JB_job_number", "") for j in instance.iter("job_list"))
        if not parts:
            raise SchedulerParseError("qstat -f -xml lists no queue instance")
        for queue, jobs in running.items():
            parts[queue].running_jobs = len(jobs)
        pending = root.find("job_info")
        for job in pending.iter("job_list") if pending is not None else ():
            # A pending job waits for the queues it names (-q all.q or all.q@host), else for any queue.
            named = {q.strip().partition("@")[0] for r in job.iter("hard_req_queue") for q in (r.text or "").split(",")}
            for queue in named & set(parts) if named else parts:
                parts[queue].queued_jobs += 1
        return list(parts.values())

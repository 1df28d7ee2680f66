"""Jobs: submission in the background, batched tracking, cancellation, output, durable state.

Life of a job::

    [held ->] submitting -> queued -> running -> completed | failed | cancelled | timeout | unknown

A job with dependencies (``after``) starts ``held``: the gateway checks its conditions every tick
(:mod:`hpc.services.job_dependencies`) and releases it to ``submitting`` once they allow, or ends it
``cancelled`` when one never can. ``held`` is the generic phase before submission: anything else a job
must wait for before it goes to the scheduler is one more kind of condition there. Its ``status`` is
``queued``, as for every state before ``running``.

A POST stores the job as ``submitting`` and answers at once. A background worker claims it (a lease in
the store, so replicas never submit one job twice), writes its files into a job directory on the
cluster, and submits it; the submit command leaves the scheduler's id in ``<job_dir>/submit.out``, so a
gateway that died mid-submission adopts that id instead of submitting again.

One poller per infrastructure (one replica holds its lease) sends ONE status command per period for all
the infrastructure's active jobs, array tasks included (:mod:`hpc.services.job_arrays`). Jobs that left
the queue get their outcome from the ``exit_code`` file the batch script writes, read for all of them in
one more command. SSH or scheduler faults never end a job: it keeps its state with the fault as
``reason``, and tracking resumes when the cluster answers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import posixpath
import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, UTC
from typing import Any

from hpc.config import Config
from hpc.errors import ClusterUnavailable, Conflict, DomainError, InvalidInput, NotFound
from hpc.schedulers import (
    CANCEL_REQUESTED,
    JobSpec,
    JobState,
    NativeStatus,
    Resources,
    SchedulerCommandError,
    SchedulerParseError,
    SchedulerUnavailable,
    advance,
    final_state_from_exit_code,
    get_scheduler,
    is_terminal,
)
from hpc.schedulers import serrano
from hpc.schedulers.arrays import ArraySpec, ArraySpecError, NativeDependency, condition_outcome, parse_array
from hpc.security import Principal
from hpc.services import metrics
from hpc.services import job_arrays, job_dependencies, job_staging
from hpc.services.infrastructures import InfrastructureService
from hpc.services.leases import dead_local_owners
from hpc.shell import quote
from hpc.staging.paths import inside, resolve_roots
from hpc.states import JOB_ENDED_STATES
from hpc.store import DuplicateKey, Store
from hpc.store.tables import utcnow
from hpc.transport import NO_SUCH_FILE, PERMISSION_DENIED, NotADirectory, RemoteFileError, TransportError

log = logging.getLogger(__name__)

SUBMITTING = "submitting"
HELD = job_dependencies.HELD
STAGING_OUT = job_staging.STAGING_OUT_STATE  # the job ended on the cluster; its outputs are being staged
TERMINAL = tuple(sorted(JOB_ENDED_STATES))
POLL_DONE = TERMINAL + (STAGING_OUT,)  # states the poller no longer asks the scheduler about
ENDED = JOB_ENDED_STATES

DEFAULT_JOB_ROOT = ".hpc-gateway/jobs"
_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

TICK = 0.5  # seconds between scans for due work
SUBMIT_GIVE_UP = timedelta(minutes=10)  # cluster unreachable this long after the request: the job fails
MISSING_POLLS_LIMIT = 3  # polls a job may be absent from the queue with no exit code before it is unknown
BACKOFF_MAX = 60.0
RESERVATION_TTL = timedelta(hours=24)  # how long a dry run's job id stays reserved


def walltime_seconds(text: str) -> int:
    """``[D-]HH:MM:SS`` -> seconds."""
    match = _WALLTIME.match(text)
    if not match:
        raise InvalidInput("walltime must read [D-]HH:MM:SS", "resources.walltime")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total < 1:
        raise InvalidInput("walltime must be at least one second", "resources.walltime")
    return total


def resources_of(values: dict[str, Any] | None, defaults: dict[str, Any] | None = None) -> Resources:
    """Typed resources from a ``JobResources`` object laid over ``defaults``; InvalidInput when refused."""
    merged = dict(defaults or {})
    merged.update(values or {})
    walltime = merged.pop("walltime", None)
    try:
        return Resources(walltime_s=walltime_seconds(walltime) if walltime else None, **merged)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"resources: {exc}", "resources") from None


def format_walltime(seconds: int) -> str:
    """Seconds as the contract's ``[D-]HH:MM:SS``."""
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


@dataclass(frozen=True)
class SubmissionPlan:
    """Everything a submission sends, rendered before anything is sent (what a dry run shows).

    ``command`` is the scheduler's submit command as the adapter built it (``InfrastructureService.run``
    sends it through ``wire_command``); ``stdin`` is what it reads (the script, for Slurm).
    """

    spec: JobSpec
    payload: str
    script: str
    script_path: str
    command: str
    stdin: bytes | None


def status_code(state: str) -> str:
    """The seed's ``status``: only queued, running or completed (= ended, whatever the outcome)."""
    if state in ENDED:
        return "completed"
    return "running" if state in ("running", STAGING_OUT) else "queued"


def _utf8_length(lead: int) -> int:
    """Bytes of the UTF-8 sequence a lead byte starts (1 for ASCII and for bytes that start none)."""
    return 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF8 else 1


def whole_characters(data: bytes, limit: int, at_file_end: bool, final: bool) -> tuple[bytes, bool]:
    """The bytes of an output read to return, and whether they reach the end of what can be read now.

    ``data`` was read from a character boundary, up to ``limit`` + 3 bytes. At most ``limit`` bytes
    are returned, cut before a character that does not fit whole; the first character is returned
    whole even past ``limit`` (a ``length`` of 1 still moves on). A character the file ends in the
    middle of is left for a later read while the job may still write its rest, and returned as it is
    (decoded with a replacement character) once the job has ended (``final``). ``at_file_end``: the
    read reached the file's current end.
    """
    if not data:
        return data, True
    head = data[:limit]
    end = len(head)
    for back in range(1, min(3, len(head)) + 1):
        lead = head[-back]
        if lead & 0xC0 != 0x80:  # not a continuation byte: the last character starts here
            if _utf8_length(lead) > back:
                end = len(head) - back
            break
    if end == 0:
        need = _utf8_length(data[0])
        if len(data) >= need:
            end = need
        elif not final:
            return b"", at_file_end  # only part of a character so far: wait for the job to write the rest
        else:
            end = len(data)
    rest = data[end:]
    waiting = at_file_end and not final and 0 < len(rest) < 4 and _utf8_length(rest[0]) > len(rest)
    return data[:end], (at_file_end and not rest) or waiting


# errno of an SFTP failure that retrying cannot cure. OpenSSH's sftp-server maps ENOENT and ENOTDIR to
# SSH_FX_NO_SUCH_FILE, EACCES and EPERM to SSH_FX_PERMISSION_DENIED (hpc.transport gives that status code;
# an OSError carries the errno). Other failures (SSH_FX_FAILURE, a lost connection) may pass, except a
# component of the path that exists and is not a directory (hpc.transport.NotADirectory).
_PERMANENT_ERRNO = {
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "not a directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}
_PERMANENT_STATUS = {NO_SUCH_FILE: "no such file or directory", PERMISSION_DENIED: "permission denied"}


def job_dir_failure(exc: BaseException, job_dir: str) -> str | None:
    """Why the job's files can never be written, by the error's type, SFTP status or errno (never its
    text); None when a retry may succeed."""
    if isinstance(exc, NotADirectory):
        where, what = exc.path or job_dir, "not a directory"
    elif isinstance(exc, RemoteFileError) and exc.status in _PERMANENT_STATUS:
        where, what = exc.path or job_dir, _PERMANENT_STATUS[exc.status]
    elif isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNO:
        where, what = exc.filename or job_dir, _PERMANENT_ERRNO[exc.errno]
    else:
        return None
    return f"cannot write the job's files in {job_dir}: {where}: {what} (check the infrastructure's job_root setting)"


def _epoch(text: str | None) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(text.strip()), UTC) if text and text.strip() else None
    except (ValueError, OverflowError):
        return None


@dataclass
class ArrayPlan:
    """One poll's view of an array job: how the scheduler lists each unfinished task, whose files to read."""

    job: dict[str, Any]
    native: Any
    tasks: list[dict[str, Any]]
    observed: dict[int, Any]
    reads: list[int]


class JobService:
    """Creates, tracks, cancels and reads jobs on registered infrastructures."""

    def __init__(self, config: Config, store: Store, infrastructures: InfrastructureService, templates=None):
        self.config = config
        self.store = store
        self.infrastructures = infrastructures
        self.templates = templates  # hpc.services.templates.TemplateService: payloads of template jobs
        self.staging: job_staging.JobStaging | None = None  # inputs/outputs (set by hpc.services.gateway)
        self.owner = config.resolved_instance_id
        # Commands sent, per infrastructure and kind (status, submit, cancel, exit_codes): for
        # /stats, the tracking-cost benchmark and the test that counts status commands.
        self.counters: dict[str, Counter] = defaultdict(Counter)
        self._homes: dict[tuple, str] = {}
        self._in_flight: set[str] = set()
        self._polling: set[str] = set()
        self._backoff: dict[str, tuple[datetime, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None

    # -- requests -----------------------------------------------------------------------------

    def create(self, request: Any, principal: Principal) -> dict[str, Any]:
        """Validates and stores a job as ``submitting``; the background worker submits it.

        Args:
            request: An ``hpc.api.models.JobRequest``.
        """
        infra = self.infrastructures.get(request.infrastructure)  # NotFound: 404, as the contract lists
        kind, name, spec = self._draft(request, infra)
        after = self._check_after(getattr(request, "after", None) or [], infra, principal)
        if after:
            spec["after"] = [{"job": dep["target_id"], "condition": dep["condition"]} for dep in after]
        job_id = self._reserved(request.reservation, principal) if request.reservation else str(uuid.uuid4())
        if request.reservation and self.store.jobs.get(job_id) is not None:
            raise Conflict(f"job {job_id} exists already: a reservation makes one job", "reservation")
        links, staged = self._check_staging(request, infra, principal, job_id)
        spec.update(staged)
        phase = job_staging.STAGING_IN if staged.get("inputs") else job_staging.SUBMITTED if staged else None
        settings = infra["settings"] or {}
        minimum = float(settings.get("min_watch_period") or self.config.min_watch_period)
        now = utcnow()
        # Tasks and dependencies are written before the job: a crash in between leaves rows no job
        # refers to, never a job missing what it must wait for.
        if spec.get("array"):
            self.store.tasks.insert_missing(job_id, self._array({"spec": spec}).indexes())
        self.store.dependencies.insert_many([{**dep, "job_id": job_id, "updated_at": now} for dep in after])
        self.store.job_transfers.insert_many(links)
        try:
            row = self.store.jobs.insert(
                {
                    "id": job_id,
                    "infrastructure": infra["name"],
                    "owner": principal.name,
                    "credential": principal.credential,
                    "kind": kind,
                    "name": name[:256],
                    "spec": spec,
                    "scheduler_id": "",
                    "state": HELD if after or phase == job_staging.STAGING_IN else SUBMITTING,
                    "reason": ("staging inputs" if phase == job_staging.STAGING_IN
                               else "waiting for its dependencies to be checked" if after else None),
                    "phase": phase,
                    "task_counts": {"queued": self._array({"spec": spec}).count} if spec.get("array") else None,
                    "watch_period": max(float(request.watch_period if request.watch_period is not None else 10.0),
                                        minimum),
                    "cancel_requested": False,
                    "created_at": now,
                    "updated_at": now,
                    "poll_failures": 0,
                    "missing_polls": 0,
                    "submit_attempts": 0,
                }
            )
        except DuplicateKey:
            raise Conflict(f"job {job_id} exists already: a reservation makes one job", "reservation") from None
        log.info("job %s accepted for %s (%s) by %s", row["id"], infra["name"], kind, principal.name)
        if phase == job_staging.STAGING_IN:
            try:
                self.staging.start_inputs(job_id)  # at once; the background tick does what this leaves undone
            except Exception:
                log.exception("job %s: making its inputs failed; the background tries again", job_id)
            row = self.store.jobs.get(job_id)
        self._wake.set()
        return self._details(row)

    def _check_staging(self, request: Any, infra: dict[str, Any], principal: Principal, job_id: str | None
                       ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """A request's inputs/outputs checked as the transfer endpoints check them: the links to store
        (none for a dry run, ``job_id`` None) and what the spec keeps of them."""
        if not (getattr(request, "inputs", None) or getattr(request, "outputs", None)):
            return [], {}
        if self.staging is None:
            raise InvalidInput("this gateway stages no data for jobs", "inputs")
        return self.staging.check(request, infra["name"], principal, job_id)

    def _draft(self, request: Any, infra: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        """A job request checked and turned into ``(kind, name, spec)``: what ``create`` stores and what a
        dry run renders. A new kind of job adds its branch here and its payload in :meth:`_payload`;
        submission and dry run then follow from :meth:`_plan`."""
        kinds = [k for k in ("services", "script", "command", "template") if getattr(request, k) is not None]
        if len(kinds) != 1:
            raise InvalidInput("give exactly one of services, script, command or template", "services")
        kind = {"services": "serrano"}.get(kinds[0], kinds[0])
        for field in ("parameters", "template_version"):
            if kind != "template" and getattr(request, field) is not None:
                raise InvalidInput(f"{field} is for template jobs (give template)", field)
        spec: dict[str, Any] = {"kind": kind}
        resources = request.resources.model_dump(mode="json", exclude_none=True) if request.resources else {}
        if kind == "serrano":
            services = [s.value for s in request.services]
            if request.params is None:
                raise InvalidInput("SERRANO services need params (at least params.read_input_data)", "params")
            params = request.params.model_dump(mode="json")
            try:
                serrano.plan(services, params)
            except serrano.ServiceSelectionError as exc:
                raise InvalidInput(str(exc), "services") from None
            spec.update(services=services, params=params)
            name = request.name or "serrano-" + "-".join(services)
        elif kind == "script":
            spec["script"] = request.script
            name = request.name or "script"
        elif kind == "template":
            if self.templates is None:
                raise InvalidInput("this gateway runs no job templates", "template")
            parameters = dict(request.parameters or {})
            template, payload = self.templates.payload(request.template, request.template_version, parameters)
            spec.update(template=template["name"], template_version=template["version"], parameters=parameters,
                        payload=payload)
            resources = {**(template["resources"] or {}), **resources}
            name = request.name or template["name"]
        else:
            spec["command"] = [item.root for item in request.command]
            name = request.name or (spec["command"][0].rsplit("/", 1)[-1] or "command")
        for text, field in [(request.workdir, "workdir"), (request.script, "script"), (name, "name")]:
            if text is not None and "\x00" in text:
                raise InvalidInput("NUL bytes cannot be passed to a shell", field)
        env = dict(request.env or {})
        for key, value in env.items():
            if not _ENV_NAME.match(key):
                raise InvalidInput(f"{key!r} is not a valid environment variable name", f"env.{key}")
            if "\x00" in value:
                raise InvalidInput("NUL bytes cannot be passed to a shell", f"env.{key}")
        if request.workdir is not None:
            self._check_workdir(infra, request.workdir)
        self._resources(resources, infra, kind)  # validates now, so a bad request is a 400, not a failed job
        spec.update(resources=resources, workdir=request.workdir, env=env)
        array = self._check_array(getattr(request, "array", None), infra)
        if array is not None:
            spec["array"] = array.text
        return kind, name, spec

    def dry_run(self, request: Any, principal: Principal) -> dict[str, Any]:
        """What ``create`` + the submission would send for ``request``, rendered without sending anything.

        Creates no job and writes nothing; runs a command on the cluster only to learn the home
        directory (once per infrastructure and process). The job id used is reserved: ``create`` with
        the returned ``reservation`` makes the job under it, so its files are these, byte for byte.
        """
        infra = self.infrastructures.get(request.infrastructure)
        contacted = self._home_key(infra) not in self._homes
        kind, name, spec = self._draft(request, infra)
        self._check_after(getattr(request, "after", None) or [], infra, principal)  # 404/400 as POST /job
        self._check_staging(request, infra, principal, None)  # 400 as POST /job
        token = request.reservation
        job_id = self._reserved(token, principal) if token else str(uuid.uuid4())
        if self.store.jobs.get(job_id) is not None:
            raise Conflict(f"job {job_id} exists already: a reservation makes one job", "reservation")
        if not token:
            token = self._reserve(job_id, principal)
        home = self._home(infra)
        job_dir = self._job_dir(infra, home, job_id)
        plan = self._plan({"id": job_id, "name": name, "spec": spec}, infra, home, job_dir)
        res = plan.spec.resources
        resources = {key: getattr(res, key) for key in ("nodes", "tasks", "cpus_per_task", "memory_mb", "partition",
                                                          "account") if getattr(res, key) is not None}
        if res.walltime_s:
            resources["walltime"] = format_walltime(res.walltime_s)
        return {
            "job_id": job_id,
            "reservation": token,
            "reservation_expires_at": self._reservation(token)[2],
            "infrastructure": infra["name"],
            "scheduler": infra["scheduler"],
            "kind": kind,
            "name": name[:256],
            "template": spec.get("template"),
            "template_version": spec.get("template_version"),
            "home": home,
            "job_dir": job_dir,
            "workdir": plan.spec.workdir or job_dir,
            "script": plan.script,
            "script_path": plan.script_path,
            "payload": plan.payload,
            "payload_path": plan.spec.payload,
            "submit_command": self.infrastructures.wire_command(infra, plan.command),
            "script_on_stdin": plan.stdin is not None,
            "resources": resources,
            "cluster_contacted": contacted,
        }

    def _reserve(self, job_id: str, principal: Principal) -> str:
        """A reservation of ``job_id`` for ``principal``: encrypted, so only this gateway reads or makes one."""
        expires = int((utcnow() + RESERVATION_TTL).timestamp())
        return self.infrastructures.secrets.encrypt(json.dumps({"job": job_id, "owner": principal.name,
                                                                "expires": expires}))

    def _reservation(self, token: str) -> tuple[str, str, datetime]:
        """``(job id, owner, expiry)`` of a reservation token; InvalidInput if it is none of this gateway's."""
        try:
            content = json.loads(self.infrastructures.secrets.decrypt(token))
            return (str(uuid.UUID(content["job"])), str(content["owner"]),
                    datetime.fromtimestamp(int(content["expires"]), UTC))
        except (ValueError, TypeError, KeyError):
            raise InvalidInput("reservation is not one this gateway issued (from POST /job/dry_run)",
                               "reservation") from None

    def _reserved(self, token: str, principal: Principal) -> str:
        """The job id a caller's reservation holds (refused when it is another caller's or expired)."""
        job_id, owner, expires = self._reservation(token)
        if owner != principal.name:
            raise InvalidInput("reservation is not one this gateway issued (from POST /job/dry_run)", "reservation")
        if expires < utcnow():
            raise InvalidInput(f"reservation expired at {expires.isoformat()}: make a new dry run", "reservation")
        return job_id

    # Request validation of arrays and dependencies: pure of the request, the infrastructure and the
    # store; what they return is all the job's spec keeps of them.

    def _check_array(self, text: str | None, infra: dict[str, Any]) -> ArraySpec | None:
        """The array of tasks asked for, checked against the gateway's cap and the scheduler's syntax."""
        if text is None:
            return None
        try:
            array = parse_array(text, self.config.max_array_tasks)
            scheduler = get_scheduler(infra["scheduler"], infra["settings"])
            probe = JobSpec(name="probe", job_dir="/probe", payload="/probe/payload.sh", array=array)
            scheduler.render_script(probe)
            scheduler.submit_command(probe, "/probe/job.sh")
        except (ArraySpecError, ValueError) as exc:
            raise InvalidInput(f"array: {exc}", "array") from None
        return array

    def _check_after(self, after: list[Any], infra: dict[str, Any], principal: Principal) -> list[dict[str, Any]]:
        """The dependencies asked for, as rows: each predecessor must exist and be visible to the caller
        (404 otherwise: another user's job is not disclosed). Only existing jobs can be named, so no
        cycle can form."""
        scheduler = get_scheduler(infra["scheduler"], infra["settings"])
        rows = []
        for position, item in enumerate(after):
            field = f"after.{position}.job"
            target = self.store.jobs.get(str(item.job).lower())
            if target is None or not (principal.is_admin or target["owner"] == principal.name):
                raise NotFound(f"no job {item.job} to depend on", field)
            condition = getattr(item.condition, "value", item.condition) or "ok"
            mode = job_dependencies.choose_mode(condition, target["infrastructure"] == infra["name"],
                                                scheduler.native_conditions)
            rows.append({"position": position, "kind": "job", "target_id": target["id"], "condition": condition,
                         "mode": mode, "state": "pending", "native": None})
        return rows
    def _check_workdir(self, infra: dict[str, Any], workdir: str) -> None:
        """``workdir`` must lie inside the infrastructure's ``allowed_roots`` (default: the home), as for
        transfer paths; the roots themselves are allowed (a job may run in the home directory)."""
        if not workdir.strip() or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in workdir):
            raise InvalidInput("workdir must be a path without control characters", "workdir")
        home = self._home(infra)
        path = posixpath.normpath(self._absolute(workdir, home))
        try:
            roots = resolve_roots((infra["settings"] or {}).get("allowed_roots"), home)
        except ValueError as exc:
            raise InvalidInput(f"workdir: {exc}", "workdir") from None
        if not any(path == root or inside(path, root) for root in roots):
            raise InvalidInput(f"workdir {path} lies outside the allowed directories ({', '.join(roots)})", "workdir")

    @staticmethod
    def _resources(values: dict[str, Any], infra: dict[str, Any], kind: str) -> Resources:
        """Typed resources; SERRANO jobs start from the infrastructure's ``serrano_resources``. Refused
        (InvalidInput naming the field) when the infrastructure's scheduler adapter cannot express them."""
        defaults = (infra["settings"] or {}).get("serrano_resources") if kind == "serrano" else None
        resources = resources_of(values, defaults)
        problem = get_scheduler(infra["scheduler"]).unsupported(resources)
        if problem:
            field, why = problem
            raise InvalidInput(f"resources.{field}: {why} (infrastructure {infra['name']})", f"resources.{field}")
        return resources

    def get(self, job_id: str, principal: Principal) -> dict[str, Any]:
        return self._details(self._visible(job_id, principal))

    def _visible(self, job_id: str, principal: Principal) -> dict[str, Any]:
        row = self.store.jobs.get(str(job_id))
        if row is None or not (principal.is_admin or row["owner"] == principal.name):
            raise NotFound(f"no job {job_id}", "job_id")
        return row

    def _details(self, row: dict[str, Any], dependencies: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The job row with its dependencies (``after``), read only for jobs that have some."""
        if (row["spec"] or {}).get("after"):
            row["after"] = dependencies if dependencies is not None else \
                self.store.dependencies.for_jobs([row["id"]])[row["id"]]
        if row.get("phase"):
            links = self.store.job_transfers.for_jobs([row["id"]])[row["id"]]
            row["inputs"] = [link for link in links if link["role"] == "input"]
            row["outputs"] = [link for link in links if link["role"] == "output"]
        return row

    def list(self, principal: Principal, *, infrastructure=None, state=None, since=None, limit=100, offset=0):
        rows, total = self.store.jobs.page(
            owner=None if principal.is_admin else principal.name,
            infrastructure=infrastructure,
            state=state,
            since=since,
            limit=limit,
            offset=offset,
        )
        deps = self.store.dependencies.for_jobs([r["id"] for r in rows if (r["spec"] or {}).get("after")])
        return [self._details(r, deps.get(r["id"], [])) for r in rows], total

    def tasks(self, job_id: str, principal: Principal, *, state=None, limit=100, offset=0):
        """A page of an array job's tasks (409 for a job that is not an array)."""
        row = self._visible(job_id, principal)
        if not (row["spec"] or {}).get("array"):
            raise Conflict(f"job {job_id} is not an array job: it has no tasks", "job_id")
        return self.store.tasks.page(row["id"], state=state, limit=limit, offset=offset)

    def cancel(self, job_id: str, principal: Principal) -> dict[str, Any]:
        """Asks for cancellation (idempotent); the poller tells the scheduler. 409 once the job ended.
        A held job (never submitted) ends at once."""
        row = self._visible(job_id, principal)
        if row["state"] in ENDED:
            raise Conflict(f"job {job_id} has ended ({row['state']}): nothing to cancel", "job_id")
        if not row["cancel_requested"]:
            self.store.jobs.update(row["id"], cancel_requested=True)
            log.info("job %s: cancel requested by %s", row["id"], principal.name)
            self._wake.set()
        if row["state"] == HELD:
            staging = row["phase"] == job_staging.STAGING_IN
            self._end(row, "cancelled", reason="cancelled while its inputs were staged, before it was submitted"
                      if staging else "cancelled while held, before it was submitted")
        if self.staging is not None and row["phase"] in (job_staging.STAGING_IN, job_staging.STAGING_OUT):
            self.staging.cancel_transfers(row)  # the tick does it too, should this be interrupted
        return self._details(self.store.jobs.get(row["id"]))

    def output(self, job_id: str, principal: Principal, stream: str, offset: int, length: int,
               task: int | None = None) -> dict[str, Any]:
        """Reads ``length`` bytes of the job's stdout or stderr from ``offset`` (to tail a running job);
        of one array task's payload with ``task``."""
        row = self._visible(job_id, principal)
        state = self._check_task(row, task)
        result = {"stream": stream, "offset": offset, "next_offset": offset, "size": 0, "data": "", "eof": True,
                  "job_state": state}
        if not row["job_dir"]:
            return result  # not yet submitted: nothing written
        infra = self.infrastructures.get(row["infrastructure"])
        path = f"{row['job_dir']}/{stream}" if task is None else f"{row['job_dir']}/output/{task}.{stream}"
        with self.infrastructures.files(infra, "reading job output") as files:
            info = files.stat(path)
            if info is None:
                return result
            size = info.size
            data = files.read_file(path, offset, min(length + 3, size - offset)) if offset < size else b""
        data, eof = whole_characters(data, length, offset + len(data) >= size, state in ENDED)
        result.update(size=size, data=data.decode("utf-8", errors="replace"), next_offset=offset + len(data),
                      eof=eof)
        return result

    def _check_task(self, row: dict[str, Any], task: int | None) -> str:
        """The state the read's ``job_state`` reports: the job's, or the task's (400 for a task the job
        does not have)."""
        if task is None:
            return row["state"]
        array = (row["spec"] or {}).get("array")
        if not array:
            raise InvalidInput(f"job {row['id']} is not an array job: it has no task {task}", "task")
        found = self.store.tasks.get(row["id"], task)
        if found is None:
            raise InvalidInput(f"the array {array} has no task {task}", "task")
        return found["state"]

    def wake(self) -> None:
        """Makes the background look for due work now (a job its inputs released, say)."""
        self._wake.set()

    def stats(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {name: dict(counter) for name, counter in self.counters.items()}

    def workers(self) -> tuple[int, int]:
        """The scheduler thread: (1 if alive else 0, 1 once started; 0, 0 before or without background)."""
        if self._thread is None:
            return 0, 0
        return int(self._thread.is_alive()), 1

    # -- background ---------------------------------------------------------------------------

    def start(self, stop: threading.Event) -> None:
        """Takes back the leases of this replica's earlier life and of dead ones, then starts working."""
        for owner in {self.owner, *dead_local_owners(self.store.jobs.lease_owners(TERMINAL))}:
            if self.store.jobs.release_leases(owner):
                log.info("took back the job submissions held by %s, which is no longer running", owner)
        for owner in {self.owner, *dead_local_owners(self.store.infrastructures.poll_owners())}:
            self.store.infrastructures.release_polls(owner)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="jobs")
        self._thread = threading.Thread(target=self._run, args=(stop,), name="job-scheduler", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._tick()
            except Exception:  # one bad tick must not stop tracking for good
                log.exception("job scheduler tick failed")
            self._wake.wait(TICK)
            self._wake.clear()

    def _tick(self) -> None:
        self._check_dependencies()
        if self.staging is not None:
            self.staging.tick()
        with self._lock:
            busy = set(self._in_flight)
        for row in self.store.jobs.claim_submissions(self.owner, self.config.submit_lease_seconds, limit=32):
            if row["id"] in busy:
                continue
            with self._lock:
                self._in_flight.add(row["id"])
            self._pool.submit(self._submit_guarded, row)
        for name in self.store.jobs.active_infrastructures(POLL_DONE):
            with self._lock:
                if name in self._polling:
                    continue
                self._polling.add(name)
            self._pool.submit(self._poll_guarded, name)

    # -- dependencies (the hold) --------------------------------------------------------------

    def _check_dependencies(self) -> None:
        """One look at every undecided dependency: marks satisfied ones, releases held jobs whose
        conditions allow, cancels jobs whose conditions never can. Every write is conditional on the
        job's state, so replicas doing the same look at once release a job exactly once."""
        pending = self.store.dependencies.pending(TERMINAL)
        by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for dep in pending:
            by_job[dep["job_id"]].append(dep)
        for job_id, deps in by_job.items():
            # The job's own change comes first, the dependency's record after it: a gateway stopped in
            # between finds the dependency still undecided and decides it again, to the same end.
            decision = job_dependencies.decide(deps[0]["job_state"], deps)
            if decision.unsatisfiable is not None:
                dep = decision.unsatisfiable
                self._cancel_for(job_id, job_dependencies.unsatisfiable_reason(dep))
                self.store.dependencies.update(job_id, dep["position"], state="unsatisfiable")
            elif decision.release:
                c = self.store.jobs.table.c
                if self.store.jobs.update(job_id, [c.state == HELD, c.phase.is_distinct_from(job_staging.STAGING_IN)],
                                          state=SUBMITTING, reason=None, next_poll_at=None):
                    log.info("job %s released: its dependencies allow it to be submitted", job_id)
                    self._wake.set()
            for position in decision.satisfied:
                self.store.dependencies.update(job_id, position, state="satisfied")
            if decision.unsatisfiable is None and not decision.release and decision.reason is not None:
                self.store.jobs.update(job_id, [self.store.jobs.table.c.state == HELD,
                                                self.store.jobs.table.c.reason.is_distinct_from(decision.reason)],
                                       reason=decision.reason)

    def _cancel_for(self, job_id: str, reason: str) -> None:
        """Cancels a job because of something the gateway found (e.g. an unsatisfiable dependency): a
        held job ends at once; a submitted one is cancelled on the scheduler and ends with ``reason``."""
        job = self.store.jobs.get(job_id)
        if job is None or job["state"] in ENDED:
            return
        if job["state"] == HELD:
            self._end(job, "cancelled", reason=reason)
            return
        if job["state"] == "running":
            return  # the scheduler started it: its dependencies were satisfied by its own account
        if not job["cancel_requested"]:
            log.info("job %s: cancelling: %s", job_id, reason)
            self.store.jobs.update(job_id, cancel_requested=True, cancel_reason=reason, reason=reason)
            self._wake.set()

    def _native_dependencies(self, row: dict[str, Any], decide: bool = True
                             ) -> list[tuple[dict[str, Any], NativeDependency]] | None:
        """The dependencies to hand to the scheduler, with their rows; None if the job must not be
        submitted (a predecessor ended the wrong way: the job was cancelled). A native predecessor that
        ended already is decided here instead (a scheduler may treat an id it forgot as satisfied);
        without ``decide``, only what an earlier submission was given is listed."""
        if not (row["spec"] or {}).get("after"):
            return []
        native = []
        for dep in self.store.dependencies.for_jobs([row["id"]])[row["id"]]:
            if dep["mode"] != "native" or dep["state"] != "pending":
                continue
            target = self.store.jobs.get(dep["target_id"])
            outcome = condition_outcome(dep["condition"], target["state"]) if target else False
            if not decide:
                outcome = None if target and target["scheduler_id"] else "skip"
            if outcome == "skip":
                continue
            if outcome is True:
                self.store.dependencies.update(row["id"], dep["position"], state="satisfied")
            elif outcome is False:
                self._end(row, "cancelled", reason=job_dependencies.unsatisfiable_reason(
                    {**dep, "target_state": target["state"] if target else None}))
                self.store.dependencies.update(row["id"], dep["position"], state="unsatisfiable")
                return None
            else:
                native.append((dep, NativeDependency(dep["condition"], target["scheduler_id"],
                                                     array=bool((target["spec"] or {}).get("array")))))
        return native

    # -- submission ---------------------------------------------------------------------------

    def _submit_guarded(self, row: dict[str, Any]) -> None:
        started = time.monotonic()
        try:
            self._submit(row)
        except Exception:
            log.exception("job %s: submission failed unexpectedly", row["id"])
            self._end(row, "failed", reason="the gateway failed while submitting; see its log")
        finally:
            with self._lock:
                self._in_flight.discard(row["id"])
            try:
                outcome = (self.store.jobs.get(row["id"]) or {}).get("state", "failed")
            except Exception:  # the store is down: the attempt is counted as one to retry
                outcome = SUBMITTING
            metrics.job_submission(row["infrastructure"], outcome, time.monotonic() - started)

    def _submit(self, row: dict[str, Any]) -> None:
        job_id = row["id"]
        if row["cancel_requested"] and not row["job_dir"]:
            self._end(row, "cancelled", reason=row["cancel_reason"] or "cancelled before it was submitted")
            return
        try:
            infra = self.infrastructures.get(row["infrastructure"])
        except NotFound:
            self._end(row, "failed", reason=f"infrastructure {row['infrastructure']!r} is no longer registered")
            return
        scheduler = get_scheduler(infra["scheduler"], infra["settings"])
        attempts = row["submit_attempts"] + 1
        # The lease is renewed here, and the job dropped if it was lost while the row waited for a worker
        # thread: another replica has taken the submission over, and two must never submit one job.
        lease = utcnow() + timedelta(seconds=self.config.submit_lease_seconds)
        held = [self.store.jobs.table.c.lease_owner == self.owner, self.store.jobs.table.c.state == SUBMITTING]
        if not self.store.jobs.update(job_id, held, submit_attempts=attempts, lease_until=lease):
            log.info("job %s: its submission lease passed to another replica", job_id)
            return
        if (row["spec"] or {}).get("array"):
            self.store.tasks.insert_missing(job_id, self._array(row).indexes())  # after a crash in create()
        try:
            if row["job_dir"]:
                # An earlier attempt may have submitted it (before its dependencies are decided again).
                adopted = self._adopt(infra, scheduler, row["job_dir"])
                if adopted:
                    log.info("job %s: adopted scheduler id %s from an interrupted submission", job_id, adopted)
                    self._record_native(job_id, scheduler, self._native_dependencies(row, decide=False))
                    self._submitted(row, adopted)
                    return
            native = self._native_dependencies(row)
            if native is None:
                return
            home = self._home(infra)
            job_dir = row["job_dir"] or self._job_dir(infra, home, job_id)
            plan = self._plan(row, infra, home, job_dir, tuple(dep for _, dep in native))
            self.store.jobs.update(job_id, job_dir=job_dir)
            try:
                files = self.infrastructures.cluster_files(infra)
                files.mkdir(job_dir, 0o700)
                files.write_file(plan.spec.payload, plan.payload.encode(), 0o700)
                files.write_file(plan.script_path, plan.script.encode(), 0o700)
            except TransportError as exc:
                permanent = job_dir_failure(exc, job_dir)
                if permanent:
                    self._end(row, "failed", reason=permanent)
                    return
                self._retry_submission(row, f"writing the job's files failed: {exc.reason}")
                return
            current = self.store.jobs.get(job_id)
            if current["cancel_requested"]:
                self._end(row, "cancelled", reason=current["cancel_reason"] or "cancelled before it was submitted")
                return
            self._count(infra["name"], "submit")
            result = self.infrastructures.run(infra, plan.command, stdin=plan.stdin, action="submitting the job")
        except InvalidInput as exc:  # e.g. the infrastructure now has a scheduler that cannot run this job
            self._end(row, "failed", reason=f"the job cannot be submitted to {infra['name']}: {exc.detail}")
            return
        except DomainError as exc:
            self._retry_submission(row, exc.detail)
            return
        try:
            scheduler_id = scheduler.parse_submit(result.exit_code, result.stdout, result.stderr)
        except SchedulerUnavailable as exc:  # nothing was decided: the controller is down or busy
            self._retry_submission(row, f"the scheduler is unavailable: {exc.message}")
            return
        except SchedulerCommandError as exc:
            log.info("job %s: the scheduler refused it: %s", job_id, exc.message)
            self._end(row, "failed", reason=f"the scheduler refused the job: {exc.message}")
            return
        self._record_native(job_id, scheduler, native)
        self._submitted(row, scheduler_id)

    def _record_native(self, job_id: str, scheduler, native: list[tuple[dict[str, Any], NativeDependency]]) -> None:
        """Shows on each native dependency what the scheduler was given for it."""
        for dep, rendered in native:
            self.store.dependencies.update(job_id, dep["position"], native=scheduler.dependency_option([rendered]))

    def _submitted(self, row: dict[str, Any], scheduler_id: str) -> None:
        now = utcnow()
        self.store.jobs.update(
            row["id"], scheduler_id=scheduler_id, state="queued", submitted_at=now, reason=None,
            next_poll_at=now + timedelta(seconds=min(row["watch_period"], 2.0)), lease_owner=None, lease_until=None,
        )
        log.info("job %s submitted to %s as %s", row["id"], row["infrastructure"], scheduler_id)
        self._wake.set()

    def _retry_submission(self, row: dict[str, Any], reason: str) -> None:
        if utcnow() - row["created_at"] > SUBMIT_GIVE_UP:
            self._end(row, "failed", reason=f"could not submit within {SUBMIT_GIVE_UP}: {reason}")
            return
        delay = min(BACKOFF_MAX, 2.0 ** min(row["submit_attempts"], 6))
        log.warning("job %s: submission will be retried in %.0fs: %s", row["id"], delay, reason)
        self.store.jobs.update(row["id"], reason=f"waiting to submit: {reason}",
                               next_poll_at=utcnow() + timedelta(seconds=delay), lease_owner=None, lease_until=None)

    def _adopt(self, infra, scheduler, job_dir: str) -> str | None:
        """The scheduler id an earlier, interrupted submission left in ``submit.out``, else the id of a job
        the scheduler has from ``job_dir`` (a submission whose answer was lost, e.g. Slurm's "Socket timed
        out on send/recv operation" after it accepted the job), if any. ClusterUnavailable when that
        cannot be known: submitting again could run the job twice."""
        result = self.infrastructures.run(infra, f"cat {quote(job_dir + '/submit.out')}", action="reconciling")
        if result.exit_code == 0 and result.stdout.strip():
            try:
                return scheduler.parse_submit(0, result.stdout, "")
            except SchedulerCommandError:
                pass
        command = scheduler.lookup_command(job_dir)
        if command is None:
            return None
        found = self.infrastructures.run(infra, command, action="looking for an earlier submission")
        try:
            return scheduler.parse_lookup(found.exit_code, found.stdout, found.stderr, job_dir)
        except SchedulerParseError as exc:
            raise ClusterUnavailable(f"cannot tell whether the earlier submission reached the scheduler: {exc}"
                                     ) from None

    @staticmethod
    def _home_key(infra: dict[str, Any]) -> tuple:
        # The connection's identity: a changed host, port or user (PATCH) has another home.
        return infra["name"], infra["host"], infra["port"], infra["username"]

    def _home(self, infra: dict[str, Any]) -> str:
        key = self._home_key(infra)
        if key not in self._homes:
            result = self.infrastructures.run(infra, 'printf %s "$HOME"', action="finding the home directory")
            home = result.stdout.strip()
            if result.exit_code != 0 or not home.startswith("/"):
                raise ClusterUnavailable(f"cannot find the home directory of {infra['username']}")
            self._homes[key] = home
        return self._homes[key]

    @staticmethod
    def _absolute(path: str, home: str) -> str:
        path = serrano.resolve_home(path, home)
        return path if path.startswith("/") else f"{home.rstrip('/')}/{path}"

    def _job_dir(self, infra: dict[str, Any], home: str, job_id: str) -> str:
        root = (infra["settings"] or {}).get("job_root") or DEFAULT_JOB_ROOT
        return f"{self._absolute(root, home).rstrip('/')}/{job_id}"

    def _array(self, row: dict[str, Any]) -> ArraySpec | None:
        text = (row["spec"] or {}).get("array")
        return parse_array(text, max(self.config.max_array_tasks, 4_000_001)) if text else None

    def _job_spec(self, row: dict[str, Any], infra: dict[str, Any], home: str, job_dir: str,
                  dependencies: tuple[NativeDependency, ...] = ()) -> JobSpec:
        spec = row["spec"]
        resources = self._resources(spec.get("resources") or {}, infra, spec["kind"])
        workdir = spec.get("workdir")
        if spec["kind"] == "serrano":
            workdir = serrano.resolve_home(spec["params"]["root_dir"], home)
        return JobSpec(
            name=row["name"],
            job_dir=job_dir,
            payload=f"{job_dir}/payload.sh",
            resources=resources,
            workdir=self._absolute(workdir, home) if workdir else None,
            env=spec.get("env") or {},
            setup_lines=tuple((infra["settings"] or {}).get("setup_lines") or ()),
            array=self._array(row),
            dependencies=dependencies,
        )

    def _plan(self, row: dict[str, Any], infra: dict[str, Any], home: str, job_dir: str,
              dependencies: tuple[NativeDependency, ...] = ()) -> SubmissionPlan:
        """The files and the submit command of a job (``row``: at least ``id``, ``name``, ``spec``): pure
        rendering, the same for a submission and for a dry run."""
        scheduler = get_scheduler(infra["scheduler"], infra["settings"])
        spec = self._job_spec(row, infra, home, job_dir, dependencies)
        script_path = f"{job_dir}/job.sh"
        command, stdin = scheduler.submit_command(spec, script_path)
        return SubmissionPlan(spec=spec, payload=self._payload(row, infra, home), script=scheduler.render_script(spec),
                              script_path=script_path, command=command, stdin=stdin)

    @staticmethod
    def _payload(row: dict[str, Any], infra: dict[str, Any], home: str) -> str:
        spec = row["spec"]
        if spec["kind"] == "script":
            return spec["script"]
        if spec["kind"] == "template":
            return spec["payload"]  # rendered when the job was accepted (hpc.services.templates)
        if spec["kind"] == "command":
            return "#!/bin/bash\nexec " + " ".join(quote(word) for word in spec["command"]) + "\n"
        settings = infra["settings"] or {}
        launcher = settings.get("mpi_launcher", "mpirun -n {num_mpi_procs}")
        return serrano.render_payload(spec["services"], spec["params"], home=home, launcher=launcher)

    # -- tracking -----------------------------------------------------------------------------

    def _poll_guarded(self, name: str) -> None:
        started, sent = time.monotonic(), self.counters[name]["status"]
        try:
            if self.store.infrastructures.claim_poll(name, self.owner, self.config.poll_lease_seconds):
                with self._poll_lease_renewed(name):
                    self._poll(name)
        except Exception:
            log.exception("polling %s failed unexpectedly", name)
        finally:
            with self._lock:
                self._polling.discard(name)
            if self.counters[name]["status"] != sent:  # a round that sent a status command
                metrics.job_poll(name, name in self._backoff, time.monotonic() - started)

    @contextlib.contextmanager
    def _poll_lease_renewed(self, name: str):
        """Renews the poll lease while a poll runs: a poll of thousands of jobs may outlast the lease
        (bench/replicas.py: over 30 s for 5,000 jobs on the loaded testbed), and another replica must not
        start a second one meanwhile."""
        done = threading.Event()
        lease = self.config.poll_lease_seconds

        def renew() -> None:
            while not done.wait(lease / 3):
                try:
                    self.store.infrastructures.claim_poll(name, self.owner, lease)
                except Exception:  # the store may be briefly unavailable: the next renewal tries again
                    log.warning("renewing the poll lease of %s failed", name, exc_info=True)

        renewer = threading.Thread(target=renew, name=f"poll-lease-{name}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()

    def _poll(self, name: str) -> None:
        """One round for one infrastructure: cancels, then ONE status command if any job is due."""
        now = utcnow()
        backoff_until = self._backoff.get(name, (now, 0.0))[0]
        if backoff_until > now:
            return
        # One cheap query first: loading every active job on each tick cost about 1 s of store time per
        # infrastructure with 5,000 jobs (bench/replicas.py), for a poll due once per watch_period.
        if not self.store.jobs.poll_due(name, now, POLL_DONE):
            return
        jobs = [j for j in self.store.jobs.active(name, POLL_DONE) if j["scheduler_id"]]
        if not jobs:
            return
        try:
            infra = self.infrastructures.get(name)
        except NotFound:
            return
        scheduler = get_scheduler(infra["scheduler"], infra["settings"])
        to_cancel = [j for j in jobs if j["cancel_requested"] and j["cancel_sent_at"] is None]
        if to_cancel:
            self._send_cancel(infra, scheduler, to_cancel)
        if not any(j["next_poll_at"] is None or j["next_poll_at"] <= now for j in jobs) and not to_cancel:
            return
        tasks = {j["id"]: self.store.tasks.unfinished(j["id"], ENDED) for j in jobs if (j["spec"] or {}).get("array")}
        ids = [j["scheduler_id"] for j in jobs]
        if not scheduler.reports_array_tasks:  # PBS: started tasks are polled under their own ids
            ids += list(dict.fromkeys(t["scheduler_id"] for rows in tasks.values() for t in rows
                                      if t["scheduler_id"] and t["scheduler_id"] not in ids))
        # Arrays some of whose tasks left the queue without an exit code: the adapter may look further.
        lookup = [j["scheduler_id"] for j in jobs if any(t["missing_polls"] for t in tasks.get(j["id"], ()))]
        self._count(name, "status")
        try:
            result = self.infrastructures.run(infra, scheduler.status_command(ids, arrays=lookup),
                                              action="polling job states")
            statuses = scheduler.parse_status(result.exit_code, result.stdout, result.stderr, ids)
        except (DomainError, SchedulerParseError) as exc:
            self._poll_failed(name, jobs, str(getattr(exc, "detail", exc)))
            return
        self._backoff.pop(name, None)
        gone, starting, plans = [], [], []
        for job in jobs:
            native = statuses.get(job["scheduler_id"])
            if job["id"] in tasks:
                plans.append(self._plan_array(job, native, tasks[job["id"]], statuses, scheduler))
            elif native is None or is_terminal(native.state):
                gone.append((job, native))
            else:
                self._observe(job, native, scheduler)
                if native.state is JobState.RUNNING and job["started_at"] is None:
                    starting.append(job)
        files: dict[str, dict[int, job_arrays.TaskFiles]] | None = {}
        if gone or starting or any(plan.reads for plan in plans):
            files = self._finish_from_files(infra, gone, starting, plans)
        if files is not None:
            for plan in plans:
                self._apply_array(plan, infra, files.get(plan.job["id"], {}))

    def _plan_array(self, job: dict[str, Any], native, tasks: list[dict[str, Any]], statuses, scheduler) -> ArrayPlan:
        """How the scheduler lists each unfinished task of an array, and whose files to read."""
        listed = (native.tasks or {}) if native is not None else {}
        queued = None
        if native is not None and not is_terminal(native.state):
            queued = NativeStatus(native.scheduler_id, JobState.QUEUED, native.native_state, native.reason)
        observed: dict[int, Any] = {}
        for task in tasks:
            index = task["task_index"]
            if scheduler.reports_array_tasks:
                observed[index] = listed.get(index)
            elif task["scheduler_id"]:
                observed[index] = statuses.get(task["scheduler_id"])
            else:
                observed[index] = queued  # not started: waits in the array's own record, if it has one
        reads = [t["task_index"] for t in tasks
                 if job_arrays.needs_files(t, observed[t["task_index"]], scheduler.reports_array_tasks)]
        if native is not None and scheduler.never_satisfied(native) and not job["cancel_requested"]:
            reason = self._never_satisfied(job, native)
            if reason:
                self._cancel_for(job["id"], reason)
        return ArrayPlan(job, native, tasks, observed, reads[: job_arrays.MAX_TASK_READS])

    def _apply_array(self, plan: ArrayPlan, infra: dict[str, Any], files: dict[int, job_arrays.TaskFiles]) -> None:
        """Records what one poll learnt about an array's tasks, then the array's own state."""
        job = plan.job
        walltime = self._resources(job["spec"].get("resources") or {}, infra, job["spec"]["kind"]).walltime_s
        read = set(plan.reads)
        now = utcnow()
        changes = {}
        for task in plan.tasks:
            index = task["task_index"]
            found = files.get(index, job_arrays.TaskFiles()) if index in read else None
            change = job_arrays.decide_task(task, plan.observed[index], found, now=now, walltime_s=walltime,
                                            cancel_requested=job["cancel_requested"])
            if change:
                changes[index] = change
        if changes:
            self.store.tasks.update_many(job["id"], changes, ENDED)
        counts = self.store.tasks.counts(job["id"])
        total = sum(counts.values())
        outcome = job_arrays.summary([], counts, total, job["cancel_requested"])
        started = [c["started_at"] for c in changes.values() if c.get("started_at")]
        update: dict[str, Any] = {"task_counts": counts, "next_poll_at": self._next_poll(job), "poll_failures": 0,
                                  "missing_polls": 0}
        if job["started_at"] is None and started:
            update["started_at"] = min(started)
        if plan.native is not None:
            update.update(native_state=plan.native.native_state, reason=plan.native.reason)
        if outcome["state"] in ENDED:
            everything, _ = self.store.tasks.page(job["id"], state=None, limit=total, offset=0)
            outcome = job_arrays.summary(everything, counts, total, job["cancel_requested"])
            ends = [t["ended_at"] for t in everything if t["ended_at"]]
            reason = outcome["reason"]
            if outcome["state"] == "cancelled" and job["cancel_reason"]:
                reason = job["cancel_reason"]
            self._end(job, outcome["state"], exit_code=outcome["exit_code"], reason=reason,
                      native_state=update.get("native_state", job["native_state"]),
                      ended_at=max(ends) if ends else None,
                      **{k: v for k, v in update.items() if k in ("task_counts", "started_at")})
            return
        state = advance(JobState(job["state"]) if job["state"] != SUBMITTING else JobState.QUEUED,
                        JobState(outcome["state"]))
        if job["cancel_reason"]:
            update["reason"] = job["cancel_reason"]
        self.store.jobs.update(job["id"], state=state.value, **update)

    def _never_satisfied(self, job: dict[str, Any], native) -> str | None:
        """Why a job the scheduler keeps waiting on an impossible dependency is to be cancelled: the
        predecessor whose end rules it out by the gateway's own rule; else, once every predecessor has
        ended in the gateway too, all of them. None while the gateway has yet to see a predecessor end
        (its own check names it then)."""
        deps = self.store.dependencies.for_jobs([job["id"]])[job["id"]] if (job["spec"] or {}).get("after") else []
        states = {}
        for dep in deps:
            target = self.store.jobs.get(dep["target_id"])
            states[dep["target_id"]] = target["state"] if target else None
            if target is None or condition_outcome(dep["condition"], target["state"]) is False:
                self.store.dependencies.update(job["id"], dep["position"], state="unsatisfiable")
                return job_dependencies.unsatisfiable_reason({**dep, "target_state": states[dep["target_id"]]})
        if any(state not in ENDED for state in states.values()):
            return None
        names = ", ".join(f"job {d['target_id']} (after {d['condition']})" for d in deps if d["mode"] == "native")
        return (f"the scheduler reports that its dependencies can never be satisfied ({native.reason})"
                + (f": {names}" if names else ""))

    def _poll_failed(self, name: str, jobs: list[dict[str, Any]], reason: str) -> None:
        _, previous = self._backoff.get(name, (utcnow(), 0.0))
        delay = min(BACKOFF_MAX, max(2.0, previous * 2))
        self._backoff[name] = (utcnow() + timedelta(seconds=delay), delay)
        log.warning("polling %s failed (next try in %.0fs): %s", name, delay, reason)
        for job in jobs:
            self.store.jobs.update(job["id"], reason=f"tracking paused: {reason}",
                                   poll_failures=job["poll_failures"] + 1)

    def _next_poll(self, job: dict[str, Any]) -> datetime:
        return utcnow() + timedelta(seconds=job["watch_period"])

    def _observe(self, job: dict[str, Any], native, scheduler=None) -> None:
        if scheduler is not None and scheduler.never_satisfied(native) and not job["cancel_requested"]:
            reason = self._never_satisfied(job, native)
            if reason:
                self._cancel_for(job["id"], reason)
                job = self.store.jobs.get(job["id"])
        current = JobState(job["state"]) if job["state"] != SUBMITTING else JobState.QUEUED
        new = advance(current, native.state)
        if native.state is JobState.UNKNOWN:
            log.warning("job %s: unknown native state %r kept beside %s", job["id"], native.native_state, new.value)
        changes: dict[str, Any] = {
            "native_state": native.native_state,
            "reason": job["cancel_reason"] or native.reason,
            "next_poll_at": self._next_poll(job),
            "poll_failures": 0,
            "missing_polls": 0,
        }
        changes["state"] = new.value
        if new.value != job["state"]:
            log.info("job %s: %s -> %s (%s)", job["id"], job["state"], new.value, native.native_state)
        self.store.jobs.update(job["id"], **changes)

    def _finish_from_files(self, infra: dict[str, Any], gone: list[tuple[dict[str, Any], Any]],
                           starting: list[dict[str, Any]] = (), plans: list[ArrayPlan] = ()
                           ) -> dict[str, dict[int, job_arrays.TaskFiles]] | None:
        """Reads the job files (exit_code, started, ended) in one command: ends the jobs that left the
        queue or that the scheduler reports ended, and records when ``starting`` jobs began. The same
        command reads the files of the array tasks the ``plans`` name, returned per job and index
        (None when the command failed).

        The times are the cluster's record, written by the batch script itself, not the moment a poll
        happened to notice: a job shorter than the poll period would otherwise never be seen running.
        """
        parts = [
            f"d={quote(job['job_dir'])}; printf '@@%s\\n' {quote(job['id'])}; "
            'for f in exit_code started ended; do printf "%s=" "$f"; cat "$d/$f" 2>/dev/null || echo; done'
            for job in [job for job, _ in gone] + list(starting)
        ]
        parts += [f"printf '@@%s\\n' {quote(plan.job['id'])}; "
                  + job_arrays.read_command(plan.job["job_dir"], plan.reads)
                  for plan in plans if plan.reads]
        script = "; ".join(parts)
        self._count(infra["name"], "exit_codes")
        try:
            # On stdin, not as the command: 5,000 jobs leaving at once (a mass cancel in bench/replicas.py)
            # made a 1 MB command line, and sshd resets a connection whose exec request exceeds 256 KiB.
            result = self.infrastructures.run(infra, "sh -s", stdin=script.encode(), action="reading exit codes")
        except DomainError as exc:
            self._poll_failed(infra["name"], [job for job, _ in gone] + list(starting) + [p.job for p in plans],
                              exc.detail)
            return None
        files: dict[str, dict[str, str]] = {}
        task_files: dict[str, dict[int, job_arrays.TaskFiles]] = {}
        current = None
        current_id = ""
        for line in result.stdout.splitlines():
            if line.startswith("@@"):
                current_id = line[2:].strip()
                current = files.setdefault(current_id, {})
            elif line.startswith("t "):
                parsed = job_arrays.parse_task_line(line)
                if parsed is not None:
                    task_files.setdefault(current_id, {})[parsed[0]] = parsed[1]
            elif current is not None and "=" in line:
                key, _, value = line.partition("=")
                current[key] = value.strip()
        for job in starting:
            started = _epoch(files.get(job["id"], {}).get("started"))
            if started is not None:
                self.store.jobs.update(job["id"], started_at=started)
        for job, native in gone:
            found = files.get(job["id"], {})
            raw = found.get("exit_code", "")
            started, ended = _epoch(found.get("started")), _epoch(found.get("ended"))
            hint = CANCEL_REQUESTED if job["cancel_requested"] else (
                native.native_state if native else job["native_state"])
            if not raw.lstrip("-").isdigit():
                if native is not None and is_terminal(native.state):
                    cancelled = job["cancel_requested"] and native.state is not JobState.COMPLETED
                    state = JobState.CANCELLED if cancelled else native.state
                    self._end(job, state.value, exit_code=native.exit_code, native_state=native.native_state,
                              reason=native.reason or (self._reason(state, native.exit_code)
                                                       if native.exit_code is not None else None),
                              started_at=started or job["started_at"], ended_at=ended)
                elif job["missing_polls"] + 1 >= MISSING_POLLS_LIMIT:
                    state = "cancelled" if job["cancel_requested"] else "unknown"
                    self._end(job, state, reason="the job left the scheduler's queue without an exit code"
                              + (" (cancelled before it ran)" if job["cancel_requested"] else ""))
                else:
                    self.store.jobs.update(job["id"], missing_polls=job["missing_polls"] + 1,
                                           next_poll_at=self._next_poll(job))
                continue
            exit_code = int(raw)
            runtime = int((ended - started).total_seconds()) if started and ended else None
            walltime = self._resources(job["spec"].get("resources") or {}, infra, job["spec"]["kind"]).walltime_s
            state = final_state_from_exit_code(exit_code, hint, runtime_s=runtime, walltime_s=walltime)
            if native is not None and is_terminal(native.state) and native.state is not JobState.COMPLETED:
                state = native.state if not job["cancel_requested"] else JobState.CANCELLED
            self._end(job, state.value, exit_code=exit_code, native_state=native.native_state if native else None,
                      reason=(native.reason if native else None) or self._reason(state, exit_code),
                      started_at=started or job["started_at"], ended_at=ended)
        return task_files

    @staticmethod
    def _reason(state: JobState, exit_code: int) -> str | None:
        return {
            JobState.FAILED: f"exited with code {exit_code}",
            JobState.TIMEOUT: "killed at its walltime limit",
            JobState.CANCELLED: "cancelled",
        }.get(state)

    def _send_cancel(self, infra, scheduler, jobs: list[dict[str, Any]]) -> None:
        self._count(infra["name"], "cancel")
        try:
            result = self.infrastructures.run(infra, scheduler.cancel_command([j["scheduler_id"] for j in jobs]),
                                              action="cancelling jobs")
            scheduler.parse_cancel(result.exit_code, result.stdout, result.stderr)
        except (DomainError, SchedulerCommandError) as exc:
            log.warning("cancelling jobs on %s failed, will retry: %s", infra["name"], exc)
            return
        now = utcnow()
        for job in jobs:
            # Poll soon: the scheduler reports the cancellation within seconds.
            self.store.jobs.update(job["id"], cancel_sent_at=now, next_poll_at=now + timedelta(seconds=1))
        log.info("asked %s to cancel %s", infra["name"], ", ".join(j["scheduler_id"] for j in jobs))

    # -- shared -------------------------------------------------------------------------------

    def _end(self, job: dict[str, Any], state: str, **changes: Any) -> None:
        """Moves a job to its final state, once: a job already ended is never touched again. A job the
        gateway cancelled for a reason (``cancel_reason``) ends with that reason; an array's tasks that
        never ended end with it."""
        changes.setdefault("ended_at", None)
        changes["ended_at"] = changes["ended_at"] or utcnow()
        current = self.store.jobs.get(job["id"]) or job
        if state == "cancelled" and current.get("cancel_reason"):
            changes["reason"] = current["cancel_reason"]
        if (job["spec"] or {}).get("array"):
            task_state = state if state in ("cancelled", "failed") else "unknown"
            self.store.tasks.end_unfinished(job["id"], ENDED, state=task_state, ended_at=changes["ended_at"],
                                            reason=changes.get("reason") or f"the array ended {state}")
            changes["task_counts"] = self.store.tasks.counts(job["id"])
        if current.get("phase"):
            if self.staging is not None and self.staging.outputs_run({**current, **changes}, state,
                                                                     changes.get("exit_code")):
                # The job's outcome waits in end_state while its outputs stage (hpc.services.job_staging).
                if self.store.jobs.update(job["id"], [self.store.jobs.table.c.state.not_in(POLL_DONE)],
                                          state=STAGING_OUT, end_state=state, phase=job_staging.STAGING_OUT,
                                          lease_owner=None, lease_until=None, **changes):
                    log.info("job %s ended %s on the cluster; staging its outputs", job["id"], state)
                    self._wake.set()
                return
            changes["phase"] = job_staging.DONE
        ended = self.store.jobs.update(
            job["id"],
            [self.store.jobs.table.c.state.not_in(POLL_DONE)],
            state=state,
            lease_owner=None,
            lease_until=None,
            **changes,
        )
        if ended:
            log.info("job %s ended: %s (exit code %s) %s", job["id"], state, changes.get("exit_code"),
                     changes.get("reason") or "")
            metrics.job_ended(job["infrastructure"], state)

    def _count(self, infrastructure: str, kind: str) -> None:
        with self._lock:
            self.counters[infrastructure][kind] += 1
        metrics.job_command(infrastructure, kind)



"""Jobs: submission in the background, batched tracking, cancellation, output, durable state.

Life of a job::

    submitting -> queued -> running -> completed | failed | cancelled | timeout | unknown

A POST stores the job as ``submitting`` and answers at once. A background worker claims it (a lease in
the store, so replicas never submit one job twice), writes its files into a job directory on the
cluster, and submits it; the submit command leaves the scheduler's id in ``<job_dir>/submit.out``, so a
gateway that died mid-submission adopts that id instead of submitting again.

One poller per infrastructure (one replica holds its lease) sends ONE status command per period for all
the infrastructure's active jobs. Jobs that left the queue get their outcome from the ``exit_code`` file
the batch script writes, read for all of them in one more command. SSH or scheduler faults never end a
job: it keeps its state with the fault as ``reason``, and tracking resumes when the cluster answers.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

from hpc.config import Config
from hpc.errors import ClusterUnavailable, Conflict, DomainError, InvalidInput, NotFound
from hpc.schedulers import (
    CANCEL_REQUESTED,
    JobSpec,
    JobState,
    Resources,
    SchedulerCommandError,
    SchedulerParseError,
    advance,
    final_state_from_exit_code,
    get_scheduler,
    is_terminal,
)
from hpc.schedulers import serrano
from hpc.security import Principal
from hpc.services.infrastructures import InfrastructureService
from hpc.services.leases import dead_local_owners
from hpc.ssh import quote
from hpc.store import Store
from hpc.store.tables import utcnow

log = logging.getLogger(__name__)

SUBMITTING = "submitting"
TERMINAL = ("completed", "failed", "cancelled", "timeout", "unknown")
ENDED = frozenset(TERMINAL)

DEFAULT_JOB_ROOT = ".hpc-gateway/jobs"
_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

TICK = 0.5  # seconds between scans for due work
POLL_LEASE = 60.0  # seconds a replica holds an infrastructure's poll lease without renewing it
SUBMIT_LEASE = 120.0
SUBMIT_GIVE_UP = timedelta(minutes=10)  # cluster unreachable this long after the request: the job fails
MISSING_POLLS_LIMIT = 3  # polls a job may be absent from the queue with no exit code before it is unknown
BACKOFF_MAX = 60.0


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


def status_code(state: str) -> str:
    """The seed's ``status``: only queued, running or completed (= ended, whatever the outcome)."""
    if state in ENDED:
        return "completed"
    return "running" if state == "running" else "queued"


def _epoch(text: str | None) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(text.strip()), timezone.utc) if text and text.strip() else None
    except (ValueError, OverflowError):
        return None


class JobService:
    """Creates, tracks, cancels and reads jobs on registered infrastructures."""

    def __init__(self, config: Config, store: Store, infrastructures: InfrastructureService):
        self.config = config
        self.store = store
        self.infrastructures = infrastructures
        self.owner = config.resolved_instance_id
        # Commands sent, per infrastructure and kind (status, submit, cancel, exit_codes): for
        # /stats, the tracking-cost benchmark and the test that counts status commands.
        self.counters: dict[str, Counter] = defaultdict(Counter)
        self._homes: dict[str, str] = {}
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
        try:
            infra = self.infrastructures.get(request.infrastructure)
        except NotFound as exc:
            raise InvalidInput(exc.detail, "infrastructure") from None
        kinds = [k for k in ("services", "script", "command") if getattr(request, k) is not None]
        if len(kinds) != 1:
            raise InvalidInput("give exactly one of services, script or command", "services")
        kind = {"services": "serrano"}.get(kinds[0], kinds[0])
        spec: dict[str, Any] = {"kind": kind}
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
        resources = request.resources.model_dump(mode="json", exclude_none=True) if request.resources else {}
        self._resources(resources, infra, kind)  # validates now, so a bad request is a 400, not a failed job
        spec.update(resources=resources, workdir=request.workdir, env=env)
        settings = infra["settings"] or {}
        minimum = float(settings.get("min_watch_period") or self.config.min_watch_period)
        now = utcnow()
        row = self.store.jobs.insert(
            {
                "id": str(uuid.uuid4()),
                "infrastructure": infra["name"],
                "owner": principal.name,
                "kind": kind,
                "name": name[:256],
                "spec": spec,
                "scheduler_id": "",
                "state": SUBMITTING,
                "watch_period": max(float(request.watch_period if request.watch_period is not None else 10.0), minimum),
                "cancel_requested": False,
                "created_at": now,
                "updated_at": now,
                "poll_failures": 0,
                "missing_polls": 0,
                "submit_attempts": 0,
            }
        )
        log.info("job %s accepted for %s (%s) by %s", row["id"], infra["name"], kind, principal.name)
        self._wake.set()
        return row

    @staticmethod
    def _resources(values: dict[str, Any], infra: dict[str, Any], kind: str) -> Resources:
        """Typed resources; SERRANO jobs start from the infrastructure's ``serrano_resources``."""
        merged = dict((infra["settings"] or {}).get("serrano_resources") or {}) if kind == "serrano" else {}
        merged.update(values or {})
        walltime = merged.pop("walltime", None)
        try:
            return Resources(walltime_s=walltime_seconds(walltime) if walltime else None, **merged)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"resources: {exc}", "resources") from None

    def get(self, job_id: str, principal: Principal) -> dict[str, Any]:
        row = self.store.jobs.get(str(job_id))
        if row is None or not (principal.is_admin or row["owner"] == principal.name):
            raise NotFound(f"no job {job_id}", "job_id")
        return row

    def list(self, principal: Principal, *, infrastructure=None, state=None, since=None, limit=100, offset=0):
        return self.store.jobs.page(
            owner=None if principal.is_admin else principal.name,
            infrastructure=infrastructure,
            state=state,
            since=since,
            limit=limit,
            offset=offset,
        )

    def cancel(self, job_id: str, principal: Principal) -> dict[str, Any]:
        """Asks for cancellation (idempotent); the poller tells the scheduler. 409 once the job ended."""
        row = self.get(job_id, principal)
        if row["state"] in ENDED:
            raise Conflict(f"job {job_id} has ended ({row['state']}): nothing to cancel", "job_id")
        if not row["cancel_requested"]:
            self.store.jobs.update(row["id"], cancel_requested=True)
            log.info("job %s: cancel requested by %s", row["id"], principal.name)
            self._wake.set()
        return self.store.jobs.get(row["id"])

    def output(self, job_id: str, principal: Principal, stream: str, offset: int, length: int) -> dict[str, Any]:
        """Reads ``length`` bytes of the job's stdout or stderr from ``offset`` (to tail a running job)."""
        row = self.get(job_id, principal)
        result = {"stream": stream, "offset": offset, "next_offset": offset, "size": 0, "data": "", "eof": True,
                  "job_state": row["state"]}
        if not row["job_dir"]:
            return result  # not yet submitted: nothing written
        infra = self.infrastructures.get(row["infrastructure"])
        path = f"{row['job_dir']}/{stream}"
        with self.infrastructures.files(infra, "reading job output") as files:
            info = files.stat(path)
            if info is None:
                return result
            size = info.size
            data = files.read_file(path, offset, length) if offset < size else b""
        result.update(size=size, data=data.decode("utf-8", errors="replace"), next_offset=offset + len(data),
                      eof=offset + len(data) >= size)
        return result

    def stats(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {name: dict(counter) for name, counter in self.counters.items()}

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
        with self._lock:
            busy = set(self._in_flight)
        for row in self.store.jobs.claim_submissions(self.owner, SUBMIT_LEASE, limit=32):
            if row["id"] in busy:
                continue
            with self._lock:
                self._in_flight.add(row["id"])
            self._pool.submit(self._submit_guarded, row)
        for name in self.store.jobs.active_infrastructures(TERMINAL):
            with self._lock:
                if name in self._polling:
                    continue
                self._polling.add(name)
            self._pool.submit(self._poll_guarded, name)

    # -- submission ---------------------------------------------------------------------------

    def _submit_guarded(self, row: dict[str, Any]) -> None:
        try:
            self._submit(row)
        except Exception:
            log.exception("job %s: submission failed unexpectedly", row["id"])
            self._end(row, "failed", reason="the gateway failed while submitting; see its log")
        finally:
            with self._lock:
                self._in_flight.discard(row["id"])

    def _submit(self, row: dict[str, Any]) -> None:
        job_id = row["id"]
        if row["cancel_requested"] and not row["job_dir"]:
            self._end(row, "cancelled", reason="cancelled before it was submitted")
            return
        try:
            infra = self.infrastructures.get(row["infrastructure"])
        except NotFound:
            self._end(row, "failed", reason=f"infrastructure {row['infrastructure']!r} is no longer registered")
            return
        scheduler = get_scheduler(infra["scheduler"])
        attempts = row["submit_attempts"] + 1
        self.store.jobs.update(job_id, submit_attempts=attempts)
        try:
            home = self._home(infra)
            job_dir = row["job_dir"] or self._job_dir(infra, home, job_id)
            spec = self._job_spec(row, infra, home, job_dir)
            if row["job_dir"]:
                adopted = self._adopt(infra, scheduler, job_dir)
                if adopted:
                    log.info("job %s: adopted scheduler id %s from an interrupted submission", job_id, adopted)
                    self._submitted(row, adopted)
                    return
            self.store.jobs.update(job_id, job_dir=job_dir)
            script_path = f"{job_dir}/job.sh"
            payload = self._payload(row, infra, home).encode()
            with self.infrastructures.files(infra, "writing the job's files") as files:
                files.mkdir(job_dir, 0o700)
                files.write_file(spec.payload, payload, 0o700)
                files.write_file(script_path, scheduler.render_script(spec).encode(), 0o700)
            command, stdin = scheduler.submit_command(spec, script_path)
            if self.store.jobs.get(job_id)["cancel_requested"]:
                self._end(row, "cancelled", reason="cancelled before it was submitted")
                return
            self._count(infra["name"], "submit")
            result = self.infrastructures.run(infra, command, stdin=stdin, action="submitting the job")
        except DomainError as exc:
            self._retry_submission(row, exc.detail)
            return
        try:
            scheduler_id = scheduler.parse_submit(result.exit_code, result.stdout, result.stderr)
        except SchedulerCommandError as exc:
            log.info("job %s: the scheduler refused it: %s", job_id, exc.message)
            self._end(row, "failed", reason=f"the scheduler refused the job: {exc.message}")
            return
        self._submitted(row, scheduler_id)

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
        """The scheduler id an earlier, interrupted submission left in ``submit.out``, if any."""
        result = self.infrastructures.run(infra, f"cat {quote(job_dir + '/submit.out')}", action="reconciling")
        if result.exit_code != 0 or not result.stdout.strip():
            return None
        try:
            return scheduler.parse_submit(0, result.stdout, "")
        except SchedulerCommandError:
            return None

    def _home(self, infra: dict[str, Any]) -> str:
        name = infra["name"]
        if name not in self._homes:
            result = self.infrastructures.run(infra, 'printf %s "$HOME"', action="finding the home directory")
            home = result.stdout.strip()
            if result.exit_code != 0 or not home.startswith("/"):
                raise ClusterUnavailable(f"cannot find the home directory of {infra['username']}")
            self._homes[name] = home
        return self._homes[name]

    @staticmethod
    def _absolute(path: str, home: str) -> str:
        path = serrano.resolve_home(path, home)
        return path if path.startswith("/") else f"{home.rstrip('/')}/{path}"

    def _job_dir(self, infra: dict[str, Any], home: str, job_id: str) -> str:
        root = (infra["settings"] or {}).get("job_root") or DEFAULT_JOB_ROOT
        return f"{self._absolute(root, home).rstrip('/')}/{job_id}"

    def _job_spec(self, row: dict[str, Any], infra: dict[str, Any], home: str, job_dir: str) -> JobSpec:
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
        )

    @staticmethod
    def _payload(row: dict[str, Any], infra: dict[str, Any], home: str) -> str:
        spec = row["spec"]
        if spec["kind"] == "script":
            return spec["script"]
        if spec["kind"] == "command":
            return "#!/bin/bash\nexec " + " ".join(quote(word) for word in spec["command"]) + "\n"
        settings = infra["settings"] or {}
        launcher = settings.get("mpi_launcher", "mpirun -n {num_mpi_procs}")
        return serrano.render_payload(spec["services"], spec["params"], home=home, launcher=launcher)

    # -- tracking -----------------------------------------------------------------------------

    def _poll_guarded(self, name: str) -> None:
        try:
            if self.store.infrastructures.claim_poll(name, self.owner, POLL_LEASE):
                self._poll(name)
        except Exception:
            log.exception("polling %s failed unexpectedly", name)
        finally:
            with self._lock:
                self._polling.discard(name)

    def _poll(self, name: str) -> None:
        """One round for one infrastructure: cancels, then ONE status command if any job is due."""
        now = utcnow()
        backoff_until = self._backoff.get(name, (now, 0.0))[0]
        if backoff_until > now:
            return
        jobs = [j for j in self.store.jobs.active(name, TERMINAL) if j["scheduler_id"]]
        if not jobs:
            return
        try:
            infra = self.infrastructures.get(name)
        except NotFound:
            return
        scheduler = get_scheduler(infra["scheduler"])
        to_cancel = [j for j in jobs if j["cancel_requested"] and j["cancel_sent_at"] is None]
        if to_cancel:
            self._send_cancel(infra, scheduler, to_cancel)
        if not any(j["next_poll_at"] is None or j["next_poll_at"] <= now for j in jobs) and not to_cancel:
            return
        ids = [j["scheduler_id"] for j in jobs]
        self._count(name, "status")
        try:
            result = self.infrastructures.run(infra, scheduler.status_command(ids), action="polling job states")
            statuses = scheduler.parse_status(result.exit_code, result.stdout, result.stderr, ids)
        except (DomainError, SchedulerParseError) as exc:
            self._poll_failed(name, jobs, str(getattr(exc, "detail", exc)))
            return
        self._backoff.pop(name, None)
        gone = []
        for job in jobs:
            native = statuses.get(job["scheduler_id"])
            if native is None or (is_terminal(native.state) and native.exit_code is None):
                gone.append((job, native))
            else:
                self._observe(job, native)
        if gone:
            self._finish_from_files(infra, gone)

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

    def _observe(self, job: dict[str, Any], native) -> None:
        current = JobState(job["state"]) if job["state"] != SUBMITTING else JobState.QUEUED
        new = advance(current, native.state)
        if native.state is JobState.UNKNOWN:
            log.warning("job %s: unknown native state %r kept beside %s", job["id"], native.native_state, new.value)
        changes: dict[str, Any] = {
            "native_state": native.native_state,
            "reason": native.reason,
            "next_poll_at": self._next_poll(job),
            "poll_failures": 0,
            "missing_polls": 0,
        }
        if new is JobState.RUNNING and job["started_at"] is None:
            changes["started_at"] = utcnow()
        if is_terminal(new):
            if job["cancel_requested"] and new is not JobState.COMPLETED:
                new = JobState.CANCELLED
            if native.exit_code is not None:
                changes["reason"] = native.reason or self._reason(new, native.exit_code)
            self._end(job, new.value, exit_code=native.exit_code, **changes)
            return
        changes["state"] = new.value
        if new.value != job["state"]:
            log.info("job %s: %s -> %s (%s)", job["id"], job["state"], new.value, native.native_state)
        self.store.jobs.update(job["id"], **changes)

    def _finish_from_files(self, infra: dict[str, Any], gone: list[tuple[dict[str, Any], Any]]) -> None:
        """Reads exit_code/started/ended of jobs that left the queue, in one command, and ends them."""
        script = "; ".join(
            f"d={quote(job['job_dir'])}; printf '@@%s\\n' {quote(job['id'])}; "
            'for f in exit_code started ended; do printf "%s=" "$f"; cat "$d/$f" 2>/dev/null || echo; done'
            for job, _ in gone
        )
        self._count(infra["name"], "exit_codes")
        try:
            result = self.infrastructures.run(infra, script, action="reading exit codes")
        except DomainError as exc:
            self._poll_failed(infra["name"], [job for job, _ in gone], exc.detail)
            return
        files: dict[str, dict[str, str]] = {}
        current = None
        for line in result.stdout.splitlines():
            if line.startswith("@@"):
                current = files.setdefault(line[2:].strip(), {})
            elif current is not None and "=" in line:
                key, _, value = line.partition("=")
                current[key] = value.strip()
        for job, native in gone:
            found = files.get(job["id"], {})
            raw = found.get("exit_code", "")
            started, ended = _epoch(found.get("started")), _epoch(found.get("ended"))
            hint = CANCEL_REQUESTED if job["cancel_requested"] else (
                native.native_state if native else job["native_state"])
            if not raw.lstrip("-").isdigit():
                if native is not None and is_terminal(native.state):
                    self._end(job, native.state.value, reason=native.reason, native_state=native.native_state,
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
        """Moves a job to its final state, once: a job already ended is never touched again."""
        changes.setdefault("ended_at", None)
        changes["ended_at"] = changes["ended_at"] or utcnow()
        ended = self.store.jobs.update(
            job["id"],
            [self.store.jobs.table.c.state.not_in(TERMINAL)],
            state=state,
            lease_owner=None,
            lease_until=None,
            **changes,
        )
        if ended:
            log.info("job %s ended: %s (exit code %s) %s", job["id"], state, changes.get("exit_code"),
                     changes.get("reason") or "")

    def _count(self, infrastructure: str, kind: str) -> None:
        with self._lock:
            self.counters[infrastructure][kind] += 1



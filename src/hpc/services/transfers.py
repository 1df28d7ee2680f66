"""Transfers: HTTP(S) or S3 to a cluster file, a cluster file to S3, and batches of many files; durable,
resumable, owned.

Life of a transfer (and of a batch)::

    queued -> transferring -> verifying -> completed | failed | cancelled

A POST validates the request (URL form and every address its host resolves to, the cluster path
against the allowed roots), stores the transfer as ``queued`` and answers at once. Background workers
(``transfer_workers`` threads) claim queued or abandoned transfers and batches with a lease in the store,
so replicas never run one twice and a crashed replica's work is picked up when its lease runs out. The
work itself is :mod:`hpc.staging`; this module hands it the infrastructure's files
(:class:`hpc.transport.ClusterFiles` from :mod:`hpc.ssh`), persists what it reports through its progress
callback, and handles cancel, shutdown, secrets and the notification of whoever waits for the outcome
(:meth:`TransferService.add_listener`; a job service links its transfers with ``parent``).

Secrets: S3 keys and the full source URL (signed URLs carry credentials in their query) are stored
Fernet-encrypted in ``secrets_enc`` only while the transfer needs them; every terminal state sets it to
NULL. Everything shown or stored in plain columns is redacted (:func:`hpc.staging.addresses.redact_url`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any
from collections.abc import Callable

from hpc.config import Config
from hpc.errors import ClusterUnavailable, Conflict, InvalidInput, NotFound
from hpc.security import Principal, SecretBox
from hpc.services import metrics
from hpc.services.infrastructures import InfrastructureService
from hpc.services.leases import dead_local_owners
from hpc.staging.addresses import AddressPolicy, check_url, default_port, loggable_url, parse_networks, redact_url
from hpc.staging.cluster import Cluster
from hpc.staging.control import Control
from hpc.staging.errors import Cancelled, Interrupted, SourceError, StagingError
from hpc.staging.http import HttpSource
from hpc.staging.paths import resolve_remote_path, resolve_roots
from hpc.staging.progress import RateMeter
from hpc.staging.retry import with_retries
from hpc.staging.s3 import S3Source, S3Target, make_client
from hpc.staging.settings import Settings
from hpc.staging.spool import SpoolQuota, remove_leftovers
from hpc.staging.to_cluster import ToCluster
from hpc.staging.to_s3 import ToS3
from hpc.store import Store
from hpc.store.tables import utcnow

log = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "cancelled")
KINDS = ("http", "s3_data", "s3_result")
TICK = 0.5  # seconds between progress writes / cancel checks of a running transfer
IDLE = 1.0  # seconds between scans for claimable work when idle
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")

Listener = Callable[[str, dict[str, Any]], None]


def settings_of(config: Config) -> Settings:
    return Settings(
        retries=config.transfer_retries,
        retry_delay=config.transfer_retry_delay,
        sftp_streams=config.sftp_streams,
        parallel_threshold=config.sftp_parallel_threshold,
        max_rate=config.transfer_max_rate,
        part_size=config.s3_part_size,
        s3_concurrency=config.s3_concurrency,
        command_timeout=config.ssh_command_timeout,
        io_timeout=config.transfer_io_timeout,
        stall_timeout=config.transfer_stall_timeout,
        verify_every=config.transfer_verify_every,
        batch_concurrency=config.batch_concurrency,
    )


class TransferService:
    """Transfers and batches: creation and validation, lookup, cancel, and the background workers."""

    def __init__(self, config: Config, store: Store, secrets: SecretBox, infrastructures: InfrastructureService):
        from hpc.services.batches import BatchService

        self.config = config
        self.store = store
        self.secrets = secrets
        self.infrastructures = infrastructures
        self.policy = AddressPolicy(parse_networks(config.source_allow_networks))
        self.quota = SpoolQuota(config.staging_quota)
        self.spool_dir = config.resolved_staging_dir / "spool"
        self.settings = settings_of(config)
        self.batches = BatchService(self)
        self._owner = config.resolved_instance_id
        self._homes: dict[tuple, str] = {}
        self._running: dict[str, Control] = {}
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- requests ------------------------------------------------------------------------------

    def create_http(self, request: Any, principal: Principal, parent: str | None = None, *,
                    transfer_id: str | None = None, check_only: bool = False) -> dict[str, Any]:
        """Accepts ``POST /data`` (an ``hpc.api.models.FileTransferRequest``).

        Args:
            parent: Links the transfer to what it serves (e.g. ``job:<id>``), for :meth:`list` and listeners.
            transfer_id: The id to make the transfer under (every ``create_*`` takes it): a job's staging
                chooses it beforehand, so making it again after a crash raises ``DuplicateKey`` instead of
                making a second one.
            check_only: Validate only: returns the checked fields with the resolved cluster ``path``,
                stores nothing.

        Raises:
            NotFound: No such infrastructure.
            InvalidInput: Bad URL (form, scheme, refused address) or a dst outside the allowed roots.
        """
        infra = self.infrastructures.get(request.infrastructure)
        self.check_source_url(request.src, "src")
        path, roots = self.resolve_path(infra, request.dst, "dst")
        return self._insert(principal, infra, "http", {"url": request.src}, path, roots, parent, transfer_id,
                            check_only, src=redact_url(request.src), dst=request.dst)

    def create_s3_data(self, request: Any, principal: Principal, parent: str | None = None, *,
                       transfer_id: str | None = None, check_only: bool = False) -> dict[str, Any]:
        """Accepts ``POST /s3_data`` (an ``hpc.api.models.S3FileTransferRequest``)."""
        infra = self.infrastructures.get(request.infrastructure)
        fields = self.check_s3(request)
        path, roots = self.resolve_path(infra, request.dst, "dst")
        return self._insert(principal, infra, "s3_data", self.keys(request), path, roots, parent, transfer_id,
                            check_only, dst=request.dst, object=request.object, **fields)

    def create_s3_result(self, request: Any, principal: Principal, parent: str | None = None, *,
                         transfer_id: str | None = None, check_only: bool = False) -> dict[str, Any]:
        """Accepts ``POST /s3_result`` (an ``hpc.api.models.S3ResultTransferRequest``)."""
        infra = self.infrastructures.get(request.infrastructure)
        fields = self.check_s3(request)
        path, roots = self.resolve_path(infra, request.src, "src")
        return self._insert(principal, infra, "s3_result", self.keys(request), path, roots, parent, transfer_id,
                            check_only, src=request.src, object=request.object, **fields)

    def get(self, transfer_id: str, kind: str | None, principal: Principal) -> dict[str, Any]:
        """A transfer of ``kind`` visible to ``principal`` (its owner, or an admin), else NotFound."""
        row = self.store.transfers.get(str(transfer_id))
        if row is None or (kind and row["kind"] != kind) or not visible(row, principal):
            raise NotFound(f"no transfer {transfer_id}")
        return row

    def list(self, principal: Principal, *, infrastructure: str | None = None, kind: str | None = None,
             state: str | None = None, since: str | datetime | None = None, parent: str | None = None,
             limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """A page of the transfers ``principal`` may see, newest first, and the total count."""
        return self.store.transfers.page(
            owner=None if principal.is_admin else principal.name, infrastructure=infrastructure, kind=kind,
            state=state, parent=parent, since=parse_since(since), limit=limit, offset=offset,
        )

    def cancel(self, transfer_id: str, kind: str | None, principal: Principal) -> dict[str, Any]:
        """Stops a transfer: at once if no worker started it, else within a second or two.

        Raises:
            NotFound: Not visible to ``principal``.
            Conflict: The transfer has already ended.
        """
        row = self.get(transfer_id, kind, principal)
        return self.request_cancel(self.store.transfers, row, principal, "transfer")

    def add_listener(self, listener: Listener) -> None:
        """Calls ``listener(kind, row)`` when a transfer (``kind`` "transfer") or a batch ("batch") ends in
        this process, with its final row. Listeners must be quick and must not raise."""
        self._listeners.append(listener)

    def notify(self, kind: str, row: dict[str, Any] | None) -> None:
        if row is None:
            return
        for listener in list(self._listeners):
            try:
                listener(kind, row)
            except Exception:  # a listener's fault must not break the worker
                log.exception("a %s listener failed", kind)

    # -- shared by transfers and batches --------------------------------------------------------

    def request_cancel(self, repository, row: dict[str, Any], principal: Principal, what: str) -> dict[str, Any]:
        if row["state"] in TERMINAL:
            raise Conflict(f"the {what} has already ended ({row['state']})")
        if repository.cancel_unstarted(row["id"], "cancelled by its owner"):
            self.notify(what, repository.get(row["id"]))
        else:
            repository.update(row["id"], where=[repository.table.c.state.not_in(TERMINAL)], cancel_requested=True)
            with self._lock:
                control = self._running.get(row["id"])
            if control is not None:
                control.stop(Cancelled("cancelled by its owner"))
            self._wake.set()
        log.info("%s %s: cancel requested by %s", what, row["id"], principal.name)
        return repository.get(row["id"])

    def check_source_url(self, url: str, field: str) -> None:
        try:
            parts = check_url(url)
        except ValueError as exc:
            raise InvalidInput(f"{field}: {exc}", field) from None
        self.check_host(parts.hostname, default_port(parts), field)

    def check_host(self, host: str, port: int, field: str) -> None:
        try:
            self.policy.resolve(host, port)
        except SourceError as exc:  # UnsafeAddress, or a name that does not resolve
            raise InvalidInput(f"{field}: {exc.reason}", field) from None

    def check_s3(self, request: Any) -> dict[str, Any]:
        try:
            parts = check_url(request.endpoint, default_scheme="https")
        except ValueError as exc:
            raise InvalidInput(f"endpoint: {exc}", "endpoint") from None
        self.check_host(parts.hostname, default_port(parts), "endpoint")
        if not _BUCKET.match(request.bucket):
            raise InvalidInput("bucket: letters, digits, '.', '-' and '_' only", "bucket")
        for name in ("object", "prefix"):
            if "\x00" in (getattr(request, name, None) or ""):
                raise InvalidInput(f"{name}: must not contain NUL", name)
        region = request.region if request.region is not None else "local"
        return {"endpoint": request.endpoint, "bucket": request.bucket, "region": region}

    @staticmethod
    def keys(request: Any) -> dict[str, str]:
        return {"access_key": request.access_key, "secret_key": request.secret_key}

    def home(self, infra: dict[str, Any]) -> str:
        key = (infra["name"], infra["host"], infra["port"], infra["username"])
        home = self._homes.get(key)
        if home is None:
            result = self.infrastructures.run(infra, 'printf "%s" "$HOME"', action="finding the home directory")
            home = result.stdout.strip()
            if result.exit_code != 0 or not home.startswith("/"):
                raise ClusterUnavailable(f"cannot find the home directory of {infra['username']} on {infra['name']}")
            self._homes[key] = home
        return home

    def resolve_path(self, infra: dict[str, Any], path: str, field: str, directory: bool = False
                     ) -> tuple[str, list[str]]:
        home = self.home(infra)
        allowed = (infra.get("settings") or {}).get("allowed_roots")
        try:
            resolved = resolve_remote_path(path.rstrip("/") if directory else path, home, allowed)
        except ValueError as exc:
            raise InvalidInput(f"{field}: {exc}", field) from None
        return resolved, resolve_roots(allowed, home)

    def encrypt(self, secrets: dict | None) -> str | None:
        return self.secrets.encrypt(json.dumps(secrets)) if secrets else None

    def decrypt(self, token: str | None) -> dict:
        return json.loads(self.secrets.decrypt(token) or "{}") if token else {}

    def cluster(self, row: dict[str, Any]) -> Cluster:
        infra = self.store.infrastructures.get(row["infrastructure"])
        if infra is None:
            raise StagingError(f"the infrastructure {row['infrastructure']!r} no longer exists")
        return Cluster(self.infrastructures.cluster_files(infra), (row["checkpoint"] or {})["roots"])

    def s3_client(self, row: dict[str, Any], secrets: dict, control: Control, report, pool_size: int):
        if "access_key" not in secrets:
            raise StagingError("the S3 keys of this transfer are gone")
        return with_retries(self.settings, control, report, f"transfer {row['id']}: resolving the S3 endpoint",
                            lambda: make_client(row["endpoint"], secrets["access_key"], secrets["secret_key"],
                                                row["region"], self.policy, pool_size=pool_size,
                                                read_timeout=self.settings.stall_timeout))

    def _insert(self, principal: Principal, infra: dict[str, Any], kind: str, secrets: dict | None, path: str,
                roots: list[str], parent: str | None, transfer_id: str | None = None, check_only: bool = False,
                **fields: Any) -> dict[str, Any]:
        if check_only:
            return {"path": path, **fields}
        now = utcnow()
        row = self.store.transfers.insert(
            {
                "id": transfer_id or str(uuid.uuid4()),
                "kind": kind,
                "infrastructure": infra["name"],
                "owner": principal.name,
                "parent": parent,
                "credential": principal.credential,
                "secrets_enc": self.encrypt(secrets),
                "state": "queued",
                "reason": "",
                "bytes_done": 0,
                "attempts": 0,
                # The resolved cluster path and roots travel with the transfer: a worker needs no
                # SSH round trip (and no home lookup) to know where it writes.
                "checkpoint": {"path": path, "roots": roots},
                "cancel_requested": False,
                "created_at": now,
                "updated_at": now,
                **fields,
            }
        )
        shown = loggable_url(fields["src"]) if kind == "http" else f"s3://{fields['bucket']}/{fields['object']}"
        log.info("transfer %s: %s %s -> %s for %s", row["id"], kind, shown if kind != "s3_result" else path,
                 path if kind != "s3_result" else shown, principal.name)
        self._wake.set()
        return row

    # -- background work -----------------------------------------------------------------------

    def start(self, stop: threading.Event) -> None:
        """Starts the workers; spool files and leases left by an earlier life of this replica are dropped."""
        removed = remove_leftovers(self.spool_dir)
        if removed:
            log.info("removed %d spool file(s) left by an earlier run", removed)
        for repository in (self.store.transfers, self.store.batches):
            for owner in {self._owner, *dead_local_owners(repository.lease_owners(TERMINAL))}:
                released = repository.release_leases(owner)
                if released:
                    log.info("took back %d lease(s) of %s, which is no longer running", released, owner)
        for number in range(max(1, self.config.transfer_workers)):
            thread = threading.Thread(target=self._work, args=(stop, f"{self._owner}/{number}"),
                                      name=f"transfers-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def workers(self) -> tuple[int, int]:
        """Worker threads alive, and started (0, 0 before start or without background work)."""
        return sum(thread.is_alive() for thread in self._threads), len(self._threads)

    def join(self, timeout: float) -> None:
        self._wake.set()
        with self._lock:
            controls = list(self._running.values())
        for control in controls:
            control.stop(Interrupted("the gateway is shutting down"))
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self, stop: threading.Event, owner: str) -> None:
        # Each worker holds leases under its own name: a lease names one runner, not one process.
        ttl = self.config.transfer_lease_seconds
        while not stop.is_set():
            claimed = None
            try:
                row = self.store.transfers.claim_next(owner, ttl, TERMINAL)
                claimed = ("transfer", row) if row else None
                if claimed is None:
                    row = self.store.batches.claim_next(owner, ttl, TERMINAL)
                    claimed = ("batch", row) if row else None
            except Exception:  # the store may be briefly unavailable; never let a worker die
                log.exception("claiming a transfer failed")
            if claimed is None:
                self._wake.wait(IDLE)
                self._wake.clear()
                continue
            kind, row = claimed
            try:
                if kind == "transfer":
                    self._execute(row, stop, owner)
                else:
                    self.batches.execute(row, stop, owner)
            except Exception:
                log.exception("%s %s: worker failed", kind, row["id"])

    def running(self, row_id: str, control: Control | None) -> None:
        with self._lock:
            if control is None:
                self._running.pop(row_id, None)
            else:
                self._running[row_id] = control

    def _execute(self, row: dict[str, Any], stop: threading.Event, owner: str) -> None:
        transfer_id = row["id"]
        repository = self.store.transfers
        if row["state"] in TERMINAL:
            repository.update(transfer_id, where=[repository.table.c.lease_owner == owner], lease_owner=None,
                              lease_until=None)
            return
        control = Control()
        tracker = Tracker(self, repository, row, control, stop, owner)
        self.running(transfer_id, control)
        pipeline = None
        started = time.monotonic()
        try:
            now = utcnow()
            tracker.write(state="transferring", started_at=row["started_at"] or now,
                          attempts=(row["attempts"] or 0) + 1)
            tracker.start()
            if row["cancel_requested"]:
                control.stop(Cancelled("cancelled by its owner"))
            pipeline = self._pipeline(row, control, tracker)
            if row["attempts"]:
                log.info("transfer %s: run %d, after an interruption", transfer_id, row["attempts"] + 1)
            control.check()
            result = pipeline.run()
            tracker.finish()
            tracker.moved(result.size)
            elapsed = max(time.monotonic() - started, 1e-6)
            log.info("transfer %s: completed, %d bytes in %.2fs (%.1f MB/s this run), sha256 %s", transfer_id,
                     result.size, elapsed, result.size / elapsed / 1e6, result.sha256)
            began = row["started_at"] or now
            total_seconds = max((utcnow() - began).total_seconds(), 1e-6)
            tracker.end("completed", "", sha256=result.sha256, bytes_done=result.size, bytes_total=result.size,
                        rate=result.size / total_seconds)
        except BaseException as exc:
            tracker.finish()
            outcome = tracker.outcome(exc)
            if outcome is None:
                return
            if pipeline is not None:
                try:
                    pipeline.cleanup()
                except Exception as cleanup_exc:  # best effort: the outcome is recorded whatever happens here
                    reason = cleanup_exc.reason if isinstance(cleanup_exc, StagingError) else repr(cleanup_exc)
                    log.warning("transfer %s: cleanup failed: %s", transfer_id, reason)
            tracker.end(*outcome)
        finally:
            tracker.finish()
            self.running(transfer_id, None)

    def _pipeline(self, row: dict[str, Any], control: Control, report):
        checkpoint = row["checkpoint"] or {}
        secrets = self.decrypt(row["secrets_enc"])
        common = dict(transfer_id=row["id"], cluster=self.cluster(row), spool_dir=self.spool_dir, quota=self.quota,
                      settings=self.settings, control=control, report=report, checkpoint=checkpoint.get("pipeline"))
        if row["kind"] == "http":
            source = HttpSource(secrets.get("url") or row["src"], self.policy,
                                read_timeout=self.settings.stall_timeout)
            return ToCluster(source=source, dst=checkpoint["path"], **common)
        client = self.s3_client(row, secrets, control, report, self.settings.s3_concurrency + 2)
        if row["kind"] == "s3_data":
            return ToCluster(source=S3Source(client, row["bucket"], row["object"]), dst=checkpoint["path"], **common)
        return ToS3(src=checkpoint["path"], target=S3Target(client, row["bucket"], row["object"]), **common)


def visible(row: dict[str, Any], principal: Principal) -> bool:
    return principal.is_admin or row["owner"] == principal.name


def parse_since(since: str | datetime | None) -> datetime | None:
    if isinstance(since, str):
        try:
            since = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput("since must be an ISO 8601 date-time", "since") from None
    if since is not None and since.tzinfo is None:
        raise InvalidInput("since must carry a time zone (for example 2024-01-31T12:00:00Z)", "since")
    return since


class Tracker:
    """One running transfer or batch, seen from the store.

    It is the pipeline's progress callback (``tracker(done=..., checkpoint=...)``): each call updates what
    is known, and the record is written when a checkpoint moves or at most every ``TICK`` seconds. A
    keeper thread renews the lease while the pipeline is silent and passes on a cancel or the shutdown.
    """

    def __init__(self, service: TransferService, repository, row: dict[str, Any], control: Control,
                 stop: threading.Event, owner: str, what: str = "transfer"):
        self._service = service
        self._repository = repository
        self._owner = owner
        self._what = what
        self.id = row["id"]
        self._base_attempts = (row["attempts"] or 0) + 1
        self._checkpoint = dict(row["checkpoint"] or {})
        self._control = control
        self._stop = stop
        self._done_event = threading.Event()
        self._meter = RateMeter()
        self._lock = threading.RLock()
        self._state = {"phase": "transferring", "done": row["bytes_done"] or 0, "total": row["bytes_total"],
                       "retries": 0}
        self._dirty_checkpoint = False
        self._written = 0.0
        self._where = (row["infrastructure"], row["kind"])
        self._counted = row["bytes_done"] or 0  # bytes already in hpc_transfer_bytes_total
        self.lost = False
        self.extra: Callable[[], dict[str, Any]] | None = None  # more columns to write (a batch's counts)
        self._thread = threading.Thread(target=self._run, name=f"keeper-{self.id[:8]}", daemon=True)

    # -- the progress callback -----------------------------------------------------------------

    def __call__(self, **changes: Any) -> None:
        with self._lock:
            for key in ("done", "total", "phase"):
                if key in changes:
                    self._state[key] = changes[key]
            self._state["retries"] += changes.get("retried", 0)
            if "checkpoint" in changes:
                self._checkpoint["pipeline"] = changes["checkpoint"]
                self._dirty_checkpoint = True
            due = self._dirty_checkpoint or time.monotonic() - self._written >= TICK
        if due:
            try:
                self.flush()
            except Exception:  # the callback must not raise into the pipeline; the keeper retries
                log.exception("%s %s: saving progress failed", self._what, self.id)

    def flush(self) -> None:
        """Writes the progress (and the checkpoint if it moved), renewing the lease; ``lost`` if it is gone."""
        with self._lock:
            self.moved(self._state["done"])
            self._meter.add(time.monotonic(), self._state["done"])
            state = "verifying" if self._state["phase"] == "verifying" else "transferring"
            values: dict[str, Any] = {
                "state": state,
                "bytes_done": self._state["done"],
                "bytes_total": self._state["total"],
                "rate": self._meter.rate() if state == "transferring" else None,
                "attempts": self._base_attempts + self._state["retries"],
                "lease_until": utcnow() + timedelta(seconds=self._service.config.transfer_lease_seconds),
            }
            if self._dirty_checkpoint:
                values["checkpoint"] = dict(self._checkpoint)
                self._dirty_checkpoint = False
            if self.extra is not None:
                values.update(self.extra())
            self._written = time.monotonic()
            if not self.write(**values):
                self.lost = True
                self._control.stop(Interrupted("lease lost"))

    def mark(self, **fields: Any) -> dict[str, Any]:
        """Adds fields to the record's checkpoint (written now); returns the checkpoint."""
        with self._lock:
            self._checkpoint.update(fields)
            self._dirty_checkpoint = True
        self.flush()
        return dict(self._checkpoint)

    def write(self, **values: Any) -> bool:
        """Updates the record only while this runner holds its lease; False if the lease is gone."""
        c = self._repository.table.c
        return self._repository.update(self.id, where=[c.lease_owner == self._owner], **values)

    # -- the keeper ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        self._done_event.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        while not self._done_event.wait(TICK):
            if time.monotonic() - self._written >= TICK:
                try:
                    self.flush()
                except Exception:
                    log.exception("%s %s: saving progress failed", self._what, self.id)
                    continue
            if self.lost:
                return
            if self._stop.is_set():
                self._control.stop(Interrupted("the gateway is shutting down"))
            row = self._repository.get(self.id)
            if row is not None and row["cancel_requested"]:
                self._control.stop(Cancelled("cancelled by its owner"))

    # -- the end -------------------------------------------------------------------------------

    def outcome(self, exc: BaseException) -> tuple[str, str] | None:
        """The terminal state and reason for an exception that ended a run; None when the run must not
        record one (lease lost: another runner carries on; interrupted: the next run resumes)."""
        if self.lost:
            log.warning("%s %s: lease lost; another runner carries on", self._what, self.id)
            return None
        if isinstance(exc, Interrupted):
            log.info("%s %s: interrupted (%s); it resumes on the next run", self._what, self.id, exc.reason)
            self.flush()
            self.write(lease_owner=None, lease_until=None, rate=None)
            return None
        if isinstance(exc, Cancelled):
            log.info("%s %s: cancelled", self._what, self.id)
            return "cancelled", "cancelled by its owner"
        if isinstance(exc, StagingError):
            log.warning("%s %s: failed: %s", self._what, self.id, exc.reason)
            return "failed", exc.reason
        if isinstance(exc, Exception):
            log.exception("%s %s: failed unexpectedly", self._what, self.id)
            return "failed", f"internal error: {type(exc).__name__}"
        raise exc

    def moved(self, done: int) -> None:
        """Counts the bytes moved since the last count in ``hpc_transfer_bytes_total`` (a leg restarted
        from an earlier offset moves some again: those count again)."""
        with self._lock:
            metrics.transfer_moved(*self._where, done - self._counted)
            self._counted = done

    def end(self, state: str, reason: str, **values: Any) -> bool:
        """Records the outcome (only while this runner holds the lease; False if it does not) and tells the
        listeners. A transfer's outcome is counted in ``hpc_transfers_ended_total`` (a batch's is not: it
        is many files)."""
        if self.extra is not None:
            values = {**self.extra(), **values}
        ended = self.write(state=state, reason=reason, ended_at=utcnow(), secrets_enc=None, checkpoint=None,
                           lease_owner=None, lease_until=None, **({"rate": None} | values))
        if ended and self._what == "transfer":
            metrics.transfer_ended(*self._where, state)
        self._service.notify(self._what, self._repository.get(self.id))
        return ended

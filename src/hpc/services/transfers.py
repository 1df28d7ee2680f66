"""Transfers: HTTP(S) or S3 to a cluster file, a cluster file to S3; durable, resumable, owned.

Life of a transfer::

    queued -> transferring -> verifying -> completed | failed | cancelled

A POST validates the request (URL form and every address its host resolves to, the cluster path
against the allowed roots), stores the transfer as ``queued`` and answers at once. Background workers
(``transfer_workers`` threads) claim queued or abandoned transfers with a lease in the store, so
replicas never run one transfer twice and a crashed replica's transfers are picked up when its lease
runs out. The work itself is :mod:`hpc.staging.pipeline`; this module adapts the infrastructure's SSH
connection to the pipeline's :class:`~hpc.staging.sftp.RemoteHost`, persists its progress and
checkpoints, and handles cancel, shutdown and secrets.

Per running transfer a keeper thread, every half second, writes the progress (bytes, rate, state) and
the last checkpoint, renews the lease, and looks for a cancel request. A cancel, or the gateway
shutting down, stops the pipeline through its :class:`~hpc.staging.pipeline.Control`: a cancel removes
the partial file (or aborts the multipart upload); a shutdown leaves it for the next run to resume.

S3 keys (and credentials written into a source URL) are stored Fernet-encrypted in ``secrets_enc``
only while the transfer needs them; every terminal state sets it to NULL. The URL shown in ``src``
has its password replaced by ``***``.
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

from hpc.config import Config
from hpc.errors import ClusterUnavailable, Conflict, InvalidInput, NotFound
from hpc.security import Principal, SecretBox
from hpc.services import metrics
from hpc.services.leases import dead_local_owners
from hpc.services.infrastructures import InfrastructureService
from hpc.ssh import (
    SSHAuthFailed,
    SSHConnection,
    SSHError,
    SSHHostKeyMismatch,
    SSHHostKeyUnknown,
    SSHKeyError,
    quote,
)
from hpc.staging.addresses import (
    AddressPolicy,
    check_url,
    default_port,
    loggable_url,
    parse_networks,
    redact_url,
)
from hpc.staging.errors import Cancelled, Interrupted, RemoteError, SourceError, StagingError
from hpc.staging.http import HttpSource
from hpc.staging.paths import resolve_remote_path, resolve_roots
from hpc.staging.pipeline import Control, Progress, Retrier, Settings, ToCluster, ToS3
from hpc.staging.progress import RateMeter
from hpc.staging.s3 import S3Source, S3Target, make_client
from hpc.staging.spool import SpoolQuota, remove_leftovers
from hpc.store import Store
from hpc.store.tables import utcnow

log = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "cancelled")
KINDS = ("http", "s3_data", "s3_result")
TICK = 0.5  # seconds between progress writes / cancel checks of a running transfer
IDLE = 1.0  # seconds between scans for claimable transfers when idle
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


class ClusterRemote:
    """An infrastructure's SSH connection as the staging layer's ``RemoteHost``.

    SSH faults become :class:`RemoteError`; those a retry cannot cure (key refused, host key unknown
    or changed) are marked final.
    """

    def __init__(self, connection: SSHConnection, command_timeout: float, dedicated: bool = False):
        self._connection = connection
        self._timeout = command_timeout
        self._dedicated = dedicated

    def run(self, command: str, timeout: float | None = None) -> tuple[int, str, str]:
        try:
            result = self._connection.run(command, timeout=timeout or self._timeout)
        except SSHError as exc:
            raise _remote_error(exc) from None
        return result.exit_code, result.stdout, result.stderr

    def open_sftp(self):
        try:
            return self._connection.open_sftp()
        except SSHError as exc:
            raise _remote_error(exc) from None

    def open_dedicated(self) -> "ClusterRemote":
        try:
            return ClusterRemote(self._connection.open_dedicated(), self._timeout, dedicated=True)
        except SSHError as exc:
            raise _remote_error(exc) from None

    def close(self) -> None:
        if self._dedicated:
            self._connection.close()


def _remote_error(exc: SSHError) -> RemoteError:
    final = isinstance(exc, (SSHAuthFailed, SSHHostKeyMismatch, SSHHostKeyUnknown, SSHKeyError))
    return RemoteError(f"SSH: {exc.reason}", retryable=not final)


def _settings(config: Config) -> Settings:
    return Settings(
        retries=config.transfer_retries,
        retry_delay=config.transfer_retry_delay,
        sftp_streams=config.sftp_streams,
        parallel_threshold=config.sftp_parallel_threshold,
        max_rate=config.transfer_max_rate,
        part_size=config.s3_part_size,
        s3_concurrency=config.s3_concurrency,
        command_timeout=config.ssh_command_timeout,
    )


class TransferService:
    """Transfers: creation and validation, lookup, cancel, and the background workers."""

    def __init__(self, config: Config, store: Store, secrets: SecretBox, infrastructures: InfrastructureService):
        self.config = config
        self.store = store
        self.secrets = secrets
        self.infrastructures = infrastructures
        self.policy = AddressPolicy(parse_networks(config.source_allow_networks))
        self.quota = SpoolQuota(config.staging_quota)
        self.spool_dir = config.resolved_staging_dir / "spool"
        self.settings = _settings(config)
        self._owner = config.resolved_instance_id
        self._homes: dict[tuple, str] = {}
        self._running: dict[str, Control] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stop: threading.Event | None = None

    # -- requests ------------------------------------------------------------------------------

    def create_http(self, request: Any, principal: Principal, *, transfer_id: str | None = None,
                    check_only: bool = False) -> dict[str, Any]:
        """Accepts ``POST /data`` (an ``hpc.api.models.FileTransferRequest``).

        Every ``create_*`` takes ``transfer_id`` (the id to make the transfer under: a job's staging
        chooses it beforehand, so making it again after a crash raises ``DuplicateKey`` instead of
        making a second one) and ``check_only`` (validate only: returns the checked fields with the
        resolved cluster ``path``, stores nothing).

        Raises:
            NotFound: No such infrastructure.
            InvalidInput: Bad URL (form, scheme, refused address) or a dst outside the allowed roots.
        """
        infra = self.infrastructures.get(request.infrastructure)
        try:
            parts = check_url(request.src)
        except ValueError as exc:
            raise InvalidInput(f"src: {exc}", "src") from None
        self._check_host(parts.hostname, default_port(parts), "src")
        shown = redact_url(request.src)
        secrets = {"url": request.src} if shown != request.src else None
        path, roots = self._resolve_path(infra, request.dst, "dst")
        return self._insert(principal, infra, "http", secrets, path, roots, transfer_id, check_only, src=shown,
                            dst=request.dst)

    def create_s3_data(self, request: Any, principal: Principal, *, transfer_id: str | None = None,
                       check_only: bool = False) -> dict[str, Any]:
        """Accepts ``POST /s3_data`` (an ``hpc.api.models.S3FileTransferRequest``)."""
        infra = self.infrastructures.get(request.infrastructure)
        fields = self._check_s3(request)
        path, roots = self._resolve_path(infra, request.dst, "dst")
        return self._insert(principal, infra, "s3_data", self._keys(request), path, roots, transfer_id, check_only,
                            dst=request.dst, **fields)

    def create_s3_result(self, request: Any, principal: Principal, *, transfer_id: str | None = None,
                         check_only: bool = False) -> dict[str, Any]:
        """Accepts ``POST /s3_result`` (an ``hpc.api.models.S3ResultTransferRequest``)."""
        infra = self.infrastructures.get(request.infrastructure)
        fields = self._check_s3(request)
        path, roots = self._resolve_path(infra, request.src, "src")
        return self._insert(principal, infra, "s3_result", self._keys(request), path, roots, transfer_id, check_only,
                            src=request.src, **fields)

    def get(self, transfer_id: str, kind: str | None, principal: Principal) -> dict[str, Any]:
        """A transfer of ``kind`` visible to ``principal`` (its owner, or an admin), else NotFound."""
        row = self.store.transfers.get(str(transfer_id))
        if row is None or (kind and row["kind"] != kind) or not (principal.is_admin or row["owner"] == principal.name):
            raise NotFound(f"no transfer {transfer_id}")
        return row

    def list(self, principal: Principal, *, infrastructure: str | None = None, kind: str | None = None,
             state: str | None = None, since: str | datetime | None = None, limit: int = 100,
             offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """A page of the transfers ``principal`` may see, newest first, and the total count."""
        if isinstance(since, str):
            try:
                since = datetime.fromisoformat(since.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidInput("since must be an ISO 8601 date-time", "since") from None
        if since is not None and since.tzinfo is None:
            raise InvalidInput("since must carry a time zone (for example 2024-01-31T12:00:00Z)", "since")
        return self.store.transfers.page(
            owner=None if principal.is_admin else principal.name, infrastructure=infrastructure, kind=kind,
            state=state, since=since, limit=limit, offset=offset,
        )

    def cancel(self, transfer_id: str, kind: str | None, principal: Principal) -> dict[str, Any]:
        """Stops a transfer: at once if no worker started it, else within a second or two.

        Raises:
            NotFound: Not visible to ``principal``.
            Conflict: The transfer has already ended.
        """
        row = self.get(transfer_id, kind, principal)
        if row["state"] in TERMINAL:
            raise Conflict(f"the transfer has already ended ({row['state']})")
        if not self.store.transfers.cancel_unstarted(row["id"], "cancelled by its owner"):
            self.store.transfers.update(row["id"], where=[self.store.transfers.table.c.state.not_in(TERMINAL)],
                                        cancel_requested=True)
            with self._lock:
                control = self._running.get(row["id"])
            if control is not None:
                control.stop(Cancelled("cancelled by its owner"))
            self._wake.set()
        log.info("transfer %s: cancel requested by %s", row["id"], principal.name)
        return self.store.transfers.get(row["id"])

    # -- validation helpers --------------------------------------------------------------------

    def _check_host(self, host: str, port: int, field: str) -> None:
        try:
            self.policy.resolve(host, port)
        except SourceError as exc:  # UnsafeAddress, or a name that does not resolve
            raise InvalidInput(f"{field}: {exc.reason}", field) from None

    def _check_s3(self, request: Any) -> dict[str, Any]:
        try:
            parts = check_url(request.endpoint, default_scheme="https")
        except ValueError as exc:
            raise InvalidInput(f"endpoint: {exc}", "endpoint") from None
        self._check_host(parts.hostname, default_port(parts), "endpoint")
        if not _BUCKET.match(request.bucket):
            raise InvalidInput("bucket: letters, digits, '.', '-' and '_' only", "bucket")
        if "\x00" in request.object:
            raise InvalidInput("object: must not contain NUL", "object")
        region = request.region if request.region is not None else "local"
        return {"endpoint": request.endpoint, "bucket": request.bucket, "object": request.object, "region": region}

    @staticmethod
    def _keys(request: Any) -> dict[str, str]:
        return {"access_key": request.access_key, "secret_key": request.secret_key}

    def _home(self, infra: dict[str, Any]) -> str:
        key = (infra["name"], infra["host"], infra["port"], infra["username"])
        home = self._homes.get(key)
        if home is None:
            result = self.infrastructures.run(infra, 'printf "%s" "$HOME"', action="finding the home directory")
            home = result.stdout.strip()
            if result.exit_code != 0 or not home.startswith("/"):
                raise ClusterUnavailable(f"cannot find the home directory of {infra['username']} on {infra['name']}")
            self._homes[key] = home
        return home

    def _resolve_path(self, infra: dict[str, Any], path: str, field: str) -> tuple[str, list[str]]:
        home = self._home(infra)
        allowed = (infra.get("settings") or {}).get("allowed_roots")
        try:
            resolved = resolve_remote_path(path, home, allowed)
        except ValueError as exc:
            raise InvalidInput(f"{field}: {exc}", field) from None
        return resolved, resolve_roots(allowed, home)

    def _insert(self, principal: Principal, infra: dict[str, Any], kind: str, secrets: dict | None, path: str,
                roots: list[str], transfer_id: str | None = None, check_only: bool = False,
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
                "credential": principal.credential,
                "secrets_enc": self.secrets.encrypt(json.dumps(secrets)) if secrets else None,
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
        self._stop = stop
        removed = remove_leftovers(self.spool_dir)
        if removed:
            log.info("removed %d spool file(s) left by an earlier run", removed)
        for owner in {self._owner, *dead_local_owners(self.store.transfers.lease_owners(TERMINAL))}:
            released = self.store.transfers.release_leases(owner)
            if released:
                log.info("took back %d transfer lease(s) of %s, which is no longer running", released, owner)
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
            try:
                row = self.store.transfers.claim_next(owner, ttl, TERMINAL)
            except Exception:  # the store may be briefly unavailable; never let a worker die
                log.exception("claiming a transfer failed")
                row = None
            if row is None:
                self._wake.wait(IDLE)
                self._wake.clear()
                continue
            try:
                self._execute(row, stop, owner)
            except Exception:
                log.exception("transfer %s: worker failed", row["id"])

    def _execute(self, row: dict[str, Any], stop: threading.Event, owner: str) -> None:
        transfer_id = row["id"]
        if row["state"] in TERMINAL:
            self._update(transfer_id, owner, lease_owner=None, lease_until=None)
            return
        checkpoint = row["checkpoint"] or {}
        control = Control()
        progress = Progress(done=row["bytes_done"] or 0, total=row["bytes_total"], checkpoint=checkpoint.get("pipeline"))
        with self._lock:
            self._running[transfer_id] = control
        keeper = _Keeper(self, row, control, progress, stop, owner)
        pipeline = None
        started = time.monotonic()
        try:
            now = utcnow()
            self._update(transfer_id, owner, state="transferring", started_at=row["started_at"] or now,
                         attempts=(row["attempts"] or 0) + 1)
            keeper.start()
            pipeline = self._pipeline(row, control, progress)
            if row["cancel_requested"]:
                control.stop(Cancelled("cancelled by its owner"))
            if row["attempts"]:
                log.info("transfer %s: run %d, after an interruption", transfer_id, row["attempts"] + 1)
            control.check()
            result = pipeline.run()
            keeper.finish()
            keeper.moved(result.size)
            elapsed = max(time.monotonic() - started, 1e-6)
            log.info("transfer %s: completed, %d bytes in %.2fs (%.1f MB/s this run), sha256 %s", transfer_id,
                     result.size, elapsed, result.size / elapsed / 1e6, result.sha256)
            began = row["started_at"] or now
            total_seconds = max((utcnow() - began).total_seconds(), 1e-6)
            if self._end(transfer_id, owner, "completed", "", sha256=result.sha256, bytes_done=result.size,
                         bytes_total=result.size, rate=result.size / total_seconds):
                metrics.transfer_ended(row["infrastructure"], row["kind"], "completed")
        except BaseException as exc:
            keeper.finish()
            if keeper.lost:
                # Another runner holds the transfer now: its files are not ours to touch.
                log.warning("transfer %s: lease lost; another runner carries on", transfer_id)
                return
            if isinstance(exc, Interrupted):
                log.info("transfer %s: interrupted (%s); it resumes on the next run", transfer_id, exc.reason)
                keeper.flush()
                self._update(transfer_id, owner, lease_owner=None, lease_until=None, rate=None)
                return
            if isinstance(exc, Cancelled):
                outcome, reason = "cancelled", "cancelled by its owner"
                log.info("transfer %s: cancelled", transfer_id)
            elif isinstance(exc, StagingError):
                outcome, reason = "failed", exc.reason
                log.warning("transfer %s: failed: %s", transfer_id, exc.reason)
            elif isinstance(exc, Exception):
                outcome, reason = "failed", f"internal error: {type(exc).__name__}"
                log.exception("transfer %s: failed unexpectedly", transfer_id)
            else:
                raise
            self._cleanup(transfer_id, pipeline)
            if self._end(transfer_id, owner, outcome, reason):
                metrics.transfer_ended(row["infrastructure"], row["kind"], outcome)
        finally:
            keeper.finish()
            with self._lock:
                self._running.pop(transfer_id, None)

    def _cleanup(self, transfer_id: str, pipeline) -> None:
        if pipeline is None:
            return
        try:
            pipeline.cleanup()
        except Exception as exc:  # best effort: the outcome is recorded whatever happens here
            reason = exc.reason if isinstance(exc, StagingError) else repr(exc)
            log.warning("transfer %s: cleanup failed: %s", transfer_id, reason)

    def _update(self, transfer_id: str, owner: str, **values: Any) -> bool:
        """Updates a transfer only while ``owner`` holds its lease; False if the lease is gone."""
        c = self.store.transfers.table.c
        return self.store.transfers.update(transfer_id, where=[c.lease_owner == owner], **values)

    def _end(self, transfer_id: str, owner: str, state: str, reason: str, **values: Any) -> bool:
        return self._update(
            transfer_id, owner, state=state, reason=reason, ended_at=utcnow(), secrets_enc=None, checkpoint=None,
            lease_owner=None, lease_until=None, **({"rate": None} | values),
        )

    def _pipeline(self, row: dict[str, Any], control: Control, progress: Progress):
        infra = self.store.infrastructures.get(row["infrastructure"])
        if infra is None:
            raise StagingError(f"the infrastructure {row['infrastructure']!r} no longer exists")
        checkpoint = row["checkpoint"] or {}
        secrets = json.loads(self.secrets.decrypt(row["secrets_enc"]) or "{}") if row["secrets_enc"] else {}
        common = dict(
            transfer_id=row["id"],
            remote=ClusterRemote(self.infrastructures.connection(infra), self.config.ssh_command_timeout),
            quote=quote,
            spool_dir=self.spool_dir,
            quota=self.quota,
            settings=self.settings,
            control=control,
            progress=progress,
            checkpoint=checkpoint.get("pipeline"),
            roots=checkpoint["roots"],
        )
        if row["kind"] == "http":
            source = HttpSource(secrets.get("url") or row["src"], self.policy)
            return ToCluster(source=source, dst=checkpoint["path"], **common)
        client = self._s3_client(row, secrets, control, progress)
        if row["kind"] == "s3_data":
            return ToCluster(source=S3Source(client, row["bucket"], row["object"]), dst=checkpoint["path"], **common)
        return ToS3(src=checkpoint["path"], target=S3Target(client, row["bucket"], row["object"]), **common)

    def _s3_client(self, row: dict[str, Any], secrets: dict, control: Control, progress: Progress):
        if "access_key" not in secrets:
            raise StagingError("the S3 keys of this transfer are gone")
        retrier = Retrier(self.settings, control, progress, f"transfer {row['id']}: resolving the S3 endpoint")
        while True:
            try:
                return make_client(row["endpoint"], secrets["access_key"], secrets["secret_key"], row["region"],
                                   self.policy, pool_size=self.settings.s3_concurrency + 2)
            except StagingError as exc:
                retrier.failed(exc)


class _Keeper:
    """Writes a running transfer's progress, renews its lease, and passes on cancel and shutdown."""

    def __init__(self, service: TransferService, row: dict[str, Any], control: Control, progress: Progress,
                 stop: threading.Event, owner: str):
        self._service = service
        self._owner = owner
        self._id = row["id"]
        self._base_attempts = (row["attempts"] or 0) + 1
        self._checkpoint = dict(row["checkpoint"] or {})
        self._control = control
        self._progress = progress
        self._stop = stop
        self._done = threading.Event()
        self._meter = RateMeter()
        self._version = -1
        self._written: dict[str, Any] = {}
        self._where = (row["infrastructure"], row["kind"])
        self._counted = row["bytes_done"] or 0  # bytes already in hpc_transfer_bytes_total
        self.lost = False
        self._thread = threading.Thread(target=self._run, name=f"keeper-{self._id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        self._done.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(TICK):
            try:
                self.flush()
            except Exception:
                log.exception("transfer %s: saving progress failed", self._id)
                continue
            if self.lost:
                self._control.stop(Interrupted("lease lost"))
                return
            if self._stop.is_set():
                self._control.stop(Interrupted("the gateway is shutting down"))
            row = self._service.store.transfers.get(self._id)
            if row is not None and row["cancel_requested"]:
                self._control.stop(Cancelled("cancelled by its owner"))

    def moved(self, done: int) -> None:
        """Counts the bytes moved since the last count (a leg restarted from an earlier offset moves some
        again: those count again)."""
        metrics.transfer_moved(*self._where, done - self._counted)
        self._counted = done

    def flush(self) -> None:
        """Writes the current progress and checkpoint, renewing the lease (sets ``lost`` if it is gone)."""
        snap = self._progress.snapshot()
        self.moved(snap["done"])
        self._meter.add(time.monotonic(), snap["done"])
        state = "verifying" if snap["phase"] == "verifying" else "transferring"
        values: dict[str, Any] = {
            "state": state,
            "bytes_done": snap["done"],
            "bytes_total": snap["total"],
            "rate": self._meter.rate() if state == "transferring" else None,
            "attempts": self._base_attempts + snap["retries"],
            "lease_until": utcnow() + timedelta(seconds=self._service.config.transfer_lease_seconds),
        }
        if snap["checkpoint_version"] != self._version:
            self._version = snap["checkpoint_version"]
            self._checkpoint["pipeline"] = snap["checkpoint"]
            values["checkpoint"] = dict(self._checkpoint)
        if not self._service._update(self._id, self._owner, **values):
            self.lost = True

"""Batches: many files in one transfer (an S3 prefix to a cluster directory, a cluster directory to an S3
prefix, a list of URLs to a cluster directory), with totals, per-file outcomes and a manifest.

A batch is listed once, by the first run (the URL list at creation): one row per file in
``transfer_files``. Each run transfers the files still ``queued``; what completed is never redone, so a
gateway killed mid-batch resumes with the files it had not finished. The batch ends ``completed`` when
every file did, else ``failed`` with the count in its reason (the files that completed stay in place).
Files whose names could not be written safely (``..``, control characters) fail on their own.

The manifest is a ``sha256sum``-format file in the batch's cluster directory,
``.hpcgw-manifest-<batch id>.sha256``, listing every completed file: ``cd DIR && sha256sum -c`` checks
them. Names starting with ``.hpcgw-`` are the gateway's (temporary directories, manifests): listings
of a cluster directory leave them out.
"""

from __future__ import annotations

import fnmatch
import logging
import posixpath
import threading
import uuid
from typing import Any

from hpc.errors import InvalidInput, NotFound
from hpc.security import Principal
from hpc.staging.addresses import redact_url
from hpc.staging.batch import FromClusterBatch, Item, Outcome, ToClusterBatch
from hpc.staging.control import Control
from hpc.staging.errors import Cancelled, StagingError
from hpc.staging.http import HttpSource
from hpc.staging.retry import with_retries
from hpc.staging.s3 import S3Source, S3Target, s3_failure
from hpc.store.tables import utcnow
from hpc.transport import TransportError

log = logging.getLogger(__name__)

MAX_FILES = 100_000  # per batch: the listing lives in the store and in memory while it runs
MAX_URLS = 1000
MANIFEST_PREFIX = ".hpcgw-"


def manifest_name(batch_id: str) -> str:
    return f"{MANIFEST_PREFIX}manifest-{batch_id}.sha256"


def safe_relative(path: str) -> str | None:
    """Why a relative path cannot be written under a directory, or None when it can."""
    if not path:
        return "the name is empty"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        return "the name contains control characters"
    parts = path.split("/")
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return "the name has an empty, '.' or '..' component"
    if any(len(part.encode()) > 235 for part in parts) or len(path.encode()) > 4000:
        return "the name is too long"
    if parts[0].startswith(MANIFEST_PREFIX):
        return f"names starting with {MANIFEST_PREFIX} are the gateway's"
    return None


def selected(path: str, include: list[str], exclude: list[str]) -> bool:
    """Whether a relative path passes the include and exclude patterns.

    A pattern with a ``/`` is matched against the whole relative path, one without against the file's
    name; ``*``, ``?`` and ``[...]`` as in the shell (``*`` also matches ``/`` in a whole-path pattern).
    """
    def matches(pattern: str) -> bool:
        return fnmatch.fnmatchcase(path if "/" in pattern else posixpath.basename(path), pattern)

    if include and not any(matches(p) for p in include):
        return False
    return not any(matches(p) for p in exclude)


def manifest_line(sha256: str, path: str) -> str:
    """One line in ``sha256sum`` format (names with a backslash or newline escaped as sha256sum does)."""
    if "\\" in path or "\n" in path:
        return "\\" + sha256 + "  " + path.replace("\\", "\\\\").replace("\n", "\\n") + "\n"
    return f"{sha256}  {path}\n"


class BatchService:
    """Creation, lookup and execution of batches; the workers and leases are the TransferService's."""

    def __init__(self, transfers):
        self.transfers = transfers
        self.store = transfers.store

    # -- requests ------------------------------------------------------------------------------

    def create_s3_data(self, request: Any, principal: Principal, parent: str | None = None) -> dict[str, Any]:
        """Accepts ``POST /batch/s3_data``: the objects under an S3 prefix into a cluster directory."""
        infra = self.transfers.infrastructures.get(request.infrastructure)
        fields = self.transfers.check_s3(request)
        path, roots = self.transfers.resolve_path(infra, request.dst, "dst", directory=True)
        prefix = _prefix(request.prefix)
        return self._insert(principal, infra, "s3_data", self.transfers.keys(request), path, roots, parent,
                            request, src=f"s3://{request.bucket}/{prefix}", dst=request.dst, prefix=prefix,
                            **fields)

    def create_s3_result(self, request: Any, principal: Principal, parent: str | None = None) -> dict[str, Any]:
        """Accepts ``POST /batch/s3_result``: the files of a cluster directory to objects under an S3 prefix."""
        infra = self.transfers.infrastructures.get(request.infrastructure)
        fields = self.transfers.check_s3(request)
        path, roots = self.transfers.resolve_path(infra, request.src, "src", directory=True)
        prefix = _prefix(request.prefix)
        return self._insert(principal, infra, "s3_result", self.transfers.keys(request), path, roots, parent,
                            request, src=request.src, dst=f"s3://{request.bucket}/{prefix}", prefix=prefix,
                            **fields)

    def create_http(self, request: Any, principal: Principal, parent: str | None = None) -> dict[str, Any]:
        """Accepts ``POST /batch/data``: a list of HTTP(S) URLs into a cluster directory."""
        infra = self.transfers.infrastructures.get(request.infrastructure)
        if not request.files:
            raise InvalidInput("files: give at least one URL", "files")
        if len(request.files) > MAX_URLS:
            raise InvalidInput(f"files: at most {MAX_URLS} URLs per batch", "files")
        listing, urls, seen = [], [], set()
        for number, entry in enumerate(request.files):
            field = f"files.{number}"
            self.transfers.check_source_url(entry.src, f"{field}.src")
            name = entry.path or posixpath.basename(entry.src.split("?", 1)[0].split("#", 1)[0].rstrip("/"))
            why = safe_relative(name)
            if why:
                raise InvalidInput(f"{field}.path: {why} ({name!r}); give a path", f"{field}.path")
            if name in seen:
                raise InvalidInput(f"{field}.path: {name!r} is given twice", f"{field}.path")
            seen.add(name)
            urls.append(entry.src)
            listing.append({"number": number, "path": name, "src": redact_url(entry.src), "size": None})
        path, roots = self.transfers.resolve_path(infra, request.dst, "dst", directory=True)
        row = self._insert(principal, infra, "http", {"urls": urls}, path, roots, parent, request,
                           src=f"{len(urls)} URL(s)", dst=request.dst, listing=listing)
        return row

    def _insert(self, principal: Principal, infra: dict[str, Any], kind: str, secrets: dict, path: str,
                roots: list[str], parent: str | None, request: Any, listing: list | None = None,
                **fields: Any) -> dict[str, Any]:
        now = utcnow()
        batch_id = str(uuid.uuid4())
        options = {
            "include": [getattr(p, "root", p) for p in getattr(request, "include", None) or []],
            "exclude": [getattr(p, "root", p) for p in getattr(request, "exclude", None) or []],
            "recursive": bool(getattr(request, "recursive", True) if getattr(request, "recursive", None) is not None
                              else True),
        }
        if listing is not None:
            self.store.batch_files.insert_many(batch_id, listing)
        row = self.store.batches.insert({
            "id": batch_id, "kind": kind, "infrastructure": infra["name"], "owner": principal.name,
            "credential": principal.credential,
            "parent": parent, "options": options, "secrets_enc": self.transfers.encrypt(secrets),
            "state": "queued", "reason": "", "files_total": len(listing) if listing is not None else None,
            "files_done": 0, "files_failed": 0, "bytes_done": 0, "attempts": 0,
            "checkpoint": {"path": path, "roots": roots, "listed": listing is not None},
            "cancel_requested": False, "created_at": now, "updated_at": now, **fields,
        })
        log.info("batch %s: %s %s -> %s for %s", batch_id, kind, fields.get("src"), fields.get("dst"), principal.name)
        self.transfers._wake.set()
        return row

    def get(self, batch_id: str, principal: Principal) -> dict[str, Any]:
        row = self.store.batches.get(str(batch_id))
        if row is None or not (principal.is_admin or row["owner"] == principal.name):
            raise NotFound(f"no batch {batch_id}")
        return row

    def list(self, principal: Principal, *, infrastructure: str | None = None, kind: str | None = None,
             state: str | None = None, parent: str | None = None, limit: int = 100,
             offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        return self.store.batches.page(owner=None if principal.is_admin else principal.name,
                                       infrastructure=infrastructure, kind=kind, state=state, parent=parent,
                                       since=None, limit=limit, offset=offset)

    def files(self, batch_id: str, principal: Principal, state: str | None, limit: int,
              offset: int) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
        row = self.get(batch_id, principal)
        items, total = self.store.batch_files.page(row["id"], state, limit, offset)
        return row, items, total

    def cancel(self, batch_id: str, principal: Principal) -> dict[str, Any]:
        row = self.get(batch_id, principal)
        return self.transfers.request_cancel(self.store.batches, row, principal, "batch")

    # -- a run ---------------------------------------------------------------------------------

    def execute(self, row: dict[str, Any], stop: threading.Event, owner: str) -> None:
        from hpc.services.transfers import TERMINAL, Tracker

        batch_id = row["id"]
        repository = self.store.batches
        if row["state"] in TERMINAL:
            repository.update(batch_id, where=[repository.table.c.lease_owner == owner], lease_owner=None,
                              lease_until=None)
            return
        control = Control()
        tracker = Tracker(self.transfers, repository, row, control, stop, owner, what="batch")
        results = _Results(self.store, batch_id, row)
        tracker.extra = results.flush
        self.transfers.running(batch_id, control)
        runner = None
        try:
            tracker.write(state="transferring", started_at=row["started_at"] or utcnow(),
                          attempts=(row["attempts"] or 0) + 1)
            tracker.start()
            if row["cancel_requested"]:
                control.stop(Cancelled("cancelled by its owner"))
            secrets = self.transfers.decrypt(row["secrets_enc"])
            cluster = self.transfers.cluster(row)
            if not (row["checkpoint"] or {}).get("listed"):
                self._list(row, cluster, secrets, control, tracker, results)
            results.load()
            items = [Item(f["number"], f["path"], f["size"], f["src"]) for f in results.queued]
            tracker(total=results.bytes_total, done=results.bytes_done)
            runner = self._runner(row, cluster, secrets, items, control, tracker, results)
            control.check()
            runner.run()
            tracker.finish()
            results.flush()
            manifest = self._write_manifest(row, cluster, control, tracker)
            done, failed = results.counts()
            if failed:
                first = results.first_failure()
                tracker.end("failed", f"{failed} of {done + failed} file(s) failed (first: {first})",
                            manifest=manifest, bytes_done=results.bytes_done)
            else:
                tracker.end("completed", "", manifest=manifest, bytes_done=results.bytes_done,
                            bytes_total=results.bytes_done)
            log.info("batch %s: %d file(s) completed, %d failed", batch_id, done, failed)
        except BaseException as exc:
            tracker.finish()
            outcome = tracker.outcome(exc)
            if outcome is None:
                return
            if runner is not None:
                try:
                    runner.cleanup()
                except Exception:  # best effort: the outcome is recorded whatever happens here
                    log.warning("batch %s: cleanup failed", batch_id, exc_info=True)
            tracker.end(*outcome)
        finally:
            tracker.finish()
            self.transfers.running(batch_id, None)

    def _list(self, row, cluster, secrets, control: Control, tracker, results: _Results) -> None:
        """Lists the source once and records one row per file."""
        options = row["options"] or {}
        found: list[tuple[str, str, int | None, str]] = []  # (relative path, src as shown, size, why refused)
        if row["kind"] == "s3_data":
            client = self.transfers.s3_client(row, secrets, control, tracker, 4)
            paginator = client.get_paginator("list_objects_v2")
            request = {"Bucket": row["bucket"], "Prefix": row["prefix"]}
            if not options.get("recursive", True):
                request["Delimiter"] = "/"

            def listing():
                out = []
                try:
                    for page in paginator.paginate(**request):
                        for entry in page.get("Contents", []):
                            key = entry["Key"]
                            if key.endswith("/"):
                                continue  # a "directory" marker
                            out.append((key[len(row["prefix"]):], key, int(entry["Size"])))
                            if len(out) > MAX_FILES:
                                raise StagingError(f"more than {MAX_FILES} objects under the prefix")
                except StagingError:
                    raise
                except Exception as exc:
                    raise s3_failure(exc, row["bucket"], row["prefix"], "listing") from None
                return out

            for relative, key, size in with_retries(self.transfers.settings, control, tracker,
                                                    f"batch {row['id']}: listing", listing):
                found.append((relative, key, size, safe_relative(relative) or ""))
        else:
            root = row["checkpoint"]["path"]
            cluster.confine(root, directory=False)
            info = cluster.stat(root)
            if info is None or not info.is_dir:
                raise StagingError(f"{root} is not a directory on the cluster")
            stack = [""]
            while stack:
                control.check()
                relative_dir = stack.pop()
                directory = posixpath.join(root, relative_dir) if relative_dir else root
                try:
                    entries = cluster.files.listdir(directory)
                except TransportError as exc:
                    raise StagingError(f"cannot list {directory} on the cluster: {exc.reason}",
                                       retryable=exc.retryable) from None
                for entry in sorted(entries, key=lambda e: e.name):
                    relative = posixpath.join(relative_dir, entry.name) if relative_dir else entry.name
                    if entry.name.startswith(MANIFEST_PREFIX):
                        continue
                    if entry.is_dir and options.get("recursive", True):
                        stack.append(relative)
                    elif entry.is_file:
                        found.append((relative, posixpath.join(root, relative), entry.size, ""))
                        if len(found) > MAX_FILES:
                            raise StagingError(f"more than {MAX_FILES} files under {root}")
        listing = []
        for relative, src, size, why in found:
            if not selected(relative, options.get("include") or [], options.get("exclude") or []):
                continue
            listing.append({"number": len(listing), "path": relative, "src": src, "size": size, "why": why})
        self.store.batch_files.insert_many(row["id"], [{k: v for k, v in f.items() if k != "why"} for f in listing])
        refused = [{"number": f["number"], "state": "failed", "reason": f"{f['path']!r}: {f['why']}", "size": f["size"]}
                   for f in listing if f["why"]]
        self.store.batch_files.update_many(row["id"], refused)
        tracker.write(files_total=len(listing), bytes_total=sum(f["size"] or 0 for f in listing))
        row["checkpoint"] = tracker.mark(listed=True)
        log.info("batch %s: %d file(s) listed", row["id"], len(listing))

    def _runner(self, row, cluster, secrets, items, control, tracker, results):
        transfers = self.transfers
        common = dict(batch_id=row["id"], cluster=cluster, items=items, spool_dir=transfers.spool_dir,
                      quota=transfers.quota, settings=transfers.settings, control=control, report=tracker,
                      on_file=results.add)
        path = row["checkpoint"]["path"]
        settings = transfers.settings
        if row["kind"] == "http":
            urls = secrets.get("urls") or []
            return ToClusterBatch(open_source=lambda item: HttpSource(urls[item.number], transfers.policy,
                                                                      read_timeout=settings.stall_timeout),
                                  dst=path, **common)
        client = transfers.s3_client(row, secrets, control, tracker,
                                     settings.batch_concurrency + settings.s3_concurrency + 2)
        if row["kind"] == "s3_data":
            return ToClusterBatch(open_source=lambda item: S3Source(client, row["bucket"], item.where), dst=path,
                                  **common)
        return FromClusterBatch(target=lambda item: S3Target(client, row["bucket"], row["prefix"] + item.path),
                                src=path, **common)

    def _write_manifest(self, row, cluster, control, tracker) -> str | None:
        completed = self.store.batch_files.all(row["id"], "completed")
        path = posixpath.join(row["checkpoint"]["path"], manifest_name(row["id"]))
        text = "".join(manifest_line(f["sha256"], f["path"]) for f in completed)

        try:
            with_retries(self.transfers.settings, control, tracker, f"batch {row['id']}: writing the manifest",
                         lambda: cluster.call("writing the manifest", cluster.files.write_file, path,
                                              text.encode("utf-8", "surrogateescape"), 0o644))
        except StagingError as exc:
            if isinstance(exc, Cancelled):
                raise
            log.warning("batch %s: the manifest could not be written: %s", row["id"], exc.reason)
            return None
        return path


def _prefix(prefix: str | None) -> str:
    """An S3 prefix read as a directory: a trailing ``/`` is implied ("" is the whole bucket)."""
    prefix = (prefix or "").lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


class _Results:
    """The files' outcomes of a run: collected from the pipeline's threads, written to the store in bulk."""

    def __init__(self, store, batch_id: str, row: dict[str, Any]):
        self._store = store
        self._id = batch_id
        self._lock = threading.Lock()
        self._buffer: list[dict[str, Any]] = []
        self._done = row["files_done"] or 0
        self._failed = row["files_failed"] or 0
        self.queued: list[dict[str, Any]] = []
        self.bytes_total: int | None = row["bytes_total"]
        self.bytes_done = 0

    def load(self) -> None:
        counts = self._store.batch_files.counts(self._id)
        with self._lock:
            self._done = counts.get("completed", (0, 0))[0]
            self._failed = counts.get("failed", (0, 0))[0]
            self.bytes_done = counts.get("completed", (0, 0))[1]
            self.bytes_total = sum(size for _, size in counts.values())
        self.queued = self._store.batch_files.all(self._id, "queued")

    def add(self, outcome: Outcome) -> None:
        with self._lock:
            self._buffer.append({"number": outcome.number, "state": outcome.state, "reason": outcome.reason,
                                 "sha256": outcome.sha256, "size": outcome.size})
            if outcome.state == "completed":
                self._done += 1
                self.bytes_done += outcome.size or 0
            else:
                self._failed += 1

    def flush(self) -> dict[str, Any]:
        """Writes the outcomes collected so far; the batch's counters (extra columns of its record)."""
        with self._lock:
            buffer, self._buffer = self._buffer, []
            counts = {"files_done": self._done, "files_failed": self._failed}
        if buffer:
            self._store.batch_files.update_many(self._id, buffer)
        return counts

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self._done, self._failed

    def first_failure(self) -> str:
        rows, _ = self._store.batch_files.page(self._id, "failed", 1, 0)
        return rows[0]["reason"] if rows else ""

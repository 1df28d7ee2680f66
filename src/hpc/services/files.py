"""The cluster's files: list, stat, read, download, upload, mkdir -p, remove, move and SHA-256.

Every path goes through the same two checks (:mod:`hpc.services.file_paths`) before anything reads or
writes it: the path as given must lie inside the infrastructure's ``allowed_roots`` (default: the home),
and so must what the cluster's ``realpath`` makes of it, one command that also resolves the roots. The
operation then works on the resolved path, so a link swapped in later is not followed to another place.
Operations on an entry itself (remove, move) resolve its parent only: a symbolic link is removed, never
what it points to.

Role policy: every authenticated caller may read, and may write within the roots (upload a new file,
make directories, move into them), since the cluster account is shared by the gateway's users anyway.
What destroys data another caller may own needs more: removing, moving away, or overwriting a file is
allowed to a ``user`` only inside its own jobs' directories (``job_root/<job id>``) and on the files its
own transfers wrote (``/data``, ``/s3_data`` ``dst``); elsewhere it needs ``admin``. Every write is
recorded in the audit log (``file.upload``, ``file.mkdir``, ``file.remove``, ``file.move``).

SSH happens through :mod:`hpc.ssh.cluster_files`: an SFTP session per operation, and a command for
``realpath``, hashing and ``rm -r``.
"""

from __future__ import annotations

import base64
import logging
import posixpath
import threading
import uuid
from dataclasses import dataclass
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from hpc.config import Config
from hpc.errors import ClusterUnavailable, Conflict, Forbidden, InvalidInput, NotFound, Unavailable
from hpc.security import Principal
from hpc.services import file_paths
from hpc.services.audit import AuditLog
from hpc.services.infrastructures import InfrastructureService, ssh_failure
from hpc.services.jobs import DEFAULT_JOB_ROOT
from hpc.ssh import SSHError
from hpc.ssh.cluster_files import (
    FileInfo,
    RemoteFileError,
    SFTPFiles,
    hash_command,
    parse_hash,
    parse_realpaths,
    realpaths_command,
    remove_tree_command,
)
from hpc.staging.paths import resolve_roots
from hpc.store import Store

log = logging.getLogger(__name__)

LIST_MAX = 100_000  # entries read from one directory
READ_MAX = 4 * 1024 * 1024  # bytes of one /files/content read (the contract's maximum)
_OWN_TRANSFERS = 1000  # newest transfers of the caller searched for the files they wrote


@dataclass(frozen=True)
class Place:
    """A checked path: as the request spelled it made absolute (``path``) and as the cluster resolved
    it (``real``, what the operation uses), with the resolved job root (for the role policy)."""

    given: str
    path: str
    real: str
    job_root: str


class Download:
    """A file's bytes ``[start, end)`` streamed from its own SFTP session, closed with the response."""

    def __init__(self, files: SFTPFiles, path: str, size: int, start: int, end: int, partial: bool,
                 on_close=lambda: None):
        self.files, self.path, self.size, self.start, self.end, self.partial = files, path, size, start, end, partial
        self._on_close = on_close
        self._closed = False

    @property
    def length(self) -> int:
        return self.end - self.start

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.files.read(self.path, self.start, self.end)
        except SSHError as exc:
            # The status line is sent: the client sees a short body (Content-Length says how short).
            log.warning("download of %s stopped: %s", self.path, exc.reason)
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.files.close()
            finally:
                self._on_close()


def _mtime(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def entry(info: FileInfo, path: str, realpath: str | None = None) -> dict[str, Any]:
    """A :class:`FileInfo` as the contract's ``FileEntry``."""
    document = {"name": posixpath.basename(path) or path, "path": path, "type": info.kind, "size": info.size,
                "mtime": _mtime(info.mtime), "mode": f"{info.mode:04o}"}
    if realpath is not None:
        document["realpath"] = realpath
    return document


class FileService:
    """Files on a registered infrastructure (see the module's docstring)."""

    def __init__(self, config: Config, store: Store, infrastructures: InfrastructureService, audit: AuditLog):
        self.config = config
        self.store = store
        self.infrastructures = infrastructures
        self.audit = audit
        self._homes: dict[tuple, str] = {}
        self._downloads = threading.BoundedSemaphore(max(1, config.files_downloads))

    # -- reading --------------------------------------------------------------------------------

    def list(self, name: str, path: str, limit: int, offset: int, principal: Principal) -> dict[str, Any]:
        infra = self.infrastructures.get(name)
        place = self._place(infra, path, "path", follow=True)
        with self._sftp(infra, "listing a directory") as files:
            info = self._existing(files, place)
            if not info.is_dir:
                raise InvalidInput(f"path: {place.path} is a {info.kind}, not a directory", "path")
            entries, truncated = self._do(lambda: files.listdir(place.real, LIST_MAX), "path")
        entries.sort(key=lambda e: e.name)
        page = entries[offset:offset + limit]
        items = [entry(e, posixpath.join(place.real, e.name)) for e in page]
        return {"path": place.real, "items": items, "total": len(entries), "limit": limit, "offset": offset,
                "truncated": truncated}

    def stat(self, name: str, path: str, principal: Principal) -> dict[str, Any]:
        infra = self.infrastructures.get(name)
        place = self._place(infra, path, "path", follow=True)
        with self._sftp(infra, "reading a file's status") as files:
            info = self._do(lambda: files.lstat(place.path), "path")
            if info is None:
                raise NotFound(f"path: no file or directory {place.path} on {name}", "path")
        return entry(info, place.path, place.real)

    def read(self, name: str, path: str, principal: Principal, *, offset: int | None = None, length: int = 65536,
             tail: int | None = None, encoding: str = "utf-8") -> dict[str, Any]:
        if tail is not None and offset is not None:
            raise InvalidInput("give tail or offset, not both", "tail")
        infra = self.infrastructures.get(name)
        place = self._place(infra, path, "path", follow=True)
        with self._sftp(infra, "reading a file") as files:
            info = self._regular_file(files, place)
            if tail is not None:
                start = max(0, info.size - tail)
            else:
                start = offset or 0
            count = max(0, min(tail or length, READ_MAX, info.size - start))
            data = self._do(lambda: files.read_file(place.real, start, count), "path") if count else b""
        text = base64.b64encode(data).decode() if encoding == "base64" else data.decode("utf-8", errors="replace")
        end = start + len(data)
        return {"path": place.real, "offset": start, "next_offset": end, "size": info.size, "data": text,
                "encoding": encoding, "eof": end >= info.size}

    def download(self, name: str, path: str, principal: Principal, byte_range) -> Download:
        """A file to stream. ``byte_range(size)`` turns the file's size into ``(start, end)`` or None
        (whole file), or raises (the API's Range parsing)."""
        infra = self.infrastructures.get(name)
        place = self._place(infra, path, "path", follow=True)
        if not self._downloads.acquire(blocking=False):
            raise Unavailable(f"{self.config.files_downloads} downloads are streaming from this replica "
                              "(files_downloads): retry later")
        try:
            files = self._open(infra, "downloading a file")
        except BaseException:
            self._downloads.release()
            raise
        try:
            info = self._regular_file(files, place)
            chosen = byte_range(info.size)
            start, end = chosen if chosen is not None else (0, info.size)
            return Download(files, place.real, info.size, start, end, chosen is not None, self._downloads.release)
        except BaseException:
            files.close()
            self._downloads.release()
            raise

    def checksum(self, name: str, path: str, principal: Principal) -> dict[str, Any]:
        infra = self.infrastructures.get(name)
        place = self._place(infra, path, "path", follow=True)
        with self._sftp(infra, "hashing a file") as files:
            info = self._regular_file(files, place)
        # sha256sum runs at several hundred MB/s; 20 MB/s of budget keeps a slow disk within it.
        timeout = self.config.ssh_command_timeout + info.size / 20e6
        result = self.infrastructures.run(infra, hash_command(place.real), action="hashing a file", timeout=timeout)
        try:
            size, digest = parse_hash(result.exit_code, result.stdout, result.stderr)
        except ValueError as exc:
            raise ClusterUnavailable(f"{name}: {exc}") from None
        return {"path": place.real, "size": size, "sha256": digest}

    # -- writing --------------------------------------------------------------------------------

    def upload(self, name: str, path: str, data: bytes, overwrite: bool, principal: Principal) -> dict[str, Any]:
        if len(data) > self.config.files_upload_max:
            raise InvalidInput(f"the file is larger than {self.config.files_upload_max} bytes (files_upload_max): "
                               "send it through a transfer (/data or /s3_data)", "body")
        infra = self.infrastructures.get(name)
        place = self._place(infra, path, "path", follow=True, allow_root=False)
        with self._sftp(infra, "uploading a file") as files:
            parent = self._do(lambda: files.stat(posixpath.dirname(place.real)), "path")
            if parent is None or not parent.is_dir:
                raise NotFound(f"path: the directory {posixpath.dirname(place.path)} does not exist on {name} "
                               "(make it with POST /infrastructure/{name}/files/directory)", "path")
            existing = self._do(lambda: files.lstat(place.real), "path")
            if existing is not None:
                if not overwrite:
                    raise Conflict(f"path: {place.path} exists (overwrite=true replaces it)", "path")
                if existing.is_dir:
                    raise Conflict(f"path: {place.path} is a directory", "path")
                self._may_destroy(infra, place, principal, "overwriting", "path")
            temp = posixpath.join(posixpath.dirname(place.real),
                                  f".{posixpath.basename(place.real)}.{uuid.uuid4().hex[:8]}.upload.part")
            try:
                self._do(lambda: files.write_file(temp, data), "path")
                if existing is not None:
                    self._do(lambda: files.posix_rename(temp, place.real), "path")
                else:
                    self._do(lambda: files.rename(temp, place.real), "path")
            except BaseException:
                try:
                    files.remove(temp)
                except SSHError:
                    pass
                raise
            info = self._do(lambda: files.lstat(place.real), "path")
        self.audit.record(principal, "file.upload", target=f"{name}:{place.real}",
                          details={"bytes": len(data), "overwrite": existing is not None})
        return entry(info, place.real, place.real)

    def mkdir(self, name: str, path: str, principal: Principal) -> dict[str, Any]:
        infra = self.infrastructures.get(name)
        place = self._place(infra, path, "path", follow=True)
        with self._sftp(infra, "making a directory") as files:
            try:
                files.mkdir(place.real)
            except RemoteFileError as exc:
                if exc.status == "failure":
                    raise Conflict(f"path: {exc.reason}", "path") from None
                raise self._domain(exc, "path") from None
            except SSHError as exc:
                raise self._domain(exc, "path") from None
            info = self._do(lambda: files.stat(place.real), "path")
        self.audit.record(principal, "file.mkdir", target=f"{name}:{place.real}")
        return entry(info, place.real, place.real)

    def remove(self, name: str, path: str, recursive: bool, principal: Principal) -> None:
        infra = self.infrastructures.get(name)
        place = self._place(infra, path, "path", follow=False, allow_root=False)
        self._may_destroy(infra, place, principal, "removing", "path")
        with self._sftp(infra, "removing a file") as files:
            info = self._do(lambda: files.lstat(place.real), "path")
            if info is None:
                raise NotFound(f"path: no file or directory {place.path} on {name}", "path")
            if info.is_dir:
                if not recursive:
                    raise InvalidInput(f"path: {place.path} is a directory: removing it and everything in it "
                                       "needs recursive=true", "recursive")
            else:
                self._do(lambda: files.remove(place.real), "path")
        if info.is_dir:
            result = self.infrastructures.run(infra, remove_tree_command(place.real), action="removing a directory",
                                              timeout=max(self.config.ssh_command_timeout, 300))
            if result.exit_code != 0:
                raise ClusterUnavailable(f"removing {place.path} on {name} failed (exit {result.exit_code}): "
                                         f"{result.stderr.strip()[:200]}")
        self.audit.record(principal, "file.remove", target=f"{name}:{place.real}",
                          details={"type": info.kind, "recursive": bool(recursive)})

    def move(self, name: str, src: str, dst: str, principal: Principal) -> dict[str, Any]:
        infra = self.infrastructures.get(name)
        source = self._place(infra, src, "src", follow=False, allow_root=False)
        target = self._place(infra, dst, "dst", follow=False, allow_root=False)
        self._may_destroy(infra, source, principal, "moving", "src")
        with self._sftp(infra, "moving a file") as files:
            if self._do(lambda: files.lstat(source.real), "src") is None:
                raise NotFound(f"src: no file or directory {source.path} on {name}", "src")
            if self._do(lambda: files.lstat(target.real), "dst") is not None:
                raise Conflict(f"dst: {target.path} exists; remove it first", "dst")
            parent = self._do(lambda: files.stat(posixpath.dirname(target.real)), "dst")
            if parent is None or not parent.is_dir:
                raise NotFound(f"dst: the directory {posixpath.dirname(target.path)} does not exist on {name}", "dst")
            if target.real == source.real or file_paths.within(target.real, [source.real], False):
                raise InvalidInput("dst lies inside src", "dst")
            self._do(lambda: files.rename(source.real, target.real), "dst")
            info = self._do(lambda: files.lstat(target.real), "dst")
        self.audit.record(principal, "file.move", target=f"{name}:{source.real}", details={"dst": target.real})
        return entry(info, target.real, target.real)

    # -- the checks -----------------------------------------------------------------------------

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

    def _place(self, infra: dict[str, Any], path: str, field: str, *, follow: bool,
               allow_root: bool = True) -> Place:
        """Checks ``path`` lexically, then on the cluster (one ``realpath`` command for it, the roots and
        the job root); ``follow=False`` resolves the parent only (the entry itself may be a link)."""
        home = self._home(infra)
        settings = infra.get("settings") or {}
        roots = resolve_roots(settings.get("allowed_roots"), home)
        lexical = file_paths.lexical(path, home, roots, field, allow_root)
        job_root = file_paths.absolute(settings.get("job_root") or DEFAULT_JOB_ROOT, home)
        asked = lexical if follow else posixpath.dirname(lexical)
        result = self.infrastructures.run(infra, realpaths_command([*roots, job_root, asked]),
                                          action="resolving a path")
        try:
            resolved = parse_realpaths(result.exit_code, result.stdout, result.stderr, len(roots) + 2)
        except ValueError as exc:
            raise ClusterUnavailable(f"{infra['name']}: {exc}") from None
        real_roots, real_job_root, real = resolved[:len(roots)], resolved[-2], resolved[-1]
        if not follow:
            real = posixpath.join(real, posixpath.basename(lexical))
        file_paths.confined(real, real_roots, field, allow_root)
        return Place(given=path, path=lexical, real=real, job_root=real_job_root)

    def _may_destroy(self, infra: dict[str, Any], place: Place, principal: Principal, doing: str,
                     field: str) -> None:
        """The role policy for removing, moving away and overwriting (see the module's docstring)."""
        if principal.is_admin:
            return

        def own_job(job_id: str) -> bool:
            row = self.store.jobs.get(job_id)
            return row is not None and row["owner"] == principal.name and row["infrastructure"] == infra["name"]

        rows, _ = self.store.transfers.page(owner=principal.name, since=None, limit=_OWN_TRANSFERS, offset=0,
                                            infrastructure=infra["name"])
        own_files = [(row.get("checkpoint") or {}).get("path") for row in rows if row["kind"] != "s3_result"]
        if file_paths.owns([place.path, place.real], place.job_root, own_job, [f for f in own_files if f]):
            return
        raise Forbidden(f"{field}: {doing} {place.path} needs the admin role: a user may do so only inside its own "
                        "jobs' directories and on the files its own transfers wrote", field)

    # -- SSH ------------------------------------------------------------------------------------

    def _open(self, infra: dict[str, Any], action: str) -> SFTPFiles:
        try:
            return SFTPFiles.open(self.infrastructures.connection(infra), self.config.ssh_command_timeout)
        except SSHError as exc:
            raise ssh_failure(exc, action) from None

    def _sftp(self, infra: dict[str, Any], action: str) -> SFTPFiles:
        return self._open(infra, action)

    @staticmethod
    def _domain(exc: SSHError, field: str) -> Exception:
        if isinstance(exc, RemoteFileError):
            if exc.status == "not_found":
                return NotFound(f"{field}: {exc.reason}", field)
            if exc.status == "denied":
                return Forbidden(f"{field}: {exc.reason}", field)
            return ClusterUnavailable(f"the cluster refused: {exc.reason}")
        return ssh_failure(exc, "a file operation")

    def _do(self, action, field: str):
        try:
            return action()
        except SSHError as exc:
            raise self._domain(exc, field) from None

    def _existing(self, files: SFTPFiles, place: Place) -> FileInfo:
        info = self._do(lambda: files.stat(place.real), "path")
        if info is None:
            raise NotFound(f"path: no file or directory {place.path}", "path")
        return info

    def _regular_file(self, files: SFTPFiles, place: Place) -> FileInfo:
        info = self._existing(files, place)
        if info.is_dir:
            raise InvalidInput(f"path: {place.path} is a directory, not a file (list it with GET .../files)", "path")
        if not info.is_file:
            raise InvalidInput(f"path: {place.path} is not a regular file", "path")
        return info

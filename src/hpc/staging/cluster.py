"""The cluster as the staging layer uses it: the transport interface, its faults turned into staging errors.

The service hands the pipeline a :class:`hpc.transport.ClusterFiles` (SSH in production, memory in unit
tests). This module classifies what it raises by type (SFTP status code, ``retryable``), never by
message text, and checks paths against the infrastructure's allowed roots on the cluster itself.
"""

from __future__ import annotations

import posixpath
from typing import Any
from collections.abc import Callable

from hpc.staging.errors import RemoteError, StagingError
from hpc.staging.paths import inside
from hpc.transport import (
    FAILURE,
    NO_SUCH_FILE,
    PERMISSION_DENIED,
    ClusterFiles,
    FileInfo,
    RemoteFileError,
    TransportError,
)


def remote_failure(exc: BaseException, action: str = "") -> StagingError:
    """The staging error for a fault of the transport."""
    if isinstance(exc, StagingError):
        return exc
    if isinstance(exc, TransportError):
        reason = exc.reason if not action or exc.reason.startswith(action) else f"{action}: {exc.reason}"
        return RemoteError(reason, retryable=exc.retryable, status=getattr(exc, "status", None))
    return RemoteError(f"{action}: {type(exc).__name__}: {exc}", retryable=False)


def status(exc: BaseException) -> int | None:
    """The SFTP status code behind a staging or transport error, if any."""
    return getattr(exc, "status", None)


def not_found(exc: BaseException) -> bool:
    return status(exc) == NO_SUCH_FILE


class Cluster:
    """An infrastructure's files for one transfer, confined to its allowed roots."""

    def __init__(self, files: ClusterFiles, roots: list[str]):
        self.files = files
        self.roots = roots
        self._confined: set[str] = set()

    def call(self, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TransportError as exc:
            raise remote_failure(exc, action) from None

    def stat(self, path: str) -> FileInfo | None:
        return self.call(f"reading the status of {path}", self.files.stat, path)

    def confine(self, path: str, directory: bool) -> None:
        """Checks on the cluster that ``path`` (or, with ``directory``, its parent) does not lead out of
        the allowed roots through a symbolic link.

        Raises:
            StagingError: It does (not retryable).
        """
        if path in self._confined:
            return
        target = posixpath.dirname(path) if directory else path
        real = self.call("resolving paths", self.files.realpaths, [target, *self.roots])
        real_target, real_roots = real[0], real[1:]
        candidate = posixpath.join(real_target, posixpath.basename(path)) if directory else real_target
        if not any(inside(candidate, root) or (directory and candidate == root) for root in real_roots):
            raise StagingError(f"{path} leads, through a symbolic link, to {candidate}: outside the allowed "
                               "directories")
        self._confined.add(path)

    def make_dirs(self, directory: str) -> None:
        """Creates ``directory`` and its parents (an existing directory is fine).

        Raises:
            StagingError: A component exists and is not a directory, or permission is denied (final).
        """
        try:
            self.files.mkdir(directory)
        except RemoteFileError as exc:
            if exc.status in (FAILURE, PERMISSION_DENIED, NO_SUCH_FILE):
                raise StagingError(f"cannot create the directory {directory} on the cluster: {exc.reason}") from None
            raise remote_failure(exc) from None
        except TransportError as exc:
            raise remote_failure(exc, f"creating {directory}") from None

    def check_destination(self, path: str) -> None:
        """Refuses at once a destination that is an existing directory (nothing could ever replace it)."""
        info = self.stat(path)
        if info is not None and info.is_dir:
            raise StagingError(f"the destination {path} is an existing directory on the cluster; name a file "
                               "inside it")

    def move_into_place(self, temp: str, path: str) -> None:
        """Renames ``temp`` to ``path`` (replacing a file there); a failure is classified by what ``path`` is."""
        try:
            self.files.rename(temp, path)
        except RemoteFileError as exc:
            if exc.status == FAILURE:
                # sftp-server answers FAILURE for EISDIR, ENOTEMPTY, EXDEV...: the type of path tells.
                info = self.stat(path)
                if info is not None and info.is_dir:
                    raise StagingError(f"the destination {path} is an existing directory on the cluster") from None
            raise StagingError(f"cannot move the file to {path}: {exc.reason}",
                               retryable=exc.retryable) from None
        except TransportError as exc:
            raise remote_failure(exc, f"moving the file to {path}") from None

    def remove_quietly(self, path: str) -> None:
        try:
            self.files.remove(path)
        except TransportError:
            pass

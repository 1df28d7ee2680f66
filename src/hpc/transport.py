"""The narrow interface through which the rest of the gateway reaches a cluster: its shell and its files.

:mod:`hpc.ssh` implements it over SSH (:class:`hpc.ssh.files.ClusterFiles`); the unit tests implement it in
memory. Only plain types cross it: strings, bytes, integers, the dataclasses below and the errors below.
No library object (paramiko's or any other) ever does, so the staging pipeline and the services do not
know how the bytes travel. This module depends on nothing but the standard library.

Errors are classified by type, never by message text: a caller decides whether to retry from
``retryable`` and, for file operations, from the SFTP status code the server answered (``status``), which
does not depend on the cluster's locale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from collections.abc import Callable, Iterator, Sequence

# SFTP status codes (draft-ietf-secsh-filexfer-02, section 7: the protocol version OpenSSH speaks).
OK = 0
EOF = 1
NO_SUCH_FILE = 2
PERMISSION_DENIED = 3
FAILURE = 4  # anything else: OpenSSH's sftp-server maps every other errno here (EEXIST, EISDIR, ENOSPC...)
BAD_MESSAGE = 5
NO_CONNECTION = 6
CONNECTION_LOST = 7
OP_UNSUPPORTED = 8

STATUS_NAMES = {
    EOF: "end of file",
    NO_SUCH_FILE: "no such file or directory",
    PERMISSION_DENIED: "permission denied",
    FAILURE: "failure",
    BAD_MESSAGE: "bad message",
    NO_CONNECTION: "no connection",
    CONNECTION_LOST: "connection lost",
    OP_UNSUPPORTED: "operation unsupported",
}


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one remote command.

    Attributes:
        exit_code: The command's exit status; -1 if it died of a signal.
        stdout: Standard output, decoded as UTF-8 with replacement characters.
        stderr: Standard error, decoded the same way.
        truncated: True if either stream exceeded the output cap and was cut.
    """

    exit_code: int
    stdout: str
    stderr: str
    truncated: bool = False


@dataclass(frozen=True)
class FileInfo:
    """What a stat or a directory listing says about one file.

    Attributes:
        name: The path given to ``stat``, or the entry's name in a listing.
        size: Bytes.
        mtime: Modification time, whole seconds since the epoch.
        kind: ``file``, ``directory``, ``symlink`` or ``other``.
        mode: Permission bits (``0o644``).
    """

    name: str
    size: int
    mtime: int
    kind: str
    mode: int = 0

    @property
    def is_file(self) -> bool:
        return self.kind == "file"

    @property
    def is_dir(self) -> bool:
        return self.kind == "directory"


@dataclass(frozen=True)
class FileHashes:
    """SHA-256 of a cluster file and of ranges of it, computed on the cluster.

    Attributes:
        size: The file's size when it was hashed.
        sha256: Hex digest of the whole file (None when only ranges were asked for).
        ranges: Hex digest of each ``[start, end)`` asked for, in order.
    """

    size: int
    sha256: str | None
    ranges: tuple[str, ...] = ()


class TransportError(Exception):
    """Reaching the cluster failed.

    Attributes:
        reason: What went wrong, fit for a user (never a secret).
        retryable: True when the same operation may succeed later (connection lost, timeout).
    """

    retryable = True

    def __init__(self, reason: str, retryable: bool | None = None):
        super().__init__(reason)
        self.reason = reason
        if retryable is not None:
            self.retryable = retryable


class RemoteFileError(TransportError):
    """The cluster answered a file operation with an error status.

    Attributes:
        status: The SFTP status code (``NO_SUCH_FILE``, ``PERMISSION_DENIED``, ``FAILURE``...).
        path: The file concerned.
    """

    retryable = False

    def __init__(self, reason: str, status: int, path: str = ""):
        super().__init__(reason, retryable=status in (NO_CONNECTION, CONNECTION_LOST))
        self.status = status
        self.path = path


class NotADirectory(RemoteFileError):
    """A component of a path to create exists and is not a directory (``path`` names it): nothing can be
    created below it until someone removes it. sftp-server answers ``FAILURE`` when asked to make such a
    directory, the same code as for a full disk; this type tells them apart."""

    def __init__(self, reason: str, path: str):
        super().__init__(reason, FAILURE, path)


class FileWriter(Protocol):
    """A remote file being written with many requests in flight.

    ``acked`` is the end of the prefix the cluster acknowledged: bytes before it are on the cluster,
    bytes after it may not be. Not thread-safe, except :meth:`abort`.
    """

    position: int
    acked: int

    def write(self, data: bytes | memoryview) -> None:
        """Queues ``data`` at ``position`` (blocks while the window of unacknowledged requests is full)."""

    def write_from(self, fd: int, offset: int, count: int) -> None:
        """Queues ``count`` bytes of the local file ``fd`` from ``offset`` (sent without passing through a
        Python buffer where the transport can)."""

    def flush(self) -> int:
        """Waits until everything written is acknowledged; returns ``acked``."""

    def close(self) -> None:
        """Flushes and closes the remote file."""

    def abort(self) -> None:
        """Drops the session under a blocked writer (from any thread): its next call raises."""


class FileReader(Protocol):
    """A remote file being read with many requests in flight: iterate for the bytes, in order."""

    def __iter__(self) -> Iterator[memoryview]: ...

    def abort(self) -> None:
        """Drops the session under a blocked reader (from any thread): the iteration raises."""


class ClusterFiles(Protocol):
    """A cluster's shell and file system.

    Paths are absolute. Every method may raise :class:`TransportError`; file operations raise
    :class:`RemoteFileError` when the cluster answers with an error status.
    """

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        """Runs a shell command (every value in it quoted once with :func:`hpc.shell.quote`)."""

    def stat(self, path: str) -> FileInfo | None:
        """What ``path`` is (symbolic links followed), or None when it does not exist."""

    def listdir(self, path: str) -> list[FileInfo]:
        """The entries of a directory (without ``.`` and ``..``; symbolic links not followed)."""

    def realpaths(self, paths: Sequence[str]) -> list[str]:
        """Each path with symbolic links resolved (missing trailing parts allowed)."""

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """Creates a directory and its missing parents; an existing directory is fine."""

    def rename(self, src: str, dst: str) -> None:
        """Moves ``src`` to ``dst`` atomically, replacing a file at ``dst``."""

    def remove(self, path: str) -> None:
        """Removes a file; a missing file is fine."""

    def rmdir(self, path: str) -> None:
        """Removes an empty directory; a missing one is fine."""

    def truncate(self, path: str, size: int) -> None:
        """Sets a file's length."""

    def open_writer(self, path: str, offset: int = 0, *, create: bool = False, dedicated: bool = False,
                    on_ack: Callable[[int], None] | None = None) -> FileWriter:
        """Writes ``path`` from ``offset`` (``create``: made empty first). ``dedicated``: on a session of its
        own (for a big file); ``on_ack`` is called with ``acked`` each time it grows."""

    def read(self, path: str, offset: int, end: int, *, dedicated: bool = False) -> FileReader:
        """The bytes ``[offset, end)`` of a file, in order, with many reads in flight.

        Raises:
            RemoteFileError: With status ``EOF`` if the file ends before ``end``.
        """

    def read_file(self, path: str, offset: int = 0, length: int = 1 << 20) -> bytes:
        """Up to ``length`` bytes of a file from ``offset`` (fewer at its end)."""

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Creates or replaces a small file with ``data`` and sets its mode."""

    def write_files(self, files: Sequence[tuple[str, bytes]], mode: int = 0o644) -> list[TransportError | None]:
        """Writes many small files pipelined over one session: one outcome per file, in order."""

    def read_files(self, files: Sequence[tuple[str, int]]) -> list[bytes | TransportError]:
        """Reads many small files ``(path, size)`` pipelined over one session: contents or an error each."""

    def rename_many(self, pairs: Sequence[tuple[str, str]]) -> list[TransportError | None]:
        """Many :meth:`rename` pipelined over one session: one outcome per pair, in order."""

    def hash(self, path: str, ranges: Sequence[tuple[int, int]] = (), whole: bool = True,
             size_hint: int = 0) -> FileHashes:
        """SHA-256 computed on the cluster of the whole file and/or of ``[start, end)`` ranges of it
        (``size_hint``: the file's expected size, to bound the time allowed)."""

    def hash_growing(self, path: str, size: int) -> str | None:
        """SHA-256 of the first ``size`` bytes of a file that is being written, computed on the cluster as
        the bytes arrive (it returns soon after the last one does). None when the file went away first or
        the hash could not be made: the caller then checks the file another way."""

    def hash_files(self, paths: Sequence[str]) -> dict[str, str]:
        """Hex SHA-256 of many files, computed on the cluster in few commands; unreadable files are left out."""

    def close(self) -> None:
        """Ends the sessions this object opened."""

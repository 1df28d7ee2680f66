"""A cluster's files over one SFTP session, and the few operations that need a command.

:class:`SFTPFiles` wraps a paramiko SFTP client: stat, listdir, mkdir -p, rename, remove, rmdir, reads of
a byte range (whole or as bounded chunks) and writes. Nothing it returns is a paramiko object. The
method names follow the transport boundary being built beside this module (``hpc.transport.ClusterFiles``
on branch ``staging``), so the two can merge into one.

What SFTP cannot do is done by one command, built here and run by the caller on the infrastructure's
connection (its ``command_setup_lines`` first): ``realpath`` of several paths at once, the SHA-256 of a
file, and removing a directory tree. Every value in them goes through :func:`hpc.ssh.quoting.quote`
exactly once.

Errors: an SFTP status becomes :class:`RemoteFileError` with ``status`` ``not_found``, ``denied`` or
``failure``; a dropped session becomes :class:`~hpc.ssh.errors.SSHChannelError`.
"""

from __future__ import annotations

import errno
import posixpath
import re
import stat as st
from collections.abc import Iterator, Sequence

import paramiko

from hpc.ssh.errors import SSHChannelError, SSHError, SSHTimeout
from hpc.transport import FileInfo
from hpc.shell import quote

CHUNK = 1024 * 1024  # bytes held per step of a streamed read
_PIECE = 32 * 1024  # one SFTP read request (OpenSSH's sftp-server answers at most 256 KiB; paramiko asks 32 KiB)
_HASH_LINE = re.compile(r"^\\?([0-9a-f]{64}) ")


class RemoteFileError(SSHError):
    """The SFTP server refused an operation on a file.

    Attributes:
        status: ``not_found``, ``denied`` or ``failure`` (anything else: OpenSSH's sftp-server answers
            "Failure" for EEXIST, ENOTEMPTY, EISDIR, ENOSPC...).
        path: The path concerned.
    """

    def __init__(self, reason: str, status: str, path: str = ""):
        super().__init__(reason)
        self.status = status
        self.path = path


def _kind(mode: int | None) -> str:
    if mode is None:
        return "other"
    if st.S_ISLNK(mode):
        return "symlink"
    if st.S_ISDIR(mode):
        return "directory"
    if st.S_ISREG(mode):
        return "file"
    return "other"


def _info(name: str, attrs: paramiko.SFTPAttributes) -> FileInfo:
    return FileInfo(name=name, size=int(attrs.st_size or 0), mtime=int(attrs.st_mtime or 0),
                    kind=_kind(attrs.st_mode), mode=st.S_IMODE(attrs.st_mode or 0))


def _failure(exc: BaseException, action: str, path: str) -> SSHError:
    """An exception paramiko raised -> the error of this layer."""
    if isinstance(exc, TimeoutError):
        return SSHTimeout(f"{action} {path}: the cluster's SFTP server did not answer in time")
    if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
        return RemoteFileError(f"{action} {path}: no such file or directory", "not_found", path)
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return RemoteFileError(f"{action} {path}: permission denied on the cluster", "denied", path)
    if isinstance(exc, (paramiko.SSHException, EOFError, ConnectionError)) or (
            isinstance(exc, OSError) and "closed" in str(exc).lower()):
        return SSHChannelError(f"{action} {path}: the SFTP session failed ({type(exc).__name__})")
    text = str(exc.args[-1] if exc.args else exc)[:200] or type(exc).__name__
    return RemoteFileError(f"{action} {path}: {text}", "failure", path)


class SFTPFiles:
    """File operations on one SFTP session (not shared between threads).

    Args:
        sftp: An open paramiko SFTP client; closed by :meth:`close`.
        io_timeout: Seconds any one SFTP answer may take.
    """

    def __init__(self, sftp: paramiko.SFTPClient, io_timeout: float = 60.0):
        self.sftp = sftp
        sftp.get_channel().settimeout(io_timeout)

    @classmethod
    def open(cls, connection, io_timeout: float = 60.0) -> SFTPFiles:
        """A session on ``connection`` (an :class:`~hpc.ssh.client.SSHConnection` or a view of one with
        its ``open_sftp``): the paramiko client stays inside this package."""
        return cls(connection.open_sftp(), io_timeout)

    def close(self) -> None:
        self.sftp.close()

    def __enter__(self) -> SFTPFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, action: str, path: str, fn, *args):
        try:
            return fn(*args)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise _failure(exc, action, path) from None

    def stat(self, path: str) -> FileInfo | None:
        """The file a path leads to (links followed); None if there is none."""
        try:
            return _info(path, self._call("stat", path, self.sftp.stat, path))
        except RemoteFileError as exc:
            if exc.status == "not_found":
                return None
            raise

    def lstat(self, path: str) -> FileInfo | None:
        """The entry itself (a link reads ``symlink``); None if there is none."""
        try:
            return _info(path, self._call("stat", path, self.sftp.lstat, path))
        except RemoteFileError as exc:
            if exc.status == "not_found":
                return None
            raise

    def listdir(self, path: str, limit: int = 100_000) -> tuple[list[FileInfo], bool]:
        """At most ``limit`` entries of a directory (links not followed; no ``.``/``..``), and whether
        there were more. The server's batches are read one at a time, so a huge directory costs at most
        ``limit`` entries of memory."""
        entries: list[FileInfo] = []
        try:
            for attrs in self.sftp.listdir_iter(path, read_aheads=8):
                if attrs.filename in (".", ".."):
                    continue
                if len(entries) >= limit:
                    return entries, True
                entries.append(_info(attrs.filename, attrs))
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise _failure(exc, "listing", path) from None
        return entries, False

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """``mkdir -p``: makes the missing directories of ``path``; an existing directory is fine.

        Raises:
            RemoteFileError: ``failure`` when something that is not a directory is in the way.
        """
        missing = []
        current = posixpath.normpath(path)
        while current not in ("/", ""):
            info = self.stat(current)
            if info is not None:
                if not info.is_dir:
                    raise RemoteFileError(f"creating {path}: {current} exists and is not a directory", "failure",
                                          current)
                break
            missing.append(current)
            current = posixpath.dirname(current)
        for directory in reversed(missing):
            try:
                self._call("creating", directory, self.sftp.mkdir, directory, mode)
            except RemoteFileError as exc:
                # "Failure" is also what sftp-server answers for "exists": made meanwhile is fine.
                found = self.stat(directory) if exc.status == "failure" else None
                if found is None or not found.is_dir:
                    raise

    def rename(self, src: str, dst: str) -> None:
        """Renames; OpenSSH's sftp-server refuses (``failure``) when ``dst`` exists."""
        self._call("moving", src, self.sftp.rename, src, dst)

    def posix_rename(self, src: str, dst: str) -> None:
        """Renames over an existing ``dst`` (the posix-rename@openssh.com extension)."""
        self._call("moving", src, self.sftp.posix_rename, src, dst)

    def remove(self, path: str) -> None:
        self._call("removing", path, self.sftp.remove, path)

    def rmdir(self, path: str) -> None:
        self._call("removing", path, self.sftp.rmdir, path)

    def read_file(self, path: str, offset: int = 0, length: int = CHUNK) -> bytes:
        """At most ``length`` bytes from ``offset`` (fewer at the end of the file)."""
        return b"".join(self.read(path, offset, offset + length))

    def read(self, path: str, offset: int, end: int, chunk: int = CHUNK) -> Iterator[bytes]:
        """The bytes ``[offset, end)`` (or up to the end of the file) as chunks of at most ``chunk``
        bytes. Each chunk is asked for in 32 KiB requests sent together (one round trip per chunk);
        nothing is read ahead of what the consumer takes. ``end`` is cut to the file's size first:
        paramiko's ``readv`` waits for data to a request that starts past the end of the file, which
        OpenSSH's sftp-server answers with EOF (paramiko 5.1.0 on the testbed: until the channel
        timeout)."""
        try:
            handle = self.sftp.open(path, "rb")
            end = min(end, int(handle.stat().st_size or 0))
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise _failure(exc, "reading", path) from None
        try:
            position = offset
            while position < end:
                size = min(chunk, end - position)
                pieces = [(start, min(_PIECE, position + size - start))
                          for start in range(position, position + size, _PIECE)]
                try:
                    data = b"".join(handle.readv(pieces))
                except (OSError, paramiko.SSHException, EOFError) as exc:
                    raise _failure(exc, "reading", path) from None
                if not data:
                    return
                yield data
                position += len(data)
                if len(data) < size:
                    return
        finally:
            try:
                handle.close()
            except (OSError, paramiko.SSHException, EOFError):
                pass

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Creates ``path`` (or truncates it) with ``data``; permission bits ``mode``."""
        try:
            with self.sftp.open(path, "wb") as handle:
                handle.set_pipelined(True)
                for start in range(0, len(data), _PIECE):
                    handle.write(data[start:start + _PIECE])
            self.sftp.chmod(path, mode)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise _failure(exc, "writing", path) from None


# -- commands ------------------------------------------------------------------------------------


def realpaths_command(paths: Sequence[str]) -> str:
    """GNU ``realpath -m -z``: each path with its links resolved (missing parts allowed), NUL-separated,
    so a link target holding a newline cannot shift the answer."""
    return "realpath -m -z -- " + " ".join(quote(p) for p in paths)


def parse_realpaths(exit_code: int, stdout: str, stderr: str, count: int) -> list[str]:
    """The answer of :func:`realpaths_command` for ``count`` paths.

    Raises:
        ValueError: The command failed or answered a different number of paths.
    """
    parts = stdout.split("\x00")
    if parts and parts[-1] == "":
        parts.pop()
    if exit_code != 0 or len(parts) != count or not all(p.startswith("/") for p in parts):
        raise ValueError(f"realpath failed on the cluster (exit {exit_code}): {(stderr or stdout).strip()[:200]}")
    return parts


def hash_command(path: str) -> str:
    """Size and SHA-256 of a file: ``wc -c`` then ``sha256sum`` (or OpenSSL where present), each on
    standard input so no file name is printed back."""
    q = quote(path)
    return (f"LC_ALL=C; export LC_ALL; wc -c < {q} && "
            f"if command -v sha256sum >/dev/null 2>&1; then sha256sum < {q}; else openssl dgst -sha256 -r < {q}; fi")


def parse_hash(exit_code: int, stdout: str, stderr: str) -> tuple[int, str]:
    """``(size, hex digest)`` from the answer of :func:`hash_command`.

    Raises:
        ValueError: The command failed or printed something else.
    """
    lines = [line.strip() for line in stdout.strip().splitlines()]
    if exit_code != 0 or len(lines) != 2 or not lines[0].isdigit():
        raise ValueError(f"hashing failed on the cluster (exit {exit_code}): {(stderr or stdout).strip()[:200]}")
    match = _HASH_LINE.match(lines[1] + " ")
    if not match:
        raise ValueError(f"hashing on the cluster printed {lines[1][:100]!r}")
    return int(lines[0]), match.group(1)


def remove_tree_command(path: str) -> str:
    """``rm -rf`` of one directory tree (``--``: a name starting with ``-`` stays a name)."""
    return f"rm -rf -- {quote(path)}"

"""A cluster's shell and files over SSH: the implementation of :class:`hpc.transport.ClusterFiles`.

Commands run on the infrastructure's pooled paramiko connection (:class:`~hpc.ssh.client.SSHConnection`).
Files move over SFTP (:mod:`hpc.ssh.sftp`) carried by one of two engines:

- ``openssh``: each session is an ``ssh`` process (:mod:`hpc.ssh.openssh`), so the crypto of bulk data
  runs in C on another core; used when the OpenSSH client is installed (``ssh_data_engine: auto``);
- ``paramiko``: each session is a channel of the paramiko connection (or of a dedicated one for a big
  file), for machines without the OpenSSH client.

Sessions for small operations (stat, rename, small files) are kept and reused; a big file's writer or
reader gets a session of its own. Nothing returned here is a library object.
"""

from __future__ import annotations

import logging
import posixpath
import re
import threading
from collections.abc import Callable, Iterator, Sequence

from hpc.shell import quote
from hpc.ssh import openssh
from hpc.ssh.client import SSHConnection
from hpc.ssh.errors import SSHError
from hpc.ssh.keys import openssh_private_bytes
from hpc.ssh.sftp import SFTPSession, Writer
from hpc.transport import (
    FAILURE,
    NO_SUCH_FILE,
    CommandResult,
    FileHashes,
    FileInfo,
    NotADirectory,
    RemoteFileError,
    TransportError,
)

log = logging.getLogger(__name__)

ENGINES = ("auto", "openssh", "paramiko")
_IDLE_SESSIONS = 2
_HASH_LINE = re.compile(r"^\\?([0-9a-f]{64}) [ *]?(.*)$")
# The hashing program on the cluster: OpenSSL where present (SHA-NI/AVX2 code: 0.31 s for 300 MiB on the
# testbed), else coreutils sha256sum (portable C: 1.86 s). Both print "<hex> ..." for standard input.
_HASHER = "h() { if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r; else sha256sum; fi; }"
_HASH_MANY = ('hm() { if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r "$@"; '
              'else sha256sum -b -- "$@"; fi; }')
_PYTHON = "python3"  # the cluster's interpreter for the follower below (a test hides it to try the fallback)
# Hashes the first N bytes of a file while another process appends them (argv: path, N, time limit).
_FOLLOWER = """
import hashlib, os, sys, time
path, size, limit = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
digest, fd, done = hashlib.sha256(), os.open(path, os.O_RDONLY), 0
while done < size:
    data = os.read(fd, min(1 << 20, size - done))
    if data:
        digest.update(data)
        done += len(data)
    elif not os.path.exists(path) or time.monotonic() > limit:
        sys.exit(1)
    else:
        time.sleep(0.01)
print(digest.hexdigest(), " -")
"""
_PLAIN_NAME = re.compile(r"^[^\x00-\x1f\x7f\\]*$")
_ARGS_PER_COMMAND = 100_000  # bytes of paths per hashing command (ARG_MAX is 2 MiB on Linux)


class ClusterFiles:
    """The shell and files of one infrastructure (see :class:`hpc.transport.ClusterFiles`).

    Args:
        connection: The infrastructure's pooled connection (commands; and SFTP with the paramiko engine).
        engine: ``auto``, ``openssh`` or ``paramiko``.
        io_timeout: Seconds an SFTP session may stay silent before it fails.
        command_timeout: Default seconds for a command.
    """

    def __init__(self, connection: SSHConnection, engine: str = "auto", io_timeout: float = 60.0,
                 command_timeout: float = 60.0, on_connection: Callable[[], None] | None = None):
        if engine not in ENGINES:
            raise ValueError(f"unknown SSH data engine {engine!r} (one of {', '.join(ENGINES)})")
        if engine == "openssh" and not openssh.available():
            raise ValueError("ssh_data_engine is openssh but the OpenSSH client (ssh, ssh-agent) is not installed")
        self.engine = "openssh" if engine == "openssh" or (engine == "auto" and openssh.available()) else "paramiko"
        self.connection = connection
        self.io_timeout = io_timeout
        self.command_timeout = command_timeout
        self.where = f"{connection.target.username}@{connection.target.host}:{connection.target.port}"
        self._lock = threading.Lock()
        self._idle: list[SFTPSession] = []
        self._closed = False  # closed (its connection replaced or dropped): sessions given back are closed
        self._openssh: openssh.OpenSSHEngine | None = None
        self._engine_lock = threading.Lock()
        self.sessions_opened = 0
        # SSH connections opened for data beside the pooled one (an ssh process per openssh session, a
        # dedicated paramiko connection per big file); on_connection is told of each ssh process.
        self.connections_opened = 0
        self._on_connection = on_connection

    # -- sessions ------------------------------------------------------------------------------

    def _engine(self) -> openssh.OpenSSHEngine:
        with self._lock:
            engine = self._openssh
        if engine is not None:
            return engine
        with self._engine_lock:
            if self._openssh is None:
                target = self.connection.target
                # The control connection has checked the host key (pinned, known_hosts or first use): the
                # data path trusts exactly the key it saw.
                host_key = self.connection.host_key
                self._openssh = openssh.OpenSSHEngine(
                    target.host, target.port, self.connection.username, host_key, self.connection.client_key_id(),
                    lambda: openssh_private_bytes(target.key_path, target.key_data, target.passphrase),
                    target.connect_timeout,
                )
            return self._openssh

    def _open_session(self, dedicated: bool) -> SFTPSession:
        if self.engine == "openssh":
            engine = self._engine()
            stream = engine.open_stream(self.io_timeout)
            self._connection_opened(self._on_connection)
            try:
                session = SFTPSession(stream, self.where)
            except TransportError as exc:
                stream.close()
                raise engine.failure(stream, exc) from None
        else:
            connection = self.connection.open_dedicated() if dedicated else self.connection
            if connection is not self.connection:
                self._connection_opened(None)  # counted by whoever wraps the connection (open_dedicated)
            try:
                stream = connection.open_stream("sftp", self.io_timeout)
            except BaseException:
                if connection is not self.connection:
                    connection.close()
                raise
            if connection is not self.connection:
                stream.on_close = connection.close
            try:
                session = SFTPSession(stream, self.where)
            except BaseException:
                stream.close()
                raise
        with self._lock:
            self.sessions_opened += 1
        log.debug("%s data session to %s over %s", "dedicated" if dedicated else "pooled", self.where, self.engine)
        return session

    @property
    def idle_sessions(self) -> int:
        """Sessions kept open for the next operation."""
        with self._lock:
            return len(self._idle)

    def _connection_opened(self, tell: Callable[[], None] | None) -> None:
        with self._lock:
            self.connections_opened += 1
        if tell is not None:
            try:
                tell()
            except Exception:  # a counter must never fail a transfer
                log.exception("counting an SSH connection failed")

    def _acquire(self) -> SFTPSession:
        with self._lock:
            while self._idle:
                session = self._idle.pop()
                if session.alive:
                    return session
        return self._open_session(dedicated=False)

    def _release(self, session: SFTPSession) -> None:
        if session.alive:
            with self._lock:
                if not self._closed and len(self._idle) < _IDLE_SESSIONS:
                    self._idle.append(session)
                    return
        session.close()

    def _with_session(self, action: Callable[[SFTPSession], object]):
        session = self._acquire()
        try:
            result = action(session)
        except BaseException:
            # An error status leaves the session usable; anything else may have broken it.
            self._release(session) if session.alive else session.close()
            raise
        self._release(session)
        return result

    def close(self) -> None:
        """Closes the idle sessions; those in use run on and are closed when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for session in idle:
            session.close()

    # -- commands ------------------------------------------------------------------------------

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        return self.connection.run(command, stdin=stdin, timeout=timeout or self.command_timeout)

    def realpaths(self, paths: Sequence[str]) -> list[str]:
        result = self.run("realpath -m -- " + " ".join(quote(p) for p in paths))
        lines = result.stdout.splitlines()
        if result.exit_code != 0 or len(lines) != len(paths):
            raise TransportError(f"realpath failed on the cluster (exit {result.exit_code}): "
                                 f"{(result.stderr or result.stdout).strip()[:200]}", retryable=False)
        return lines

    # -- files ---------------------------------------------------------------------------------

    def stat(self, path: str) -> FileInfo | None:
        return self._with_session(lambda s: s.stat(path))

    def listdir(self, path: str) -> list[FileInfo]:
        return self._with_session(lambda s: s.listdir(path))

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        def make(session: SFTPSession) -> None:
            missing = []
            current = posixpath.normpath(path)
            while current not in ("/", ""):
                info = session.stat(current)
                if info is not None:
                    if not info.is_dir:
                        raise NotADirectory(f"creating {path} on the cluster: {current} exists and is not a "
                                            "directory", current)
                    break
                missing.append(current)
                current = posixpath.dirname(current)
            for directory in reversed(missing):
                try:
                    session.mkdir(directory, mode)
                except RemoteFileError as exc:
                    # FAILURE is also what sftp-server answers for "exists": made meanwhile is fine.
                    found = session.stat(directory) if exc.status == FAILURE else None
                    if found is None or not found.is_dir:
                        raise

        self._with_session(make)

    def rename(self, src: str, dst: str) -> None:
        self._with_session(lambda s: s.rename(src, dst))

    def remove(self, path: str) -> None:
        def remove(session: SFTPSession) -> None:
            try:
                session.remove(path)
            except RemoteFileError as exc:
                if exc.status != NO_SUCH_FILE:
                    raise

        self._with_session(remove)

    def rmdir(self, path: str) -> None:
        def rmdir(session: SFTPSession) -> None:
            try:
                session.rmdir(path)
            except RemoteFileError as exc:
                if exc.status != NO_SUCH_FILE:
                    raise

        self._with_session(rmdir)

    def truncate(self, path: str, size: int) -> None:
        self._with_session(lambda s: s.setstat(path, size=size))

    def read_file(self, path: str, offset: int = 0, length: int = 1 << 20) -> bytes:
        def read(session: SFTPSession) -> bytes:
            info = session.stat(path)
            if info is None:
                raise RemoteFileError(f"reading {path} on the cluster: no such file or directory", NO_SUCH_FILE,
                                      path)
            end = min(info.size, offset + length)
            return b"".join(session.read(path, offset, end)) if end > offset else b""

        return self._with_session(read)

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        def write(session: SFTPSession) -> None:
            outcome = session.write_many([(path, data)], mode)[0]
            if outcome is not None:
                raise outcome
            session.setstat(path, mode=mode)  # the open's mode is masked by the server's umask

        self._with_session(write)

    def write_files(self, files: Sequence[tuple[str, bytes]], mode: int = 0o644) -> list[TransportError | None]:
        return self._with_session(lambda s: s.write_many(files, mode))

    def read_files(self, files: Sequence[tuple[str, int]]) -> list[bytes | TransportError]:
        return self._with_session(lambda s: s.read_many(files))

    def rename_many(self, pairs: Sequence[tuple[str, str]]) -> list[TransportError | None]:
        return self._with_session(lambda s: s.rename_many(pairs))

    # -- bulk data -----------------------------------------------------------------------------

    def _session_for(self, dedicated: bool) -> tuple[SFTPSession, bool]:
        """A session for a big file: with the OpenSSH engine every session is an ``ssh`` process of its own
        already, so an idle one serves (no new handshake); with paramiko, a new connection."""
        if dedicated and self.engine == "paramiko":
            return self._open_session(True), True
        return self._acquire(), False

    def open_writer(self, path: str, offset: int = 0, *, create: bool = False, dedicated: bool = False,
                    on_ack: Callable[[int], None] | None = None) -> SessionWriter:
        session, dedicated = self._session_for(dedicated)
        try:
            writer = session.writer(path, offset, create=create, on_ack=on_ack)
        except BaseException:
            session.close() if dedicated or not session.alive else self._release(session)
            raise
        return SessionWriter(writer, session, self if not dedicated else None)

    def read(self, path: str, offset: int, end: int, *, dedicated: bool = False) -> SessionReader:
        session, dedicated = self._session_for(dedicated)
        return SessionReader(session, path, offset, end, self if not dedicated else None)

    # -- hashing on the cluster ----------------------------------------------------------------

    def hash(self, path: str, ranges: Sequence[tuple[int, int]] = (), whole: bool = True,
             size_hint: int = 0) -> FileHashes:
        q = quote(path)
        steps = [f"wc -c < {q}"]
        if whole:
            steps.append(f"h < {q}")
        for start, end in ranges:
            steps.append(f"tail -c +{start + 1} < {q} | head -c {end - start} | h")
        # sha256 runs at several hundred MB/s; allow 20 MB/s per byte hashed so a slow disk still fits.
        budget = self.command_timeout + (sum(e - s for s, e in ranges) + (size_hint if whole else 0)) / 20e6
        result = self.run(f"LC_ALL=C; export LC_ALL; {_HASHER}; " + " && ".join(steps), timeout=budget)
        lines = [line.strip() for line in result.stdout.strip().splitlines()]
        if result.exit_code != 0 or len(lines) != 1 + int(whole) + len(ranges) or not lines[0].isdigit():
            raise TransportError(f"hashing {path} on the cluster failed (exit {result.exit_code}): "
                                 f"{(result.stderr or result.stdout).strip()[:200]}")
        digests = []
        for line in lines[1:]:
            match = _HASH_LINE.match(line)
            if not match:
                raise TransportError(f"hashing {path} on the cluster: unexpected output {line[:100]!r}",
                                     retryable=False)
            digests.append(match.group(1))
        return FileHashes(size=int(lines[0]), sha256=digests[0] if whole else None,
                          ranges=tuple(digests[1:] if whole else digests))

    def hash_growing(self, path: str, size: int) -> str | None:
        # Python's hashlib where the cluster has python3 (large reads: 0.9 CPU-s per GiB measured here),
        # else tail -f | head -c | sha256 (2.2 CPU-s per GiB in small reads and pipes). Either ends when
        # ``size`` bytes are read, when the file goes away (a cancelled transfer removes it), or at the
        # time limit: nothing is left running on the cluster.
        budget = max(3600, int(size / 1e6))
        q = quote(path)
        command = (f"LC_ALL=C; export LC_ALL; {_HASHER}; f={q}; "
                   f"if command -v {_PYTHON} >/dev/null 2>&1; then {_PYTHON} -c {quote(_FOLLOWER)} \"$f\" {size} "
                   f"{budget}; else "
                   f'w() {{ while [ -e "$f" ]; do sleep 1; done; }}; w & p=$!; '
                   f'r=$(timeout {budget} tail -c +1 -s 0.2 -f --pid="$p" -- "$f" | head -c {size} | h); '
                   'kill "$p" 2>/dev/null; [ -e "$f" ] && echo "$r"; fi')
        try:
            # On the control connection: it carries one hash line, and opens no new connection.
            out = self.run(command, timeout=budget + 60).stdout
        except TransportError as exc:
            log.debug("hashing %s as it arrives failed: %s", path, exc)
            return None
        match = _HASH_LINE.match(out.strip())
        return match.group(1) if match else None

    def hash_files(self, paths: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        plain = [p for p in paths if _PLAIN_NAME.match(p)]
        odd = [p for p in paths if not _PLAIN_NAME.match(p)]
        batch: list[str] = []
        size = 0
        for path in plain:
            batch.append(path)
            size += len(path) + 3
            if size > _ARGS_PER_COMMAND:
                found.update(self._hash_batch(batch))
                batch, size = [], 0
        if batch:
            found.update(self._hash_batch(batch))
        for path in odd:
            # A name with a newline or backslash would be ambiguous in a listing: hashed on its own.
            result = self.run(f"{_HASHER}; h < {quote(path)}")
            match = _HASH_LINE.match(result.stdout.strip())
            if result.exit_code == 0 and match:
                found[path] = match.group(1)
        return found

    def _hash_batch(self, paths: list[str]) -> dict[str, str]:
        result = self.run(f"LC_ALL=C; export LC_ALL; {_HASH_MANY}; hm " + " ".join(quote(p) for p in paths),
                          timeout=self.command_timeout + len(paths) * 0.05)
        wanted = set(paths)
        found = {}
        for line in result.stdout.splitlines():
            match = _HASH_LINE.match(line)
            if match and match.group(2) in wanted:
                found[match.group(2)] = match.group(1)
        return found


class SessionWriter:
    """A :class:`~hpc.ssh.sftp.Writer` that gives its session back (or closes it) when done."""

    def __init__(self, writer: Writer, session: SFTPSession, owner: ClusterFiles | None):
        self._writer = writer
        self._session = session
        self._owner = owner
        self._lock = threading.Lock()
        self._done = False  # once given back, the session is another caller's: abort() must not touch it

    @property
    def position(self) -> int:
        return self._writer.position

    @property
    def acked(self) -> int:
        return self._writer.acked

    def write(self, data) -> None:
        self._writer.write(data)

    def write_from(self, fd: int, offset: int, count: int) -> None:
        self._writer.write_from(fd, offset, count)

    def flush(self) -> int:
        return self._writer.flush()

    def close(self) -> None:
        try:
            self._writer.close()
        except BaseException:
            self.abort()
            raise
        with self._lock:
            if self._done:
                return
            self._done = True
        if self._owner is not None:
            self._owner._release(self._session)
        else:
            self._session.close()

    def abort(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._session.abort()


class SessionReader:
    """Iterates over a file's bytes read on a session, then gives the session back (or closes it)."""

    def __init__(self, session: SFTPSession, path: str, offset: int, end: int, owner: ClusterFiles | None):
        self._session = session
        self._args = (path, offset, end)
        self._owner = owner
        self._lock = threading.Lock()
        self._done = False

    def __iter__(self) -> Iterator[memoryview]:
        completed = False
        try:
            yield from self._session.read(*self._args)
            completed = True
        finally:
            with self._lock:
                done, self._done = self._done, True
            if not done:
                if self._owner is not None and completed and self._session.alive:
                    self._owner._release(self._session)
                else:
                    self._session.close()

    def abort(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._session.abort()


__all__ = ["ClusterFiles", "ENGINES", "SSHError"]

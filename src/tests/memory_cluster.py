"""An in-memory cluster: :class:`hpc.transport.ClusterFiles` over a dict, for the staging unit tests.

It behaves as OpenSSH's sftp-server does where the pipeline depends on it (status codes: NO_SUCH_FILE for
a missing file, FAILURE for "exists" or "is a directory"; writes acknowledged in order) and can inject
faults: a connection that drops after some bytes were written, a range that reads back different, a
session that stalls. Commands are not interpreted: the staging layer runs none (it asks for hashes and
real paths, which this class computes itself).
"""

from __future__ import annotations

import hashlib
import posixpath
import threading
from dataclasses import dataclass, field
from collections.abc import Callable, Iterator, Sequence

from hpc.transport import (
    EOF,
    FAILURE,
    NO_SUCH_FILE,
    CommandResult,
    FileHashes,
    FileInfo,
    NotADirectory,
    RemoteFileError,
    TransportError,
)


@dataclass
class Faults:
    """What goes wrong, and when (each counter counts down and fires once at zero)."""

    drop_after_bytes: int | None = None  # the write session dies once this many more bytes were acked
    corrupt_next_range: bool = False  # the next range hash answers a wrong digest
    fail_renames: int = 0  # the next N renames fail with a lost connection
    fail_hashes: int = 0  # the next N hash commands fail with a lost connection
    fail_write_files: int = 0  # the next N write_files calls fail with a lost connection
    calls: list[str] = field(default_factory=list)


class MemoryCluster:
    """A cluster whose files live in memory (absolute paths; ``/`` and ``/home/u`` exist)."""

    def __init__(self, home: str = "/home/u"):
        self.files: dict[str, bytearray] = {}
        self.dirs: set[str] = {"/", "/home", home}
        self.mtimes: dict[str, int] = {}
        self.faults = Faults()
        self.lock = threading.Lock()
        self.bytes_written = 0
        self.sessions_opened = 0

    # -- helpers -------------------------------------------------------------------------------

    def _lost(self, what: str) -> TransportError:
        return TransportError(f"{what}: the SSH connection to memory was lost")

    def put(self, path: str, data: bytes) -> None:
        """Creates a file (and its parents) directly, as a test fixture."""
        self._parents(path)
        self.files[path] = bytearray(data)
        self.mtimes[path] = 1_700_000_000

    def _parents(self, path: str) -> None:
        current = posixpath.dirname(path)
        while current not in self.dirs:
            self.dirs.add(current)
            current = posixpath.dirname(current)

    def _info(self, path: str, name: str | None = None) -> FileInfo | None:
        if path in self.dirs:
            return FileInfo(name or path, 4096, 0, "directory", 0o755)
        if path in self.files:
            return FileInfo(name or path, len(self.files[path]), self.mtimes.get(path, 0), "file", 0o644)
        return None

    # -- ClusterFiles --------------------------------------------------------------------------

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        raise AssertionError(f"the staging layer ran a command: {command}")

    def stat(self, path: str) -> FileInfo | None:
        with self.lock:
            return self._info(path)

    def listdir(self, path: str) -> list[FileInfo]:
        with self.lock:
            if path not in self.dirs:
                raise RemoteFileError(f"listing {path}: no such file", NO_SUCH_FILE, path)
            names = {p[len(path.rstrip("/")) + 1 :].split("/")[0] for p in (*self.files, *self.dirs)
                     if p.startswith(path.rstrip("/") + "/") and p != path}
            return [self._info(posixpath.join(path, n), n) for n in sorted(names)]

    def realpaths(self, paths: Sequence[str]) -> list[str]:
        return [posixpath.normpath(p) for p in paths]

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        with self.lock:
            current = path
            while current != "/":
                if current in self.files:
                    raise NotADirectory(f"creating {path}: {current} exists and is not a directory", current)
                current = posixpath.dirname(current)
            self.dirs.add(path)
            self._parents(path)

    def rename(self, src: str, dst: str) -> None:
        with self.lock:
            self.faults.calls.append(f"rename {dst}")
            if self.faults.fail_renames:
                self.faults.fail_renames -= 1
                raise self._lost("renaming")
            self._rename(src, dst)

    def _rename(self, src: str, dst: str) -> None:
        if src not in self.files:
            raise RemoteFileError(f"moving {src}: no such file", NO_SUCH_FILE, src)
        if dst in self.dirs:
            raise RemoteFileError(f"moving {src} to {dst}: failure", FAILURE, dst)
        if posixpath.dirname(dst) not in self.dirs:
            raise RemoteFileError(f"moving {src} to {dst}: no such file", NO_SUCH_FILE, dst)
        self.files[dst] = self.files.pop(src)
        self.mtimes[dst] = self.mtimes.pop(src, 0)

    def remove(self, path: str) -> None:
        with self.lock:
            self.files.pop(path, None)

    def rmdir(self, path: str) -> None:
        with self.lock:
            self.dirs.discard(path)

    def truncate(self, path: str, size: int) -> None:
        with self.lock:
            data = self.files[path]
            del data[size:]
            data.extend(b"\0" * (size - len(data)))

    def open_writer(self, path: str, offset: int = 0, *, create: bool = False, dedicated: bool = False,
                    on_ack: Callable[[int], None] | None = None) -> MemoryWriter:
        with self.lock:
            self.sessions_opened += 1
            if posixpath.dirname(path) not in self.dirs:
                raise RemoteFileError(f"opening {path}: no such file", NO_SUCH_FILE, path)
            if path in self.dirs:
                raise RemoteFileError(f"opening {path}: failure", FAILURE, path)
            if create or path not in self.files:
                self.files[path] = bytearray()
                self.mtimes[path] = 1_700_000_000
        return MemoryWriter(self, path, offset, on_ack)

    def read(self, path: str, offset: int, end: int, *, dedicated: bool = False) -> MemoryReader:
        return MemoryReader(self, path, offset, end)

    def read_file(self, path: str, offset: int = 0, length: int = 1 << 20) -> bytes:
        with self.lock:
            return bytes(self.files[path][offset : offset + length])

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        with self.lock:
            self.files[path] = bytearray(data)

    def write_files(self, files: Sequence[tuple[str, bytes]], mode: int = 0o644) -> list[TransportError | None]:
        with self.lock:
            self.faults.calls.append(f"write_files {len(files)}")
            if self.faults.fail_write_files:
                self.faults.fail_write_files -= 1
                raise self._lost("writing files")
            out: list[TransportError | None] = []
            for path, data in files:
                if posixpath.dirname(path) not in self.dirs:
                    out.append(RemoteFileError(f"creating {path}: no such file", NO_SUCH_FILE, path))
                    continue
                self.files[path] = bytearray(data)
                self.bytes_written += len(data)
                out.append(None)
            return out

    def read_files(self, files: Sequence[tuple[str, int]]) -> list[bytes | TransportError]:
        with self.lock:
            out: list = []
            for path, size in files:
                if path not in self.files:
                    out.append(RemoteFileError(f"opening {path}: no such file", NO_SUCH_FILE, path))
                elif len(self.files[path]) != size:
                    out.append(RemoteFileError(f"{path} changed", EOF, path))
                else:
                    out.append(bytes(self.files[path]))
            return out

    def rename_many(self, pairs: Sequence[tuple[str, str]]) -> list[TransportError | None]:
        with self.lock:
            self.faults.calls.append(f"rename_many {len(pairs)}")
            out: list[TransportError | None] = []
            for src, dst in pairs:
                try:
                    self._rename(src, dst)
                    out.append(None)
                except TransportError as exc:
                    out.append(exc)
            return out

    def hash(self, path: str, ranges: Sequence[tuple[int, int]] = (), whole: bool = True,
             size_hint: int = 0) -> FileHashes:
        with self.lock:
            self.faults.calls.append(f"hash {path} {list(ranges)} {whole}")
            if self.faults.fail_hashes:
                self.faults.fail_hashes -= 1
                raise self._lost("hashing")
            if path not in self.files:
                raise TransportError(f"hashing {path}: no such file", retryable=False)
            data = bytes(self.files[path])
            digests = [hashlib.sha256(data[s:e]).hexdigest() for s, e in ranges]
            if ranges and self.faults.corrupt_next_range:
                self.faults.corrupt_next_range = False
                digests[0] = "0" * 64
            return FileHashes(len(data), hashlib.sha256(data).hexdigest() if whole else None, tuple(digests))

    def hash_growing(self, path: str, size: int) -> str | None:
        import time

        with self.lock:
            self.faults.calls.append(f"hash_growing {path} {size}")
        while True:
            with self.lock:
                data = self.files.get(path)
                if data is None:
                    return None
                if len(data) >= size:
                    digest = hashlib.sha256(bytes(data[:size])).hexdigest()
                    if self.faults.corrupt_next_range:
                        self.faults.corrupt_next_range = False
                        digest = "0" * 64
                    return digest
            time.sleep(0.005)

    def hash_files(self, paths: Sequence[str]) -> dict[str, str]:
        with self.lock:
            self.faults.calls.append(f"hash_files {len(paths)}")
            return {p: hashlib.sha256(self.files[p]).hexdigest() for p in paths if p in self.files}

    def close(self) -> None:
        pass


class MemoryWriter:
    def __init__(self, cluster: MemoryCluster, path: str, offset: int, on_ack):
        self._cluster = cluster
        self._path = path
        self.position = offset
        self.acked = offset
        self._on_ack = on_ack
        self._aborted = False

    def write(self, data) -> None:
        if self._aborted:
            raise TransportError("the SFTP session to memory was closed")
        cluster = self._cluster
        data = bytes(data)
        with cluster.lock:
            drop = cluster.faults.drop_after_bytes
            if drop is not None and drop < len(data):
                cluster.faults.drop_after_bytes = None
                data = data[:drop]
                dropped = True
            else:
                if drop is not None:
                    cluster.faults.drop_after_bytes = drop - len(data)
                dropped = False
            buffer = cluster.files[self._path]
            if len(buffer) < self.position:
                buffer.extend(b"\0" * (self.position - len(buffer)))
            buffer[self.position : self.position + len(data)] = data
            cluster.bytes_written += len(data)
        self.position += len(data)
        self.acked = self.position
        if self._on_ack is not None and data:
            self._on_ack(self.acked)
        if dropped:
            raise cluster._lost("writing")

    def write_from(self, fd: int, offset: int, count: int) -> None:
        import os

        self.write(os.pread(fd, count, offset))

    def flush(self) -> int:
        return self.acked

    def close(self) -> None:
        if self._aborted:
            raise TransportError("the SFTP session to memory was closed")

    def abort(self) -> None:
        self._aborted = True


class MemoryReader:
    def __init__(self, cluster: MemoryCluster, path: str, offset: int, end: int):
        self._cluster = cluster
        self._path = path
        self._offset = offset
        self._end = end
        self._aborted = False

    def __iter__(self) -> Iterator[memoryview]:
        with self._cluster.lock:
            if self._path not in self._cluster.files:
                raise RemoteFileError(f"opening {self._path}: no such file", NO_SUCH_FILE, self._path)
            data = bytes(self._cluster.files[self._path])
        position = self._offset
        while position < self._end:
            if self._aborted:
                raise TransportError("the SFTP session to memory was closed")
            piece = data[position : min(self._end, position + 261120)]
            if not piece:
                raise RemoteFileError(f"{self._path} ended at {position}", EOF, self._path)
            yield memoryview(piece)
            position += len(piece)

    def abort(self) -> None:
        self._aborted = True

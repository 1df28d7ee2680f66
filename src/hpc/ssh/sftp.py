"""An SFTP version 3 client over any byte stream: an OpenSSH ``ssh -s sftp`` process or a paramiko channel.

Why not paramiko's ``SFTPClient``: it caps every request at 32 KiB (``SFTPFile.MAX_REQUEST_SIZE``), copies
each request several times on its way out, hides which writes the server acknowledged, and turns status
codes into ``IOError`` text. Making it fast and resumable meant patching its internals from outside
(measured in ``docs/performance.md``). This client speaks the protocol itself (draft-ietf-secsh-filexfer-02,
what OpenSSH's sftp-server implements), in about the size of those patches:

- requests of up to :data:`REQUEST_SIZE` bytes (the most sftp-server accepts), many in flight, each sent
  with one ``sendmsg`` of its header and a view of the caller's buffer (no copy in Python);
- the writer knows the acknowledged prefix of the file at every moment (what a resume starts from);
- every error status becomes a :class:`~hpc.transport.RemoteFileError` carrying the status code;
- the stream below is swappable: the crypto runs in an ``ssh`` process (C, on another core) or in
  paramiko (Python), whichever the gateway is configured for (``hpc.ssh.files``).

A session is used by one thread at a time; only :meth:`SFTPSession.abort` may be called from another.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections import deque
from typing import Protocol
from collections.abc import Callable, Iterator, Sequence

from hpc.transport import (
    EOF,
    FAILURE,
    NO_SUCH_FILE,
    OK,
    STATUS_NAMES,
    FileInfo,
    RemoteFileError,
    TransportError,
)

# The largest read/write payload OpenSSH's sftp-server accepts (it advertises 261120 in limits@openssh.com
# and refuses messages over 256 KiB).
REQUEST_SIZE = 261120
WRITE_WINDOW = 64  # requests in flight: 64 x 255 KiB = 16 MiB, past the bandwidth-delay product of a WAN
READ_WINDOW = 32
MANY_WINDOW = 64  # small-file requests in flight

# Packet types.
_INIT, _VERSION, _OPEN, _CLOSE, _READ, _WRITE, _LSTAT, _FSTAT, _SETSTAT = 1, 2, 3, 4, 5, 6, 7, 8, 9
_OPENDIR, _READDIR, _REMOVE, _MKDIR, _RMDIR, _REALPATH, _STAT, _RENAME = 11, 12, 13, 14, 15, 16, 17, 18
_STATUS, _HANDLE, _DATA, _NAME, _ATTRS, _EXTENDED = 101, 102, 103, 104, 105, 200
# Open flags and attribute flags.
READ, WRITE, CREATE, TRUNCATE = 0x01, 0x02, 0x08, 0x10
_ATTR_SIZE, _ATTR_UIDGID, _ATTR_PERMISSIONS, _ATTR_ACMODTIME, _ATTR_EXTENDED = 0x1, 0x2, 0x4, 0x8, 0x80000000

_HEADER = struct.Struct(">IBI")  # length, type, request id
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_MAX_MESSAGE = 512 * 1024  # a longer length field means a broken stream, not a message


class Stream(Protocol):
    """A reliable byte stream to an sftp-server."""

    def send(self, parts: Sequence[bytes | memoryview]) -> None:
        """Sends the parts, in order, completely."""

    def recv_into(self, buffer: memoryview) -> int:
        """Receives into ``buffer``; 0 at end of stream. Raises ``socket.timeout`` after the timeout."""

    def close(self) -> None:
        """Ends the stream (callable from another thread to wake a blocked receive)."""


class SocketStream:
    """A stream over a socket (one end of the socketpair an ``ssh`` process reads and writes)."""

    def __init__(self, sock: socket.socket, timeout: float, on_close: Callable[[], None] | None = None,
                 process=None):
        self._sock = sock
        self._on_close = on_close
        self.process = process  # the ssh process at the other end, if any
        sock.settimeout(timeout)

    def send(self, parts: Sequence[bytes | memoryview]) -> None:
        views = [memoryview(p).cast("B") for p in parts if len(p)]
        while views:
            sent = self._sock.sendmsg(views)
            while views and sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            if views and sent:
                views[0] = views[0][sent:]

    def recv_into(self, buffer: memoryview) -> int:
        return self._sock.recv_into(buffer)

    def send_file(self, head: Sequence[bytes | memoryview], fd: int, offset: int, count: int) -> None:
        """Sends ``head``, then ``count`` bytes of file ``fd`` from ``offset`` by sendfile(2): the kernel
        copies them from the page cache to the socket, through no Python buffer."""
        self.send(head)
        sent = self._sock.sendfile(_FileNumber(fd), offset, count)
        if sent != count:
            raise EOFError()

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        if self._on_close is not None:
            self._on_close()


class _FileNumber:
    """A file descriptor as ``socket.sendfile`` takes one (it needs only ``fileno``)."""

    def __init__(self, fd: int):
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


def send_file_by_reading(stream: Stream, head: Sequence[bytes | memoryview], fd: int, offset: int,
                         count: int) -> None:
    """``send_file`` for streams without sendfile(2) (a paramiko channel): read, then send."""
    data = os.pread(fd, count, offset)
    if len(data) != count:
        raise OSError(f"the file ended at byte {offset + len(data)}, before {offset + count}")
    stream.send([*head, data])


def _pack_string(data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return _U32.pack(len(data)) + data


def _pack_attrs(size: int | None = None, mode: int | None = None) -> bytes:
    flags, tail = 0, b""
    if size is not None:
        flags |= _ATTR_SIZE
        tail += _U64.pack(size)
    if mode is not None:
        flags |= _ATTR_PERMISSIONS
        tail += _U32.pack(mode)
    return _U32.pack(flags) + tail


class _Body:
    """Reads the fields of one received message."""

    def __init__(self, data: memoryview, owned: bool = False):
        self._data = data
        self._at = 0
        # False: a view of the session's receive buffer, valid only until the next message is read.
        self.owned = owned

    def u32(self) -> int:
        value = _U32.unpack_from(self._data, self._at)[0]
        self._at += 4
        return value

    def u64(self) -> int:
        value = _U64.unpack_from(self._data, self._at)[0]
        self._at += 8
        return value

    def string(self) -> memoryview:
        size = self.u32()
        value = self._data[self._at : self._at + size]
        if len(value) != size:
            raise TransportError("malformed SFTP message (a string runs past its end)")
        self._at += size
        return value

    def text(self) -> str:
        return bytes(self.string()).decode("utf-8", "surrogateescape")

    def attrs(self, name: str) -> FileInfo:
        flags = self.u32()
        size = self.u64() if flags & _ATTR_SIZE else 0
        if flags & _ATTR_UIDGID:
            self.u32(), self.u32()
        mode = self.u32() if flags & _ATTR_PERMISSIONS else 0
        mtime = 0
        if flags & _ATTR_ACMODTIME:
            self.u32()
            mtime = self.u32()
        if flags & _ATTR_EXTENDED:
            for _ in range(self.u32()):
                self.string(), self.string()
        return FileInfo(name=name, size=size, mtime=mtime, kind=_kind(mode), mode=mode & 0o7777)


def _kind(mode: int) -> str:
    kind = mode & 0o170000
    return {0o100000: "file", 0o040000: "directory", 0o120000: "symlink"}.get(kind, "other")


def status_error(status: int, message: str, path: str, action: str) -> RemoteFileError:
    """The error for an SFTP status: the reason names the action, the path and the status code's meaning."""
    meaning = STATUS_NAMES.get(status, f"status {status}")
    detail = f" ({message})" if message and message.lower() != meaning else ""
    return RemoteFileError(f"{action} {path} on the cluster: {meaning}{detail}", status, path)


class SFTPSession:
    """One SFTP session on a stream.

    Args:
        stream: The byte stream to an sftp-server.
        where: ``user@host:port``, for reasons.

    Raises:
        TransportError: The server did not answer the version exchange.
    """

    def __init__(self, stream: Stream, where: str):
        self._stream = stream
        self.where = where
        self._next = 1
        self._buffer = bytearray(256 * 1024)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0
        self._early: dict[int, tuple[int, memoryview]] = {}
        self._broken: TransportError | None = None
        self._closed = threading.Event()
        self.extensions: dict[str, str] = {}
        self._send_raw([_U32.pack(5), bytes([_INIT]), _U32.pack(3)])
        kind, body = self._read_message()
        if kind != _VERSION:
            raise TransportError(f"{where}: the SFTP server answered {kind} to the version exchange", retryable=False)
        version = body.u32()
        if version != 3:
            raise TransportError(f"{where}: unsupported SFTP version {version}", retryable=False)
        rest = body._data[body._at :]
        reader = _Body(rest)
        while reader._at < len(rest):
            name, value = reader.text(), reader.text()
            self.extensions[name] = value

    # -- wire ---------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._broken is None and not self._closed.is_set()

    def abort(self) -> None:
        """Closes the stream (from any thread): a blocked call raises :class:`TransportError` soon after."""
        if not self._closed.is_set():
            self._closed.set()
            self._stream.close()

    close = abort

    def _fail(self, exc: BaseException, doing: str) -> TransportError:
        if isinstance(exc, TransportError):
            error = exc
        elif self._closed.is_set():
            error = TransportError(f"the SFTP session to {self.where} was closed")
        elif isinstance(exc, socket.timeout):
            error = TransportError(f"{doing}: {self.where} stopped answering (SFTP)")
        elif isinstance(exc, EOFError) or getattr(exc, "errno", None) in (errno.EPIPE, errno.ECONNRESET):
            error = TransportError(f"{doing}: the SSH connection to {self.where} was lost")
        else:
            error = TransportError(f"{doing}: SFTP session to {self.where} failed: {type(exc).__name__}: {exc}")
        self._broken = self._broken or error
        if not self._closed.is_set():
            self._closed.set()
            try:
                self._stream.close()
            except Exception:  # closing a broken stream must not hide the fault
                pass
        return error

    def _send_raw(self, parts: Sequence[bytes | memoryview]) -> None:
        if self._broken is not None:
            raise self._broken
        try:
            self._stream.send(parts)
        except Exception as exc:
            raise self._fail(exc, "sending") from None

    def send(self, kind: int, *parts: bytes | memoryview) -> int:
        """Sends one request; returns its id."""
        number = self._next
        self._next = (self._next + 1) & 0xFFFFFFFF
        length = 5 + sum(len(p) for p in parts)
        self._send_raw([_HEADER.pack(length, kind, number), *parts])
        return number

    def send_with_file(self, kind: int, parts: Sequence[bytes], fd: int, offset: int, count: int) -> int:
        """Sends one request whose last ``count`` bytes come from file ``fd`` at ``offset``; its id."""
        number = self._next
        self._next = (self._next + 1) & 0xFFFFFFFF
        head = [_HEADER.pack(5 + sum(len(p) for p in parts) + count, kind, number), *parts]
        if self._broken is not None:
            raise self._broken
        try:
            if hasattr(self._stream, "send_file"):
                self._stream.send_file(head, fd, offset, count)
            else:
                send_file_by_reading(self._stream, head, fd, offset, count)
        except Exception as exc:
            raise self._fail(exc, "sending") from None
        return number

    def _fill(self, want: int) -> None:
        """Until ``want`` bytes are buffered."""
        if self._end - self._start >= want:
            return
        if self._start:
            size = self._end - self._start
            self._view[:size] = self._view[self._start : self._end]
            self._start, self._end = 0, size
        if want > len(self._buffer):
            raise TransportError(f"{self.where}: an SFTP message of {want} bytes is too long", retryable=False)
        while self._end < want:
            got = self._stream.recv_into(self._view[self._end :])
            if not got:
                raise EOFError()
            self._end += got

    def _take(self, size: int) -> memoryview:
        """``size`` bytes of the stream, in a buffer of their own (an SFTP data payload is received once)."""
        out = bytearray(size)
        view = memoryview(out)
        buffered = min(size, self._end - self._start)
        view[:buffered] = self._view[self._start : self._start + buffered]
        self._start += buffered
        at = buffered
        while at < size:
            got = self._stream.recv_into(view[at:])
            if not got:
                raise EOFError()
            at += got
        return view

    def _read_message(self) -> tuple[int, _Body]:
        if self._broken is not None:
            raise self._broken
        try:
            self._fill(5)
            length = _U32.unpack_from(self._view, self._start)[0]
            if length < 1 or length > _MAX_MESSAGE:
                raise TransportError(f"{self.where}: the SFTP stream is corrupt (message length {length})",
                                     retryable=True)
            kind = self._view[self._start + 4]
            self._start += 5
            size = length - 1
            if size > len(self._buffer) // 2:
                return kind, _Body(self._take(size), owned=True)
            self._fill(size)
            body = self._view[self._start : self._start + size]
            self._start += size
            return kind, _Body(body)
        except Exception as exc:
            raise self._fail(exc, "receiving") from None

    def response(self, number: int) -> tuple[int, _Body]:
        """Waits for the answer to request ``number`` (answers to others are kept for later)."""
        early = self._early.pop(number, None)
        if early is not None:
            return early[0], _Body(early[1], owned=True)
        while True:
            kind, body = self._read_message()
            got = body.u32()
            if got == number:
                return kind, body
            # A small answer read ahead of ours (sftp-server answers in order, so this is rare): kept
            # as a copy, since the receive buffer is reused.
            self._early[got] = (kind, memoryview(bytes(body._data[body._at :])))

    def payload(self, body: _Body) -> memoryview:
        """A DATA answer's bytes, in a buffer the caller may keep."""
        data = body.string()
        return data if body.owned else memoryview(bytes(data))

    def check(self, number: int, path: str, action: str) -> None:
        """Waits for a status answer and raises on an error status."""
        kind, body = self.response(number)
        if kind != _STATUS:
            raise TransportError(f"{action} {path}: unexpected SFTP answer {kind}", retryable=True)
        status = body.u32()
        if status != OK:
            raise status_error(status, _message(body), path, action)

    def call(self, kind: int, parts: Sequence[bytes], path: str, action: str, expect: int) -> _Body:
        """One request and its answer of type ``expect``; an error status raises."""
        number = self.send(kind, *parts)
        got, body = self.response(number)
        if got == _STATUS:
            status = body.u32()
            raise status_error(status if status != OK else FAILURE, _message(body), path, action)
        if got != expect:
            raise TransportError(f"{action} {path}: unexpected SFTP answer {got}", retryable=True)
        return body

    # -- file system --------------------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int | None = None) -> bytes:
        body = self.call(_OPEN, [_pack_string(path), _U32.pack(flags), _pack_attrs(mode=mode)], path, "opening",
                         _HANDLE)
        return bytes(body.string())

    def close_handle(self, handle: bytes, path: str) -> None:
        self.check(self.send(_CLOSE, _pack_string(handle)), path, "closing")

    def stat(self, path: str, follow: bool = True) -> FileInfo | None:
        try:
            body = self.call(_STAT if follow else _LSTAT, [_pack_string(path)], path, "reading the status of",
                             _ATTRS)
        except RemoteFileError as exc:
            if exc.status == NO_SUCH_FILE:
                return None
            raise
        return body.attrs(path)

    def setstat(self, path: str, size: int | None = None, mode: int | None = None) -> None:
        self.check(self.send(_SETSTAT, _pack_string(path), _pack_attrs(size=size, mode=mode)), path, "changing")

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self.check(self.send(_MKDIR, _pack_string(path), _pack_attrs(mode=mode)), path, "creating the directory")

    def rmdir(self, path: str) -> None:
        self.check(self.send(_RMDIR, _pack_string(path)), path, "removing the directory")

    def remove(self, path: str) -> None:
        self.check(self.send(_REMOVE, _pack_string(path)), path, "removing")

    def rename_request(self, src: str, dst: str) -> int:
        """Sends a rename that replaces ``dst`` (posix-rename@openssh.com where offered); its request id."""
        if "posix-rename@openssh.com" in self.extensions:
            return self.send(_EXTENDED, _pack_string("posix-rename@openssh.com"), _pack_string(src),
                             _pack_string(dst))
        return self.send(_RENAME, _pack_string(src), _pack_string(dst))

    def rename(self, src: str, dst: str) -> None:
        self.check(self.rename_request(src, dst), dst, f"moving {src} to")

    def realpath(self, path: str) -> str:
        body = self.call(_REALPATH, [_pack_string(path)], path, "resolving", _NAME)
        if body.u32() < 1:
            raise TransportError(f"resolving {path}: empty SFTP answer", retryable=True)
        return body.text()

    def listdir(self, path: str) -> list[FileInfo]:
        handle = bytes(self.call(_OPENDIR, [_pack_string(path)], path, "listing", _HANDLE).string())
        entries: list[FileInfo] = []
        try:
            while True:
                number = self.send(_READDIR, _pack_string(handle))
                kind, body = self.response(number)
                if kind == _STATUS:
                    status = body.u32()
                    if status == EOF:
                        break
                    raise status_error(status, _message(body), path, "listing")
                if kind != _NAME:
                    raise TransportError(f"listing {path}: unexpected SFTP answer {kind}", retryable=True)
                for _ in range(body.u32()):
                    name = body.text()
                    body.string()  # the "ls -l" line
                    info = body.attrs(name)
                    if name not in (".", ".."):
                        entries.append(info)
        finally:
            self.close_handle(handle, path)
        return entries

    # -- data ---------------------------------------------------------------------------------

    def writer(self, path: str, offset: int, *, create: bool, on_ack: Callable[[int], None] | None = None,
               window: int = WRITE_WINDOW) -> Writer:
        flags = WRITE | (CREATE | TRUNCATE if create else 0)
        return Writer(self, path, self.open(path, flags), offset, on_ack, window)

    def read(self, path: str, offset: int, end: int, window: int = READ_WINDOW) -> Iterator[memoryview]:
        """The bytes ``[offset, end)`` of ``path`` in pieces of up to :data:`REQUEST_SIZE`, reads in flight.

        Raises:
            RemoteFileError: Status ``EOF`` when the file ends before ``end`` (it shrank).
        """
        handle = self.open(path, READ)
        pending: deque[tuple[int, int, int]] = deque()
        following = offset
        try:
            while pending or following < end:
                while len(pending) < window and following < end:
                    size = min(REQUEST_SIZE, end - following)
                    number = self.send(_READ, _pack_string(handle), _U64.pack(following), _U32.pack(size))
                    pending.append((number, following, size))
                    following += size
                number, at, size = pending.popleft()
                kind, body = self.response(number)
                if kind == _STATUS:
                    status = body.u32()
                    raise status_error(status, _message(body), path, f"reading byte {at} of")
                if kind != _DATA:
                    raise TransportError(f"reading {path}: unexpected SFTP answer {kind}", retryable=True)
                data = self.payload(body)
                if len(data) != size:
                    # sftp-server reads regular files in full: a short read is the end of the file.
                    raise RemoteFileError(f"{path} on the cluster ended at byte {at + len(data)}, before "
                                          f"{end}", EOF, path)
                yield data
        finally:
            if self.alive:
                for number, _, _ in pending:
                    self.response(number)
                self.close_handle(handle, path)

    # -- many small files ---------------------------------------------------------------------

    def _pipeline(self, count: int, first: Callable[[int], tuple], answer: Callable, window: int) -> None:
        """Runs requests for ``count`` items with at most ``window`` unanswered at any time.

        ``first(index)`` gives an item's first request ``(kind, parts, step)``; ``answer(index, step, kind,
        body)`` handles an answer and returns the item's follow-up requests (sent before any new item's,
        so memory stays bounded). A bounded window matters: sftp-server stops reading requests while it
        cannot write its answers, so a client that only sends would wait for ever.
        """
        todo: deque[tuple[int, int, tuple, str]] = deque()
        waiting: deque[tuple[int, int, str]] = deque()
        following = 0
        while following < count or todo or waiting:
            if len(waiting) < window and (todo or following < count):
                if todo:
                    index, kind, parts, step = todo.popleft()
                else:
                    index = following
                    following += 1
                    kind, parts, step = first(index)
                waiting.append((self.send(kind, *parts), index, step))
                continue
            number, index, step = waiting.popleft()
            kind, body = self.response(number)
            for request in answer(index, step, kind, body):
                todo.append((index, *request))

    def write_many(self, files: Sequence[tuple[str, bytes | memoryview]], mode: int) -> list[TransportError | None]:
        """Creates each file with its data, many files in flight; one outcome per file."""
        outcomes: list[TransportError | None] = [None] * len(files)

        def first(index: int) -> tuple:
            return _OPEN, (_pack_string(files[index][0]), _U32.pack(WRITE | CREATE | TRUNCATE),
                           _pack_attrs(mode=mode)), "open"

        def answer(index: int, step: str, kind: int, body: _Body) -> list[tuple]:
            path, data = files[index]
            if step == "open":
                if kind != _HANDLE:
                    outcomes[index] = _outcome(kind, body, path, "creating")
                    return []
                handle = _pack_string(bytes(body.string()))
                view = memoryview(data).cast("B")
                requests = [(_WRITE, (handle, _U64.pack(at), _U32.pack(len(view[at : at + REQUEST_SIZE])),
                                      view[at : at + REQUEST_SIZE]), "write")
                            for at in range(0, len(view), REQUEST_SIZE)]
                return requests + [(_CLOSE, (handle,), "close")]
            error = _outcome(kind, body, path, "writing" if step == "write" else "closing")
            if error is not None and outcomes[index] is None:
                outcomes[index] = error
            return []

        self._pipeline(len(files), first, answer, MANY_WINDOW)
        return outcomes

    def read_many(self, files: Sequence[tuple[str, int]]) -> list[bytes | TransportError]:
        """Reads each whole file (``(path, size)``), many files in flight; contents or an error each.

        A file whose length is not ``size`` gives a :class:`RemoteFileError` (status ``EOF`` if it is shorter,
        ``FAILURE`` if longer): it changed since it was listed.
        """
        outcomes: list = [None] * len(files)
        parts: dict[int, list[memoryview]] = {}

        def first(index: int) -> tuple:
            return _OPEN, (_pack_string(files[index][0]), _U32.pack(READ), _pack_attrs()), "open"

        def answer(index: int, step: str, kind: int, body: _Body) -> list[tuple]:
            path, size = files[index]
            if step == "open":
                if kind != _HANDLE:
                    outcomes[index] = _outcome(kind, body, path, "opening")
                    return []
                handle = _pack_string(bytes(body.string()))
                parts[index] = []
                # One read at the end: its EOF status proves the file is no longer than ``size``.
                requests = [(_READ, (handle, _U64.pack(at), _U32.pack(min(REQUEST_SIZE, size - at) or 1)),
                             f"read {at}") for at in [*range(0, size, REQUEST_SIZE), size]]
                return requests + [(_CLOSE, (handle,), "close")]
            if step.startswith("read"):
                at = int(step.split()[1])
                if outcomes[index] is not None:
                    return []
                if at >= size:
                    if not (kind == _STATUS and body.u32() == EOF):
                        outcomes[index] = RemoteFileError(f"{path} on the cluster grew since it was listed",
                                                          FAILURE, path)
                    return []
                if kind == _DATA:
                    data = self.payload(body)
                    if len(data) == min(REQUEST_SIZE, size - at):
                        parts[index].append(data)
                        return []
                outcomes[index] = (_outcome(kind, body, path, "reading") if kind == _STATUS else None) or \
                    RemoteFileError(f"{path} on the cluster shrank since it was listed", EOF, path)
                return []
            error = _outcome(kind, body, path, "closing")
            if outcomes[index] is None:
                outcomes[index] = error if error is not None else b"".join(parts.get(index, []))
            parts.pop(index, None)
            return []

        self._pipeline(len(files), first, answer, READ_WINDOW)
        return outcomes

    def rename_many(self, pairs: Sequence[tuple[str, str]]) -> list[TransportError | None]:
        outcomes: list[TransportError | None] = [None] * len(pairs)
        ext = "posix-rename@openssh.com" in self.extensions

        def first(index: int) -> tuple:
            src, dst = (_pack_string(p) for p in pairs[index])
            if ext:
                return _EXTENDED, (_pack_string("posix-rename@openssh.com"), src, dst), "rename"
            return _RENAME, (src, dst), "rename"

        def answer(index: int, step: str, kind: int, body: _Body) -> list[tuple]:
            outcomes[index] = _outcome(kind, body, pairs[index][1], f"moving {pairs[index][0]} to")
            return []

        self._pipeline(len(pairs), first, answer, MANY_WINDOW)
        return outcomes


def _message(body: _Body) -> str:
    try:
        return body.text()[:200]
    except Exception:  # servers may omit the message
        return ""


def _outcome(kind: int, body: _Body, path: str, action: str) -> TransportError | None:
    """None for an OK status; the error for any other answer."""
    if kind != _STATUS:
        return TransportError(f"{action} {path}: unexpected SFTP answer {kind}", retryable=True)
    status = body.u32()
    if status == OK:
        return None
    return status_error(status, _message(body), path, action)


class Writer:
    """A remote file written with up to ``window`` requests in flight (see :class:`hpc.transport.FileWriter`)."""

    def __init__(self, session: SFTPSession, path: str, handle: bytes, offset: int,
                 on_ack: Callable[[int], None] | None, window: int):
        self._session = session
        self._path = path
        self._handle = _pack_string(handle)
        self._raw_handle = handle
        self._on_ack = on_ack
        self._window = window
        self._pending: deque[tuple[int, int]] = deque()
        self.position = offset
        self.acked = offset
        self._closed = False

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), REQUEST_SIZE):
            piece = view[start : start + REQUEST_SIZE]
            number = self._session.send(_WRITE, self._handle, _U64.pack(self.position), _U32.pack(len(piece)), piece)
            self.position += len(piece)
            self._pending.append((number, self.position))
            while len(self._pending) >= self._window:
                self._ack_oldest()

    def write_from(self, fd: int, offset: int, count: int) -> None:
        """Writes ``count`` bytes of local file ``fd`` from ``offset`` (the spool): sent by sendfile(2)."""
        end = offset + count
        while offset < end:
            size = min(REQUEST_SIZE, end - offset)
            number = self._session.send_with_file(_WRITE, (self._handle, _U64.pack(self.position), _U32.pack(size)),
                                                   fd, offset, size)
            offset += size
            self.position += size
            self._pending.append((number, self.position))
            while len(self._pending) >= self._window:
                self._ack_oldest()

    def _ack_oldest(self) -> None:
        number, end = self._pending.popleft()
        self._session.check(number, self._path, f"writing byte {self.acked} of")
        self.acked = end
        if self._on_ack is not None:
            self._on_ack(end)

    def flush(self) -> int:
        while self._pending:
            self._ack_oldest()
        return self.acked

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._session.close_handle(self._raw_handle, self._path)

    def abort(self) -> None:
        self._session.abort()

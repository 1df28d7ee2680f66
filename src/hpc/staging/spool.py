"""The local spool between a transfer's two legs, and the staging quota it is charged to.

The source leg appends what it reads to a spool file under the staging directory while the sink leg
reads it back and sends it on, so the two overlap (the total time is close to the slower leg's) and
memory stays flat whatever the file size: only a few chunk buffers live in memory, the rest sits in
the page cache and on disk.

The spool also decouples the legs: while the cluster is unreachable the download goes on into the
spool, and when SSH comes back the upload resumes from the spool without reading the source again.

The staging quota bounds the disk space of all spools of one gateway process. A transfer reserves the
whole remaining size before its first byte is read (known from Content-Length or the S3 object size),
so a transfer that cannot fit fails at once; a source of unknown size reserves as it grows. A spool
file is removed, and its reservation released, when its transfer attempt ends, whatever the outcome.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from hpc.staging.errors import InsufficientSpace, StagingError
from hpc.staging.progress import human_size

SUFFIX = ".spool"
# Reservation step for sources of unknown size.
_GROWTH = 16 * 1024 * 1024
_WAIT_SLICE = 0.25


class SpoolQuota:
    """Bytes reserved by the spools of one process, against a limit."""

    def __init__(self, limit: int):
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def reserve(self, size: int) -> bool:
        """Takes ``size`` bytes of the quota if they are free; False (nothing taken) otherwise."""
        if size <= 0:
            return True
        with self._lock:
            if self._used + size > self.limit:
                return False
            self._used += size
            return True

    def release(self, size: int) -> None:
        if size <= 0:
            return
        with self._lock:
            self._used = max(0, self._used - size)

    def shortage(self, size: int) -> InsufficientSpace:
        """The error for a reservation of ``size`` that did not fit."""
        free = max(0, self.limit - self.used)
        return InsufficientSpace(
            f"insufficient staging space: the transfer needs {human_size(size)} of local staging space, "
            f"{human_size(free)} of the {human_size(self.limit)} staging quota is free"
        )


class Spool:
    """A spool file holding the bytes ``[base, end)`` of the file being transferred.

    One thread writes (appends), any number read. Readers block until the bytes they want are
    written, the writer finishes (end of file) or fails, or the spool is aborted.

    Args:
        directory: The staging directory (created if missing).
        name: File name stem, unique per transfer attempt.
        base: Offset in the transferred file of the spool's first byte.
        quota: Charged with the reservation.
        size: Total size of the transferred file if known: ``size - base`` is reserved at once.

    Raises:
        InsufficientSpace: The known remaining size does not fit in the quota.
    """

    def __init__(self, directory: Path, name: str, base: int, quota: SpoolQuota, size: int | None = None):
        self.base = base
        self.path = Path(directory) / f"{name}{SUFFIX}"
        self._quota = quota
        self._reserved = 0
        if size is not None:
            need = max(0, size - base)
            if not quota.reserve(need):
                raise quota.shortage(need)
            self._reserved = need
        self._cond = threading.Condition()
        self._end = base
        self._finished = False
        self._error: BaseException | None = None
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError:
            quota.release(self._reserved)
            raise

    # -- writer ------------------------------------------------------------------------------

    @property
    def end(self) -> int:
        """Offset (in the transferred file) just past the last byte written."""
        with self._cond:
            return self._end

    def write(self, data: bytes | memoryview) -> None:
        """Appends ``data``; grows the reservation of an unknown-size source as needed."""
        length = len(data)
        with self._cond:
            position = self._end
        written = position - self.base
        if written + length > self._reserved:
            need = written + length - self._reserved
            # A step ahead when there is room for it, else just what this write needs.
            for grow in (max(_GROWTH, need), need):
                if self._quota.reserve(grow):
                    self._reserved += grow
                    break
            else:
                raise self._quota.shortage(written + length)
        view = memoryview(data)
        offset = 0
        while offset < length:
            try:
                offset += os.pwrite(self._fd, view[offset:], written + offset)
            except OSError as exc:
                raise StagingError(f"cannot write the staging spool: {exc.strerror or exc}") from None
        with self._cond:
            self._end = position + length
            self._cond.notify_all()

    def finish(self) -> None:
        """Marks the end of the data: readers at ``end`` get end-of-file."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        """The writer gave up: readers waiting past ``end`` get ``error``."""
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._finished

    # -- readers -----------------------------------------------------------------------------

    def wait(self, offset: int, until: int | None = None) -> int:
        """Blocks until bytes past ``offset`` exist (or ``until`` is reached, or EOF); returns ``end``.

        Raises:
            The writer's error, if it failed before writing past ``offset``.
        """
        with self._cond:
            while True:
                target = until if until is not None else offset + 1
                if self._end >= target or self._finished:
                    return self._end
                if self._error is not None:
                    raise self._error
                if self._closed:
                    raise StagingError("the spool was closed")
                self._cond.wait(_WAIT_SLICE)

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (blocking until some exist); ``b""`` at end of file."""
        if offset < self.base:
            raise ValueError(f"offset {offset} precedes the spool's base {self.base}")
        end = self.wait(offset)
        size = min(size, end - offset)
        if size <= 0:
            return b""
        return os.pread(self._fd, size, offset - self.base)

    def read_exact(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset`` (the caller knows they will all be written)."""
        self.wait(offset, offset + size)
        data = os.pread(self._fd, size, offset - self.base)
        if len(data) != size:
            raise StagingError(f"the spool ended at {offset + len(data)}, before {offset + size}")
        return data

    def available(self, offset: int, size: int) -> tuple[int, int]:
        """Waits for bytes at ``offset``: the spool file's descriptor and the offset in it, and how many of
        up to ``size`` bytes are there (0 at end of file). For sendfile(2): no copy through Python."""
        if offset < self.base:
            raise ValueError(f"offset {offset} precedes the spool's base {self.base}")
        end = self.wait(offset)
        return self._fd, offset - self.base, max(0, min(size, end - offset))

    def range(self, start: int, size: int) -> SpoolRange:
        """A read-only, seekable file over ``[start, start + size)`` (the bytes must be written)."""
        self.wait(start, start + size)
        return SpoolRange(self._fd, start - self.base, size)

    # -- life --------------------------------------------------------------------------------

    def close(self) -> None:
        """Removes the file and releases the reservation (idempotent)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        try:
            os.close(self._fd)
        finally:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self._quota.release(self._reserved)
            self._reserved = 0

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SpoolRange:
    """A window of a spool file as a file object (an S3 part's body, read in place, never copied whole)."""

    def __init__(self, fd: int, offset: int, size: int):
        self._fd = fd
        self._offset = offset
        self._size = size
        self._position = 0

    def __len__(self) -> int:
        return self._size

    def read(self, size: int = -1) -> bytes:
        left = self._size - self._position
        if size is None or size < 0 or size > left:
            size = left
        if size <= 0:
            return b""
        data = os.pread(self._fd, size, self._offset + self._position)
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = min(max(0, base + offset), self._size)
        return self._position

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def remove_leftovers(directory: Path) -> int:
    """Deletes spool files a previous process left behind (they are never needed to resume)."""
    count = 0
    if not Path(directory).is_dir():
        return 0
    for path in Path(directory).glob(f"*{SUFFIX}"):
        try:
            path.unlink()
            count += 1
        except OSError:
            pass
    return count

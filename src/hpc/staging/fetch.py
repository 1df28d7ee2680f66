"""The source leg of a transfer: reads a source into the spool, hashing as it goes, resuming its own faults.

One thread per transfer attempt. It hashes each chunk before the chunk becomes visible in the spool, so
a reader that sees a byte also finds the digests that cover it:

- ``digest``: SHA-256 of ``[start, end)``, what this attempt read;
- ``snapshot(b)``: SHA-256 of ``[start, b)`` for every boundary ``b`` (a multiple of ``every``, and the
  end), for checkpoints that are resumed in another process;
- ``range_digest(b)``: SHA-256 (and, if asked, MD5) of ``[b - every, b)`` alone: what the cluster checks
  as the range is acknowledged, or an S3 part's checksums.

A dropped source connection is reopened at the spool's end (a ranged read); the hashes carry on.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

from hpc.staging.control import Control, Halted, quietly
from hpc.staging.errors import Cancelled, SourceChanged, SourceError, StagingError, StartOver
from hpc.staging.report import ProgressCallback
from hpc.staging.retry import Retrier
from hpc.staging.settings import Settings
from hpc.staging.sources import Source, SourceStream
from hpc.staging.spool import Spool

log = logging.getLogger(__name__)


class Fetcher:
    """Reads ``source`` (already opened as ``stream``) into ``spool`` in a thread of its own.

    Args:
        every: Boundary spacing of snapshots and range digests.
        ranges: Also compute the SHA-256 of each range (costs a second hashing pass).
        md5: Also compute the MD5 of each range (S3 parts, where the server keeps no checksums).
    """

    def __init__(self, source: Source, stream: SourceStream, spool: Spool, every: int, settings: Settings,
                 control: Control, report: ProgressCallback, name: str, *, ranges: bool = False,
                 md5: bool = False):
        self._source = source
        self._stream: SourceStream | None = stream
        self._spool = spool
        self._every = every
        self._settings = settings
        self._control = control
        self._report = report
        self._name = name
        self.start = stream.start
        self.position = stream.start
        self.total = stream.total
        self.validator = stream.validator
        self.digest: str | None = None
        self.error: StagingError | None = None
        self._hasher = hashlib.sha256()
        self._range_sha = hashlib.sha256() if ranges else None
        self._range_md5 = hashlib.md5(usedforsecurity=False) if md5 else None
        self._snapshots: dict[int, str] = {}
        self._ranges: dict[int, tuple[str | None, str | None]] = {}
        self._lock = threading.Condition()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fetch-{name[:8]}", daemon=True)

    def start_thread(self) -> None:
        self._thread.start()

    def halt(self) -> None:
        """Stops reading (another step failed): the thread ends soon after."""
        self._halt.set()
        stream = self._stream
        if stream is not None:
            quietly(stream.close)

    def join(self, timeout: float | None = None) -> None:
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)

    def snapshot(self, boundary: int) -> str | None:
        with self._lock:
            return self._snapshots.get(boundary)

    def range_digest(self, boundary: int) -> tuple[str | None, str | None] | None:
        """(sha256 hex, md5 hex) of the range ending at ``boundary``, once read."""
        with self._lock:
            return self._ranges.get(boundary)

    def wait_range(self, boundary: int) -> tuple[str | None, str | None]:
        """The digests of the range ending at ``boundary``, waiting until the range is read.

        Raises:
            The fetcher's error, if it fails first.
        """
        with self._lock:
            while boundary not in self._ranges:
                if self.error is not None:
                    raise self.error
                self._control.check()
                self._lock.wait(0.25)
            return self._ranges[boundary]

    def forget_before(self, boundary: int) -> None:
        with self._lock:
            for table in (self._snapshots, self._ranges):
                for key in [k for k in table if k < boundary]:
                    del table[key]

    def _check(self) -> None:
        self._control.check()
        if self._halt.is_set():
            raise Halted()

    def _run(self) -> None:
        self._began = time.monotonic()
        retrier = Retrier(self._settings, self._control, self._report, f"transfer {self._name}: reading")
        rate_t0, rate_b0 = time.monotonic(), self.position
        try:
            while True:
                before = self.position
                try:
                    self._check()
                    if self._stream is None:
                        log.info("transfer %s: reading %s again from byte %d", self._name, self._source.description,
                                 self.position)
                        stream = self._source.open(self.position, self.validator)
                        self._stream = stream
                        rate_t0, rate_b0 = time.monotonic(), self.position  # no catching up after a pause
                        if stream.start != self.position:
                            raise SourceChanged(f"{self._source.description} cannot be resumed at byte "
                                                f"{self.position} (it changed, or no longer serves ranges)")
                    stream = self._stream
                    if self._halt.is_set():
                        raise Halted()
                    with self._control.closing(stream.close):
                        for chunk in stream.chunks():
                            self._check()
                            self._take(chunk)
                            if self._settings.max_rate:
                                ahead = (self.position - rate_b0) / self._settings.max_rate - (
                                    time.monotonic() - rate_t0)
                                if ahead > 0:
                                    self._control.sleep(ahead)
                    self._stream = None
                    quietly(stream.close)
                    self._check()
                    self._finish()
                    return
                except StagingError as exc:
                    if self._stream is not None:
                        quietly(self._stream.close)
                        self._stream = None
                    if self._halt.is_set():
                        raise Halted() from None
                    retrier.failed(exc, progressed=self.position > before)
        except BaseException as exc:  # the thread's last word goes to the readers of the spool
            if isinstance(exc, StagingError):
                error = exc
            else:
                log.exception("transfer %s: reading failed", self._name)
                error = StagingError(f"reading {self._source.description} failed: {type(exc).__name__}: {exc}")
            if self._control.stopped and not isinstance(error, Cancelled):
                error = self._control.error
            if not isinstance(error, StartOver):
                error.retryable = False  # this leg's retries are spent: the other leg must not retry it
            with self._lock:
                self.error = error
                self._lock.notify_all()
            self._spool.fail(error)

    def _finish(self) -> None:
        if self.total is not None and self.position < self.total:
            raise SourceError(f"{self._source.description} ended at byte {self.position} of {self.total}",
                              retryable=True)
        if self.total is not None and self.position > self.total:
            raise SourceChanged(f"{self._source.description} sent more than its announced {self.total} bytes")
        with self._lock:
            self.digest = self._hasher.hexdigest()
            self._snapshots[self.position] = self.digest
            if self.position % self._every or self.position == self.start:
                self._close_range(self.position)
        self.total = self.position
        self._spool.finish()
        log.debug("transfer %s: %s read (%d bytes) in %.2fs", self._name, self._source.description,
                  self.position - self.start, time.monotonic() - self._began)

    def _close_range(self, boundary: int) -> None:
        sha = self._range_sha.hexdigest() if self._range_sha is not None else None
        md5 = self._range_md5.hexdigest() if self._range_md5 is not None else None
        self._ranges[boundary] = (sha, md5)
        self._lock.notify_all()
        if self._range_sha is not None:
            self._range_sha = hashlib.sha256()
        if self._range_md5 is not None:
            self._range_md5 = hashlib.md5(usedforsecurity=False)

    def _update(self, view: memoryview) -> None:
        self._hasher.update(view)
        if self._range_sha is not None:
            self._range_sha.update(view)
        if self._range_md5 is not None:
            self._range_md5.update(view)

    def _take(self, chunk: bytes | memoryview) -> None:
        position = self.position
        end = position + len(chunk)
        view = memoryview(chunk)
        boundary = (position // self._every + 1) * self._every
        cut = 0
        while boundary <= end:
            self._update(view[cut : boundary - position])
            cut = boundary - position
            with self._lock:
                self._snapshots[boundary] = self._hasher.copy().hexdigest()
                self._close_range(boundary)
            boundary += self._every
        self._update(view[cut:])
        self._spool.write(view)
        self.position = end

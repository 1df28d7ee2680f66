"""The transfer pipeline: source -> spool -> destination, resumable, verified end to end.

Threads of one running transfer::

    fetcher     source stream -> sha256 -> spool file          (Fetcher)
    sender(s)   spool file -> pipelined SFTP writes            (ToCluster; 1 or N connections)
                spool file -> S3 parts, several in flight      (ToS3)
    caller      starts the legs, retries them, verifies, renames/completes

Resume. Inside one process the spool keeps everything the fetcher read in this attempt, so a dropped
SSH connection resumes from the last acknowledged byte without reading the source again, and a
dropped source connection resumes with a ranged read at the spool's end; the sha256 carries on
untouched. Faults are retried with exponential backoff; the count resets whenever a leg made progress,
and a leg that fails ``retries`` times in a row ends the transfer with the last fault as reason.

Across processes (gateway restart) the in-memory hash state is lost: ``hashlib`` cannot be saved.
Rather than re-reading the delivered prefix to rebuild it (from the source, or back from the cluster),
the pipeline checkpoints *segments*: every ``checkpoint_every`` bytes acknowledged by the cluster (or
at every S3 part boundary whose parts are all stored) it records ``[start, end, sha256 of the bytes
start..end as they were read]``. A new process truncates the cluster's temporary file to the last
checkpoint (or keeps the uploaded parts) and continues from there as a new segment. At the end, one
command on the cluster hashes the whole file and each segment; every segment must match what passed
through the gateway, and the whole-file hash becomes the transfer's ``sha256``. So every byte is
checked end to end, nothing delivered before the checkpoint is read again, and an uninterrupted
transfer (one segment) costs a single hash of the file on the cluster (``openssl dgst -sha256`` where
installed, else ``sha256sum``).

Delivery to a cluster writes ``.<name>.<id>.part`` beside the destination and renames it into place
(POSIX rename, atomic) only after the checks pass. Delivery to S3 has the cluster hash the file while
it is being read, checks those hashes before completing the multipart upload, then checks the stored
object's SHA-256 checksum or MD5 ETag.
"""

from __future__ import annotations

import hashlib
import logging
import math
import posixpath
import socket
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import paramiko

from hpc.staging.errors import (
    Cancelled,
    RemoteError,
    SourceChanged,
    SourceError,
    StagingError,
    StartOver,
    VerificationFailed,
)
from hpc.staging.paths import inside, temp_path
from hpc.staging.s3 import PartDigest, S3Target
from hpc.staging.sftp import (
    PipelinedWriter,
    Quote,
    RemoteHost,
    make_parents,
    read_range,
    realpaths,
    remote_hashes,
    remove,
    sftp_failure,
)
from hpc.staging.sources import CHUNK, Source, SourceStream
from hpc.staging.spool import Spool, SpoolQuota

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_SFTP_ERRORS = (OSError, EOFError, paramiko.SSHException, socket.timeout)
_SEND_CHUNK = 4 * MiB


@dataclass(frozen=True)
class Settings:
    """Tunables of the pipeline (from the gateway configuration)."""

    retries: int = 5  # consecutive failed tries of a leg before the transfer fails
    retry_delay: float = 1.0  # first backoff (seconds), doubled per consecutive failure
    retry_delay_max: float = 30.0
    sftp_streams: int = 1  # SSH connections writing disjoint ranges of one big file
    parallel_threshold: int = 256 * MiB  # files at least this big use sftp_streams
    dedicated_threshold: int = 8 * MiB  # files at least this big get their own SSH connection
    max_rate: int = 0  # bytes/s read from a source per transfer; 0 = unlimited
    part_size: int = 16 * MiB  # S3 multipart part size (grown to stay under 10000 parts)
    s3_concurrency: int = 4  # S3 parts in flight
    checkpoint_every: int = 16 * MiB  # resume granularity across gateway restarts
    io_timeout: float = 60.0  # silence tolerated on a data connection
    command_timeout: float = 60.0  # for mkdir, realpath, rename...


@dataclass
class Result:
    sha256: str
    size: int


class Progress:
    """What a running transfer reports: read by the service's keeper thread, written by the pipeline."""

    def __init__(self, done: int = 0, total: int | None = None, checkpoint: dict | None = None):
        self._lock = threading.Lock()
        self.phase = "transferring"
        self.done = done
        self.total = total
        self.retries = 0
        self.checkpoint = checkpoint
        self.checkpoint_version = 0

    def update(self, *, done: int | None = None, total: int | None = None, phase: str | None = None) -> None:
        with self._lock:
            if done is not None:
                self.done = done
            if total is not None:
                self.total = total
            if phase is not None:
                self.phase = phase

    def set_checkpoint(self, checkpoint: dict | None) -> None:
        with self._lock:
            self.checkpoint = checkpoint
            self.checkpoint_version += 1

    def retried(self) -> None:
        with self._lock:
            self.retries += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "phase": self.phase, "done": self.done, "total": self.total, "retries": self.retries,
                "checkpoint": self.checkpoint, "checkpoint_version": self.checkpoint_version,
            }


class Control:
    """Stops a running transfer from outside: sets the reason and closes whatever is blocking."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._closers: dict[int, Callable[[], None]] = {}
        self._next = 0
        self.error: Cancelled | None = None

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    def stop(self, error: Cancelled) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
            self._event.set()
            closers = list(self._closers.values())
        for close in closers:
            _quietly(close)

    def check(self) -> None:
        if self._event.is_set():
            raise self.error

    def sleep(self, seconds: float) -> None:
        if self._event.wait(seconds):
            raise self.error

    @contextmanager
    def closing(self, close: Callable[[], None]) -> Iterator[None]:
        """Registers ``close`` to be called if the transfer is stopped while the block runs."""
        with self._lock:
            key = self._next
            self._next += 1
            self._closers[key] = close
            stopped = self._event.is_set()
        try:
            if stopped:
                _quietly(close)
                raise self.error
            yield
        finally:
            with self._lock:
                self._closers.pop(key, None)


class _Halted(Cancelled):
    """A leg stopped because the other leg of the same try failed (never a transfer's outcome)."""

    def __init__(self) -> None:
        super().__init__("halted")


def _first_cause(errors: list[BaseException], control: Control) -> BaseException:
    """The error that ended a try of several threads; the others are its consequences."""
    if control.stopped:
        return control.error
    for exc in errors:
        if not isinstance(exc, _Halted):
            return exc
    return errors[0]


def _quietly(close: Callable[[], None]) -> None:
    try:
        close()
    except Exception:  # closing something already broken
        pass


class Retrier:
    """Bounded retries with exponential backoff; the count resets after progress."""

    def __init__(self, settings: Settings, control: Control, progress: Progress, what: str):
        self._settings = settings
        self._control = control
        self._progress = progress
        self._what = what
        self.failures = 0

    def failed(self, exc: BaseException, progressed: bool = False) -> None:
        """Sleeps before the next try, or raises when ``exc`` is final or the retries are spent."""
        self._control.check()
        if not isinstance(exc, StagingError) or isinstance(exc, (StartOver, Cancelled)) or not exc.retryable:
            raise exc
        if progressed:
            self.failures = 0
        self.failures += 1
        if self.failures > self._settings.retries:
            raise StagingError(f"{exc.reason} (gave up after {self._settings.retries} retries)")
        delay = min(self._settings.retry_delay * 2 ** (self.failures - 1), self._settings.retry_delay_max)
        log.warning("%s: %s; retry %d/%d in %.1fs", self._what, exc.reason, self.failures, self._settings.retries,
                    delay)
        self._progress.retried()
        self._control.sleep(delay)


class Fetcher:
    """The source leg: reads the source into the spool, hashing as it goes, resuming its own faults.

    The sha256 covers ``[start, end)`` of this attempt; ``snapshot(b)`` gives the digest of
    ``[start, b)`` for every multiple ``b`` of ``every`` (and the end), for checkpoints.
    """

    def __init__(self, source: Source, stream: SourceStream, spool: Spool, every: int, settings: Settings,
                 control: Control, progress: Progress, name: str):
        self._source = source
        self._stream: SourceStream | None = stream
        self._spool = spool
        self._every = every
        self._settings = settings
        self._control = control
        self._progress = progress
        self._name = name
        self.start = stream.start
        self.position = stream.start
        self.total = stream.total
        self.validator = stream.validator
        self.digest: str | None = None
        self.error: StagingError | None = None
        self._hasher = hashlib.sha256()
        self._snapshots: dict[int, str] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fetch-{name[:8]}", daemon=True)

    def start_thread(self) -> None:
        self._thread.start()

    def halt(self) -> None:
        """Stops reading (the other leg failed): the thread ends soon after."""
        self._halt.set()
        stream = self._stream
        if stream is not None:
            _quietly(stream.close)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def snapshot(self, boundary: int) -> str | None:
        with self._lock:
            return self._snapshots.get(boundary)

    def forget_before(self, boundary: int) -> None:
        with self._lock:
            for key in [k for k in self._snapshots if k < boundary]:
                del self._snapshots[key]

    def _check(self) -> None:
        self._control.check()
        if self._halt.is_set():
            raise _Halted()

    def _run(self) -> None:
        retrier = Retrier(self._settings, self._control, self._progress, f"transfer {self._name}: reading")
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
                            raise SourceChanged(
                                f"{self._source.description} cannot be resumed at byte {self.position} "
                                "(it changed, or no longer serves ranges)"
                            )
                    stream = self._stream
                    if self._halt.is_set():
                        raise _Halted()
                    with self._control.closing(stream.close):
                        for chunk in stream.chunks():
                            self._check()
                            self._take(chunk)
                            if self._settings.max_rate:
                                ahead = (self.position - rate_b0) / self._settings.max_rate - (time.monotonic() - rate_t0)
                                if ahead > 0:
                                    self._control.sleep(ahead)
                    self._stream = None
                    _quietly(stream.close)
                    self._check()
                    if self.total is not None and self.position < self.total:
                        raise SourceError(
                            f"{self._source.description} ended at byte {self.position} of {self.total}", retryable=True
                        )
                    if self.total is not None and self.position > self.total:
                        raise SourceChanged(f"{self._source.description} sent more than its announced {self.total} bytes")
                    with self._lock:
                        self.digest = self._hasher.hexdigest()
                        self._snapshots[self.position] = self.digest
                    self._spool.finish()
                    return
                except StagingError as exc:
                    if self._stream is not None:
                        _quietly(self._stream.close)
                        self._stream = None
                    if self._halt.is_set():
                        raise _Halted() from None
                    retrier.failed(exc, progressed=self.position > before)
        except BaseException as exc:  # the thread's last word goes to the readers
            if isinstance(exc, StagingError):
                error = exc
            else:
                log.exception("transfer %s: reading failed", self._name)
                error = StagingError(f"reading {self._source.description} failed: {type(exc).__name__}: {exc}")
            if self._control.stopped and not isinstance(error, Cancelled):
                error = self._control.error
            if not isinstance(error, StartOver):
                error.retryable = False  # this leg's retries are spent: the other leg must not retry it
            self.error = error
            self._spool.fail(error)

    def _take(self, chunk: bytes) -> None:
        # Hash (and snapshot) before the bytes become visible in the spool: a reader that sees a
        # boundary's bytes finds that boundary's snapshot.
        position = self.position
        end = position + len(chunk)
        view = memoryview(chunk)
        boundary = (position // self._every + 1) * self._every
        cut = 0
        while boundary <= end:
            self._hasher.update(view[cut : boundary - position])
            cut = boundary - position
            with self._lock:
                self._snapshots[boundary] = self._hasher.copy().hexdigest()
            boundary += self._every
        self._hasher.update(view[cut:])
        self._spool.write(chunk)
        self.position = end


@dataclass
class _Range:
    """One sender's share of the file: bytes ``[start, end)`` (end None: until the spool's EOF)."""

    start: int
    end: int | None
    acked: int = 0
    finished: bool = False

    def __post_init__(self) -> None:
        self.acked = self.start


def _contiguous(ranges: list[_Range], origin: int) -> int:
    """The end of the acknowledged prefix that starts at ``origin``."""
    confirmed = origin
    for rng in ranges:
        if rng.start > confirmed:
            break
        confirmed = max(confirmed, rng.acked)
        if not rng.finished:
            break
    return confirmed


def _split(start: int, end: int | None, streams: int, threshold: int) -> list[_Range]:
    if end is None or streams <= 1 or end - start < threshold:
        return [_Range(start, end)]
    share = math.ceil((end - start) / streams / MiB) * MiB
    return [_Range(s, min(end, s + share)) for s in range(start, end, share)]


class _Group:
    """Sender threads of one try: the first error stops the others."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._closers: list[Callable[[], None]] = []
        self.failed = threading.Event()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(exc)
            closers = list(self._closers)
        self.failed.set()
        for close in closers:
            _quietly(close)

    def add_closer(self, close: Callable[[], None]) -> None:
        with self._lock:
            self._closers.append(close)
        if self.failed.is_set():
            _quietly(close)


class _Base:
    def __init__(self, *, transfer_id: str, remote: RemoteHost, quote: Quote, spool_dir, quota: SpoolQuota,
                 settings: Settings, control: Control, progress: Progress, checkpoint: dict | None,
                 roots: list[str]):
        self.id = transfer_id
        self._remote = remote
        self._quote = quote
        self._spool_dir = spool_dir
        self._quota = quota
        self._settings = settings
        self._control = control
        self._progress = progress
        self._cp: dict[str, Any] = dict(checkpoint or {})
        self._roots = roots
        self._confined = False

    def _retrier(self, what: str) -> Retrier:
        return Retrier(self._settings, self._control, self._progress, f"transfer {self.id}: {what}")

    def _with_retries(self, what: str, action: Callable[[], Any]) -> Any:
        retrier = self._retrier(what)
        while True:
            try:
                self._control.check()
                return action()
            except StagingError as exc:
                retrier.failed(exc)

    def _confine(self, path: str, directory: bool) -> None:
        """Checks on the cluster that ``path`` (or its parent) does not leave the roots by a symlink."""
        if self._confined:
            return
        target = posixpath.dirname(path) if directory else path
        real = realpaths(self._remote, self._quote, [target, *self._roots], self._settings.command_timeout)
        real_target, real_roots = real[0], real[1:]
        candidate = posixpath.join(real_target, posixpath.basename(path)) if directory else real_target
        if not any(inside(candidate, root) or (directory and candidate == root) for root in real_roots):
            raise StagingError(f"{path} leads, through a symbolic link, to {candidate}: outside the allowed directories")
        self._confined = True

    def _open_source(self, source: Source, offset: int, validator: dict | None) -> SourceStream:
        def attempt():
            return source.open(offset, validator)

        return self._with_retries(f"opening {source.description}", attempt)

    def _run_restarting(self, attempt: Callable[[], Result], reset: Callable[[], None]) -> Result:
        restarts = 0
        while True:
            try:
                return attempt()
            except StartOver as exc:
                self._control.check()
                restarts += 1
                if restarts > self._settings.retries:
                    raise StagingError(exc.reason) from None
                log.warning("transfer %s: starting over from byte 0: %s", self.id, exc.reason)
                reset()
                self._progress.retried()
                self._progress.update(done=0)
                self._control.sleep(self._settings.retry_delay)


class ToCluster(_Base):
    """A source (HTTP, S3) delivered to a file on the cluster.

    Checkpoint (persisted by the service, passed back on resume)::

        {"temp": ".../.name.<id>.part", "total": N|None, "validator": {...},
         "segments": [[start, end, sha256-hex], ...]}
    """

    def __init__(self, *, source: Source, dst: str, **common):
        super().__init__(**common)
        self._source = source
        self._dst = dst
        self._temp = self._cp.get("temp") or temp_path(dst, self.id)
        self._prepared_offset: int | None = None

    def run(self) -> Result:
        return self._run_restarting(self._attempt, self._reset)

    def _reset(self) -> None:
        self._cp = {"temp": self._temp}
        self._prepared_offset = None
        self._progress.set_checkpoint(dict(self._cp))

    def cleanup(self) -> None:
        """Removes the temporary file on the cluster (after a failure or a cancel)."""
        remove(self._remote, self._quote, self._temp, self._settings.command_timeout)

    def _attempt(self) -> Result:
        segments = [tuple(s) for s in self._cp.get("segments", [])]
        offset = segments[-1][1] if segments else 0
        total = self._cp.get("total")
        if offset:
            log.info("transfer %s: resuming at byte %d (%d segment(s) verified so far)", self.id, offset, len(segments))
        self._with_retries("checking the destination", lambda: self._confine(self._dst, directory=True))
        if segments and total is not None and offset >= total:
            # Everything was delivered before an interruption: only the checks are left.
            return self._finish(segments, total)
        stream = self._open_source(self._source, offset, self._cp.get("validator"))
        if offset and stream.start != offset:
            log.warning("transfer %s: %s restarted at byte 0 instead of %d", self.id, self._source.description, offset)
            offset, segments = 0, []
        total = stream.total
        self._progress.update(total=total, done=offset)
        try:
            spool = Spool(self._spool_dir, self.id, offset, self._quota, total)
        except BaseException:
            stream.close()
            raise
        with spool:
            fetcher = Fetcher(self._source, stream, spool, self._settings.checkpoint_every, self._settings,
                              self._control, self._progress, self.id)
            fetcher.start_thread()
            try:
                self._send(spool, fetcher, offset, total, segments)
                fetcher.join()
                if fetcher.error is not None:
                    raise fetcher.error
            finally:
                fetcher.halt()
                fetcher.join(timeout=30)
        segments.append((offset, fetcher.position, fetcher.digest))
        self._cp.update(total=fetcher.position, validator=fetcher.validator,
                        segments=[list(s) for s in segments])
        self._progress.set_checkpoint(dict(self._cp))
        return self._finish(segments, fetcher.position)

    # -- sending -------------------------------------------------------------------------------

    def _prepare_temp(self, offset: int) -> None:
        """Creates the parent directories and sets the temporary file's length to ``offset``."""
        sftp = self._remote.open_sftp()
        try:
            if self._prepared_offset is None:
                make_parents(self._remote, self._quote, posixpath.dirname(self._temp), self._settings.command_timeout)
            if offset == 0:
                sftp.open(self._temp, "wb").close()
            else:
                try:
                    size = sftp.stat(self._temp).st_size
                except FileNotFoundError:
                    size = -1
                if size < offset:
                    raise StartOver(
                        f"the partial file {self._temp} on the cluster is missing or shorter than its "
                        f"checkpoint ({max(size, 0)} < {offset} bytes)"
                    )
                if size != offset:
                    sftp.truncate(self._temp, offset)
            self._prepared_offset = offset
        except _SFTP_ERRORS as exc:
            raise sftp_failure(exc, f"preparing {self._temp}") from None
        finally:
            _quietly(sftp.close)

    def _send(self, spool: Spool, fetcher: Fetcher, offset: int, total: int | None, segments: list) -> None:
        retrier = self._retrier("sending")
        confirmed = offset
        checkpoint = {"next": (offset // self._settings.checkpoint_every + 1) * self._settings.checkpoint_every}
        while True:
            before = confirmed
            ranges = _split(confirmed, total, self._settings.sftp_streams, self._settings.parallel_threshold)
            try:
                self._control.check()
                self._prepare_temp(confirmed)
                self._send_ranges(spool, fetcher, ranges, offset, total, segments, checkpoint)
                return
            except StagingError as exc:
                confirmed = _contiguous(ranges, confirmed)
                retrier.failed(exc, progressed=confirmed > before)

    def _send_ranges(self, spool, fetcher, ranges, origin, total, segments, checkpoint) -> None:
        group = _Group()
        lock = threading.Lock()
        big = total is None or total - origin >= self._settings.dedicated_threshold

        def on_ack(rng: _Range, acked: int) -> None:
            rng.acked = acked
            with lock:
                confirmed = _contiguous(ranges, ranges[0].start)
                self._progress.update(done=confirmed)
                if confirmed >= checkpoint["next"]:
                    self._checkpoint(fetcher, origin, confirmed, segments, checkpoint)

        if len(ranges) == 1:
            self._send_range(spool, ranges[0], big, group, on_ack)
        else:
            threads = [
                threading.Thread(target=self._send_range, args=(spool, rng, True, group, on_ack),
                                 name=f"send-{self.id[:8]}-{i}", daemon=True)
                for i, rng in enumerate(ranges)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        if group.errors:
            raise _first_cause(group.errors, self._control)
        with lock:
            self._progress.update(done=_contiguous(ranges, ranges[0].start))

    def _checkpoint(self, fetcher: Fetcher, origin: int, confirmed: int, segments: list, state: dict) -> None:
        every = self._settings.checkpoint_every
        boundary = confirmed // every * every
        digest = fetcher.snapshot(boundary) if boundary > origin else None
        if digest is None:
            return
        cp = dict(self._cp)
        cp.update(total=fetcher.total, validator=fetcher.validator,
                  segments=[list(s) for s in segments] + [[origin, boundary, digest]])
        self._progress.set_checkpoint(cp)
        fetcher.forget_before(boundary)
        state["next"] = boundary + every

    def _send_range(self, spool: Spool, rng: _Range, big: bool, group: _Group, on_ack) -> None:
        remote = None
        sftp = None
        try:
            remote = self._remote.open_dedicated() if big else self._remote
            if remote is not self._remote:
                group.add_closer(remote.close)
            sftp = remote.open_sftp()
            group.add_closer(sftp.close)
            with self._control.closing(sftp.close):
                writer = PipelinedWriter(sftp, self._temp, rng.acked, self._settings.io_timeout,
                                         on_ack=lambda acked: on_ack(rng, acked))
                position = rng.acked
                while rng.end is None or position < rng.end:
                    if group.failed.is_set():
                        return
                    self._control.check()
                    want = _SEND_CHUNK if rng.end is None else min(_SEND_CHUNK, rng.end - position)
                    data = spool.read(position, want)
                    if not data:
                        break
                    writer.write(data)
                    position += len(data)
                writer.close()
                rng.finished = True
                on_ack(rng, position)
        except _SFTP_ERRORS as exc:
            group.fail(self._control.error if self._control.stopped else sftp_failure(exc, "writing to the cluster"))
        except BaseException as exc:
            group.fail(exc)
        finally:
            if sftp is not None:
                _quietly(sftp.close)
            if remote is not None and remote is not self._remote:
                _quietly(remote.close)

    # -- checks and delivery -------------------------------------------------------------------

    def _finish(self, segments: list, size: int) -> Result:
        self._progress.update(phase="verifying", done=size, total=size)
        checked = [(s, e) for s, e, _ in segments] if len(segments) > 1 else []
        renamed = False
        try:
            remote_size, whole, parts = self._with_retries(
                "checksumming on the cluster",
                lambda: remote_hashes(self._remote, self._quote, self._temp, checked, size,
                                      self._settings.command_timeout),
            )
        except RemoteError as exc:
            if "no such file" not in exc.reason:
                raise
            # Interrupted between the rename and the record of success: the checks run on dst.
            remote_size, whole, parts = self._with_retries(
                "checksumming on the cluster",
                lambda: remote_hashes(self._remote, self._quote, self._dst, checked, size,
                                      self._settings.command_timeout),
            )
            renamed = True
        if remote_size != size:
            raise VerificationFailed(f"the file on the cluster has {remote_size} bytes where {size} were read")
        expected = [digest for _, _, digest in segments] if checked else [segments[0][2]]
        got = parts if checked else [whole]
        for (start, end, _), want, have in zip(segments, expected, got):
            if want != have:
                raise VerificationFailed(f"bytes {start}-{end} on the cluster differ from the source (sha256)")
        if not renamed:
            self._with_retries("moving the file into place", self._rename)
        return Result(sha256=whole, size=size)

    def _rename(self) -> None:
        try:
            sftp = self._remote.open_sftp()
        except _SFTP_ERRORS as exc:
            raise sftp_failure(exc, "opening SFTP") from None
        try:
            sftp.posix_rename(self._temp, self._dst)
            return
        except IOError as exc:
            if "unsupported" not in str(exc).lower():
                raise sftp_failure(exc, f"renaming {self._temp} to {self._dst}") from None
        except _SFTP_ERRORS as exc:
            raise sftp_failure(exc, f"renaming {self._temp} to {self._dst}") from None
        finally:
            _quietly(sftp.close)
        # A server without the posix-rename extension: mv replaces the destination as rename(2) does.
        q = self._quote
        code, out, err = self._remote.run(f"mv -f -- {q(self._temp)} {q(self._dst)}", self._settings.command_timeout)
        if code != 0:
            raise RemoteError(f"cannot move the file to {self._dst}: {(err or out).strip()[:200]}", retryable=False)


class ClusterFile:
    """A regular file on the cluster as a :class:`Source` (for results shipped to S3)."""

    def __init__(self, remote: RemoteHost, path: str, size: int, mtime: int, dedicated: bool, timeout: float):
        self._remote = remote
        self._path = path
        self._size = size
        self._mtime = mtime
        self._dedicated = dedicated
        self._timeout = timeout
        self.description = f"{path} on the cluster"

    def open(self, offset: int, validator: dict | None) -> "_ClusterStream":
        remote = self._remote.open_dedicated() if self._dedicated else self._remote
        try:
            sftp = remote.open_sftp()
            try:
                attrs = sftp.stat(self._path)
            except _SFTP_ERRORS as exc:
                _quietly(sftp.close)
                error = sftp_failure(exc, f"reading {self._path}")
                if "no such file" in error.reason:
                    raise SourceError(f"no such file on the cluster: {self._path}") from None
                raise error from None
        except BaseException:
            if remote is not self._remote:
                _quietly(remote.close)
            raise
        if attrs.st_size != self._size or int(attrs.st_mtime or 0) != self._mtime:
            _quietly(sftp.close)
            if remote is not self._remote:
                _quietly(remote.close)
            raise SourceChanged(f"{self._path} on the cluster changed during the transfer")
        closer = remote.close if remote is not self._remote else None
        return _ClusterStream(sftp, closer, read_range(sftp, self._path, offset, self._size, self._timeout),
                              offset, self._size, {"size": self._size, "mtime": self._mtime}, self._path)


class _ClusterStream:
    def __init__(self, sftp, closer, reader, start, total, validator, path):
        self._sftp = sftp
        self._closer = closer
        self._reader = reader
        self.start = start
        self.total = total
        self.validator = validator
        self._path = path

    def chunks(self) -> Iterator[bytes]:
        buffer = bytearray()
        try:
            for data in self._reader:
                buffer += data
                if len(buffer) >= CHUNK:
                    yield bytes(buffer)
                    buffer.clear()
        except _SFTP_ERRORS as exc:
            raise sftp_failure(exc, f"reading {self._path}") from None
        if buffer:
            yield bytes(buffer)

    def close(self) -> None:
        _quietly(self._sftp.close)
        if self._closer:
            _quietly(self._closer)


class ToS3(_Base):
    """A file on the cluster shipped to an S3 object (multipart above one part).

    Checkpoint::

        {"size": N, "mtime": T, "part_size": P, "upload_id": "...",
         "parts": [[number, size, md5-hex, sha256-b64, etag], ...],
         "segments": [[start, end, sha256-hex], ...]}
    """

    def __init__(self, *, src: str, target: S3Target, **common):
        super().__init__(**common)
        self._src = src
        self._target = target

    def run(self) -> Result:
        return self._run_restarting(self._attempt, self._reset)

    def _reset(self) -> None:
        self.cleanup()
        self._cp = {}
        self._progress.set_checkpoint({})

    def cleanup(self) -> None:
        """Aborts the multipart upload (after a failure or a cancel)."""
        upload_id = self._cp.get("upload_id")
        if upload_id:
            self._target.abort(upload_id)
            self._cp.pop("upload_id", None)

    def _stat(self) -> tuple[int, int]:
        try:
            sftp = self._remote.open_sftp()
        except _SFTP_ERRORS as exc:
            raise sftp_failure(exc, "opening SFTP") from None
        try:
            attrs = sftp.stat(self._src)
        except _SFTP_ERRORS as exc:
            error = sftp_failure(exc, f"reading {self._src}")
            if "no such file" in error.reason:
                raise SourceError(f"no such file on the cluster: {self._src}") from None
            raise error from None
        finally:
            _quietly(sftp.close)
        if not stat.S_ISREG(attrs.st_mode or 0):
            raise SourceError(f"{self._src} on the cluster is not a regular file")
        return attrs.st_size, int(attrs.st_mtime or 0)

    def _attempt(self) -> Result:
        self._with_retries("checking the source", lambda: self._confine(self._src, directory=False))
        size, mtime = self._with_retries("reading the source's size", self._stat)
        cp = self._cp
        if cp and (cp.get("size") != size or cp.get("mtime") != mtime):
            log.warning("transfer %s: %s changed since the last run: starting over", self.id, self._src)
            self._reset()
            cp = self._cp
        multipart = size > self._settings.part_size
        part_size = cp.get("part_size") or max(self._settings.part_size, math.ceil(size / 9000 / MiB) * MiB)
        done: dict[int, tuple[PartDigest, str]] = {}
        segments: list = []
        if multipart and cp.get("upload_id"):
            held = self._with_retries("listing uploaded parts", lambda: self._target.uploaded_parts(cp["upload_id"]))
            if held is None:
                cp.pop("upload_id")
            else:
                for number, psize, md5, sha, etag in cp.get("parts", []):
                    if number in held:
                        done[number] = (PartDigest(number, psize, md5, sha), etag)
                segments = [tuple(s) for s in cp.get("segments", [])]
        offset = segments[-1][1] if segments else 0
        if any(n not in done for n in range(1, offset // part_size + 1)):
            offset, segments = 0, []
        if multipart and not cp.get("upload_id"):
            cp["upload_id"] = self._with_retries("starting the upload", self._target.start_multipart)
            done = {}
            offset, segments = 0, []
        if offset:
            log.info("transfer %s: resuming at byte %d (%d part(s) uploaded already)", self.id, offset, len(done))
        cp.update(size=size, mtime=mtime, part_size=part_size)
        self._cp = cp
        self._progress.set_checkpoint(dict(cp))
        self._progress.update(total=size, done=sum(d.size for d, _ in done.values()))

        # The cluster hashes the file while it is being read (the segments to check are known now),
        # so its sha256sum costs no time at the end.
        ranges = [(start, end) for start, end, _ in segments] + [(offset, size)]
        checked = ranges if len(ranges) > 1 else []
        hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hash-{self.id[:8]}")
        hashes = hashing.submit(self._with_retries, "checksumming on the cluster", lambda: remote_hashes(
            self._remote, self._quote, self._src, checked, size, self._settings.command_timeout))
        hashing.shutdown(wait=False)
        source = ClusterFile(self._remote, self._src, size, mtime, size >= self._settings.dedicated_threshold,
                             self._settings.io_timeout)
        stream = self._open_source(source, offset, None)
        try:
            spool = Spool(self._spool_dir, self.id, offset, self._quota, size)
        except BaseException:
            stream.close()
            raise
        with spool:
            every = part_size if multipart else self._settings.checkpoint_every
            fetcher = Fetcher(source, stream, spool, every, self._settings, self._control, self._progress, self.id)
            fetcher.start_thread()
            try:
                if multipart:
                    self._upload_parts(spool, fetcher, offset, size, part_size, done, segments)
                fetcher.join()
                if fetcher.error is not None:
                    raise fetcher.error
                whole = self._check_source(hashes, segments + [(offset, size, fetcher.digest)], size)
                if multipart:
                    parts = [done[n] for n in sorted(done)]
                    self._with_retries("completing the upload",
                                       lambda: self._target.complete(cp["upload_id"], parts))
                    cp.pop("upload_id", None)
                    digests = [d for d, _ in parts]
                else:
                    data = spool.read_exact(0, size) if size else b""
                    self._progress.update(phase="transferring")
                    digests = [self._with_retries("writing the object", lambda: self._target.put(data))]
            finally:
                fetcher.halt()
                fetcher.join(timeout=30)
        self._progress.update(phase="verifying", done=size)
        self._with_retries("checking the object", lambda: self._target.verify(digests, multipart))
        return Result(sha256=whole, size=size)

    def _check_source(self, hashes: Future, segments: list, size: int) -> str:
        """Checks what was read against the cluster's hashes of the file; returns its sha256."""
        self._progress.update(phase="verifying")
        checked = len(segments) > 1
        remote_size, whole, parts = hashes.result()
        if remote_size != size:
            raise SourceChanged(f"{self._src} on the cluster changed size during the transfer")
        expected = [digest for _, _, digest in segments] if checked else [segments[0][2]]
        if (parts if checked else [whole]) != expected:
            raise VerificationFailed(f"what was read of {self._src} differs from the file on the cluster (sha256)")
        return whole

    def _upload_parts(self, spool: Spool, fetcher: Fetcher, offset: int, size: int, part_size: int,
                      done: dict, segments: list) -> None:
        count = math.ceil(size / part_size)
        wanted = [n for n in range(offset // part_size + 1, count + 1) if n not in done]
        lock = threading.Lock()
        group = _Group()
        # A part that cannot be sent ends the try: stop reading, and wake the workers waiting for data.
        group.add_closer(fetcher.halt)
        group.add_closer(lambda: spool.fail(_Halted()))
        queue = list(reversed(wanted))

        def record(number: int, digest: PartDigest, etag: str) -> None:
            with lock:
                done[number] = (digest, etag)
                self._progress.update(done=sum(d.size for d, _ in done.values()))
                contiguous = 0
                while contiguous + 1 in done:
                    contiguous += 1
                boundary = min(size, contiguous * part_size)
                snapshot = fetcher.snapshot(boundary) if boundary > offset else None
                if snapshot is not None:
                    cp = dict(self._cp)
                    cp["parts"] = [[n, d.size, d.md5, d.sha256, e] for n, (d, e) in sorted(done.items())]
                    cp["segments"] = [list(s) for s in segments] + [[offset, boundary, snapshot]]
                    self._progress.set_checkpoint(cp)

        def worker() -> None:
            try:
                while not group.failed.is_set():
                    with lock:
                        if not queue:
                            return
                        number = queue.pop()
                    start = (number - 1) * part_size
                    body = spool.range(start, min(part_size, size - start))
                    if group.failed.is_set():
                        return
                    digest = PartDigest.of_stream(number, body)
                    retrier = self._retrier(f"uploading part {number}")
                    while True:
                        try:
                            self._control.check()
                            etag = self._target.upload_part(self._cp["upload_id"], number, body, digest)
                            break
                        except StagingError as exc:
                            retrier.failed(exc)
                    record(number, digest, etag)
            except BaseException as exc:
                group.fail(exc)

        threads = [threading.Thread(target=worker, name=f"part-{self.id[:8]}-{i}", daemon=True)
                   for i in range(max(1, min(self._settings.s3_concurrency, len(wanted))))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if group.errors:
            raise _first_cause(group.errors, self._control)


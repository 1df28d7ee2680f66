"""A source (HTTP, S3) delivered to a file on the cluster, checked on the cluster while it arrives.

Threads of one attempt::

    fetcher     source -> sha256 -> spool                                    (hpc.staging.fetch)
    sender(s)   spool -> pipelined SFTP writes, acknowledged prefix tracked    (1, or sftp_streams)
    follower    the cluster hashes the file as it grows                       (one command, in the background)
    caller      compares, renames into place

Verification overlaps the transfer: while the file is written, one command on the cluster reads it as it
grows and hashes it (``ClusterFiles.hash_growing``), so its SHA-256 is ready a moment after the last byte
lands, and it must equal the gateway's SHA-256 of what it read from the source. One hashing pass on each
side, nothing serial at the end.

Checkpoints (``{"temp", "total", "validator", "segments": [[start, end, sha256], ...]}``) are taken every
``verify_every`` acknowledged bytes: a gateway that dies and restarts truncates the partial file to the last
one and reads the source from there (a ranged read), so nothing delivered is sent or read again. A new
process cannot continue the first one's SHA-256 (``hashlib`` state cannot be saved), so a transfer resumed
that way, written by several sessions at once (``sftp_streams``) or of unknown size is checked at the end
instead: one command hashes the whole file and each segment, and every segment must match what was read.

Inside one process, a dropped SSH connection is resumed at the last acknowledged byte from the spool,
without reading the source again; a dropped source connection is resumed by the fetcher.

The file is written as ``.<name>.<id>.part`` beside the destination and renamed into place (atomic) once
checked. A destination that is a directory is refused before anything is read.
"""

from __future__ import annotations

import logging
import math
import posixpath
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

from hpc.staging.cluster import Cluster, remote_failure
from hpc.staging.control import Control, Group, quietly
from hpc.staging.errors import StagingError, StartOver, VerificationFailed
from hpc.staging.fetch import Fetcher
from hpc.staging.paths import temp_path
from hpc.staging.report import ProgressCallback
from hpc.staging.retry import Retrier, with_retries
from hpc.staging.settings import MiB, Result, Settings
from hpc.staging.sources import Source
from hpc.staging.spool import Spool, SpoolQuota
from hpc.transport import TransportError

log = logging.getLogger(__name__)

_SEND_CHUNK = 4 * MiB


@dataclass
class _Range:
    """One sender's share of the file: bytes ``[start, end)`` (end None: until the spool's end)."""

    start: int
    end: int | None
    acked: int = 0
    finished: bool = False

    def __post_init__(self) -> None:
        self.acked = self.start


def contiguous(ranges: list[_Range], origin: int) -> int:
    """The end of the acknowledged prefix that starts at ``origin``."""
    confirmed = origin
    for rng in ranges:
        if rng.start > confirmed:
            break
        confirmed = max(confirmed, rng.acked)
        if not rng.finished:
            break
    return confirmed


def split(start: int, end: int | None, streams: int, threshold: int) -> list[_Range]:
    """The shares of ``[start, end)`` for ``streams`` senders (one share for small or unknown sizes)."""
    if end is None or streams <= 1 or end - start < threshold:
        return [_Range(start, end)]
    share = math.ceil((end - start) / streams / MiB) * MiB
    return [_Range(s, min(end, s + share)) for s in range(start, end, share)]


class ToCluster:
    """A source delivered to a file on the cluster (see the module's description).

    Args:
        transfer_id: Names the temporary file and the log lines.
        cluster: The infrastructure's files, confined to its allowed roots.
        source: What to read.
        dst: The absolute destination path.
        checkpoint: What an earlier run recorded (None: a fresh start).
    """

    def __init__(self, *, transfer_id: str, cluster: Cluster, source: Source, dst: str, spool_dir, quota: SpoolQuota,
                 settings: Settings, control: Control, report: ProgressCallback, checkpoint: dict | None = None):
        self.id = transfer_id
        self._cluster = cluster
        self._source = source
        self._dst = dst
        self._spool_dir = spool_dir
        self._quota = quota
        self._settings = settings
        self._control = control
        self._report = report
        self._cp: dict[str, Any] = dict(checkpoint or {})
        self._temp = self._cp.get("temp") or temp_path(dst, transfer_id)
        self._parents_made = False

    # -- plumbing ------------------------------------------------------------------------------

    def _retry(self, what: str, action: Callable[[], Any]) -> Any:
        return with_retries(self._settings, self._control, self._report, f"transfer {self.id}: {what}", action)

    def run(self) -> Result:
        restarts = 0
        while True:
            try:
                return self._attempt()
            except StartOver as exc:
                self._control.check()
                restarts += 1
                if restarts > self._settings.retries:
                    raise StagingError(exc.reason) from None
                log.warning("transfer %s: starting over from byte 0: %s", self.id, exc.reason)
                self._cp = {"temp": self._temp}
                self._report(checkpoint=dict(self._cp), retried=1, done=0)
                self._control.sleep(self._settings.retry_delay)

    def cleanup(self) -> None:
        """Removes the partial file on the cluster (after a failure or a cancel)."""
        self._cluster.remove_quietly(self._temp)

    # -- one attempt ---------------------------------------------------------------------------

    def _attempt(self) -> Result:
        segments = [tuple(s) for s in self._cp.get("segments", [])]
        offset = segments[-1][1] if segments else 0
        total = self._cp.get("total")
        self._retry("checking the destination", lambda: self._cluster.confine(self._dst, directory=True))
        self._retry("checking the destination", lambda: self._cluster.check_destination(self._dst))
        if offset:
            log.info("transfer %s: resuming at byte %d (%d segment(s) delivered so far)", self.id, offset,
                     len(segments))
        if segments and total is not None and offset >= total:
            # Everything was delivered before an interruption: only the checks are left.
            return self._finish(segments, total)
        stream = self._retry(f"opening {self._source.description}",
                             lambda: self._source.open(offset, self._cp.get("validator")))
        if offset and stream.start != offset:
            log.warning("transfer %s: %s restarted at byte 0 instead of %d", self.id, self._source.description, offset)
            offset, segments = 0, []
        total = stream.total
        self._report(total=total, done=offset)
        ranges = split(offset, total, self._settings.sftp_streams, self._settings.parallel_threshold)
        try:
            spool = Spool(self._spool_dir, self.id, offset, self._quota, total)
        except BaseException:
            stream.close()
            raise
        follower = None
        started = time.monotonic()
        with spool:
            fetcher = Fetcher(self._source, stream, spool, self._settings.verify_every, self._settings,
                              self._control, self._report, self.id)
            try:
                if offset == 0 and total and len(ranges) == 1:
                    # One fresh sequential stream of known size: the cluster hashes it as it arrives.
                    self._retry(f"creating {self._temp}", lambda: self._prepare(0, create=True))
                    follower = _Follower(self._cluster, self._temp, total, self.id)
                fetcher.start_thread()
                self._send(spool, fetcher, ranges, offset, total, segments, created=follower is not None)
                fetcher.join()
                if fetcher.error is not None:
                    raise fetcher.error
            finally:
                fetcher.halt()
                fetcher.join(timeout=30)
                if follower is not None and fetcher.error is not None:
                    follower.stop()
        size = fetcher.position
        log.debug("transfer %s: %d bytes read and acknowledged in %.2fs", self.id, size - offset,
                  time.monotonic() - started)
        segments.append((offset, size, fetcher.digest))
        self._cp.update(total=size, validator=fetcher.validator, segments=[list(s) for s in segments])
        self._report(checkpoint=dict(self._cp))
        if follower is not None:
            self._report(phase="verifying", done=size, total=size)
            seen = follower.result()
            log.debug("transfer %s: the cluster's hash %.2fs after the start", self.id, time.monotonic() - started)
            if seen == fetcher.digest:
                self._retry("moving the file into place", lambda: self._cluster.move_into_place(self._temp,
                                                                                                 self._dst))
                return Result(sha256=fetcher.digest, size=size)
            log.warning("transfer %s: the hash made as the file arrived %s; checking the whole file", self.id,
                        "differs" if seen else "is missing")
        return self._finish(segments, size)

    # -- sending -------------------------------------------------------------------------------

    def _prepare(self, offset: int, create: bool) -> None:
        """Makes the parent directories once; creates the file empty, or checks it holds ``offset`` bytes.

        Bytes past ``offset`` are not cut off: they are written again with the same bytes (the source's
        validator guarantees the same version), and the final check compares the whole file's size. Not
        truncating keeps the follower's reading of the file valid across a reconnection.
        """
        if not self._parents_made:
            self._cluster.make_dirs(posixpath.dirname(self._temp))
            self._parents_made = True
        if create:
            self._cluster.call(f"creating {self._temp}", self._cluster.files.write_file, self._temp, b"", 0o600)
            return
        info = self._cluster.stat(self._temp)
        size = info.size if info is not None else -1
        if size < offset:
            raise StartOver(f"the partial file {self._temp} on the cluster is missing or shorter than its "
                            f"checkpoint ({max(size, 0)} < {offset} bytes)")

    def _send(self, spool: Spool, fetcher: Fetcher, ranges: list[_Range], origin: int, total: int | None,
              segments: list, created: bool) -> None:
        retrier = Retrier(self._settings, self._control, self._report, f"transfer {self.id}: sending")
        every = self._settings.verify_every
        state = {"next": (origin // every + 1) * every}
        confirmed = origin
        first = True
        while True:
            before = confirmed
            if not first:
                ranges = split(confirmed, total, self._settings.sftp_streams, self._settings.parallel_threshold)
            try:
                self._control.check()
                # A fresh file is created empty; after a fault or a resume the file exists, and the bytes past
                # what was acknowledged may hold anything: they are written again.
                if not (first and created):
                    self._prepare(confirmed, create=first and origin == 0)
                self._send_ranges(spool, fetcher, ranges, origin, total, segments, state,
                                  create=first and origin == 0 and not created)
                return
            except StagingError as exc:
                first = False
                confirmed = contiguous(ranges, confirmed)
                retrier.failed(exc, progressed=confirmed > before)

    def _send_ranges(self, spool: Spool, fetcher: Fetcher, ranges: list[_Range], origin: int, total: int | None,
                     segments: list, state: dict, create: bool) -> None:
        group = Group()
        lock = threading.Lock()
        dedicated = total is None or total - origin >= self._settings.dedicated_threshold
        every = self._settings.verify_every

        def on_ack(rng: _Range, acked: int) -> None:
            rng.acked = acked
            with lock:
                confirmed = contiguous(ranges, ranges[0].start)
                due = confirmed >= state["next"]
                if due:
                    boundary = confirmed // every * every
                    state["next"] = boundary + every
            self._report(done=confirmed)
            if due:
                self._checkpoint(fetcher, origin, boundary, segments)

        if len(ranges) == 1:
            self._send_range(spool, ranges[0], dedicated, create, group, on_ack)
        else:
            if create:  # the file must exist before several sessions write into it
                self._cluster.call(f"creating {self._temp}", self._cluster.files.write_file, self._temp, b"", 0o600)
            group.run([lambda rng=rng: self._send_range(spool, rng, True, False, group, on_ack) for rng in ranges],
                      f"send-{self.id[:8]}")
        if group.errors:
            raise group.first_cause(self._control)

    def _checkpoint(self, fetcher: Fetcher, origin: int, boundary: int, segments: list) -> None:
        digest = fetcher.snapshot(boundary) if boundary > origin else None
        if digest is None:
            return
        cp = dict(self._cp)
        cp.update(temp=self._temp, total=fetcher.total, validator=fetcher.validator,
                  segments=[list(s) for s in segments] + [[origin, boundary, digest]])
        self._report(checkpoint=cp)
        fetcher.forget_before(boundary)

    def _send_range(self, spool: Spool, rng: _Range, dedicated: bool, create: bool, group: Group,
                    on_ack: Callable[[_Range, int], None]) -> None:
        writer = None
        try:
            writer = self._cluster.files.open_writer(self._temp, rng.acked, create=create, dedicated=dedicated,
                                                     on_ack=lambda acked: on_ack(rng, acked))
            group.add_closer(writer.abort)
            with self._control.closing(writer.abort):
                position = rng.acked
                while rng.end is None or position < rng.end:
                    if group.failed.is_set():
                        return
                    self._control.check()
                    want = _SEND_CHUNK if rng.end is None else min(_SEND_CHUNK, rng.end - position)
                    fd, at, count = spool.available(position, want)
                    if not count:
                        break
                    writer.write_from(fd, at, count)
                    position += count
                writer.close()
            rng.finished = True
            on_ack(rng, position)
        except TransportError as exc:
            if writer is not None:
                quietly(writer.abort)
            group.fail(self._control.error if self._control.stopped else remote_failure(exc, "writing to the cluster"))
        except BaseException as exc:
            if writer is not None:
                quietly(writer.abort)
            group.fail(exc)

    # -- checks and delivery -------------------------------------------------------------------

    def _finish(self, segments: list, size: int) -> Result:
        """The check at the end: the cluster hashes the whole file (and each segment when there are several)."""
        self._report(phase="verifying", done=size, total=size)
        checked = [(start, end) for start, end, _ in segments] if len(segments) > 1 else []
        target = self._temp
        info = self._retry("checking the partial file", lambda: self._cluster.stat(self._temp))
        if info is None:
            # Interrupted between the move into place and the record of success: the checks run on dst.
            target = self._dst
        hashes = self._retry("checksumming on the cluster", lambda: self._cluster.call(
            "hashing on the cluster", self._cluster.files.hash, target, checked, whole=True, size_hint=size))
        if hashes.size != size:
            raise VerificationFailed(f"the file on the cluster has {hashes.size} bytes where {size} were read")
        expected = [digest for _, _, digest in segments] if checked else [segments[0][2]]
        got = list(hashes.ranges) if checked else [hashes.sha256]
        for (start, end, _), want, have in zip(segments, expected, got):
            if want != have:
                raise VerificationFailed(f"bytes {start}-{end} on the cluster differ from the source (sha256)")
        if target == self._temp:
            self._retry("moving the file into place", lambda: self._cluster.move_into_place(self._temp, self._dst))
        return Result(sha256=hashes.sha256, size=size)


class _Follower:
    """The cluster hashing the partial file as it grows, in a thread of its own."""

    def __init__(self, cluster: Cluster, path: str, size: int, name: str):
        self._cluster = cluster
        self._path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"follow-{name[:8]}")
        self._future: Future = self._pool.submit(cluster.files.hash_growing, path, size)
        self._pool.shutdown(wait=False)

    def result(self) -> str | None:
        """The cluster's SHA-256 of the file (None if it could not be made)."""
        try:
            return self._future.result()
        except Exception:  # a failed follower only means the file is checked the other way
            log.debug("hashing %s as it arrived failed", self._path, exc_info=True)
            return None

    def stop(self) -> None:
        """The attempt failed: the cluster-side command ends when the partial file is removed or truncated."""
        self._future.cancel()

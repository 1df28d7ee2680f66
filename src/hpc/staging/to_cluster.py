"""A source (HTTP, S3) delivered to a file on the cluster, checked on the cluster while it arrives.

Threads of one attempt::

    fetcher     source -> sha256 (whole file, and per range) -> spool          (hpc.staging.fetch)
    sender(s)   spool -> pipelined SFTP writes, acknowledged prefix tracked    (1, or sftp_streams)
    verifier    each acknowledged range hashed ON THE CLUSTER and compared     (in the background)
    caller      waits, renames into place

Verification overlaps the transfer: as soon as the cluster acknowledges the bytes up to a range boundary
(every ``verify_every`` bytes), the cluster hashes that range of the partial file while later ranges are
still on the wire, and the digest must equal what the gateway read. When the last range checks out, the
whole file is known to be on the cluster as read, and the gateway's SHA-256 of the stream is the file's:
no second pass over the file at the end.

The verified prefix is the checkpoint (``{"temp", "total", "validator", "verified"}``): a gateway that dies
and restarts truncates the partial file to it and reads the source from there (a ranged read), so nothing
verified is sent or read again. A new process cannot continue the SHA-256 of the first one (``hashlib``
state cannot be saved), so after such a restart the cluster hashes the complete file once at the end.

Inside one process, a dropped SSH connection is resumed at the last acknowledged byte from the spool,
without reading the source again; a dropped source connection is resumed by the fetcher.

The file is written as ``.<name>.<id>.part`` beside the destination and renamed into place (atomic) once
every range is verified. A destination that is a directory is refused before anything is read.
"""

from __future__ import annotations

import logging
import math
import posixpath
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

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


class Verifier:
    """Hashes acknowledged ranges of the partial file on the cluster and compares them, in the background.

    Args:
        origin: Where this attempt started (a range boundary).
        digest: Returns the gateway's SHA-256 of the range ending at a boundary.
        on_verified: Called with the new verified prefix each time it grows.
    """

    def __init__(self, cluster: Cluster, path: str, origin: int, every: int, digest: Callable[[int], str | None],
                 retry: Callable[[str, Callable[[], Any]], Any], on_verified: Callable[[int], None], name: str):
        self._cluster = cluster
        self._path = path
        self._every = every
        self._digest = digest
        self._retry = retry
        self._on_verified = on_verified
        self.verified = origin
        self._submitted = origin
        self._lock = threading.Lock()
        self._pending: list[tuple[int, int, Future]] = []
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"verify-{name[:8]}")

    def acknowledged(self, confirmed: int, end: int | None = None) -> None:
        """The cluster holds ``[origin, confirmed)``: queue the ranges it completes (``end``: the file's end)."""
        with self._lock:
            while True:
                boundary = (self._submitted // self._every + 1) * self._every
                if end is not None:
                    boundary = min(boundary, end)
                if boundary > confirmed or boundary <= self._submitted:
                    return
                start, self._submitted = self._submitted, boundary
                self._pending.append((start, boundary, self._pool.submit(self._check, start, boundary)))

    def _check(self, start: int, end: int) -> None:
        want = self._digest(end)
        got = self._retry(f"checking bytes {start}-{end} on the cluster",
                          lambda: self._cluster.call("hashing on the cluster", self._cluster.files.hash, self._path,
                                                     [(start, end)], whole=False, size_hint=end - start))
        if got.ranges[0] != want:
            raise VerificationFailed(f"bytes {start}-{end} of {self._path} on the cluster differ from what was read "
                                     "(sha256)")

    def collect(self, wait: bool) -> None:
        """Takes the results that are in (all of them with ``wait``), advancing the verified prefix in order.

        Raises:
            VerificationFailed, StagingError: A range differs, or could not be hashed.
        """
        while True:
            with self._lock:
                if not self._pending:
                    return
                start, end, future = self._pending[0]
            if not wait and not future.done():
                return
            future.result()
            with self._lock:
                self._pending.pop(0)
                self.verified = end
            self._on_verified(end)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


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
        cp = dict(checkpoint or {})
        if "verified" not in cp:  # a fresh start, or a checkpoint of an older format: from byte 0
            cp = {"temp": cp.get("temp")}
        self._cp: dict[str, Any] = cp
        self._temp = cp.get("temp") or temp_path(dst, transfer_id)
        self._parents_made = False

    # -- plumbing ------------------------------------------------------------------------------

    def _retry(self, what: str, action: Callable[[], Any]) -> Any:
        return with_retries(self._settings, self._control, self._report, f"transfer {self.id}: {what}", action)

    def _save(self, **changes: Any) -> None:
        self._cp.update(changes, temp=self._temp)
        self._report(checkpoint=dict(self._cp))

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
                self._save()
                self._report(retried=1, done=0)
                self._control.sleep(self._settings.retry_delay)

    def cleanup(self) -> None:
        """Removes the partial file on the cluster (after a failure or a cancel)."""
        self._cluster.remove_quietly(self._temp)

    # -- one attempt ---------------------------------------------------------------------------

    def _attempt(self) -> Result:
        offset = self._cp.get("verified", 0)
        total = self._cp.get("total")
        self._retry("checking the destination", lambda: self._cluster.confine(self._dst, directory=True))
        self._retry("checking the destination", lambda: self._cluster.check_destination(self._dst))
        if offset:
            log.info("transfer %s: resuming at byte %d (verified on the cluster so far)", self.id, offset)
        if total is not None and offset >= total:
            # Everything was delivered and verified before an interruption: only the move is left.
            return self._finish(total, None)
        stream = self._retry(f"opening {self._source.description}",
                             lambda: self._source.open(offset, self._cp.get("validator")))
        if offset and stream.start != offset:
            log.warning("transfer %s: %s restarted at byte 0 instead of %d", self.id, self._source.description, offset)
            offset = 0
            self._cp.pop("verified", None)
        total = stream.total
        self._report(total=total, done=offset)
        try:
            spool = Spool(self._spool_dir, self.id, offset, self._quota, total)
        except BaseException:
            stream.close()
            raise
        with spool:
            every = self._settings.verify_every
            fetcher = Fetcher(self._source, stream, spool, every, self._settings, self._control, self._report,
                              self.id, ranges=True)
            verifier = Verifier(self._cluster, self._temp, offset, every,
                                lambda end: (fetcher.range_digest(end) or (None, None))[0], self._retry,
                                lambda end: self._save(total=fetcher.total, validator=fetcher.validator, verified=end),
                                self.id)
            fetcher.start_thread()
            try:
                self._send(spool, fetcher, verifier, offset, total)
                fetcher.join()
                if fetcher.error is not None:
                    raise fetcher.error
                self._report(phase="verifying", done=fetcher.position, total=fetcher.position)
                verifier.acknowledged(fetcher.position, end=fetcher.position)
                verifier.collect(wait=True)
            finally:
                verifier.close()
                fetcher.halt()
                fetcher.join(timeout=30)
        size = fetcher.position
        return self._finish(size, fetcher.digest if offset == 0 else None)

    # -- sending -------------------------------------------------------------------------------

    def _prepare(self, offset: int, create: bool) -> None:
        """Makes the parent directories once, and sets the partial file's length to ``offset`` when resuming."""
        if not self._parents_made:
            self._cluster.make_dirs(posixpath.dirname(self._temp))
            self._parents_made = True
        if create:
            return
        info = self._cluster.stat(self._temp)
        size = info.size if info is not None else -1
        if size < offset:
            raise StartOver(f"the partial file {self._temp} on the cluster is missing or shorter than its "
                            f"checkpoint ({max(size, 0)} < {offset} bytes)")
        if size != offset:
            self._cluster.call(f"preparing {self._temp}", self._cluster.files.truncate, self._temp, offset)

    def _send(self, spool: Spool, fetcher: Fetcher, verifier: Verifier, origin: int, total: int | None) -> None:
        retrier = Retrier(self._settings, self._control, self._report, f"transfer {self.id}: sending")
        confirmed = origin
        first = True
        while True:
            before = confirmed
            ranges = split(confirmed, total, self._settings.sftp_streams, self._settings.parallel_threshold)
            try:
                self._control.check()
                # The first try of a fresh file creates it; after a fault, or a resume, the file exists and
                # bytes past what was acknowledged may hold anything: they are overwritten.
                self._prepare(confirmed, create=first and origin == 0)
                self._send_ranges(spool, verifier, ranges, origin, total, create=first and origin == 0)
                return
            except StagingError as exc:
                first = False
                confirmed = contiguous(ranges, confirmed)
                retrier.failed(exc, progressed=confirmed > before)

    def _send_ranges(self, spool: Spool, verifier: Verifier, ranges: list[_Range], origin: int,
                     total: int | None, create: bool) -> None:
        group = Group()
        lock = threading.Lock()
        dedicated = total is None or total - origin >= self._settings.dedicated_threshold

        def on_ack(rng: _Range, acked: int) -> None:
            rng.acked = acked
            with lock:
                confirmed = contiguous(ranges, ranges[0].start)
            self._report(done=confirmed)
            verifier.acknowledged(confirmed)
            verifier.collect(wait=False)

        if len(ranges) == 1:
            self._send_range(spool, ranges[0], dedicated, create, group, on_ack)
        else:
            if create:  # the file must exist before several sessions write into it
                self._cluster.call(f"creating {self._temp}", self._cluster.files.write_file, self._temp, b"", 0o600)
            group.run([lambda rng=rng: self._send_range(spool, rng, True, False, group, on_ack) for rng in ranges],
                      f"send-{self.id[:8]}")
        if group.errors:
            raise group.first_cause(self._control)

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
                    data = spool.read(position, want)
                    if not data:
                        break
                    writer.write(data)
                    position += len(data)
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

    # -- delivery ------------------------------------------------------------------------------

    def _finish(self, size: int, whole: str | None) -> Result:
        self._report(phase="verifying", done=size, total=size)
        info = self._retry("checking the partial file", lambda: self._cluster.stat(self._temp))
        target = self._temp
        if info is None:
            # Interrupted between the move into place and the record of success: the move is done.
            info = self._retry("checking the destination", lambda: self._cluster.stat(self._dst))
            if info is None:
                raise StartOver(f"the partial file {self._temp} is missing on the cluster")
            target = self._dst
        if info.size != size:
            raise VerificationFailed(f"the file on the cluster has {info.size} bytes where {size} were read")
        if whole is None:
            # Resumed in another process: every range was verified, but the SHA-256 of the whole file must
            # be computed once more, on the cluster.
            hashes = self._retry("checksumming on the cluster", lambda: self._cluster.call(
                "hashing on the cluster", self._cluster.files.hash, target, whole=True, size_hint=size))
            if hashes.size != size:
                raise VerificationFailed(f"the file on the cluster has {hashes.size} bytes where {size} were read")
            whole = hashes.sha256
        if target == self._temp:
            self._retry("moving the file into place", lambda: self._cluster.move_into_place(self._temp, self._dst))
        return Result(sha256=whole, size=size)

"""Many files in one transfer: an S3 prefix or a list of URLs into a cluster directory, and a cluster
directory to an S3 prefix.

Small files (up to ``small_file``) never cost one SSH round trip each. Into a cluster::

    readers (batch_concurrency)   source GETs, whole files into memory (bounded by batch_memory), sha256
    writer                        groups of ready files: pipelined SFTP writes to <dst>/.hpcgw-<id>/<n>,
                                  ONE command hashing the group on the cluster, pipelined renames into place

Out of a cluster::

    reader                        groups of files: pipelined SFTP reads, ONE command hashing the group on the
                                  cluster (overlapped), sha256 in the gateway, compared
    uploaders (batch_concurrency) one PUT per file with its Content-MD5 and SHA-256; the stored object's
                                  ETag (or checksum) compared with what was sent

Big files go one at a time through the single-file sinks (:mod:`~hpc.staging.to_cluster`,
:mod:`~hpc.staging.to_s3`), verified and resumable as single transfers are. Each file ends with its own
outcome (``on_file``): one file failing does not stop the others. What completed is never redone: the
caller skips it when a batch is resumed.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import posixpath
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

from hpc.staging.cluster import Cluster, remote_failure
from hpc.staging.control import Control, Halted, quietly
from hpc.staging.errors import SourceError, StagingError, StartOver
from hpc.staging.report import ProgressCallback
from hpc.staging.retry import Retrier, with_retries
from hpc.staging.s3 import PartDigest, S3Target
from hpc.staging.settings import Settings
from hpc.staging.sources import Source
from hpc.staging.spool import SpoolQuota
from hpc.staging.to_cluster import ToCluster
from hpc.staging.to_s3 import ToS3
from hpc.transport import FAILURE, RemoteFileError, TransportError

log = logging.getLogger(__name__)

_GROUP_FILES = 256  # files per pipelined group
_GROUP_BYTES = 32 * 1024 * 1024
# A group is also delivered once its first file has waited this long: files arriving steadily (a slow or
# throttled source) are completed, counted and checkpointed as they come, not all at the end.
_GROUP_SECONDS = 1.0


@dataclass
class Item:
    """One file of a batch.

    Attributes:
        number: Its position in the listing (its key in the store).
        path: Relative to the batch's directory or prefix.
        size: Bytes, when the listing says (S3, the cluster); None for URLs.
        where: The source's address (an object key, a URL, a cluster path) or the destination's.
        mtime: Modification time, for cluster files.
    """

    number: int
    path: str
    size: int | None
    where: str
    mtime: int = 0


@dataclass
class Outcome:
    """How one file ended."""

    number: int
    state: str  # completed | failed
    reason: str = ""
    sha256: str | None = None
    size: int | None = None


class _Budget:
    """Bytes of file contents held in memory at once (a file bigger than the budget is let alone through)."""

    def __init__(self, limit: int, control: Control):
        self._limit = limit
        self._used = 0
        self._cond = threading.Condition()
        self._control = control
        self._aborted = False

    def take(self, size: int) -> None:
        with self._cond:
            while self._used and self._used + size > self._limit:
                self._control.check()
                if self._aborted:
                    raise Halted()
                self._cond.wait(0.25)
            self._used += size

    def abort(self) -> None:
        """Wakes every waiter with :class:`Halted` (the batch's try ended)."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def give(self, size: int) -> None:
        with self._cond:
            self._used -= size
            self._cond.notify_all()


class _Common:
    def __init__(self, *, batch_id: str, cluster: Cluster, items: list[Item], spool_dir, quota: SpoolQuota,
                 settings: Settings, control: Control, report: ProgressCallback,
                 on_file: Callable[[Outcome], None], bytes_before: int = 0):
        self.id = batch_id
        self._cluster = cluster
        self._items = items
        self._spool_dir = spool_dir
        self._quota = quota
        self._settings = settings
        self._control = control
        self._report = report
        self._on_file = on_file
        self._lock = threading.Lock()
        self._bytes_done = bytes_before  # completed by earlier runs
        self._in_flight: dict[int, int] = {}  # big file -> bytes done so far
        self._rate_start: float | None = None  # the first file read (not the listing) starts the clock
        self._rate_bytes = 0

    def _retry(self, what: str, action: Callable[[], Any]) -> Any:
        return with_retries(self._settings, self._control, self._report, f"batch {self.id}: {what}", action)

    def _throttle(self, size: int) -> None:
        """Keeps the small files' reading at ``max_rate`` bytes per second for the whole batch."""
        if not self._settings.max_rate:
            return
        with self._lock:
            now = time.monotonic()
            if self._rate_start is None:
                self._rate_start = now
            self._rate_bytes += size
            ahead = self._rate_bytes / self._settings.max_rate - (now - self._rate_start)
        if ahead > 0:
            self._control.sleep(ahead)

    def _done(self, outcome: Outcome) -> None:
        with self._lock:
            self._in_flight.pop(outcome.number, None)
            if outcome.state == "completed":
                self._bytes_done += outcome.size or 0
            done = self._bytes_done + sum(self._in_flight.values())
        self._on_file(outcome)
        self._report(done=done)

    def _fail(self, item: Item, exc: BaseException) -> None:
        if isinstance(exc, StagingError) and not isinstance(exc, Halted) and not self._control.stopped:
            self._done(Outcome(item.number, "failed", exc.reason))
            return
        raise exc

    def _big_report(self, number: int) -> ProgressCallback:
        """The progress callback of one big file: its bytes count towards the batch's, nothing else."""
        def report(**changes: Any) -> None:
            if "done" in changes:
                with self._lock:
                    self._in_flight[number] = changes["done"] or 0
                    done = self._bytes_done + sum(self._in_flight.values())
                self._report(done=done)
            if changes.get("retried"):
                self._report(retried=changes["retried"])

        return report


class ToClusterBatch(_Common):
    """Files from a source (S3 objects, URLs) into a directory on the cluster.

    Args:
        open_source: The :class:`~hpc.staging.sources.Source` of an item.
        dst: The absolute destination directory.
    """

    def __init__(self, *, open_source: Callable[[Item], Source], dst: str, **common):
        super().__init__(**common)
        self._open_source = open_source
        self._dst = dst
        self._temp_dir = posixpath.join(dst, f".hpcgw-{self.id[:8]}")
        self._made: set[str] = set()

    def run(self) -> None:
        self._retry("checking the destination", lambda: self._cluster.confine(self._dst, directory=True))
        self._retry("creating the destination", lambda: self._cluster.make_dirs(self._temp_dir))
        self._made.add(self._dst)
        ready: queue.Queue = queue.Queue(maxsize=4 * _GROUP_FILES)
        big: queue.Queue = queue.Queue()
        budget = _Budget(self._settings.batch_memory, self._control)
        work: queue.Queue = queue.Queue()
        for item in self._items:
            if item.size is not None and item.size > self._settings.small_file:
                big.put(item)
            else:
                work.put(item)
        readers = max(1, min(self._settings.batch_concurrency, work.qsize()))
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                while not errors:
                    try:
                        item = work.get_nowait()
                    except queue.Empty:
                        return
                    self._control.check()
                    got = self._read_small(item, budget)
                    if got == "big":
                        big.put(item)
                    elif got is not None:
                        hand_over(got)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                errors.append(exc)
            finally:
                hand_over(None)

        def hand_over(got) -> None:
            while True:
                try:
                    ready.put(got, timeout=0.25)
                    return
                except queue.Full:
                    if errors:
                        return

        def big_lane() -> None:
            try:
                while not errors:
                    try:
                        item = big.get(timeout=0.2)
                    except queue.Empty:
                        if not any(t.is_alive() for t in threads):
                            if big.empty():
                                return
                        continue
                    self._control.check()
                    self._send_big(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                errors.append(exc)

        threads = [threading.Thread(target=reader, name=f"batch-read-{self.id[:8]}-{i}", daemon=True)
                   for i in range(readers)]
        lane = threading.Thread(target=big_lane, name=f"batch-big-{self.id[:8]}", daemon=True)
        for thread in threads:
            thread.start()
        lane.start()
        try:
            finished = 0
            group: list = []
            group_bytes = 0
            group_since = 0.0
            while finished < readers:
                try:
                    got = ready.get(timeout=0.05 if group else 0.5)
                except queue.Empty:
                    got = "flush"
                if got is None:
                    finished += 1
                elif got != "flush":
                    if not group:
                        group_since = time.monotonic()
                    group.append(got)
                    group_bytes += len(got[1])
                if group and (got == "flush" or len(group) >= _GROUP_FILES or group_bytes >= _GROUP_BYTES
                              or finished == readers or time.monotonic() - group_since >= _GROUP_SECONDS):
                    self._deliver(group, budget)
                    group, group_bytes = [], 0
                if errors:
                    break
            if group:
                self._deliver(group, budget)
            lane.join()
        except BaseException as exc:
            errors.append(exc)
            raise
        finally:
            if errors:
                budget.abort()  # the helpers' loops end at their next step
            for thread in threads + [lane]:
                thread.join(timeout=60)
        if errors:
            raise errors[0]
        self._remove_temp_dir()

    def cleanup(self) -> None:
        """Removes the temporary directory (after a failure or a cancel)."""
        self._remove_temp_dir()

    def _remove_temp_dir(self) -> None:
        try:
            entries = self._cluster.files.listdir(self._temp_dir)
        except TransportError:
            return
        for entry in entries:
            self._cluster.remove_quietly(posixpath.join(self._temp_dir, entry.name))
        try:
            self._cluster.files.rmdir(self._temp_dir)
        except TransportError:
            pass

    # -- small files ---------------------------------------------------------------------------

    def _read_small(self, item: Item, budget: _Budget):
        """(item, contents, sha256) of a small file; "big" if it turned out big; None if it failed."""
        source = self._open_source(item)
        retrier = Retrier(self._settings, self._control, self._report, f"batch {self.id}: {source.description}")
        while True:
            taken = 0
            try:
                stream = source.open(0, None)
                try:
                    if stream.total is not None and stream.total > self._settings.small_file:
                        return "big"
                    taken = stream.total if stream.total is not None else self._settings.small_file
                    budget.take(taken)
                    data = bytearray()
                    with self._control.closing(stream.close):
                        for chunk in stream.chunks():
                            data += chunk
                            if len(data) > self._settings.small_file:
                                budget.give(taken)
                                return "big"
                            self._control.check()
                finally:
                    quietly(stream.close)
                if stream.total is not None and len(data) != stream.total:
                    raise SourceError(f"{source.description} ended at byte {len(data)} of {stream.total}",
                                      retryable=True)
                budget.give(taken - len(data))
                self._throttle(len(data))
                return item, bytes(data), hashlib.sha256(data).hexdigest()
            except StagingError as exc:
                if taken:
                    budget.give(taken)
                try:
                    retrier.failed(exc)
                except StartOver as final:
                    self._fail(item, StagingError(final.reason))
                    return None
                except StagingError as final:
                    self._fail(item, final)
                    return None

    def _final(self, item: Item) -> str:
        return posixpath.join(self._dst, item.path)

    def _deliver(self, group: list[tuple[Item, bytes, str]], budget: _Budget) -> None:
        """Writes, checks and moves into place a group of small files, pipelined over one session each step."""
        try:
            pending = list(group)
            for _attempt in range(2):
                retry = self._deliver_once(pending)
                if not retry:
                    return
                pending = retry
            for item, _data, _ in pending:
                self._done(Outcome(item.number, "failed", f"{item.path}: the copy on the cluster differs from the "
                                   "source twice (sha256)"))
        finally:
            budget.give(sum(len(data) for _, data, _ in group))

    def _deliver_once(self, group: list[tuple[Item, bytes, str]]) -> list:
        temps = [posixpath.join(self._temp_dir, str(item.number)) for item, _, _ in group]
        outcomes = self._retry("writing files", lambda: self._cluster.call(
            "writing files to the cluster", self._cluster.files.write_files,
            [(temp, data) for temp, (_, data, _) in zip(temps, group)], 0o644))
        written = []
        for temp, (item, data, sha), outcome in zip(temps, group, outcomes):
            if outcome is None:
                written.append((temp, item, data, sha))
            else:
                self._done(Outcome(item.number, "failed", outcome.reason))
        if not written:
            return []
        hashes = self._retry("checking files on the cluster", lambda: self._cluster.call(
            "hashing on the cluster", self._cluster.files.hash_files, [t for t, _, _, _ in written]))
        again, checked = [], []
        for temp, item, data, sha in written:
            if hashes.get(temp) == sha:
                checked.append((temp, item, data, sha))
            else:
                log.warning("batch %s: %s differs on the cluster (sha256); writing it again", self.id, item.path)
                again.append((item, data, sha))
        moves = []
        for temp, item, data, sha in checked:
            parent = posixpath.dirname(self._final(item))
            if parent not in self._made:
                try:
                    self._retry(f"creating {parent}", lambda p=parent: self._cluster.make_dirs(p))
                    self._made.add(parent)
                except StagingError as exc:
                    if exc.retryable or isinstance(exc, Halted) or self._control.stopped:
                        raise
                    self._done(Outcome(item.number, "failed", exc.reason))
                    continue
            moves.append((temp, item, data, sha))
        results = self._retry("moving files into place", lambda: self._cluster.call(
            "moving files into place", self._cluster.files.rename_many,
            [(temp, self._final(item)) for temp, item, _, _ in moves]))
        for (_temp, item, data, sha), error in zip(moves, results):
            if error is None:
                self._done(Outcome(item.number, "completed", "", sha, len(data)))
            else:
                self._done(Outcome(item.number, "failed", self._move_failure(item, error)))
        return again

    def _move_failure(self, item: Item, error: TransportError) -> str:
        if isinstance(error, RemoteFileError) and error.status == FAILURE:
            info = self._retry("checking the destination", lambda: self._cluster.stat(self._final(item)))
            if info is not None and info.is_dir:
                return f"the destination {self._final(item)} is an existing directory on the cluster"
        return error.reason

    # -- big files -----------------------------------------------------------------------------

    def _send_big(self, item: Item) -> None:
        sink = ToCluster(transfer_id=f"{self.id[:8]}{item.number:028d}", cluster=self._cluster,
                         source=self._open_source(item), dst=self._final(item), spool_dir=self._spool_dir,
                         quota=self._quota, settings=self._settings, control=self._control,
                         report=self._big_report(item.number))
        parent = posixpath.dirname(self._final(item))
        try:
            if parent not in self._made:
                self._retry(f"creating {parent}", lambda: self._cluster.make_dirs(parent))
                self._made.add(parent)
            result = sink.run()
        except StagingError as exc:
            quietly(sink.cleanup)
            self._fail(item, exc)
            return
        self._done(Outcome(item.number, "completed", "", result.sha256, result.size))


class FromClusterBatch(_Common):
    """Files of a directory on the cluster to objects under an S3 prefix.

    Args:
        target: The S3 object of an item.
        src: The absolute source directory.
    """

    def __init__(self, *, target: Callable[[Item], S3Target], src: str, **common):
        super().__init__(**common)
        self._target = target
        self._src = src

    def run(self) -> None:
        small = [i for i in self._items if (i.size or 0) <= self._settings.small_file]
        big = [i for i in self._items if (i.size or 0) > self._settings.small_file]
        uploads = ThreadPoolExecutor(max_workers=max(1, self._settings.batch_concurrency),
                                     thread_name_prefix=f"batch-put-{self.id[:8]}")
        hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-hash-{self.id[:8]}")
        budget = _Budget(self._settings.batch_memory, self._control)
        futures = []
        try:
            group: list[Item] = []
            size = 0
            for item in small + [None]:
                if item is not None:
                    group.append(item)
                    size += item.size or 0
                if group and (item is None or len(group) >= _GROUP_FILES or size >= _GROUP_BYTES):
                    self._control.check()
                    budget.take(size)
                    futures += self._read_group(group, hashing, uploads, budget)
                    group, size = [], 0
            for future in futures:
                future.result()
            for item in big:
                self._control.check()
                self._send_big(item)
        finally:
            uploads.shutdown(wait=True, cancel_futures=True)
            hashing.shutdown(wait=False, cancel_futures=True)

    def cleanup(self) -> None:
        """Nothing is left behind: single PUTs are atomic, a big file's sink aborts its own upload."""

    def _path(self, item: Item) -> str:
        return posixpath.join(self._src, item.path)

    def _read_group(self, group: list[Item], hashing: ThreadPoolExecutor, uploads: ThreadPoolExecutor,
                    budget: _Budget) -> list:
        paths = [self._path(i) for i in group]
        hashes = hashing.submit(self._retry, "checking files on the cluster", lambda: self._cluster.call(
            "hashing on the cluster", self._cluster.files.hash_files, paths))
        contents = self._retry("reading files", lambda: self._cluster.call(
            "reading files on the cluster", self._cluster.files.read_files, [(p, i.size or 0) for p, i in
                                                                             zip(paths, group)]))
        on_cluster = hashes.result()
        futures = []
        held = sum(i.size or 0 for i in group)
        for path, item, data in zip(paths, group, contents):
            if isinstance(data, TransportError):
                self._done(Outcome(item.number, "failed", remote_failure(data).reason))
                continue
            self._throttle(len(data))
            sha = hashlib.sha256(data).hexdigest()
            if on_cluster.get(path) != sha:
                self._done(Outcome(item.number, "failed", f"{path} changed while it was read (sha256 differs from "
                                   "the file on the cluster)"))
                continue
            futures.append(uploads.submit(self._upload, item, data, sha))
        remaining = [len(futures)]
        lock = threading.Lock()

        def release(_future) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                budget.give(held)

        if futures:
            for future in futures:
                future.add_done_callback(release)
        else:
            budget.give(held)
        return futures

    def _upload(self, item: Item, data: bytes, sha: str) -> None:
        target = self._target(item)
        digest = PartDigest(1, len(data), hashlib.md5(data, usedforsecurity=False).hexdigest(),
                            base64.b64encode(bytes.fromhex(sha)).decode())
        try:
            self._retry(f"writing {target.description}", lambda: target.put(data, digest, verify=True))
        except StagingError as exc:
            self._fail(item, exc)
            return
        self._done(Outcome(item.number, "completed", "", sha, len(data)))

    def _send_big(self, item: Item) -> None:
        sink = ToS3(transfer_id=f"{self.id[:8]}{item.number:028d}", cluster=self._cluster, src=self._path(item),
                    target=self._target(item), spool_dir=self._spool_dir, quota=self._quota, settings=self._settings,
                    control=self._control, report=self._big_report(item.number))
        try:
            result = sink.run()
        except StagingError as exc:
            quietly(sink.cleanup)
            self._fail(item, exc)
            return
        self._done(Outcome(item.number, "completed", "", result.sha256, result.size))

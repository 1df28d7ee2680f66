"""A file on the cluster shipped to an S3 object (multipart above one part), checked at both ends.

Threads of one attempt::

    hasher      the cluster hashes the file (and the segments of earlier runs) while it is read
    fetcher     SFTP reads -> sha256 (whole, and per part) + md5 per part -> spool
    uploaders   spool parts -> S3, ``s3_concurrency`` in flight, each with its Content-MD5 and SHA-256
    caller      compares the cluster's hashes with what was read, completes the upload, checks the object

Every part's checksums are computed as the bytes pass through the fetcher, so no part is read twice. The
object is completed only when what the gateway read equals the file on the cluster (sha256), and S3
checks every part on arrival (Content-MD5, and the SHA-256 checksum where the server keeps checksums).
After completion the stored object's checksum (or MD5 ETag) is compared with what was sent.

Checkpoint::

    {"size": N, "mtime": T, "part_size": P, "upload_id": "...",
     "parts": [[number, size, md5-hex, sha256-b64, etag], ...],
     "segments": [[start, end, sha256-hex], ...]}

A restart keeps the parts S3 holds and reads the file on from the first missing part; the segments
record what each run read, checked against the cluster's hashes of the same byte ranges.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from collections.abc import Callable

from hpc.staging.cluster import Cluster
from hpc.staging.cluster_source import ClusterFile
from hpc.staging.control import Control, Group, Halted
from hpc.staging.errors import SourceChanged, SourceError, StagingError, StartOver, VerificationFailed
from hpc.staging.fetch import Fetcher
from hpc.staging.report import ProgressCallback
from hpc.staging.retry import Retrier, with_retries
from hpc.staging.s3 import PartDigest, S3Target
from hpc.staging.settings import MiB, Result, Settings
from hpc.staging.spool import Spool, SpoolQuota

log = logging.getLogger(__name__)


class ToS3:
    """A cluster file shipped to an S3 object (see the module's description)."""

    def __init__(self, *, transfer_id: str, cluster: Cluster, src: str, target: S3Target, spool_dir,
                 quota: SpoolQuota, settings: Settings, control: Control, report: ProgressCallback,
                 checkpoint: dict | None = None):
        self.id = transfer_id
        self._cluster = cluster
        self._src = src
        self._target = target
        self._spool_dir = spool_dir
        self._quota = quota
        self._settings = settings
        self._control = control
        self._report = report
        self._cp: dict[str, Any] = dict(checkpoint or {})

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
                self._reset()
                self._report(retried=1, done=0)
                self._control.sleep(self._settings.retry_delay)

    def _reset(self) -> None:
        self.cleanup()
        self._cp = {}
        self._report(checkpoint={})

    def cleanup(self) -> None:
        """Aborts the multipart upload (after a failure or a cancel)."""
        upload_id = self._cp.get("upload_id")
        if upload_id:
            self._target.abort(upload_id)
            self._cp.pop("upload_id", None)

    def _stat(self) -> tuple[int, int]:
        info = self._cluster.stat(self._src)
        if info is None:
            raise SourceError(f"no such file on the cluster: {self._src}")
        if not info.is_file:
            raise SourceError(f"{self._src} on the cluster is not a regular file")
        return info.size, info.mtime

    def _attempt(self) -> Result:
        self._retry("checking the source", lambda: self._cluster.confine(self._src, directory=False))
        size, mtime = self._retry("reading the source's size", self._stat)
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
            held = self._retry("listing uploaded parts", lambda: self._target.uploaded_parts(cp["upload_id"]))
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
            cp["upload_id"] = self._retry("starting the upload", self._target.start_multipart)
            done, offset, segments = {}, 0, []
        if offset:
            log.info("transfer %s: resuming at byte %d (%d part(s) uploaded already)", self.id, offset, len(done))
        cp.update(size=size, mtime=mtime, part_size=part_size)
        self._cp = cp
        self._report(checkpoint=dict(cp), total=size, done=sum(d.size for d, _ in done.values()))

        # The cluster hashes the file while it is being read (the segments to check are known now), so the
        # check costs no time at the end.
        ranges = [(start, end) for start, end, _ in segments] + [(offset, size)]
        checked = ranges if len(ranges) > 1 else []
        hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hash-{self.id[:8]}")
        hashes = hashing.submit(self._retry, "checksumming on the cluster", lambda: self._cluster.call(
            "hashing on the cluster", self._cluster.files.hash, self._src, checked, whole=True, size_hint=size))
        hashing.shutdown(wait=False)
        source = ClusterFile(self._cluster, self._src, size, mtime, size >= self._settings.dedicated_threshold)
        stream = self._retry(f"opening {source.description}", lambda: source.open(offset, None))
        try:
            spool = Spool(self._spool_dir, self.id, offset, self._quota, size)
        except BaseException:
            stream.close()
            raise
        with spool:
            fetcher = Fetcher(source, stream, spool, part_size, self._settings, self._control, self._report, self.id,
                              ranges=True, md5=True)
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
                    self._retry("completing the upload", lambda: self._target.complete(cp["upload_id"], parts))
                    cp.pop("upload_id", None)
                    digests = [d for d, _ in parts]
                else:
                    data = spool.read_exact(0, size) if size else b""
                    digest = self._digest(fetcher, 1, size, size)
                    self._report(phase="transferring")
                    digests = [self._retry("writing the object", lambda: self._target.put(data, digest))]
            finally:
                fetcher.halt()
                fetcher.join(timeout=30)
        self._report(phase="verifying", done=size)
        self._retry("checking the object", lambda: self._target.verify(digests, multipart))
        return Result(sha256=whole, size=size)

    @staticmethod
    def _digest(fetcher: Fetcher, number: int, boundary: int, size: int) -> PartDigest:
        sha, md5 = fetcher.wait_range(boundary)
        return PartDigest(number, size, md5, base64.b64encode(bytes.fromhex(sha)).decode())

    def _check_source(self, hashes: Future, segments: list, size: int) -> str:
        """Checks what was read against the cluster's hashes of the file; returns its sha256."""
        self._report(phase="verifying")
        checked = len(segments) > 1
        got = hashes.result()
        if got.size != size:
            raise SourceChanged(f"{self._src} on the cluster changed size during the transfer")
        expected = [digest for _, _, digest in segments] if checked else [segments[0][2]]
        if (list(got.ranges) if checked else [got.sha256]) != expected:
            raise VerificationFailed(f"what was read of {self._src} differs from the file on the cluster (sha256)")
        return got.sha256

    def _upload_parts(self, spool: Spool, fetcher: Fetcher, offset: int, size: int, part_size: int,
                      done: dict, segments: list) -> None:
        count = math.ceil(size / part_size)
        wanted = [n for n in range(offset // part_size + 1, count + 1) if n not in done]
        lock = threading.Lock()
        group = Group()
        # A part that cannot be sent ends the try: stop reading, and wake the workers waiting for data.
        group.add_closer(fetcher.halt)
        group.add_closer(lambda: spool.fail(Halted()))
        queue = list(reversed(wanted))

        def record(number: int, digest: PartDigest, etag: str) -> None:
            with lock:
                done[number] = (digest, etag)
                self._report(done=sum(d.size for d, _ in done.values()))
                contiguous = 0
                while contiguous + 1 in done:
                    contiguous += 1
                boundary = min(size, contiguous * part_size)
                snapshot = fetcher.snapshot(boundary) if boundary > offset else None
                if snapshot is not None:
                    cp = dict(self._cp)
                    cp["parts"] = [[n, d.size, d.md5, d.sha256, e] for n, (d, e) in sorted(done.items())]
                    cp["segments"] = [list(s) for s in segments] + [[offset, boundary, snapshot]]
                    self._report(checkpoint=cp)

        def worker() -> None:
            while not group.failed.is_set():
                with lock:
                    if not queue:
                        return
                    number = queue.pop()
                start = (number - 1) * part_size
                length = min(part_size, size - start)
                body = spool.range(start, length)
                digest = self._digest(fetcher, number, start + length, length)
                if group.failed.is_set():
                    return
                retrier = Retrier(self._settings, self._control, self._report, f"transfer {self.id}: part {number}")
                while True:
                    try:
                        self._control.check()
                        etag = self._target.upload_part(self._cp["upload_id"], number, body, digest)
                        break
                    except StagingError as exc:
                        retrier.failed(exc)
                record(number, digest, etag)

        group.run([worker] * max(1, min(self._settings.s3_concurrency, len(wanted))), f"part-{self.id[:8]}")
        if group.errors:
            raise group.first_cause(self._control)

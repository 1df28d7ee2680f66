"""The plumbing of the staging pipeline: shares of a file, the retry policy, cancellation, the fetcher's
hashing, S3 digests.

The fetcher is driven by an in-memory source (the Source interface, not HTTP): what is checked is the
hashing, the checkpoint snapshots and the resume offset, which do not depend on the wire.
"""

from __future__ import annotations

import base64
import hashlib
import threading

import pytest

from hpc.staging.control import Control
from hpc.staging.errors import Cancelled, SourceError, StagingError, StartOver
from hpc.staging.fetch import Fetcher
from hpc.staging.retry import Retrier
from hpc.staging.s3 import PartDigest, expected_checksum, expected_etag
from hpc.staging.settings import Settings
from hpc.staging.spool import Spool, SpoolQuota
from hpc.staging.to_cluster import _Range, contiguous, split
from tests.staging_doubles import MemorySource, MemoryStream, Recorder

MiB = 1024 * 1024


def test_ranges_split_only_big_known_files():
    assert [(r.start, r.end) for r in split(0, None, 4, MiB)] == [(0, None)]
    assert [(r.start, r.end) for r in split(0, 10 * MiB, 1, MiB)] == [(0, 10 * MiB)]
    assert [(r.start, r.end) for r in split(0, 10 * MiB, 4, 100 * MiB)] == [(0, 10 * MiB)]
    ranges = split(MiB, 11 * MiB, 3, MiB)
    assert [(r.start, r.end) for r in ranges] == [(MiB, 5 * MiB), (5 * MiB, 9 * MiB), (9 * MiB, 11 * MiB)]


def test_the_confirmed_prefix_stops_at_the_first_unfinished_range():
    ranges = [_Range(0, 10), _Range(10, 20), _Range(20, 30)]
    assert contiguous(ranges, 0) == 0
    ranges[1].acked = 15  # a later range ahead of the first counts for nothing yet
    assert contiguous(ranges, 0) == 0
    ranges[0].acked, ranges[0].finished = 10, True
    assert contiguous(ranges, 0) == 15
    ranges[1].acked, ranges[1].finished = 20, True
    ranges[2].acked = 22
    assert contiguous(ranges, 0) == 22


def test_retries_back_off_reset_after_progress_and_end():
    settings = Settings(retries=3, retry_delay=0.001, retry_delay_max=0.002)
    report = Recorder()
    retrier = Retrier(settings, Control(), report, "test")
    fault = SourceError("connection reset", retryable=True)
    for _ in range(3):
        retrier.failed(fault)
    retrier.failed(fault, progressed=True)  # progress: the count starts again
    assert retrier.failures == 1
    retrier.failed(fault)
    retrier.failed(fault)
    with pytest.raises(StagingError) as ended:
        retrier.failed(fault)
    assert ended.value.reason == "connection reset (gave up after 3 retries)"
    assert report.retries == 6


@pytest.mark.parametrize("error", [SourceError("HTTP 404", retryable=False), StartOver("changed"), Cancelled()])
def test_final_errors_are_not_retried(error):
    with pytest.raises(type(error)):
        Retrier(Settings(), Control(), Recorder(), "test").failed(error)


def test_a_stopped_control_raises_its_reason_and_closes_what_blocks():
    control = Control()
    closed = []
    with pytest.raises(Cancelled):
        with control.closing(lambda: closed.append(1)):
            control.stop(Cancelled("cancelled by its owner"))
            control.check()
    assert closed == [1]
    with pytest.raises(Cancelled) as stopped:
        Retrier(Settings(), control, Recorder(), "x").failed(SourceError("x", retryable=True))
    assert stopped.value.reason == "cancelled by its owner"


def test_s3_digests_follow_the_s3_rules():
    parts = [PartDigest.of(1, b"a" * 100), PartDigest.of(2, b"b" * 50)]
    md5s = b"".join(hashlib.md5(p, usedforsecurity=False).digest() for p in (b"a" * 100, b"b" * 50))
    assert expected_etag(parts, multipart=True) == f"{hashlib.md5(md5s, usedforsecurity=False).hexdigest()}-2"
    assert expected_etag(parts[:1], multipart=False) == hashlib.md5(b"a" * 100, usedforsecurity=False).hexdigest()
    shas = hashlib.sha256(b"a" * 100).digest() + hashlib.sha256(b"b" * 50).digest()
    assert expected_checksum(parts, multipart=True) == base64.b64encode(hashlib.sha256(shas).digest()).decode()
    assert expected_checksum(parts[:1], multipart=False) == base64.b64encode(
        hashlib.sha256(b"a" * 100).digest()).decode()


@pytest.mark.parametrize("start", [0, 2 * MiB])
def test_the_fetcher_resumes_at_its_position_and_hashes_ranges(tmp_path, start):
    data = bytes(range(256)) * (5 * MiB // 256 + 7)
    source = MemorySource(data, fail_at=3 * MiB + 12345)
    spool = Spool(tmp_path, "f", start, SpoolQuota(64 * MiB), len(data))
    fetcher = Fetcher(source, source.open(start, None), spool, MiB, Settings(retry_delay=0.001), Control(),
                      Recorder(), "t", ranges=True, md5=True)
    fetcher.start_thread()
    fetcher.join(10)
    assert fetcher.error is None
    assert source.opened[0] == start
    assert len(source.opened) == 2 and source.opened[1] > 3 * MiB  # reopened where it broke, not at 0
    assert fetcher.digest == hashlib.sha256(data[start:]).hexdigest()
    assert fetcher.snapshot(4 * MiB) == hashlib.sha256(data[start : 4 * MiB]).hexdigest()
    assert fetcher.snapshot(len(data)) == fetcher.digest
    assert fetcher.range_digest(4 * MiB) == (hashlib.sha256(data[3 * MiB : 4 * MiB]).hexdigest(),
                                             hashlib.md5(data[3 * MiB : 4 * MiB], usedforsecurity=False).hexdigest())
    tail = len(data) // MiB * MiB
    assert fetcher.wait_range(len(data))[0] == hashlib.sha256(data[tail:]).hexdigest()
    assert spool.read_exact(start, len(data) - start) == data[start:]
    spool.close()


def test_the_fetcher_reports_a_final_error_to_the_readers(tmp_path):
    class Refusing(MemorySource):
        def open(self, offset, validator):
            raise SourceError("the source answered HTTP 404 Not Found")

    source = Refusing(b"x" * 1000)
    spool = Spool(tmp_path, "e", 0, SpoolQuota(MiB), 1000)
    stream = MemoryStream(b"x" * 1000, 0, fail_at=0)
    fetcher = Fetcher(source, stream, spool, MiB, Settings(retry_delay=0.001), Control(), Recorder(), "t")
    fetcher.start_thread()
    errors = []

    def read_all():
        try:
            spool.read_exact(0, 1000)
        except StagingError as exc:
            errors.append(exc.reason)

    reader = threading.Thread(target=read_all)
    reader.start()
    reader.join(10)
    fetcher.join(10)
    assert errors == ["the source answered HTTP 404 Not Found"]
    assert fetcher.error.retryable is False
    spool.close()

"""Pure parts of the staging pipeline: ranges, retries, checksum commands, S3 digests, the fetcher's hashing.

The fetcher is driven by an in-memory source (the Source interface, not HTTP): what is checked is the
hashing, the checkpoint snapshots and the resume offset, which do not depend on the wire.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import threading
from pathlib import Path

import pytest

from hpc.ssh import quote
from hpc.staging.errors import Cancelled, SourceError, StagingError, StartOver
from hpc.staging.pipeline import Control, Fetcher, Progress, Retrier, Settings, _contiguous, _Range, _split
from hpc.staging.s3 import PartDigest, expected_checksum, expected_etag
from hpc.staging.sftp import hash_command, parse_hashes
from hpc.staging.spool import Spool, SpoolQuota

MiB = 1024 * 1024
STAGING = Path(__file__).resolve().parents[2] / "hpc" / "staging"


def test_staging_imports_nothing_from_ssh_store_services_or_api():
    forbidden = ("hpc.ssh", "hpc.store", "hpc.services", "hpc.api")
    found = []
    for path in sorted(STAGING.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [(path.name, n) for n in names if n.startswith(forbidden)]
    assert found == []


def test_ranges_split_only_big_known_files():
    assert [(r.start, r.end) for r in _split(0, None, 4, MiB)] == [(0, None)]
    assert [(r.start, r.end) for r in _split(0, 10 * MiB, 1, MiB)] == [(0, 10 * MiB)]
    assert [(r.start, r.end) for r in _split(0, 10 * MiB, 4, 100 * MiB)] == [(0, 10 * MiB)]
    ranges = _split(MiB, 11 * MiB, 3, MiB)
    assert [(r.start, r.end) for r in ranges] == [(MiB, 5 * MiB), (5 * MiB, 9 * MiB), (9 * MiB, 11 * MiB)]


def test_the_confirmed_prefix_stops_at_the_first_unfinished_range():
    ranges = [_Range(0, 10), _Range(10, 20), _Range(20, 30)]
    assert _contiguous(ranges, 0) == 0
    ranges[1].acked = 15  # a later range ahead of the first counts for nothing yet
    assert _contiguous(ranges, 0) == 0
    ranges[0].acked, ranges[0].finished = 10, True
    assert _contiguous(ranges, 0) == 15
    ranges[1].acked, ranges[1].finished = 20, True
    ranges[2].acked = 22
    assert _contiguous(ranges, 0) == 22


def test_retries_back_off_reset_after_progress_and_end():
    settings = Settings(retries=3, retry_delay=0.001, retry_delay_max=0.002)
    progress = Progress()
    retrier = Retrier(settings, Control(), progress, "test")
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
    assert progress.snapshot()["retries"] == 6


@pytest.mark.parametrize("error", [SourceError("HTTP 404", retryable=False), StartOver("changed"), Cancelled()])
def test_final_errors_are_not_retried(error):
    with pytest.raises(type(error)):
        Retrier(Settings(), Control(), Progress(), "test").failed(error)


def test_a_stopped_control_raises_its_reason_and_closes_what_blocks():
    control = Control()
    closed = []
    with pytest.raises(Cancelled):
        with control.closing(lambda: closed.append(1)):
            control.stop(Cancelled("cancelled by its owner"))
            control.check()
    assert closed == [1]
    with pytest.raises(Cancelled) as stopped:
        Retrier(Settings(), control, Progress(), "x").failed(SourceError("x", retryable=True))
    assert stopped.value.reason == "cancelled by its owner"


def test_hash_command_quotes_the_path_once_and_parses():
    path = "/home/u/it's $(rm -rf ~) `x`.bin"
    command = hash_command(quote, path, [(0, 10), (10, 25)])
    assert quote(path) in command
    assert command.count(quote(path)) == 4
    assert "tail -c +11 < " in command and "head -c 15" in command
    out = "25\n" + "\n".join(f"{c * 64} *stdin" for c in "abc") + "\n"
    assert parse_hashes(out, 2) == (25, "a" * 64, ["b" * 64, "c" * 64])
    with pytest.raises(StagingError):
        parse_hashes("25\nnot-a-hash -\n", 0)


def test_s3_digests_follow_the_s3_rules():
    parts = [PartDigest.of(1, b"a" * 100), PartDigest.of(2, b"b" * 50)]
    md5s = b"".join(hashlib.md5(p).digest() for p in (b"a" * 100, b"b" * 50))
    assert expected_etag(parts, multipart=True) == f"{hashlib.md5(md5s).hexdigest()}-2"
    assert expected_etag(parts[:1], multipart=False) == hashlib.md5(b"a" * 100).hexdigest()
    shas = hashlib.sha256(b"a" * 100).digest() + hashlib.sha256(b"b" * 50).digest()
    assert expected_checksum(parts, multipart=True) == base64.b64encode(hashlib.sha256(shas).digest()).decode()
    assert expected_checksum(parts[:1], multipart=False) == base64.b64encode(
        hashlib.sha256(b"a" * 100).digest()).decode()


class _MemoryStream:
    def __init__(self, data: bytes, start: int, fail_at: int | None):
        self.start, self.total, self.validator = start, len(data), {"etag": '"v1"', "size": len(data)}
        self._data, self._fail_at = data, fail_at

    def chunks(self):
        position = self.start
        while position < len(self._data):
            if self._fail_at is not None and position >= self._fail_at:
                raise SourceError("connection reset", retryable=True)
            step = min(300_000, len(self._data) - position)
            yield self._data[position : position + step]
            position += step

    def close(self):
        pass


class _MemorySource:
    """Serves bytes from memory; the first stream breaks at ``fail_at``."""

    description = "memory"

    def __init__(self, data: bytes, fail_at: int | None):
        self.data, self.fail_at, self.opened = data, fail_at, []

    def open(self, offset, validator):
        self.opened.append(offset)
        fail_at, self.fail_at = self.fail_at, None
        return _MemoryStream(self.data, offset, fail_at)


@pytest.mark.parametrize("start", [0, 2 * MiB])
def test_the_fetcher_resumes_at_its_position_and_snapshots_boundaries(tmp_path, start):
    data = bytes(range(256)) * (5 * MiB // 256 + 7)
    source = _MemorySource(data, fail_at=3 * MiB + 12345)
    spool = Spool(tmp_path, "f", start, SpoolQuota(64 * MiB), len(data))
    settings = Settings(retry_delay=0.001)
    fetcher = Fetcher(source, source.open(start, None), spool, MiB, settings, Control(), Progress(), "t")
    fetcher.start_thread()
    fetcher.join(10)
    assert fetcher.error is None
    assert source.opened[0] == start
    assert len(source.opened) == 2 and source.opened[1] > 3 * MiB  # reopened where it broke, not at 0
    assert fetcher.digest == hashlib.sha256(data[start:]).hexdigest()
    assert fetcher.snapshot(4 * MiB) == hashlib.sha256(data[start : 4 * MiB]).hexdigest()
    assert fetcher.snapshot(len(data)) == fetcher.digest
    assert spool.read_exact(start, len(data) - start) == data[start:]
    spool.close()


def test_the_fetcher_reports_a_final_error_to_the_readers(tmp_path):
    class Refusing(_MemorySource):
        def open(self, offset, validator):
            raise SourceError("the source answered HTTP 404 Not Found")

    source = Refusing(b"x" * 1000, fail_at=10)
    spool = Spool(tmp_path, "e", 0, SpoolQuota(MiB), 1000)
    stream = _MemoryStream(b"x" * 1000, 0, fail_at=0)
    fetcher = Fetcher(source, stream, spool, MiB, Settings(retry_delay=0.001), Control(), Progress(), "t")
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

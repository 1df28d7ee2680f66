"""The spool between a transfer's legs and the staging quota (local files only)."""

from __future__ import annotations

import threading
import time

import pytest

from hpc.staging.errors import InsufficientSpace, SourceError
from hpc.staging.spool import SUFFIX, Spool, SpoolQuota, remove_leftovers

MiB = 1024 * 1024


def test_quota_reserves_and_releases():
    quota = SpoolQuota(100)
    assert quota.reserve(60)
    assert not quota.reserve(41)
    assert quota.used == 60
    assert quota.reserve(40)
    quota.release(100)
    assert quota.used == 0


def test_a_known_size_is_reserved_before_the_first_byte(tmp_path):
    quota = SpoolQuota(10 * MiB)
    with pytest.raises(InsufficientSpace) as refused:
        Spool(tmp_path, "t1", 0, quota, size=11 * MiB)
    assert "insufficient staging space" in refused.value.reason
    assert "11.0 MiB" in refused.value.reason
    assert quota.used == 0
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_transfer_reserves_only_what_is_left(tmp_path):
    quota = SpoolQuota(10 * MiB)
    with Spool(tmp_path, "t1", 8 * MiB, quota, size=16 * MiB):
        assert quota.used == 8 * MiB
    assert quota.used == 0


def test_spools_share_the_quota_and_give_it_back(tmp_path):
    quota = SpoolQuota(10 * MiB)
    first = Spool(tmp_path, "a", 0, quota, size=6 * MiB)
    with pytest.raises(InsufficientSpace):
        Spool(tmp_path, "b", 0, quota, size=6 * MiB)
    first.close()
    first.close()  # idempotent
    with Spool(tmp_path, "b", 0, quota, size=6 * MiB):
        assert quota.used == 6 * MiB
    assert quota.used == 0
    assert list(tmp_path.iterdir()) == []


def test_unknown_size_grows_until_the_quota_stops_it(tmp_path):
    quota = SpoolQuota(20 * MiB)
    with Spool(tmp_path, "u", 0, quota) as spool:
        chunk = b"x" * MiB
        for _ in range(20):
            spool.write(chunk)
        with pytest.raises(InsufficientSpace):
            spool.write(chunk)
        assert spool.end == 20 * MiB
    assert quota.used == 0


def test_readers_get_bytes_as_the_writer_appends(tmp_path):
    quota = SpoolQuota(MiB)
    with Spool(tmp_path, "r", 100, quota, size=100 + 6) as spool:
        got: list[bytes] = []

        def reader():
            position = 100
            while True:
                data = spool.read(position, 4)
                if not data:
                    return
                got.append(data)
                position += len(data)

        thread = threading.Thread(target=reader)
        thread.start()
        for piece in (b"ab", b"cd", b"ef"):
            time.sleep(0.05)
            spool.write(piece)
        spool.finish()
        thread.join(5)
        assert b"".join(got) == b"abcdef"
        assert spool.read_exact(102, 3) == b"cde"
        with pytest.raises(ValueError):
            spool.read(99, 1)


def test_a_failed_writer_wakes_the_readers_with_its_error(tmp_path):
    with Spool(tmp_path, "f", 0, SpoolQuota(MiB)) as spool:
        spool.write(b"1234")
        errors: list[BaseException] = []

        def reader():
            try:
                spool.read(4, 10)
            except SourceError as exc:
                errors.append(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        time.sleep(0.05)
        spool.fail(SourceError("HTTP 500"))
        thread.join(5)
        assert [e.reason for e in errors] == ["HTTP 500"]
        assert spool.read(0, 10) == b"1234"  # what was written stays readable


def test_leftover_spool_files_are_removed(tmp_path):
    (tmp_path / f"old{SUFFIX}").write_bytes(b"x")
    (tmp_path / "keep.txt").write_bytes(b"x")
    assert remove_leftovers(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert remove_leftovers(tmp_path / "missing") == 0


def test_a_spool_range_reads_a_window_in_place(tmp_path):
    with Spool(tmp_path, "w", 10, SpoolQuota(MiB), size=10 + 26) as spool:
        spool.write(b"abcdefghijklmnopqrstuvwxyz")
        body = spool.range(13, 5)
        assert len(body) == 5
        assert body.read(2) == b"de"
        assert body.tell() == 2
        assert body.read() == b"fgh"
        assert body.read() == b""
        assert body.seek(0) == 0
        assert body.read(100) == b"defgh"
        assert body.seek(-1, 2) == 4
        assert body.read() == b"h"

"""Batches of files against an in-memory cluster: small files pipelined in groups (one hashing step and
one rename step per group, not per file), big ones through the single-file sinks, one outcome per file."""

from __future__ import annotations

import hashlib
import os

import pytest

from hpc.staging.batch import FromClusterBatch, Item, ToClusterBatch
from hpc.staging.cluster import Cluster
from hpc.staging.control import Control
from hpc.staging.errors import SourceError
from hpc.staging.settings import Settings
from hpc.staging.spool import SpoolQuota
from tests.memory_cluster import MemoryCluster
from tests.staging_doubles import MemoryObject, MemorySource, Recorder

MiB = 1024 * 1024
HOME = "/home/u"
SETTINGS = Settings(retry_delay=0.001, retry_delay_max=0.002, small_file=64 * 1024, verify_every=MiB,
                    batch_concurrency=4, part_size=MiB)


class Missing(MemorySource):
    def open(self, offset, validator):
        raise SourceError("object 'gone' does not exist in bucket 'b'")


def to_cluster(tmp_path, cluster, items, sources, outcomes, settings=SETTINGS, control=None):
    return ToClusterBatch(batch_id="b0a7c4e2-0000-0000-0000-000000000000", cluster=Cluster(cluster, [HOME]),
                          items=items, open_source=lambda item: sources[item.where], dst=f"{HOME}/in",
                          spool_dir=tmp_path, quota=SpoolQuota(1 << 30), settings=settings,
                          control=control or Control(), report=Recorder(), on_file=outcomes.append)


def test_small_and_big_files_arrive_with_their_sha256_in_few_steps(tmp_path):
    cluster = MemoryCluster(HOME)
    data = {f"k{n}": os.urandom(1000 + n) for n in range(300)}
    data["big"] = os.urandom(3 * MiB + 1)
    items = [Item(n, f"d{n % 3}/sub/k{n}.bin", len(data[f"k{n}"]), f"k{n}") for n in range(300)]
    items.append(Item(300, "big/file.bin", len(data["big"]), "big"))
    outcomes = []
    to_cluster(tmp_path, cluster, items, {k: MemorySource(v) for k, v in data.items()}, outcomes).run()
    assert sorted(o.number for o in outcomes) == list(range(301))
    assert {o.state for o in outcomes} == {"completed"}
    for item in items:
        stored = bytes(cluster.files[f"{HOME}/in/{item.path}"])
        assert stored == data[item.where]
        assert next(o for o in outcomes if o.number == item.number).sha256 == hashlib.sha256(stored).hexdigest()
    assert [p for p in cluster.files if "/.hpcgw-" in p] == []  # the temporary directory is gone
    assert f"{HOME}/in/.hpcgw-b0a7c4e2" not in cluster.dirs
    steps = cluster.faults.calls
    groups = sum(1 for c in steps if c.startswith("write_files"))
    assert groups <= 30  # 300 small files, never one step per file
    assert sum(1 for c in steps if c.startswith("hash_files")) == groups
    assert sum(1 for c in steps if c.startswith("rename_many")) == groups


def test_files_arriving_steadily_are_delivered_as_they_come_not_all_at_the_end(tmp_path):
    # A throttled source hands a file about every 30 ms, never a 50 ms pause: without a time bound on a
    # group, all 60 files would wait for the last (no progress, nothing to resume after a crash).
    cluster = MemoryCluster(HOME)
    data = {f"k{n}": os.urandom(2000) for n in range(60)}
    items = [Item(n, f"k{n}.bin", 2000, f"k{n}") for n in range(60)]
    settings = Settings(retry_delay=0.001, retry_delay_max=0.002, small_file=64 * 1024, verify_every=MiB,
                        batch_concurrency=4, part_size=MiB, max_rate=2000 * 33)
    outcomes = []
    to_cluster(tmp_path, cluster, items, {k: MemorySource(v) for k, v in data.items()}, outcomes,
               settings=settings).run()
    assert sorted(o.number for o in outcomes) == list(range(60))
    assert {o.state for o in outcomes} == {"completed"}
    sizes = [int(c.split()[1]) for c in cluster.faults.calls if c.startswith("write_files")]
    assert sum(sizes) == 60
    assert len(sizes) >= 2  # about 33 files a second: at least one group before the end
    assert max(sizes) < 60


def test_one_failing_file_does_not_stop_the_others(tmp_path):
    cluster = MemoryCluster(HOME)
    cluster.mkdir(f"{HOME}/in/taken.bin")  # a directory where a file should go
    sources = {"a": MemorySource(b"a" * 10), "gone": Missing(b""), "b": MemorySource(b"b" * 10)}
    items = [Item(0, "a.bin", 10, "a"), Item(1, "gone.bin", 10, "gone"), Item(2, "taken.bin", 10, "b")]
    outcomes = []
    to_cluster(tmp_path, cluster, items, sources, outcomes).run()
    by_number = {o.number: o for o in outcomes}
    assert by_number[0].state == "completed"
    assert (by_number[1].state, by_number[1].reason) == ("failed", "object 'gone' does not exist in bucket 'b'")
    assert by_number[2].state == "failed"
    assert "is an existing directory" in by_number[2].reason
    assert bytes(cluster.files[f"{HOME}/in/a.bin"]) == b"a" * 10


def test_a_lost_connection_while_writing_a_group_is_retried(tmp_path):
    cluster = MemoryCluster(HOME)
    cluster.faults.fail_write_files = 1
    cluster.faults.fail_hashes = 0
    items = [Item(n, f"f{n}", 5, f"k{n}") for n in range(20)]
    outcomes = []
    to_cluster(tmp_path, cluster, items, {f"k{n}": MemorySource(b"12345") for n in range(20)}, outcomes).run()
    assert {o.state for o in outcomes} == {"completed"}
    assert len(outcomes) == 20


def test_a_cancelled_batch_stops_and_leaves_no_temporary_files(tmp_path):
    cluster = MemoryCluster(HOME)
    control = Control()

    class Cancelling(MemorySource):
        def open(self, offset, validator):
            from hpc.staging.errors import Cancelled

            control.stop(Cancelled("cancelled by its owner"))
            return super().open(offset, validator)

    items = [Item(n, f"f{n}", 5, "k") for n in range(50)]
    batch = to_cluster(tmp_path, cluster, items, {"k": Cancelling(b"12345")}, [], control=control)
    from hpc.staging.errors import Cancelled

    with pytest.raises(Cancelled):
        batch.run()
    batch.cleanup()
    assert [p for p in cluster.files if "/.hpcgw-" in p] == []


def test_a_cluster_directory_reaches_s3_checked_against_the_cluster(tmp_path):
    cluster = MemoryCluster(HOME)
    files = {f"r/{n}.txt": os.urandom(500 + n) for n in range(40)}
    files["r/big.bin"] = os.urandom(2 * MiB + 5)
    for path, data in files.items():
        cluster.put(f"{HOME}/{path}", data)
    cluster.files.pop(f"{HOME}/r/7.txt")  # vanished since it was listed
    items = [Item(n, path[2:], len(data), f"{HOME}/{path}") for n, (path, data) in enumerate(files.items())]
    objects: dict[str, MemoryObject] = {}
    outcomes = []
    FromClusterBatch(batch_id="c1d2e3f4-0000", cluster=Cluster(cluster, [HOME]), items=items,
                     target=lambda item: objects.setdefault(item.path, MemoryObject(item.path)), src=f"{HOME}/r",
                     spool_dir=tmp_path, quota=SpoolQuota(1 << 30), settings=SETTINGS, control=Control(),
                     report=Recorder(), on_file=outcomes.append).run()
    by_number = {o.number: o for o in outcomes}
    assert len(by_number) == 41
    assert by_number[7].state == "failed"
    assert "no such file" in by_number[7].reason
    for n, (path, data) in enumerate(files.items()):
        if n != 7:
            assert objects[path[2:]].stored == data
            assert by_number[n].sha256 == hashlib.sha256(data).hexdigest()
    assert sum(1 for c in cluster.faults.calls if c.startswith("hash_files")) == 1

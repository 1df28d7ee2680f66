"""The sinks against an in-memory cluster (the transport interface, not SSH): delivery, verification on
the cluster as the data arrives, resume, faults classified, cancellation, the S3 sink's parts."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from hpc.staging.cluster import Cluster
from hpc.staging.control import Control
from hpc.staging.errors import Cancelled, SourceError, StagingError
from hpc.staging.settings import Settings
from hpc.staging.spool import SpoolQuota
from hpc.staging.to_cluster import ToCluster
from hpc.staging.to_s3 import ToS3
from tests.memory_cluster import MemoryCluster
from tests.staging_doubles import MemoryObject, MemorySource, Recorder

MiB = 1024 * 1024
HOME = "/home/u"
FAST = Settings(retry_delay=0.001, retry_delay_max=0.002, verify_every=MiB, part_size=MiB,
                dedicated_threshold=MiB)
PARALLEL = Settings(retry_delay=0.001, verify_every=MiB, sftp_streams=3, parallel_threshold=MiB)


@pytest.fixture
def cluster():
    return MemoryCluster(HOME)


def to_cluster(tmp_path, cluster, source, dst=f"{HOME}/out/file.bin", checkpoint=None, control=None,
               settings=FAST, report=None, quota=None):
    return ToCluster(transfer_id="0123456789abcdef", cluster=Cluster(cluster, [HOME]), source=source, dst=dst,
                     spool_dir=tmp_path, quota=quota or SpoolQuota(1 << 30), settings=settings,
                     control=control or Control(), report=report or Recorder(), checkpoint=checkpoint)


def hashes(cluster: MemoryCluster, kind: str) -> list[str]:
    return [c for c in cluster.faults.calls if c.startswith(kind + " ")]


def test_a_file_arrives_hashed_on_the_cluster_as_it_grows_without_a_final_pass(tmp_path, cluster):
    data = os.urandom(5 * MiB + 777)
    report = Recorder()
    result = to_cluster(tmp_path, cluster, MemorySource(data), report=report).run()
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert bytes(cluster.files[f"{HOME}/out/file.bin"]) == data
    assert [p for p in cluster.files if p.endswith(".part")] == []
    # One hash made while the file arrived; no hashing of the file after its last byte.
    assert hashes(cluster, "hash_growing") == [f"hash_growing {HOME}/out/.file.bin.01234567.part {len(data)}"]
    assert hashes(cluster, "hash") == []
    # Checkpoints at whole MiB of acknowledged bytes as the file went, then the end.
    ends = [cp["segments"][-1][1] for cp in report.checkpoints if cp.get("segments")]
    assert ends == sorted(set(ends)) and len(ends) >= 3
    assert all(end % MiB == 0 for end in ends[:-1]) and ends[-1] == len(data)
    first = [cp["segments"][0] for cp in report.checkpoints if cp.get("segments")][0]
    assert first[2] == hashlib.sha256(data[: first[1]]).hexdigest()
    assert report.done == sorted(report.done)
    assert list(tmp_path.iterdir()) == []  # the spool is gone


def test_parallel_streams_and_unknown_sizes_are_checked_at_the_end(tmp_path, cluster):
    data = os.urandom(5 * MiB)
    result = to_cluster(tmp_path, cluster, MemorySource(data), settings=PARALLEL).run()
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert bytes(cluster.files[f"{HOME}/out/file.bin"]) == data
    assert hashes(cluster, "hash_growing") == []
    assert len(hashes(cluster, "hash")) == 1


def test_an_empty_file_arrives(tmp_path, cluster):
    result = to_cluster(tmp_path, cluster, MemorySource(b"")).run()
    assert result.sha256 == hashlib.sha256(b"").hexdigest()
    assert bytes(cluster.files[f"{HOME}/out/file.bin"]) == b""


def test_a_dropped_connection_resumes_from_the_acknowledged_byte_without_reading_the_source_again(tmp_path,
                                                                                                   cluster):
    data = os.urandom(6 * MiB)
    source = MemorySource(data)
    cluster.faults.drop_after_bytes = 3 * MiB + 5
    report = Recorder()
    result = to_cluster(tmp_path, cluster, source, report=report).run()
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert bytes(cluster.files[f"{HOME}/out/file.bin"]) == data
    assert source.opened == [0]  # the source was read once: the rest came from the spool
    assert report.retries == 1
    assert cluster.bytes_written < len(data) + 4 * MiB  # resumed near the drop, not from 0


def test_a_hash_that_differs_as_it_arrives_is_checked_again_over_the_whole_file(tmp_path, cluster):
    data = os.urandom(3 * MiB)
    cluster.faults.corrupt_next_range = True
    source = MemorySource(data)
    result = to_cluster(tmp_path, cluster, source).run()
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert source.opened == [0]
    assert len(hashes(cluster, "hash")) == 1  # the check at the end settled it


def test_a_new_process_resumes_at_its_checkpoint_and_checks_each_segment(tmp_path, cluster):
    data = os.urandom(4 * MiB + 10)
    temp = f"{HOME}/out/.file.bin.01234567.part"
    cluster.put(temp, data[: 2 * MiB] + b"bytes past the checkpoint")
    checkpoint = {"temp": temp, "total": len(data), "validator": {"etag": '"v1"', "size": len(data)},
                  "segments": [[0, 2 * MiB, hashlib.sha256(data[: 2 * MiB]).hexdigest()]]}
    source = MemorySource(data)
    result = to_cluster(tmp_path, cluster, source, checkpoint=checkpoint).run()
    assert source.opened == [2 * MiB]  # a ranged read from the checkpoint
    assert bytes(cluster.files[f"{HOME}/out/file.bin"]) == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert hashes(cluster, "hash") == [f"hash {temp} [(0, {2 * MiB}), ({2 * MiB}, {len(data)})] True"]


def test_a_segment_that_differs_after_a_resume_starts_over(tmp_path, cluster):
    data = os.urandom(2 * MiB)
    temp = f"{HOME}/out/.file.bin.01234567.part"
    cluster.put(temp, b"x" * MiB)  # not what the checkpoint says was delivered
    checkpoint = {"temp": temp, "total": len(data), "validator": {},
                  "segments": [[0, MiB, hashlib.sha256(data[:MiB]).hexdigest()]]}
    source = MemorySource(data)
    to_cluster(tmp_path, cluster, source, checkpoint=checkpoint).run()
    assert source.opened == [MiB, 0]
    assert bytes(cluster.files[f"{HOME}/out/file.bin"]) == data


def test_a_checkpoint_beyond_the_partial_file_starts_over(tmp_path, cluster):
    data = os.urandom(2 * MiB)
    temp = f"{HOME}/out/.file.bin.01234567.part"
    cluster.put(temp, data[:100])
    checkpoint = {"temp": temp, "total": len(data), "validator": {},
                  "segments": [[0, MiB, hashlib.sha256(data[:MiB]).hexdigest()]]}
    source = MemorySource(data)
    to_cluster(tmp_path, cluster, source, checkpoint=checkpoint).run()
    assert source.opened == [MiB, 0]
    assert bytes(cluster.files[f"{HOME}/out/file.bin"]) == data


def test_a_destination_that_is_a_directory_fails_before_the_source_is_read(tmp_path, cluster):
    cluster.mkdir(f"{HOME}/out/file.bin")
    source = MemorySource(b"x" * 1000)
    with pytest.raises(StagingError) as failed:
        to_cluster(tmp_path, cluster, source).run()
    assert failed.value.retryable is False
    assert "is an existing directory" in failed.value.reason
    assert source.opened == []


def test_a_destination_under_a_file_fails_at_once(tmp_path, cluster):
    cluster.put(f"{HOME}/out", b"a file where a directory should be")
    source = MemorySource(b"x" * 1000)
    with pytest.raises(StagingError) as failed:
        to_cluster(tmp_path, cluster, source).run()
    assert "not a directory" in failed.value.reason
    assert source.opened == [0]


def test_a_refusing_source_fails_at_once_and_a_flaky_move_is_retried(tmp_path, cluster):
    class Refusing(MemorySource):
        def open(self, offset, validator):
            self.opened.append(offset)
            raise SourceError("the source answered HTTP 404 Not Found")

    source = Refusing(b"")
    with pytest.raises(SourceError):
        to_cluster(tmp_path, cluster, source).run()
    assert source.opened == [0]
    cluster.faults.fail_renames = 2
    report = Recorder()
    to_cluster(tmp_path, cluster, MemorySource(b"abc"), report=report).run()
    assert report.retries == 2
    assert bytes(cluster.files[f"{HOME}/out/file.bin"]) == b"abc"


def test_the_staging_quota_refuses_a_file_that_cannot_fit(tmp_path, cluster):
    with pytest.raises(StagingError) as failed:
        to_cluster(tmp_path, cluster, MemorySource(b"x" * (2 * MiB)), quota=SpoolQuota(MiB)).run()
    assert "insufficient staging space" in failed.value.reason


def test_cancel_stops_the_transfer(tmp_path, cluster):
    control = Control()

    class Slow(MemorySource):
        def open(self, offset, validator):
            stream = super().open(offset, validator)
            chunks = stream.chunks

            def slowly():
                for chunk in chunks():
                    threading.Event().wait(0.01)
                    yield chunk

            stream.chunks = slowly
            return stream

    sink = to_cluster(tmp_path, cluster, Slow(os.urandom(8 * MiB)), control=control)
    threading.Timer(0.05, control.stop, args=(Cancelled("cancelled by its owner"),)).start()
    with pytest.raises(Cancelled):
        sink.run()
    sink.cleanup()
    assert [p for p in cluster.files if p.startswith(f"{HOME}/out")] == []


# -- cluster -> S3 -----------------------------------------------------------------------------


def to_s3(tmp_path, cluster, target, checkpoint=None, report=None):
    return ToS3(transfer_id="fedcba9876543210", cluster=Cluster(cluster, [HOME]), src=f"{HOME}/results/r.bin",
                target=target, spool_dir=tmp_path, quota=SpoolQuota(1 << 30), settings=FAST, control=Control(),
                report=report or Recorder(), checkpoint=checkpoint)


@pytest.mark.parametrize("size", [0, 1000, 3 * MiB + 5])
def test_a_cluster_file_reaches_s3_whole_or_in_parts(tmp_path, cluster, size):
    data = os.urandom(size)
    cluster.put(f"{HOME}/results/r.bin", data)
    target = MemoryObject()
    result = to_s3(tmp_path, cluster, target).run()
    assert target.stored == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert target.uploads == {}


def test_s3_parts_are_retried_and_a_restart_keeps_the_uploaded_ones(tmp_path, cluster):
    data = os.urandom(4 * MiB)
    cluster.put(f"{HOME}/results/r.bin", data)
    target = MemoryObject()
    target.fail_parts = 1
    report = Recorder()
    to_s3(tmp_path, cluster, target, report=report).run()
    assert report.retries == 1
    assert target.stored == data
    # A checkpoint after two parts: a new run uploads only the other two.
    checkpoint = [cp for cp in report.checkpoints if len(cp.get("parts", [])) == 2][0]
    upload = target.start_multipart()
    checkpoint = {**checkpoint, "upload_id": upload}
    target.uploads[upload] = {1: data[:MiB], 2: data[MiB : 2 * MiB]}
    target.stored = None
    result = to_s3(tmp_path, cluster, target, checkpoint=checkpoint).run()
    assert target.stored == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_a_missing_cluster_file_fails_at_once(tmp_path, cluster):
    with pytest.raises(SourceError) as failed:
        to_s3(tmp_path, cluster, MemoryObject()).run()
    assert failed.value.retryable is False
    assert "no such file" in failed.value.reason

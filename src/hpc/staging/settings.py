"""Tunables of the staging pipeline (set from the gateway configuration) and what a transfer yields."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """How transfers run.

    Attributes:
        retries: Consecutive failed tries of one step before the transfer fails.
        retry_delay: First backoff in seconds, doubled after each consecutive failure...
        retry_delay_max: ...up to this.
        sftp_streams: Sessions writing disjoint ranges of one big file at once.
        parallel_threshold: Files at least this big use ``sftp_streams``.
        dedicated_threshold: Files at least this big get an SFTP session of their own.
        max_rate: Bytes per second read from a source per transfer; 0: unlimited.
        part_size: S3 multipart part size (grown to stay under 10,000 parts).
        s3_concurrency: S3 parts in flight.
        verify_every: Range size checked on the cluster as it is acknowledged; also the checkpoint step.
        io_timeout: Seconds a data connection may stay silent.
        stall_timeout: Seconds a source may send nothing mid-body before the read counts as stalled.
        command_timeout: Seconds for a short command on the cluster.
        batch_concurrency: Files of a batch read from their source at once.
        small_file: Files of a batch up to this size are read whole into memory and written pipelined.
        batch_memory: Bytes of small files a batch holds in memory at once.
    """

    retries: int = 5
    retry_delay: float = 1.0
    retry_delay_max: float = 30.0
    sftp_streams: int = 1
    parallel_threshold: int = 256 * MiB
    dedicated_threshold: int = 8 * MiB
    max_rate: int = 0
    part_size: int = 16 * MiB
    s3_concurrency: int = 4
    verify_every: int = 32 * MiB
    io_timeout: float = 60.0
    stall_timeout: float = 60.0
    command_timeout: float = 60.0
    batch_concurrency: int = 8
    small_file: int = 4 * MiB
    batch_memory: int = 64 * MiB


@dataclass(frozen=True)
class Result:
    """A delivered file: its SHA-256 (checked at the destination) and size."""

    sha256: str
    size: int

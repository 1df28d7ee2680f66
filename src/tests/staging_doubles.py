"""Doubles of a source, an S3 object and a progress callback, for the staging unit tests (the cluster's
double is :mod:`tests.memory_cluster`)."""

from __future__ import annotations

import threading
from typing import Any

from hpc.staging.errors import SourceError
from hpc.staging.s3 import PartDigest, expected_etag


class Recorder:
    """A progress callback that keeps everything it is told."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, **changes: Any) -> None:
        with self.lock:
            self.calls.append(changes)

    @property
    def retries(self) -> int:
        return sum(c.get("retried", 0) for c in self.calls)

    @property
    def checkpoints(self) -> list[dict]:
        return [c["checkpoint"] for c in self.calls if "checkpoint" in c]

    @property
    def done(self) -> list[int]:
        return [c["done"] for c in self.calls if "done" in c]


class MemoryStream:
    def __init__(self, data: bytes, start: int, fail_at: int | None = None, step: int = 300_000):
        self.start, self.total, self.validator = start, len(data), {"etag": '"v1"', "size": len(data)}
        self._data, self._fail_at, self._step = data, fail_at, step
        self.closed = False

    def chunks(self):
        position = self.start
        while position < len(self._data):
            if self._fail_at is not None and position >= self._fail_at:
                raise SourceError("connection reset", retryable=True)
            if self.closed:
                raise SourceError("closed", retryable=True)
            step = min(self._step, len(self._data) - position)
            yield self._data[position : position + step]
            position += step

    def close(self):
        self.closed = True


class MemorySource:
    """Serves bytes from memory; the first stream breaks at ``fail_at``. Counts what it served."""

    description = "memory"

    def __init__(self, data: bytes, fail_at: int | None = None):
        self.data, self.fail_at, self.opened = data, fail_at, []

    def open(self, offset, validator):
        self.opened.append(offset)
        fail_at, self.fail_at = self.fail_at, None
        return MemoryStream(self.data, offset, fail_at)


class MemoryObject:
    """An S3 object as :class:`hpc.staging.s3.S3Target` writes it (parts kept in memory, MD5 ETags)."""

    def __init__(self, key: str = "k"):
        self.description = f"s3://memory/{key}"
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.stored: bytes | None = None
        self.aborted: list[str] = []
        self.fail_parts = 0
        self._next = 0
        self.lock = threading.Lock()

    def put(self, data, digest=None, verify=False):
        digest = digest or PartDigest.of(1, data)
        self.stored = bytes(data)
        return digest

    def start_multipart(self):
        with self.lock:
            self._next += 1
            upload = f"u{self._next}"
            self.uploads[upload] = {}
        return upload

    def upload_part(self, upload_id, number, body, digest):
        with self.lock:
            if self.fail_parts:
                self.fail_parts -= 1
                raise SourceError("S3 endpoint failed: connection reset", retryable=True)
        body.seek(0)
        data = body.read()
        assert PartDigest.of(number, data) == digest
        with self.lock:
            self.uploads[upload_id][number] = data
        return f'"{digest.md5}"'

    def uploaded_parts(self, upload_id):
        with self.lock:
            parts = self.uploads.get(upload_id)
            return set(parts) if parts is not None else None

    def complete(self, upload_id, parts):
        with self.lock:
            stored = self.uploads.pop(upload_id)
            self.stored = b"".join(stored[d.number] for d, _ in parts)

    def abort(self, upload_id):
        with self.lock:
            self.uploads.pop(upload_id, None)
            self.aborted.append(upload_id)

    def verify(self, parts, multipart):
        """Compares the stored bytes' MD5s with what was sent, as the ETag check does on S3."""
        assert self.stored is not None
        pieces, at = [], 0
        for part in parts:
            pieces.append(PartDigest.of(part.number, self.stored[at : at + part.size]))
            at += part.size
        assert at == len(self.stored)
        assert expected_etag(pieces, multipart) == expected_etag(parts, multipart)

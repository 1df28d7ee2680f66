"""A regular file on the cluster as a transfer source (results shipped to S3)."""

from __future__ import annotations

from typing import Any
from collections.abc import Iterator

from hpc.staging.cluster import Cluster, not_found, remote_failure
from hpc.staging.control import quietly
from hpc.staging.errors import SourceChanged, SourceError
from hpc.transport import EOF, FileReader, TransportError


class ClusterFile:
    """A file of known size and mtime on the cluster, read with many SFTP reads in flight.

    Each :meth:`open` checks that the file is still the version first seen (size and mtime): a file
    rewritten mid-transfer fails the read instead of mixing two versions.
    """

    def __init__(self, cluster: Cluster, path: str, size: int, mtime: int, dedicated: bool):
        self._cluster = cluster
        self._path = path
        self._size = size
        self._mtime = mtime
        self._dedicated = dedicated
        self.description = f"{path} on the cluster"

    def open(self, offset: int, validator: dict[str, Any] | None) -> _ClusterStream:
        try:
            info = self._cluster.files.stat(self._path)
        except TransportError as exc:
            raise remote_failure(exc, f"reading {self._path}") from None
        if info is None:
            raise SourceError(f"no such file on the cluster: {self._path}")
        if info.size != self._size or info.mtime != self._mtime:
            raise SourceChanged(f"{self._path} on the cluster changed during the transfer")
        try:
            reader = self._cluster.files.read(self._path, offset, self._size, dedicated=self._dedicated)
        except TransportError as exc:
            raise remote_failure(exc, f"reading {self._path}") from None
        return _ClusterStream(reader, offset, self._size, {"size": self._size, "mtime": self._mtime}, self._path)


class _ClusterStream:
    def __init__(self, reader: FileReader, start: int, total: int, validator: dict, path: str):
        self._reader = reader
        self.start = start
        self.total = total
        self.validator = validator
        self._path = path

    def chunks(self) -> Iterator[memoryview]:
        try:
            yield from self._reader
        except TransportError as exc:
            if getattr(exc, "status", None) == EOF:
                raise SourceChanged(f"{self._path} on the cluster shrank while it was being read") from None
            error = remote_failure(exc, f"reading {self._path}")
            if not_found(error):
                raise SourceError(f"no such file on the cluster: {self._path}") from None
            raise error from None

    def close(self) -> None:
        quietly(self._reader.abort)

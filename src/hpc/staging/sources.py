"""What a transfer reads from: the interface every source offers (HTTP, S3, a cluster file)."""

from __future__ import annotations

from typing import Any, Protocol
from collections.abc import Iterator

CHUNK = 1024 * 1024


class SourceStream(Protocol):
    """One open read of a source, from ``start`` to its end.

    Attributes:
        start: Offset of the first byte the stream yields. It is the offset asked for, or 0 when the
            source could not resume there (no range support, or the file changed): the caller then
            starts over.
        total: The whole file's size, when the source tells it.
        validator: What identifies this version of the file (ETag, Last-Modified, size), passed back
            to :meth:`Source.open` to make a resumed read conditional on the same version.
    """

    start: int
    total: int | None
    validator: dict[str, Any]

    def chunks(self) -> Iterator[bytes]:
        """The bytes, in order, in chunks of about :data:`CHUNK`."""

    def close(self) -> None:
        """Ends the read; callable from another thread to interrupt a blocked :meth:`chunks`."""


class Source(Protocol):
    """A file to read, resumable at an offset."""

    description: str  # names the source in reasons and logs (no credentials)

    def open(self, offset: int, validator: dict[str, Any] | None) -> SourceStream:
        """Starts reading at ``offset`` (conditional on ``validator`` when given).

        Raises:
            SourceError: retryable for faults that may pass (connection lost, 503), not for refusals
                (404, access denied, unknown bucket).
            SourceChanged: The file is no longer the version ``validator`` describes.
        """

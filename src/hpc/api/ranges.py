"""HTTP ``Range`` requests for downloads (RFC 9110 section 14): pure parsing, no I/O.

One byte range is honoured; several ranges or another unit are ignored (the whole file is served), as
RFC 9110 section 14.2 permits. A ``bytes`` range the file cannot satisfy, or one that does not parse, is
refused with 416 so a client asking for a part never silently receives the whole.
"""

from __future__ import annotations

import re

_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class RangeNotSatisfiable(Exception):
    """The range asked for lies outside the file, or does not parse.

    Attributes:
        size: The file's size (for ``Content-Range: bytes */size``).
    """

    def __init__(self, reason: str, size: int):
        super().__init__(reason)
        self.reason = reason
        self.size = size


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The byte range ``[start, end)`` a ``Range`` header asks of a file of ``size`` bytes.

    Returns:
        None to serve the whole file (no header, another unit, several ranges); else ``(start, end)``
        with ``0 <= start < end <= size``.

    Raises:
        RangeNotSatisfiable: A ``bytes`` range that does not parse, ends before it starts, starts at or
            past the end of the file, or asks for the last 0 bytes.
    """
    if header is None or not header.strip():
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        return None
    match = _SPEC.match(spec)
    if match is None or (not match.group(1) and not match.group(2)):
        raise RangeNotSatisfiable("the Range header does not read bytes=<first>-<last>", size)
    first, last = match.group(1), match.group(2)
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(f"the last {suffix} bytes of a {size}-byte file is no range", size)
        return max(0, size - suffix), size
    start = int(first)
    end = int(last) + 1 if last else size
    if last and end <= start:
        raise RangeNotSatisfiable("the range ends before it starts", size)
    if start >= size:
        raise RangeNotSatisfiable(f"the range starts at byte {start}, past the end of the {size}-byte file", size)
    return start, min(end, size)


def content_range(start: int, end: int, size: int) -> str:
    """The ``Content-Range`` of a 206 answer for ``[start, end)``."""
    return f"bytes {start}-{end - 1}/{size}"

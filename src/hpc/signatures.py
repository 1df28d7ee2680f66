"""The webhook signature scheme, shared by the gateway (signing) and receivers (verifying).

Every delivery carries::

    X-HPC-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>

where the HMAC is computed with the subscription's secret over ``<t>.`` followed by the exact bytes of
the request body. The timestamp is inside the signed text, so a captured delivery cannot be replayed
later with a fresh timestamp; a receiver refuses deliveries whose ``t`` is further than a tolerance
(five minutes by default) from its own clock, and deduplicates by the event id (deliveries are at least
once). Several ``v1=`` entries may appear (reserved for secret rotation): one matching is enough.

Standard library only, so a receiver needs nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-HPC-Signature"
TOLERANCE = 300.0


class SignatureError(ValueError):
    """A delivery's signature is missing, malformed, stale or wrong."""


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for ``body`` signed now (or at ``timestamp``)."""
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify(secret: str, body: bytes, header: str | None, *, tolerance: float = TOLERANCE,
           now: float | None = None) -> int:
    """Checks a delivery; returns its signed timestamp.

    Args:
        secret: The subscription's secret (shown once when the subscription was created).
        body: The request body exactly as received (bytes, before any JSON parsing).
        header: The ``X-HPC-Signature`` header's value.
        tolerance: Seconds the signed time may differ from ``now``.

    Raises:
        SignatureError: Missing, malformed, outside the tolerance, or no matching ``v1``.
    """
    if not header:
        raise SignatureError(f"no {HEADER} header")
    timestamp, candidates = None, []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError(f"malformed {HEADER} header")
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"signature time {timestamp} is more than {tolerance:.0f}s from now")
    expected = _digest(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError("signature does not match")
    return timestamp

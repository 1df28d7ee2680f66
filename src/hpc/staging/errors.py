"""Why a transfer stopped, as the staging layer sees it.

The pipeline retries :class:`StagingError` whose ``retryable`` is true (a dropped connection, a 503, a
truncated body) with backoff, and ends the transfer on the others. ``reason`` is shown to users as is:
it never holds a secret (no keys, no URL credentials).
"""

from __future__ import annotations


class StagingError(Exception):
    """A transfer step failed.

    Args:
        reason: What went wrong, in words a user can act on.
        retryable: True when trying again (resuming) may succeed.
    """

    def __init__(self, reason: str, retryable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class SourceError(StagingError):
    """The source (HTTP server, S3, the cluster file of an upload) failed or refused."""


class SinkError(StagingError):
    """The destination (the cluster over SFTP, S3) failed or refused."""


class RemoteError(StagingError):
    """An SSH command or SFTP session on the cluster failed (connection lost, refused, timed out).

    Attributes:
        status: The SFTP status code the cluster answered, when it answered one.
    """

    def __init__(self, reason: str, retryable: bool = True, status: int | None = None):
        super().__init__(reason, retryable)
        self.status = status


class InsufficientSpace(StagingError):
    """The staging area's quota cannot hold the file."""


class StartOver(StagingError):
    """What was delivered so far cannot be built on: the transfer starts again from byte 0."""

    def __init__(self, reason: str):
        super().__init__(reason, retryable=True)


class SourceChanged(StartOver):
    """The source changed between two reads of it (ETag, size or Last-Modified differ)."""


class VerificationFailed(StartOver):
    """The delivered bytes differ from what was read (size or sha256)."""


class UnsafeAddress(SourceError):
    """A URL's host resolves to an address the gateway must not connect to."""


class Cancelled(StagingError):
    """The transfer was stopped on purpose by its owner."""

    def __init__(self, reason: str = "cancelled"):
        super().__init__(reason)


class Interrupted(Cancelled):
    """The transfer was stopped by the gateway itself (shutdown, lease lost); another run resumes it."""

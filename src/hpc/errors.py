"""Domain errors.

Services raise these; they know nothing about HTTP. The API layer's one table
(`hpc.api.problems`) turns each class into an RFC 7807 problem response.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a caller of the services can act on.

    Args:
        detail: What is wrong, in words a user can act on. Never contains a secret.
        field: The request field at fault as a dotted path (``ssh_key.path``), if any.
    """

    def __init__(self, detail: str, field: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidInput(DomainError):
    """The request is well-formed but breaks a domain rule."""


class NotFound(DomainError):
    """No such resource, or not visible to this caller."""


class Conflict(DomainError):
    """The resource exists, or its state forbids the operation now."""


class Forbidden(DomainError):
    """The caller's role may not do this."""


class Unauthorized(DomainError):
    """No valid credentials."""


class ClusterRefused(DomainError):
    """The cluster answered but refused: unreachable address, key refused, host key unknown or wrong.

    Used where the caller supplied the connection data (registration), so the fault is theirs to fix.
    """


class ClusterUnavailable(DomainError):
    """A registered cluster could not be reached or failed while serving the request."""


class ClusterTimeout(DomainError):
    """The cluster did not answer within the configured time."""


class InsufficientStorage(DomainError):
    """The gateway's staging area cannot hold what was asked for."""


class Unavailable(DomainError):
    """The gateway cannot serve the request now through no fault of the caller (its store does not answer,
    the identity provider's keys cannot be read); a retry later may succeed."""

"""The audit log: which principal did which admin action to what, and when, kept in the store.

A small service others call after an admin action succeeds::

    gateway.audit.record(principal, "infrastructure.register", target=row["name"], details={...})

``details`` is a summary of what was asked, for people: it must never hold a secret (no key, passphrase,
token, S3 key or signed URL); pass the fields that identify the change, not the request body. Token
creation and revocation are recorded in the same transaction as the change itself (``conn``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hpc.errors import Forbidden
from hpc.security import Principal
from hpc.store import Store
from hpc.store.tables import utcnow

# The actions recorded so far; a new kind of admin action adds its name here (and to the contract's
# AuditAction enum, which documents them).
ACTIONS = (
    "infrastructure.register",
    "infrastructure.update",
    "infrastructure.delete",
    "template.register",
    "template.version",
    "template.deprecate",
    "token.create",
    "token.revoke",
)


class AuditLog:
    def __init__(self, store: Store):
        self.store = store

    def entry(self, principal: Principal, action: str, target: str | None = None,
              details: dict[str, Any] | None = None) -> dict[str, Any]:
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}: add it to hpc.services.audit.ACTIONS")
        return {"at": utcnow(), "action": action, "principal": principal.name, "credential": principal.credential,
                "target": target, "details": details or None}

    def record(self, principal: Principal, action: str, target: str | None = None,
               details: dict[str, Any] | None = None, conn=None) -> None:
        """Adds an entry; with ``conn``, inside the caller's transaction."""
        self.store.audit.insert(conn, **self.entry(principal, action, target, details))

    def list(self, principal: Principal, *, action: str | None = None, actor: str | None = None,
             since: datetime | None = None, limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """A page of entries, newest first, filtered by action, principal name (``actor``) and time."""
        if not principal.is_admin:
            raise Forbidden("the audit log is for admins")
        return self.store.audit.page(action=action, principal=actor, since=since, limit=limit, offset=offset)

"""Token and audit records -> response documents (a token's hash is never included; its secret only in
the 201 that made it)."""

from __future__ import annotations

from typing import Any

from hpc.api import models
from hpc.services.tokens import token_document


def _dump(model) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_unset=True)


def token(row: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
    document = token_document(row)
    if secret is not None:
        return _dump(models.TokenCreated(**document, token=secret))
    return _dump(models.Token(**document))


def audit_entry(row: dict[str, Any]) -> dict[str, Any]:
    return _dump(models.AuditEntry(id=row["id"], at=row["at"], action=row["action"], principal=row["principal"],
                                   credential=row["credential"], target=row["target"], details=row["details"]))

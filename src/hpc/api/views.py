"""Stored rows -> response documents shaped by the generated models (secrets never included)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from hpc.api import models
from hpc.security import fingerprint
from hpc.store.tables import utcnow


def _dump(model) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)


def infrastructure_summary(row: dict[str, Any]) -> dict[str, Any]:
    return _dump(
        models.InfrastructureSummary(
            name=row["name"],
            host=row["host"],
            hostname=row["hostname"],
            scheduler=row["scheduler"],
            port=row["port"],
            username=row["username"],
            host_key_fingerprint=fingerprint(row["host_key"]) if row["host_key"] else None,
            settings=models.InfrastructureSettings.model_validate(row["settings"] or {}),
            created_at=row["created_at"],
        )
    )


def telemetry(row: dict[str, Any], partitions: list[Any]) -> dict[str, Any]:
    return _dump(
        models.InfrastructureTelemetry(
            name=row["name"],
            host=row["host"],
            hostname=row["hostname"],
            scheduler=row["scheduler"],
            partitions=[models.Partition(**asdict(p)) for p in partitions],
            collected_at=utcnow(),
        )
    )


JSON_HEADERS = {"Content-Type": "application/json"}


def reply(body: Any, status: int = 200) -> tuple[Any, int, dict[str, str]]:
    """A handler's answer. The content type is explicit: each operation also declares problem+json."""
    return body, status, JSON_HEADERS

"""Stored rows -> response documents shaped by the generated models (secrets never included)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any, TypeVar

import pydantic

from hpc.api import models
from hpc.api.validation import parse_date_time
from hpc.errors import InvalidInput
from hpc.security import fingerprint
from hpc.store.tables import utcnow


M = TypeVar("M", bound=pydantic.BaseModel)


def parse(model: type[M], body: Any) -> M:
    """A request body as its generated model; what JSON Schema let through but pydantic refuses is a 400."""
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
        raise InvalidInput(f"{field}: {error['msg']}", field or None) from None


def parse_time(value: str | None, field: str) -> datetime | None:
    """An ISO 8601 query parameter as an aware datetime."""
    if value is None:
        return None
    try:
        return parse_date_time(value)
    except ValueError as exc:
        raise InvalidInput(f"{field} {exc}", field) from None


def _dump(model) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_unset=True)


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


def job_status(row: dict[str, Any]) -> dict[str, Any]:
    from hpc.services.jobs import status_code

    spec = row["spec"] or {}
    return _dump(
        models.JobStatus(
            id=row["id"],
            scheduler_id=row["scheduler_id"] or "",
            infrastructure=row["infrastructure"],
            status=status_code(row["state"]),
            state=row["state"],
            native_state=row["native_state"],
            reason=row["reason"],
            exit_code=row["exit_code"],
            name=row["name"],
            kind=row["kind"],
            template=spec.get("template"),
            template_version=spec.get("template_version"),
            services=spec.get("services") or [],
            watch_period=row["watch_period"],
            cancel_requested=row["cancel_requested"],
            created_at=row["created_at"],
            submitted_at=row["submitted_at"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
            updated_at=row["updated_at"],
            **job_extensions(row),
        )
    )


def job_extensions(row: dict[str, Any]) -> dict[str, Any]:
    """An array job's ``array`` and a dependant's ``after`` (absent for other jobs: fields stay unset)."""
    from hpc.schedulers.arrays import parse_array

    spec = row["spec"] or {}
    fields: dict[str, Any] = {}
    if spec.get("array"):
        size = parse_array(spec["array"], 4_000_001).count
        fields["array"] = models.JobArray(spec=spec["array"], size=size, counts=row.get("task_counts") or {})
    if spec.get("after"):
        fields["after"] = [
            models.JobDependency(job=dep["target_id"], condition=dep["condition"], mode=dep["mode"],
                                 state=dep["state"], native=dep["native"])
            for dep in row.get("after") or []
        ]
    if row.get("phase"):
        fields["phase"] = row["phase"]
        fields["inputs"] = [job_transfer_link(link) for link in row.get("inputs") or []]
        fields["outputs"] = [job_transfer_link(link) for link in row.get("outputs") or []]
    return fields


def job_transfer_link(link: dict[str, Any]) -> models.JobTransferLink:
    """One input or output of a job, with its transfer's progress (no secret: the URL shown is the
    transfer's redacted ``src``; before the transfer is made, only where it goes)."""
    transfer = link.get("transfer")
    source = None
    if transfer is not None:
        source = transfer["src"] if transfer["kind"] == "http" else f"s3://{transfer['bucket']}/{transfer['object']}"
    state = link["state"]
    if state == "created":
        state = transfer["state"] if transfer is not None else "pending"
    return models.JobTransferLink(
        position=link["position"], transfer_id=link["transfer_id"], kind=link["kind"], path=link["path"],
        source=source, when=link["when"], state=state,
        bytes_done=(transfer or {}).get("bytes_done") or 0, bytes_total=(transfer or {}).get("bytes_total"),
        sha256=(transfer or {}).get("sha256"), reason=(transfer or {}).get("reason") or link["reason"] or None,
    )


def job_task(row: dict[str, Any]) -> dict[str, Any]:
    return _dump(
        models.JobTask(
            index=row["task_index"],
            state=row["state"],
            native_state=row["native_state"],
            reason=row["reason"],
            exit_code=row["exit_code"],
            scheduler_id=row["scheduler_id"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
        )
    )


def page(items: list[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    return {"items": items, "total": total, "limit": limit, "offset": offset}


def template(row: dict[str, Any]) -> dict[str, Any]:
    return _dump(models.Template(
        name=row["name"], version=row["version"], description=row["description"], body=row["body"],
        parameters=row["parameters"], placeholders=row["placeholders"],
        resources=models.JobResources.model_validate(row["resources"] or {}), latest_version=row["latest_version"],
        builtin=row["builtin"], deprecated=row["deprecated_at"] is not None, deprecated_at=row["deprecated_at"],
        owner=row["owner"], created_at=row["created_at"],
    ))


def template_summary(row: dict[str, Any]) -> dict[str, Any]:
    return _dump(models.TemplateSummary(
        name=row["name"], version=row["version"], description=row["description"], builtin=row["builtin"],
        deprecated=row["deprecated_at"] is not None, created_at=row["created_at"],
    ))


def dry_run(document: dict[str, Any]) -> dict[str, Any]:
    return _dump(models.JobDryRun.model_validate(document))

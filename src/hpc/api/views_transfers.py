"""Stored transfer rows -> response documents shaped by the generated models (never a key).

The contract's ``status`` keeps its three values: queued, transferring and verifying read
``transferring``; completed reads ``completed``; failed and cancelled read ``failure``. The precise
state is in ``state``, the cause in ``reason``.
"""

from __future__ import annotations

from typing import Any

from hpc.api import models
from hpc.staging.progress import eta, percent

OLD_STATUS = {
    "queued": "transferring",
    "transferring": "transferring",
    "verifying": "transferring",
    "completed": "completed",
    "failed": "failure",
    "cancelled": "failure",
}


def _dump(model) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)


def _common(row: dict[str, Any]) -> dict[str, Any]:
    state = row["state"]
    done = row["bytes_done"] or 0
    total = row["bytes_total"]
    running = state in ("transferring", "verifying")
    rate = row["rate"] if (running or state == "completed") else None
    if state == "completed":
        left = 0.0
    elif state == "transferring":
        left = eta(done, total, rate)
    else:
        left = None
    return {
        "id": row["id"],
        "infrastructure": row["infrastructure"],
        "status": OLD_STATUS[state],
        "reason": row["reason"] or "",
        "state": state,
        "bytes_done": done,
        "bytes_total": total,
        "percent": percent(done, total),
        "rate": round(rate, 1) if rate is not None else None,
        "eta": round(left, 1) if left is not None else None,
        "sha256": row["sha256"],
        "attempts": row["attempts"] or 0,
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "ended_at": row["ended_at"],
        "updated_at": row["updated_at"],
    }


def _s3(row: dict[str, Any]) -> dict[str, Any]:
    return {"endpoint": row["endpoint"], "bucket": row["bucket"], "object": row["object"], "region": row["region"]}


def file_transfer_status(row: dict[str, Any]) -> dict[str, Any]:
    return _dump(models.FileTransferStatus(src=row["src"], dst=row["dst"], **_common(row)))


def s3_file_transfer_status(row: dict[str, Any]) -> dict[str, Any]:
    return _dump(models.S3FileTransferStatus(dst=row["dst"], **_s3(row), **_common(row)))


def s3_result_transfer_status(row: dict[str, Any]) -> dict[str, Any]:
    return _dump(models.S3ResultTransferStatus(src=row["src"], **_s3(row), **_common(row)))


def transfer_status(row: dict[str, Any]) -> dict[str, Any]:
    """Any kind, with ``kind`` (the listing's item)."""
    extra = _s3(row) if row["kind"] != "http" else {}
    return _dump(models.TransferStatus(kind=row["kind"], src=row["src"], dst=row["dst"], **extra, **_common(row)))


def transfer_list(rows: list[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    return _dump(models.TransferList(items=[models.TransferStatus.model_validate(transfer_status(r)) for r in rows],
                                     total=total, limit=limit, offset=offset))


def batch_status(row: dict[str, Any]) -> dict[str, Any]:
    """A batch's record, with its totals (never its keys or full URLs)."""
    state = row["state"]
    done, total = row["bytes_done"] or 0, row["bytes_total"]
    running = state in ("transferring", "verifying")
    rate = row["rate"] if running else None
    left = 0.0 if state == "completed" else (eta(done, total, rate) if state == "transferring" else None)
    options = row["options"] or {}
    return _dump(models.BatchStatus(
        id=row["id"], kind=row["kind"], infrastructure=row["infrastructure"], state=state, reason=row["reason"] or "",
        src=row["src"], dst=row["dst"], endpoint=row["endpoint"], bucket=row["bucket"], prefix=row["prefix"],
        region=row["region"], include=options.get("include"), exclude=options.get("exclude"),
        recursive=options.get("recursive"), parent=row["parent"], files_total=row["files_total"],
        files_done=row["files_done"] or 0, files_failed=row["files_failed"] or 0, bytes_done=done, bytes_total=total,
        percent=percent(done, total), rate=round(rate, 1) if rate is not None else None,
        eta=round(left, 1) if left is not None else None, manifest=row["manifest"], attempts=row["attempts"] or 0,
        created_at=row["created_at"], started_at=row["started_at"], ended_at=row["ended_at"],
        updated_at=row["updated_at"],
    ))


def batch_list(rows: list[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    return {"items": [batch_status(r) for r in rows], "total": total, "limit": limit, "offset": offset}


def batch_files(rows: list[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    items = [_dump(models.BatchFile(number=r["number"], path=r["path"], src=r["src"], size=r["size"], state=r["state"],
                                    reason=r["reason"] or "", sha256=r["sha256"])) for r in rows]
    return {"items": items, "total": total, "limit": limit, "offset": offset}

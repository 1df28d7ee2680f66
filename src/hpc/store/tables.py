"""The schema as of the newest version (see ``hpc.store.db`` for how older databases are upgraded)."""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

metadata = sa.MetaData()


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every dialect (SQLite keeps no zone: it is restored on read)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

infrastructures = sa.Table(
    "infrastructures",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("port", sa.Integer, nullable=False),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("scheduler", sa.String(16), nullable=False),
    sa.Column("key_type", sa.String(32)),
    sa.Column("key_path", sa.Text),
    sa.Column("key_data_enc", sa.Text),  # Fernet token of an inline private key
    sa.Column("passphrase_enc", sa.Text),  # Fernet token of the key's passphrase
    sa.Column("host_key", sa.Text),  # "type base64" pinned for this infrastructure
    sa.Column("settings", sa.JSON, nullable=False),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # Lease of the job poller of this infrastructure: one replica polls it at a time.
    sa.Column("poll_owner", sa.String(255)),
    sa.Column("poll_until", UTCDateTime),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("infrastructure", sa.String(128), nullable=False, index=True),
    sa.Column("owner", sa.String(128), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),  # what to run, as requested (no secrets)
    sa.Column("scheduler_id", sa.String(64), nullable=False, default=""),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("native_state", sa.String(64)),
    sa.Column("reason", sa.Text),
    sa.Column("exit_code", sa.Integer),
    sa.Column("job_dir", sa.Text),
    sa.Column("watch_period", sa.Float, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("cancel_sent_at", UTCDateTime),  # when the scheduler was asked to cancel
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
    sa.Column("submitted_at", UTCDateTime),
    sa.Column("started_at", UTCDateTime),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("next_poll_at", UTCDateTime),
    sa.Column("lease_owner", sa.String(255)),
    sa.Column("lease_until", UTCDateTime),
    sa.Column("poll_failures", sa.Integer, nullable=False, default=0),  # consecutive, reset on success
    sa.Column("missing_polls", sa.Integer, nullable=False, default=0),  # gone from queue, no exit code yet
    sa.Column("submit_attempts", sa.Integer, nullable=False, default=0),
)

transfers = sa.Table(
    "transfers",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # http | s3_data | s3_result
    sa.Column("infrastructure", sa.String(128), nullable=False, index=True),
    sa.Column("owner", sa.String(128), nullable=False, index=True),
    sa.Column("src", sa.Text),
    sa.Column("dst", sa.Text),
    sa.Column("endpoint", sa.Text),
    sa.Column("bucket", sa.String(255)),
    sa.Column("object", sa.Text),
    sa.Column("region", sa.String(64)),
    sa.Column("secrets_enc", sa.Text),  # Fernet token of the S3 keys; deleted when the transfer ends
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("bytes_done", sa.BigInteger, nullable=False, default=0),
    sa.Column("bytes_total", sa.BigInteger),
    sa.Column("rate", sa.Float),
    sa.Column("sha256", sa.String(64)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("checkpoint", sa.JSON),  # what is needed to resume (remote temp path, offsets)
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
    sa.Column("started_at", UTCDateTime),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("lease_owner", sa.String(255)),
    sa.Column("lease_until", UTCDateTime),
    # Who asked for it beyond its owner, e.g. "job:<id>" for a job's inputs (nullable; issue 12).
    sa.Column("parent", sa.String(255), index=True),
)

# Many files at once: an S3 prefix to a cluster directory, a cluster directory to an S3 prefix, a list of
# URLs to a directory. One row per batch (totals, outcome, lease), one row per file in transfer_files.
transfer_batches = sa.Table(
    "transfer_batches",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # s3_data | s3_result | http
    sa.Column("infrastructure", sa.String(128), nullable=False, index=True),
    sa.Column("owner", sa.String(128), nullable=False, index=True),
    sa.Column("parent", sa.String(255), index=True),
    sa.Column("src", sa.Text),  # as shown: a cluster directory, an s3:// prefix, "N URLs"
    sa.Column("dst", sa.Text),
    sa.Column("endpoint", sa.Text),
    sa.Column("bucket", sa.String(255)),
    sa.Column("prefix", sa.Text),
    sa.Column("region", sa.String(64)),
    sa.Column("options", sa.JSON, nullable=False),  # include, exclude, recursive, manifest
    sa.Column("secrets_enc", sa.Text),  # Fernet token of S3 keys / full URLs; deleted when the batch ends
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("files_total", sa.Integer),  # known once listed
    sa.Column("files_done", sa.Integer, nullable=False, default=0),
    sa.Column("files_failed", sa.Integer, nullable=False, default=0),
    sa.Column("bytes_done", sa.BigInteger, nullable=False, default=0),
    sa.Column("bytes_total", sa.BigInteger),
    sa.Column("rate", sa.Float),
    sa.Column("manifest", sa.Text),  # where the manifest was written, once it is
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("checkpoint", sa.JSON),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
    sa.Column("started_at", UTCDateTime),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("lease_owner", sa.String(255)),
    sa.Column("lease_until", UTCDateTime),
)

transfer_files = sa.Table(
    "transfer_files",
    metadata,
    sa.Column("batch_id", sa.String(36), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),  # listing order, from 0
    sa.Column("path", sa.Text, nullable=False),  # relative to the batch's directory or prefix
    sa.Column("src", sa.Text, nullable=False),  # as shown: the object key, the cluster path, the redacted URL
    sa.Column("size", sa.BigInteger),
    sa.Column("state", sa.String(16), nullable=False),  # queued | completed | failed
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("sha256", sa.String(64)),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

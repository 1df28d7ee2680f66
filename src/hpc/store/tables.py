"""The schema as of the newest revision. A change here needs an Alembic revision: ``hpc-gateway db revision
MSG`` writes it (``hpc/store/migrations/README.md``; ``hpc.store.db`` runs them)."""

from __future__ import annotations

from datetime import datetime, UTC

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
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


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
    sa.Column("credential", sa.String(64)),  # which credential of the owner made it (Principal.credential)
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
    # An array job: tasks per state ({"queued": 98, "running": 2, ...}), kept with the job_tasks rows.
    sa.Column("task_counts", sa.JSON),
    # Why the gateway is cancelling the job (e.g. a dependency that can never be satisfied): the reason
    # the job ends with once the cancellation took effect.
    sa.Column("cancel_reason", sa.Text),
    # A job that stages its own data (``inputs``/``outputs``): staging_in | submitted | staging_out | done;
    # null for a job without them. ``end_state``: the job's own outcome, kept while its outputs stage.
    sa.Column("phase", sa.String(16)),
    sa.Column("end_state", sa.String(16)),
)

# The transfers a job stages its data with (``inputs`` / ``outputs``), in request order. The transfer id
# is chosen when the job is accepted, so making the transfer again after a crash finds it made already.
# ``request_enc``: the Fernet token of the transfer request (S3 keys, signed URLs) until the transfer is
# made; ``state``: pending (not made yet) | created | skipped (an output whose ``when`` did not match).
job_transfers = sa.Table(
    "job_transfers",
    metadata,
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("role", sa.String(8), primary_key=True),  # input | output
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("transfer_id", sa.String(36), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # http | s3_data | s3_result
    sa.Column("when", sa.String(8)),  # outputs: success | always
    sa.Column("path", sa.Text, nullable=False),  # dst of an input, src of an output, as requested
    sa.Column("request_enc", sa.Text),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("reason", sa.Text),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# The tasks of an array job: one row per index, written when the job is created.
job_tasks = sa.Table(
    "job_tasks",
    metadata,
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("task_index", sa.Integer, primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("native_state", sa.String(64)),
    sa.Column("reason", sa.Text),
    sa.Column("exit_code", sa.Integer),
    sa.Column("scheduler_id", sa.String(64)),  # the task's own id where the scheduler gives it one
    sa.Column("started_at", UTCDateTime),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("missing_polls", sa.Integer, nullable=False, default=0),  # gone, no exit code yet
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_job_tasks_job_state", "job_id", "state"),
)

# What a job waits for before or while it is queued: one row per dependency (``after``), in request
# order. ``kind`` is what the target is (a job); ``mode`` who enforces it (the scheduler: native, or the
# gateway holding the job); ``state`` pending | satisfied | unsatisfiable.
job_dependencies = sa.Table(
    "job_dependencies",
    metadata,
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("target_id", sa.String(36), nullable=False, index=True),
    sa.Column("condition", sa.String(16), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("native", sa.Text),  # what the scheduler was given, e.g. "afterok:123"
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

transfers = sa.Table(
    "transfers",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # http | s3_data | s3_result
    sa.Column("infrastructure", sa.String(128), nullable=False, index=True),
    sa.Column("owner", sa.String(128), nullable=False, index=True),
    sa.Column("credential", sa.String(64)),  # which credential of the owner made it (Principal.credential)
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
    sa.Column("credential", sa.String(64)),  # which credential of the owner made it (Principal.credential)
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

# -- events and webhooks (see hpc.store.events) -------------------------------------------------------

# The event log: one row per state change of a job or a transfer (and per progress step, at a bounded
# rate), written in the same transaction as the change. ``id`` orders events: it is the SSE ``id`` and the
# webhook event id. AUTOINCREMENT on SQLite so that an id is never reused after old events are pruned.
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("type", sa.String(64), nullable=False),  # job.state, transfer.state, transfer.progress, ...
    sa.Column("kind", sa.String(16), nullable=False),  # the resource's kind: job | transfer
    sa.Column("resource_id", sa.String(36), nullable=False, index=True),
    sa.Column("owner", sa.String(128), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
    sa.Column("data", sa.JSON, nullable=False),
    sqlite_autoincrement=True,
)

# Webhook subscriptions. ``secret_enc`` is the Fernet token of the signing secret (shown once, at creation).
subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False, index=True),
    sa.Column("admin", sa.Boolean, nullable=False, default=False),  # the owner's role at creation: sees all
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("secret_enc", sa.Text, nullable=False),
    sa.Column("types", sa.JSON),  # event types delivered; null: all
    sa.Column("resource_ids", sa.JSON),  # resources whose events are delivered; null: all visible
    sa.Column("source", sa.String(16), nullable=False, default="api"),  # api | callback (callback_url)
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("last_error_at", UTCDateTime),
    sa.Column("last_delivered_at", UTCDateTime),
)

# The webhook outbox: one row per event x subscription, written with the event (or with the
# subscription, for a callback's earlier events). Claimed with leases by the delivery workers.
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("subscription_id", sa.String(36), nullable=False, index=True),
    sa.Column("event_id", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | delivered | dead
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("lease_owner", sa.String(255)),
    sa.Column("lease_until", UTCDateTime),
    sa.Column("last_status", sa.Integer),  # HTTP status of the last try, null if no answer
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime),
    sa.Index("ix_deliveries_due", "state", "next_attempt_at"),
    sqlite_autoincrement=True,
)

# Job templates (issue 13): one row per version of a template; a version never changes once written.
# Deprecating a template stamps deprecated_at on all its versions; adding a version clears it.
job_templates = sa.Table(
    "job_templates",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),  # the batch-script body with {{placeholders}}
    sa.Column("parameters", sa.JSON, nullable=False),  # JSON Schema of the parameters
    sa.Column("resources", sa.JSON, nullable=False),  # default JobResources
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("deprecated_at", UTCDateTime),
)

# Bearer tokens made through the API (POST /token); configured tokens live in the configuration only.
api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, index=True),  # the principal's name (owner of its work)
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("hash", sa.String(128), nullable=False),  # hpc.security.hash_token of the secret
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("expires_at", UTCDateTime),
    sa.Column("revoked_at", UTCDateTime),
    sa.Column("revoked_by", sa.String(128)),
)

# Counters bumped when something every replica caches changes: a replica that sees a new value drops its
# cache ("api_tokens": a token was revoked).
cache_generations = sa.Table(
    "cache_generations",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("generation", sa.BigInteger, nullable=False),
)

# Admin actions (hpc.services.audit): who did what to which resource, when.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False, index=True),
    sa.Column("action", sa.String(64), nullable=False, index=True),
    sa.Column("principal", sa.String(128), nullable=False, index=True),
    sa.Column("credential", sa.String(64)),
    sa.Column("target", sa.String(255)),
    sa.Column("details", sa.JSON),  # what was asked, without secrets
)

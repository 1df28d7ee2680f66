"""The schema as of the newest revision. A change here needs an Alembic revision: ``hpc-gateway db revision
MSG`` writes it (``hpc/store/migrations/README.md``; ``hpc.store.db`` runs them)."""

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

"""Baseline: the schema of release 1.0 (its hand-rolled ``schema_version`` table says 1).

A database made by release 1.0 is stamped at this revision without running it (``hpc.store.db``
recognises it by its ``schema_version`` row), then upgraded from here. Types are spelled out as they
were then, not imported from ``hpc.store.tables``, so later edits of the tables cannot change this
revision. ``UTCDateTime`` is a ``DateTime(timezone=True)`` in the database.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "schema_version",
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "infrastructures",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("scheduler", sa.String(16), nullable=False),
        sa.Column("key_type", sa.String(32)),
        sa.Column("key_path", sa.Text),
        sa.Column("key_data_enc", sa.Text),
        sa.Column("passphrase_enc", sa.Text),
        sa.Column("host_key", sa.Text),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("poll_owner", sa.String(255)),
        sa.Column("poll_until", TZ),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("infrastructure", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("scheduler_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("native_state", sa.String(64)),
        sa.Column("reason", sa.Text),
        sa.Column("exit_code", sa.Integer),
        sa.Column("job_dir", sa.Text),
        sa.Column("watch_period", sa.Float, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("cancel_sent_at", TZ),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("submitted_at", TZ),
        sa.Column("started_at", TZ),
        sa.Column("ended_at", TZ),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("next_poll_at", TZ),
        sa.Column("lease_owner", sa.String(255)),
        sa.Column("lease_until", TZ),
        sa.Column("poll_failures", sa.Integer, nullable=False),
        sa.Column("missing_polls", sa.Integer, nullable=False),
        sa.Column("submit_attempts", sa.Integer, nullable=False),
    )
    for column in ("infrastructure", "owner", "state", "created_at"):
        op.create_index(f"ix_jobs_{column}", "jobs", [column])
    op.create_table(
        "transfers",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("infrastructure", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("src", sa.Text),
        sa.Column("dst", sa.Text),
        sa.Column("endpoint", sa.Text),
        sa.Column("bucket", sa.String(255)),
        sa.Column("object", sa.Text),
        sa.Column("region", sa.String(64)),
        sa.Column("secrets_enc", sa.Text),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("bytes_done", sa.BigInteger, nullable=False),
        sa.Column("bytes_total", sa.BigInteger),
        sa.Column("rate", sa.Float),
        sa.Column("sha256", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("checkpoint", sa.JSON),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("started_at", TZ),
        sa.Column("ended_at", TZ),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("lease_owner", sa.String(255)),
        sa.Column("lease_until", TZ),
    )
    for column in ("infrastructure", "owner", "state", "created_at"):
        op.create_index(f"ix_transfers_{column}", "transfers", [column])


def downgrade() -> None:
    for table in ("transfers", "jobs", "infrastructures", "schema_version"):
        op.drop_table(table)

"""Hand over from the ``schema_version`` table to Alembic: the table now says 2.

Release 1.0 refuses a database whose ``schema_version`` is above its own 1 ("newer than this gateway"),
so an old gateway started by mistake on an upgraded database stops instead of writing to a schema it
does not know. The table stays for that purpose only; Alembic's ``alembic_version`` is what counts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

schema_version = sa.table("schema_version", sa.column("version", sa.Integer))


def upgrade() -> None:
    op.execute(schema_version.delete())
    op.execute(schema_version.insert().values(version=2))


def downgrade() -> None:
    op.execute(schema_version.delete())
    op.execute(schema_version.insert().values(version=1))

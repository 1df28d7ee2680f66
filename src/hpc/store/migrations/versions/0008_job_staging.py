"""jobs that stage their own data: job_transfers, jobs.phase and end_state

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 18:31:28.891770
"""

from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Jobs that stage their own data (issue 12 item 1): the transfers linked to a job, and the job's phase.
    # The new jobs columns are nullable: existing jobs stage nothing.
    op.create_table('job_transfers',
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('role', sa.String(length=8), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('transfer_id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('when', sa.String(length=8), nullable=True),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('request_enc', sa.Text(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('job_id', 'role', 'position')
    )
    with op.batch_alter_table('job_transfers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_transfers_state'), ['state'], unique=False)
        batch_op.create_index(batch_op.f('ix_job_transfers_transfer_id'), ['transfer_id'], unique=False)

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('phase', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('end_state', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('end_state')
        batch_op.drop_column('phase')

    with op.batch_alter_table('job_transfers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_transfers_transfer_id'))
        batch_op.drop_index(batch_op.f('ix_job_transfers_state'))

    op.drop_table('job_transfers')

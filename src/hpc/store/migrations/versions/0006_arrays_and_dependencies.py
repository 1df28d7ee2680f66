"""arrays and dependencies: job_tasks, job_dependencies, jobs.task_counts and cancel_reason

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 16:17:41.146250
"""

from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Job arrays (one row per task) and dependencies between jobs (issue 12 items 2 and 3). The new jobs
    # columns are nullable: existing jobs are neither arrays nor cancelled by the gateway for a reason.
    op.create_table('job_dependencies',
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('target_id', sa.String(length=36), nullable=False),
    sa.Column('condition', sa.String(length=16), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('native', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('job_id', 'position')
    )
    with op.batch_alter_table('job_dependencies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_dependencies_state'), ['state'], unique=False)
        batch_op.create_index(batch_op.f('ix_job_dependencies_target_id'), ['target_id'], unique=False)

    op.create_table('job_tasks',
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('task_index', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('native_state', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('scheduler_id', sa.String(length=64), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('missing_polls', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('job_id', 'task_index')
    )
    with op.batch_alter_table('job_tasks', schema=None) as batch_op:
        batch_op.create_index('ix_job_tasks_job_state', ['job_id', 'state'], unique=False)

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('task_counts', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('cancel_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('cancel_reason')
        batch_op.drop_column('task_counts')

    with op.batch_alter_table('job_tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_job_tasks_job_state')

    op.drop_table('job_tasks')
    with op.batch_alter_table('job_dependencies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_dependencies_target_id'))
        batch_op.drop_index(batch_op.f('ix_job_dependencies_state'))

    op.drop_table('job_dependencies')
"""transfer batches and files: transfer_batches, transfer_files, transfers.parent

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 18:32:33.945249
"""

from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batches (issue 11: an S3 prefix, a cluster directory or a list of URLs moved as one record) and each
    # one's files; transfers.parent links a transfer to what asked for it. All new: existing rows need no
    # value (transfers.parent is nullable).
    op.create_table('transfer_batches',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('infrastructure', sa.String(length=128), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('credential', sa.String(length=64), nullable=True),
    sa.Column('parent', sa.String(length=255), nullable=True),
    sa.Column('src', sa.Text(), nullable=True),
    sa.Column('dst', sa.Text(), nullable=True),
    sa.Column('endpoint', sa.Text(), nullable=True),
    sa.Column('bucket', sa.String(length=255), nullable=True),
    sa.Column('prefix', sa.Text(), nullable=True),
    sa.Column('region', sa.String(length=64), nullable=True),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('secrets_enc', sa.Text(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('files_total', sa.Integer(), nullable=True),
    sa.Column('files_done', sa.Integer(), nullable=False),
    sa.Column('files_failed', sa.Integer(), nullable=False),
    sa.Column('bytes_done', sa.BigInteger(), nullable=False),
    sa.Column('bytes_total', sa.BigInteger(), nullable=True),
    sa.Column('rate', sa.Float(), nullable=True),
    sa.Column('manifest', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('checkpoint', sa.JSON(), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_owner', sa.String(length=255), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('transfer_batches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_transfer_batches_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_transfer_batches_infrastructure'), ['infrastructure'], unique=False)
        batch_op.create_index(batch_op.f('ix_transfer_batches_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_transfer_batches_parent'), ['parent'], unique=False)
        batch_op.create_index(batch_op.f('ix_transfer_batches_state'), ['state'], unique=False)

    op.create_table('transfer_files',
    sa.Column('batch_id', sa.String(length=36), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('src', sa.Text(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('batch_id', 'number')
    )
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent', sa.String(length=255), nullable=True))
        batch_op.create_index(batch_op.f('ix_transfers_parent'), ['parent'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_transfers_parent'))
        batch_op.drop_column('parent')

    op.drop_table('transfer_files')
    with op.batch_alter_table('transfer_batches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_transfer_batches_state'))
        batch_op.drop_index(batch_op.f('ix_transfer_batches_parent'))
        batch_op.drop_index(batch_op.f('ix_transfer_batches_owner'))
        batch_op.drop_index(batch_op.f('ix_transfer_batches_infrastructure'))
        batch_op.drop_index(batch_op.f('ix_transfer_batches_created_at'))

    op.drop_table('transfer_batches')

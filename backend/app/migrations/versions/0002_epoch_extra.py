"""epoch rows: an `extra` JSON column for metrics without a column of their own; metric columns nullable

A diverged epoch's loss is not a number: it is stored as NULL and named in extra["nonfinite"] instead of being
refused by a NOT NULL column (and lost).

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_METRIC_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s")


def upgrade() -> None:
    with op.batch_alter_table('epoch_metrics', schema=None) as batch_op:
        batch_op.add_column(sa.Column('extra', sa.JSON(), nullable=True))
        for name in _METRIC_COLUMNS:
            batch_op.alter_column(name, existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table('epoch_metrics', schema=None) as batch_op:
        batch_op.drop_column('extra')

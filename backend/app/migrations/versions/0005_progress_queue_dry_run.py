"""jobs.progress (JSON, every phase), jobs.queued_at (queue order), experiments.dry_run

The four progress columns knew only batches of an epoch (phase "train"/"val", epoch, batch, batches); a job now
reports every phase (downloading bytes, frozen features per split, ...) as core.protocol.progress dicts, kept in
one JSON column. Existing reports are carried over (train -> training, val -> validating). `queued_at` is when a
job was last handed to the broker (the order the queue serves it in); existing jobs take their creation time.

Revision ID: 0005
Revises: 0004
"""
import json

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_OLD_PHASES = {"train": "training", "val": "validating"}
_IDS_KEPT = {"sqlite_autoincrement": True}  # a rebuilt table keeps AUTOINCREMENT (see 0004)


def upgrade() -> None:
    with op.batch_alter_table('experiments', schema=None, table_kwargs=_IDS_KEPT) as batch_op:
        batch_op.add_column(sa.Column('dry_run', sa.Boolean(), nullable=False, server_default='0'))
    with op.batch_alter_table('jobs', schema=None, table_kwargs=_IDS_KEPT) as batch_op:
        batch_op.add_column(sa.Column('progress', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, phase, progress_epoch, progress_batch, progress_batches FROM jobs "
                                "WHERE phase IS NOT NULL")).all()
    for r in rows:
        p = {"phase": _OLD_PHASES.get(r.phase, "training"), "done": r.progress_batch or 0,
             "total": r.progress_batches or None, "epoch": r.progress_epoch or None, "split": None}
        conn.execute(sa.text("UPDATE jobs SET progress = :p WHERE id = :id"), {"p": json.dumps(p), "id": r.id})
    conn.execute(sa.text("UPDATE jobs SET queued_at = created_at"))
    with op.batch_alter_table('jobs', schema=None, recreate="always", table_kwargs=_IDS_KEPT) as batch_op:
        for name in ('phase', 'progress_epoch', 'progress_batch', 'progress_batches'):
            batch_op.drop_column(name)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None, recreate="always", table_kwargs=_IDS_KEPT) as batch_op:
        batch_op.add_column(sa.Column('phase', sa.String(length=10), nullable=True))
        for name in ('progress_epoch', 'progress_batch', 'progress_batches'):
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default='0'))
        batch_op.drop_column('queued_at')
        batch_op.drop_column('progress')
    with op.batch_alter_table('experiments', schema=None, recreate="always", table_kwargs=_IDS_KEPT) as batch_op:
        batch_op.drop_column('dry_run')

"""ids are never reused: AUTOINCREMENT on experiments, jobs, epoch_metrics and job_events

Without it SQLite hands the highest id out again after a delete, and a deleted job's leftovers (its queued task,
its cancel message, its run folder, all keyed by job id) would act on the new job that got its id.

Revision ID: 0004
Revises: 0003
"""
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_TABLES = ("experiments", "jobs", "epoch_metrics", "job_events")


def upgrade() -> None:
    for name in _TABLES:  # SQLite sets AUTOINCREMENT only when a table is created: rebuild each, data kept
        with op.batch_alter_table(name, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass


def downgrade() -> None:
    for name in _TABLES:
        with op.batch_alter_table(name, recreate="always", table_kwargs={"sqlite_autoincrement": False}):
            pass

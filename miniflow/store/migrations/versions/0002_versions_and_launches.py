"""DAG versions a run keeps, and a launch count apart from retries

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 14:15:00

- `dag_version`: every serialized DAG ever parsed, stored once by content hash.
- `dag_run.dag_hash`: the version a run was created with (backfilled from the
  DAG's current version for runs that predate this revision).
- `task_instance.launch_attempts`: how often the current try was launched
  without reaching a container; capped separately from `max_tries`.
- `scheduler_instance.version` and `.ended_at`: what a scheduler runs and when it
  said goodbye (a peer adopts its tries at once instead of waiting for its
  heartbeat to go stale).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dag_version",
        sa.Column("dag_hash", sa.String(length=64), nullable=False),
        sa.Column("dag_id", sa.String(length=250), nullable=False),
        sa.Column("serialized", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("dag_hash"),
    )
    with op.batch_alter_table("dag_version", schema=None) as batch_op:
        batch_op.create_index("ix_dag_version_dag_id", ["dag_id"], unique=False)
    with op.batch_alter_table("dag_run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dag_hash", sa.String(length=64), nullable=True))
    with op.batch_alter_table("task_instance", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("launch_attempts", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("scheduler_instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.String(length=50), nullable=True))
        batch_op.add_column(sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "INSERT INTO dag_version (dag_hash, dag_id, serialized, created_at) "
        "SELECT dag_hash, dag_id, serialized, COALESCE(last_parsed_at, CURRENT_TIMESTAMP) "
        "FROM dag"
    )
    op.execute(
        "UPDATE dag_run SET dag_hash = "
        "(SELECT dag.dag_hash FROM dag WHERE dag.dag_id = dag_run.dag_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("scheduler_instance", schema=None) as batch_op:
        batch_op.drop_column("ended_at")
        batch_op.drop_column("version")
    with op.batch_alter_table("task_instance", schema=None) as batch_op:
        batch_op.drop_column("launch_attempts")
    with op.batch_alter_table("dag_run", schema=None) as batch_op:
        batch_op.drop_column("dag_hash")
    op.drop_table("dag_version")

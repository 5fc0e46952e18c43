"""A run's scheduled tasks in claim order, so a claim reads a window, not every one

Revision ID: 0004_tenk
Revises: 0003_air
Create Date: 2026-12-03 12:40:00

- `ix_task_instance_run_state_priority` (run_pk, state, priority DESC, id) replaces
  `ix_task_instance_run_pk` (its first column still serves every lookup by run). A
  claim reads, per running run, the first scheduled tasks in claim order straight from
  this index (`store.task_instances.scheduled_candidates`) instead of sorting every
  scheduled task of every run each round: a 10,000-task run at parallelism 32 sorted
  ~5,000 rows a round on average.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_tenk"
down_revision = "0003_air"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_instance", schema=None) as batch_op:
        batch_op.create_index(
            "ix_task_instance_run_state_priority",
            ["run_pk", "state", sa.text("priority DESC"), "id"],
            unique=False,
        )
        batch_op.drop_index("ix_task_instance_run_pk")


def downgrade() -> None:
    with op.batch_alter_table("task_instance", schema=None) as batch_op:
        batch_op.create_index("ix_task_instance_run_pk", ["run_pk"], unique=False)
        batch_op.drop_index("ix_task_instance_run_state_priority")

"""Mapped task instances and XCom values

Revision ID: 0003_map
Revises: 0002
Create Date: 2026-12-03 08:50:00

- `task_instance.map_index` (-1: not a mapped instance) and `.map_args` (the expanded
  arguments of one mapped instance); the task-instance key becomes (dag_id, run_id,
  task_id, map_index), so expanding twice creates each mapped instance once.
- `task_attempt.map_index`: which mapped instance a try belongs to (logs, pods).
- `xcom`: values a task pushed by key, one row per (run, task, map_index, key).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_map"
down_revision = "0003_sensor"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_instance", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("map_index", sa.Integer(), nullable=False, server_default="-1")
        )
        batch_op.add_column(sa.Column("map_args", sa.JSON(), nullable=True))
        batch_op.drop_constraint("uq_task_instance_key", type_="unique")
        batch_op.create_unique_constraint(
            "uq_task_instance_key", ["dag_id", "run_id", "task_id", "map_index"]
        )
    with op.batch_alter_table("task_attempt", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("map_index", sa.Integer(), nullable=False, server_default="-1")
        )
    op.create_table(
        "xcom",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(length=250), nullable=False),
        sa.Column("map_index", sa.Integer(), nullable=False, server_default="-1"),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_pk"], ["dag_run.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_pk", "task_id", "map_index", "key", name="uq_xcom_key"),
    )


def downgrade() -> None:
    op.drop_table("xcom")
    with op.batch_alter_table("task_attempt", schema=None) as batch_op:
        batch_op.drop_column("map_index")
    with op.batch_alter_table("task_instance", schema=None) as batch_op:
        batch_op.drop_constraint("uq_task_instance_key", type_="unique")
        batch_op.execute("DELETE FROM task_instance WHERE map_index >= 0")
        batch_op.create_unique_constraint("uq_task_instance_key", ["dag_id", "run_id", "task_id"])
        batch_op.drop_column("map_args")
        batch_op.drop_column("map_index")

"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 13:16:34.375315
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "dag",
        sa.Column("dag_id", sa.String(length=250), nullable=False),
        sa.Column("fileloc", sa.String(length=1000), nullable=False),
        sa.Column("serialized", sa.JSON(), nullable=False),
        sa.Column("dag_hash", sa.String(length=64), nullable=False),
        sa.Column("schedule", sa.String(length=100), nullable=True),
        sa.Column("is_paused", sa.Boolean(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("has_import_error", sa.Boolean(), nullable=False),
        sa.Column("next_interval_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_interval_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_parsed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("dag_id"),
    )
    op.create_table(
        "dag_file",
        sa.Column("fileloc", sa.String(length=1000), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("dag_ids", sa.JSON(), nullable=False),
        sa.Column("last_parsed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("fileloc"),
    )
    op.create_table(
        "dag_run",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dag_id", sa.String(length=250), nullable=False),
        sa.Column("run_id", sa.String(length=250), nullable=False),
        sa.Column("logical_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data_interval_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data_interval_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("run_type", sa.String(length=20), nullable=False),
        sa.Column("conf", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dag_id", "run_id", name="uq_dag_run_dag_id_run_id"),
    )
    with op.batch_alter_table("dag_run", schema=None) as batch_op:
        batch_op.create_index(
            "ix_dag_run_dag_id_logical_date", ["dag_id", "logical_date"], unique=False
        )
        batch_op.create_index("ix_dag_run_state_dag_id", ["state", "dag_id"], unique=False)

    op.create_table(
        "import_error",
        sa.Column("fileloc", sa.String(length=1000), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("fileloc"),
    )
    op.create_table(
        "pool",
        sa.Column("name", sa.String(length=250), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "scheduler_instance",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.String(length=250), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "task_instance",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("dag_id", sa.String(length=250), nullable=False),
        sa.Column("run_id", sa.String(length=250), nullable=False),
        sa.Column("task_id", sa.String(length=250), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("try_number", sa.Integer(), nullable=False),
        sa.Column("max_tries", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("pool", sa.String(length=250), nullable=True),
        sa.Column("next_retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("handle", sa.String(length=300), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_pk"], ["dag_run.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dag_id", "run_id", "task_id", name="uq_task_instance_key"),
    )
    with op.batch_alter_table("task_instance", schema=None) as batch_op:
        batch_op.create_index("ix_task_instance_run_pk", ["run_pk"], unique=False)
        batch_op.create_index(
            "ix_task_instance_state_priority", ["state", "priority"], unique=False
        )

    op.create_table(
        "task_attempt",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ti_id", sa.Integer(), nullable=False),
        sa.Column("dag_id", sa.String(length=250), nullable=False),
        sa.Column("run_id", sa.String(length=250), nullable=False),
        sa.Column("task_id", sa.String(length=250), nullable=False),
        sa.Column("try_number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("launcher", sa.String(length=20), nullable=False),
        sa.Column("scheduler_id", sa.String(length=64), nullable=True),
        sa.Column("handle", sa.String(length=300), nullable=True),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=100), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("log_tail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["ti_id"], ["task_instance.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ti_id", "try_number", name="uq_task_attempt_try"),
    )
    with op.batch_alter_table("task_attempt", schema=None) as batch_op:
        batch_op.create_index("ix_task_attempt_open", ["ended_at", "scheduler_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("task_attempt", schema=None) as batch_op:
        batch_op.drop_index("ix_task_attempt_open")

    op.drop_table("task_attempt")
    with op.batch_alter_table("task_instance", schema=None) as batch_op:
        batch_op.drop_index("ix_task_instance_state_priority")
        batch_op.drop_index("ix_task_instance_run_pk")

    op.drop_table("task_instance")
    op.drop_table("scheduler_instance")
    op.drop_table("pool")
    op.drop_table("import_error")
    with op.batch_alter_table("dag_run", schema=None) as batch_op:
        batch_op.drop_index("ix_dag_run_state_dag_id")
        batch_op.drop_index("ix_dag_run_dag_id_logical_date")

    op.drop_table("dag_run")
    op.drop_table("dag_file")
    op.drop_table("dag")

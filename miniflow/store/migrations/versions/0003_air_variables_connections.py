"""Variables and connections (the Airflow layer's `Variable` and `BaseHook.get_connection`)

Revision ID: 0003_air
Revises: 0002
Create Date: 2026-12-03 08:55:00

- `variable`: key -> text value, what DAG code reads with `Variable.get` and
  templates with `{{ var.value.key }}`.
- `connection`: Airflow's connection fields, read with `BaseHook.get_connection`
  and `{{ conn.id.host }}`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_air"
down_revision = "0003_map"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "variable",
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "connection",
        sa.Column("conn_id", sa.String(length=250), nullable=False),
        sa.Column("conn_type", sa.String(length=500), nullable=True),
        sa.Column("host", sa.String(length=500), nullable=True),
        sa.Column("login", sa.Text(), nullable=True),
        sa.Column("password", sa.Text(), nullable=True),
        sa.Column("schema", sa.String(length=500), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("extra", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("conn_id"),
    )


def downgrade() -> None:
    op.drop_table("connection")
    op.drop_table("variable")

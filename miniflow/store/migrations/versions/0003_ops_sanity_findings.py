"""What each scheduler's sanity loop found, for the health page

Revision ID: 0003_ops
Revises: 0002
Create Date: 2026-12-03 09:00:00

- `scheduler_instance.sanity`: the instance's sanity-loop findings since it started
  (counts by kind, and the most recent decisions with when, what and why), written
  with its heartbeat. A column of the row the instance already owns: no new table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_ops"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scheduler_instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sanity", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scheduler_instance", schema=None) as batch_op:
        batch_op.drop_column("sanity")

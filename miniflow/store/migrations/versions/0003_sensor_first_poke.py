"""When a sensor first poked, so its timeout spans its rescheduled tries

Revision ID: 0003_sensor
Revises: 0002
Create Date: 2026-12-03 08:40:00

- `task_instance.first_poke_at`: the first poke of a sensor's current try chain
  (`@task.sensor`); a sensor in mode "reschedule" pokes once per try, and its
  `timeout` counts from this, not from the try's start. Reset by a retry or a clear.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_sensor"
down_revision = "0003_ops"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("first_poke_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task_instance", schema=None) as batch_op:
        batch_op.drop_column("first_poke_at")

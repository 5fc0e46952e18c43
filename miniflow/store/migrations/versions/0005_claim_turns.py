"""When each scheduler last took its turn to claim, so peers take turns at large claims

Revision ID: 0005_turns
Revises: 0004_tenk
Create Date: 2026-12-03 16:20:00

- `scheduler_instance.claimed_at`: set inside the claim lock when the instance claimed
  (or found free slots and nothing to claim). A peer whose last turn is the oldest and
  older than a turn's length is owed the next one (`scheduler.claims.turn_share`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_turns"
down_revision = "0004_tenk"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scheduler_instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scheduler_instance", schema=None) as batch_op:
        batch_op.drop_column("claimed_at")

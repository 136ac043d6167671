"""fewer indexes on the write path

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 14:30:00

Every index is one more B-tree insert for each delivery the group-commit writer stores. Nothing
looks deliveries up by duplicate_of, and an endpoint filter on events needs no index of its own
(endpoints are few, so their events are dense in the id order that pages follow).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_duplicate_of")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_endpoint_id")


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_endpoint_id", ["endpoint", "id"], unique=False)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_duplicate_of", ["duplicate_of"], unique=False)

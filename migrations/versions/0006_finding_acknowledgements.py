"""finding acknowledgements: who acknowledged or muted a finding, when, and why

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 04:00:00

A finding can be acknowledged (seen and handled: it comes back if its condition clears and
returns) or muted (it stays out of the open list however often it recurs), with a reason and who
did it (``POST /v1/findings/{id}/ack``). Four nullable columns; nothing to backfill.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("findings") as batch:
        batch.add_column(sa.Column("ack_action", sa.String(8), nullable=True))
        batch.add_column(sa.Column("acked_by", sa.String(160), nullable=True))
        batch.add_column(sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("ack_reason", sa.String(500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("findings") as batch:
        batch.drop_column("ack_reason")
        batch.drop_column("acked_at")
        batch.drop_column("acked_by")
        batch.drop_column("ack_action")

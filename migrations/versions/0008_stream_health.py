"""stream health: each job's RTMP stream as its callbacks tell it, for the stream rules

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 08:00:00

One new table (receiver.rules); it fills from the events stored after the rules start.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "stream_health",
        sa.Column("job_key", sa.String(length=128), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("room_id", sa.String(length=128), nullable=True),
        sa.Column("endpoint", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("state_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("down_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("down_event_id", _ID, nullable=True),
        sa.Column("reconnects", _JSON, nullable=False),
        sa.Column("down_open", sa.Boolean(), nullable=False),
        sa.Column("flapping_open", sa.Boolean(), nullable=False),
        sa.Column("last_event_id", _ID, nullable=False),
        sa.PrimaryKeyConstraint("job_key"),
    )


def downgrade() -> None:
    op.drop_table("stream_health")

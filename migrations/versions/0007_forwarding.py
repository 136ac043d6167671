"""forwarding: each destination's place, its parked and dead-lettered messages, its attempts,
and the log of finding changes it reads

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 07:00:00

Four new tables (receiver.forward); nothing existing changes. ``finding_changes`` starts empty:
findings opened before this migration are not handed on, only their later changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _time(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "finding_changes",
        sa.Column("id", _ID, nullable=False),
        sa.Column("finding_id", _ID, nullable=False),
        sa.Column("change", sa.String(length=16), nullable=False),
        _time("at", nullable=False),
        sa.Column("job_key", sa.String(length=128), nullable=True),
        sa.Column("data", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "forward_state",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("event_cursor", sa.BigInteger(), nullable=False),
        sa.Column("finding_cursor", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(length=80), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=False),
        _time("disabled_at"),
        sa.Column("disabled_reason", sa.String(length=300), nullable=True),
        _time("failing_since"),
        sa.Column("failures", sa.Integer(), nullable=False),
        _time("retry_at"),
        _time("last_delivered_at"),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        _time("last_error_at"),
        _time("created_at", nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "forward_messages",
        sa.Column("id", _ID, nullable=False),
        sa.Column("destination", sa.String(length=40), nullable=False),
        sa.Column("message_id", sa.String(length=40), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("source_id", _ID, nullable=False),
        sa.Column("order_key", sa.String(length=160), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _time("next_attempt_at", nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        _time("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("destination", "message_id", name="uq_forward_messages_message"),
    )
    op.create_index(
        "ix_forward_messages_destination_state_id",
        "forward_messages",
        ["destination", "state", "id"],
    )
    op.create_table(
        "forward_attempts",
        sa.Column("id", _ID, nullable=False),
        sa.Column("destination", sa.String(length=40), nullable=False),
        _time("at", nullable=False),
        sa.Column("message_id", sa.String(length=40), nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("error", sa.String(length=300), nullable=True),
        sa.Column("response", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_forward_attempts_destination_id", "forward_attempts", ["destination", "id"])


def downgrade() -> None:
    op.drop_index("ix_forward_attempts_destination_id", table_name="forward_attempts")
    op.drop_table("forward_attempts")
    op.drop_index("ix_forward_messages_destination_state_id", table_name="forward_messages")
    op.drop_table("forward_messages")
    op.drop_table("forward_state")
    op.drop_table("finding_changes")

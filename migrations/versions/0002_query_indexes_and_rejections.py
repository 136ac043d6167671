"""query indexes and rejections

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:48:22.281109
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rejections",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.String(length=300), nullable=False),
        sa.Column("remote_addr", sa.String(length=64), nullable=True),
        sa.Column("clock_skew_seconds", sa.Float(), nullable=True),
        sa.Column("body_size", sa.Integer(), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("body_prefix", sa.String(length=64), nullable=False),
        sa.Column("suppressed_before", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rejections", schema=None) as batch_op:
        batch_op.create_index("ix_rejections_endpoint_id", ["endpoint", "id"], unique=False)
        batch_op.create_index("ix_rejections_reason_id", ["reason", "id"], unique=False)

    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_endpoint_id", ["endpoint", "id"], unique=False)
        batch_op.create_index("ix_events_event_type_id", ["event_type", "id"], unique=False)
        batch_op.create_index(
            "ix_events_job_id_event_type_id", ["job_id", "event_type", "id"], unique=False
        )
        batch_op.create_index("ix_events_received_at", ["received_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_received_at")
        batch_op.drop_index("ix_events_job_id_event_type_id")
        batch_op.drop_index("ix_events_event_type_id")
        batch_op.drop_index("ix_events_endpoint_id")

    with op.batch_alter_table("rejections", schema=None) as batch_op:
        batch_op.drop_index("ix_rejections_reason_id")
        batch_op.drop_index("ix_rejections_endpoint_id")

    op.drop_table("rejections")

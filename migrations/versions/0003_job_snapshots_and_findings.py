"""job snapshots and findings

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 12:51:47.280641
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "findings",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=48), nullable=False),
        sa.Column("room_id", sa.String(length=128), nullable=True),
        sa.Column("job_id", sa.String(length=128), nullable=True),
        sa.Column("endpoint", sa.String(length=64), nullable=True),
        sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("detail", sa.String(length=1000), nullable=False),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("occurrences", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fingerprint"),
    )
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.create_index("ix_findings_job_id_id", ["job_id", "id"], unique=False)
        batch_op.create_index("ix_findings_kind_id", ["kind", "id"], unique=False)
        batch_op.create_index("ix_findings_room_id_id", ["room_id", "id"], unique=False)

    op.create_table(
        "job_snapshots",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("room_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=True),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("data_sha256", sa.String(length=64), nullable=False),
        sa.Column("first_fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("job_snapshots", schema=None) as batch_op:
        batch_op.create_index("ix_job_snapshots_job_id_id", ["job_id", "id"], unique=False)
        batch_op.create_index("ix_job_snapshots_room_id_id", ["room_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_snapshots", schema=None) as batch_op:
        batch_op.drop_index("ix_job_snapshots_room_id_id")
        batch_op.drop_index("ix_job_snapshots_job_id_id")

    op.drop_table("job_snapshots")
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.drop_index("ix_findings_room_id_id")
        batch_op.drop_index("ix_findings_kind_id")
        batch_op.drop_index("ix_findings_job_id_id")

    op.drop_table("findings")

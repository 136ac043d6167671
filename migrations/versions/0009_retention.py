"""retention: the archives the prune wrote, and a SQLite file that can shrink

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 09:00:00

``archives`` holds each archive file's state: being written, its rows being deleted, complete
(receiver.store.archives); a partial index finds an original's duplicate receipts. On SQLite
the file is switched to ``auto_vacuum = INCREMENTAL``, which only takes effect after a VACUUM:
it runs here, outside the migration's transaction, once (on a large existing file it takes a
while and needs as much free disk as the file). The prune then gives freed pages back with
``PRAGMA incremental_vacuum``. PostgreSQL relies on autovacuum.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "archives",
        sa.Column("id", _ID, nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("first_event_id", _ID, nullable=True),
        sa.Column("last_event_id", _ID, nullable=True),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("path"),
    )
    op.create_index(
        "ix_deliveries_duplicate_of",
        "deliveries",
        ["duplicate_of"],
        sqlite_where=sa.text("duplicate_of IS NOT NULL"),
        postgresql_where=sa.text("duplicate_of IS NOT NULL"),
    )
    if op.get_bind().dialect.name == "sqlite":
        with op.get_context().autocommit_block():
            op.execute("PRAGMA auto_vacuum = INCREMENTAL")
            op.execute("VACUUM")


def downgrade() -> None:
    op.drop_index("ix_deliveries_duplicate_of", table_name="deliveries")
    op.drop_table("archives")

"""room and job keys: one form for the two spellings of a MetaStudio id

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 16:00:00

MetaStudio's callbacks spell ids as 32 hex digits, its job query API as dashed UUIDs
(metastudio-list-smart-live-jobs.txt). Events, findings and job snapshots get ``room_key`` and
``job_key`` (the id lower-cased without dashes when it is UUID-shaped, else as it is; see
``receiver.ids``), filled from the ids already stored; the room and job indexes move to the
keys, so lookups by either spelling stay on an index. The ids themselves are kept as received.

Rows that need a key different from their id (dashed or upper-case UUIDs) are found by SQL and
rewritten in chunks; every other row takes its id as its key in one statement per table.

Stop replicas of an earlier version before this runs: they would store events without keys.
Findings whose fingerprint was made from a dashed id are resolved by the next cross-check of
their room and reopened under the key's fingerprint (once).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# receiver.ids.id_key as of this revision (frozen here: the history must not change with it).
_UUID = re.compile(
    r"[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_TABLES = ("events", "findings", "job_snapshots")
_CHUNK = 5000


def _key(value: str | None) -> str | None:
    if value is None or not _UUID.fullmatch(value):
        return value
    return value.replace("-", "").lower()


def _fill(table: str) -> None:
    conn = op.get_bind()
    t = sa.table(
        table,
        sa.column("id", sa.BigInteger()),
        sa.column("room_id", sa.String()),
        sa.column("job_id", sa.String()),
        sa.column("room_key", sa.String()),
        sa.column("job_key", sa.String()),
    )
    conn.execute(sa.update(t).values(room_key=t.c.room_id, job_key=t.c.job_id))

    def differs(column: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
        return sa.or_(column.like("%-%"), column != sa.func.lower(column))

    after = 0
    while True:
        rows = conn.execute(
            sa.select(t.c.id, t.c.room_id, t.c.job_id)
            .where(t.c.id > after, sa.or_(differs(t.c.room_id), differs(t.c.job_id)))
            .order_by(t.c.id)
            .limit(_CHUNK)
        ).all()
        if not rows:
            return
        after = rows[-1][0]
        changed = [
            {"row_id": row_id, "rk": _key(room), "jk": _key(job)}
            for row_id, room, job in rows
            if _key(room) != room or _key(job) != job
        ]
        if changed:
            conn.execute(
                sa.update(t)
                .where(t.c.id == sa.bindparam("row_id"))
                .values(room_key=sa.bindparam("rk"), job_key=sa.bindparam("jk")),
                changed,
            )


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("room_key", sa.String(length=128), nullable=True))
            batch_op.add_column(sa.Column("job_key", sa.String(length=128), nullable=True))
        _fill(table)

    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_job_id_id")
        batch_op.drop_index("ix_events_job_id_event_type_id")
        batch_op.drop_index("ix_events_room_id_id")
        batch_op.create_index("ix_events_job_key_id", ["job_key", "id"], unique=False)
        batch_op.create_index(
            "ix_events_job_key_event_type_id", ["job_key", "event_type", "id"], unique=False
        )
        batch_op.create_index("ix_events_room_key_id", ["room_key", "id"], unique=False)

    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.drop_index("ix_findings_job_id_id")
        batch_op.drop_index("ix_findings_room_id_id")
        batch_op.create_index("ix_findings_job_key_id", ["job_key", "id"], unique=False)
        batch_op.create_index("ix_findings_room_key_id", ["room_key", "id"], unique=False)

    with op.batch_alter_table("job_snapshots", schema=None) as batch_op:
        batch_op.alter_column("room_key", existing_type=sa.String(length=128), nullable=False)
        batch_op.alter_column("job_key", existing_type=sa.String(length=128), nullable=False)
        batch_op.drop_index("ix_job_snapshots_job_id_id")
        batch_op.drop_index("ix_job_snapshots_room_id_id")
        batch_op.create_index("ix_job_snapshots_job_key_id", ["job_key", "id"], unique=False)
        batch_op.create_index("ix_job_snapshots_room_key_id", ["room_key", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_snapshots", schema=None) as batch_op:
        batch_op.drop_index("ix_job_snapshots_room_key_id")
        batch_op.drop_index("ix_job_snapshots_job_key_id")
        batch_op.create_index("ix_job_snapshots_room_id_id", ["room_id", "id"], unique=False)
        batch_op.create_index("ix_job_snapshots_job_id_id", ["job_id", "id"], unique=False)
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.drop_index("ix_findings_room_key_id")
        batch_op.drop_index("ix_findings_job_key_id")
        batch_op.create_index("ix_findings_room_id_id", ["room_id", "id"], unique=False)
        batch_op.create_index("ix_findings_job_id_id", ["job_id", "id"], unique=False)
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_room_key_id")
        batch_op.drop_index("ix_events_job_key_event_type_id")
        batch_op.drop_index("ix_events_job_key_id")
        batch_op.create_index("ix_events_room_id_id", ["room_id", "id"], unique=False)
        batch_op.create_index(
            "ix_events_job_id_event_type_id", ["job_id", "event_type", "id"], unique=False
        )
        batch_op.create_index("ix_events_job_id_id", ["job_id", "id"], unique=False)
    for table in reversed(_TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("job_key")
            batch_op.drop_column("room_key")

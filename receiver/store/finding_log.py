"""The log of finding changes (``finding_changes``): opened, resolved, acknowledged.

Whatever changes a finding calls :func:`record` in the same transaction, so a change is logged
exactly when it commits. Forwarding reads the log past its cursor, as it reads events; for that
the ids must follow commit order. SQLite has one writer at a time; on PostgreSQL the
transaction takes :data:`FINDING_ORDER_LOCK` (until it commits) before it adds rows, so a row
with a lower id can never commit after a reader has seen a higher one. The lock is not the
intake's commit-order lock: acknowledging a finding never waits for callbacks being stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from receiver.store.models import Finding, FindingChange
from receiver.store.views import finding_json

FINDINGS = Finding.__table__  # type: ignore[attr-defined]
CHANGES = FindingChange.__table__  # type: ignore[attr-defined]

# Any fixed 64-bit number, apart from receiver.store.write's and the migrations' locks.
FINDING_ORDER_LOCK = 0x6D73_7276_666E_6463

OPENED = "opened"
RESOLVED = "resolved"
ACKNOWLEDGED = "acknowledged"
CHANGE_KINDS = (OPENED, RESOLVED, ACKNOWLEDGED)


def record(conn: Connection, finding_ids: Iterable[int], change: str, *, now: datetime) -> None:
    """Log ``change`` of each finding, with the finding as it now reads (in this transaction)."""
    if change not in CHANGE_KINDS:
        raise ValueError(f"unknown finding change {change!r}")
    ids = sorted(set(finding_ids))
    if not ids:
        return
    rows = list(conn.execute(sa.select(FINDINGS).where(FINDINGS.c.id.in_(ids))))
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": FINDING_ORDER_LOCK})
    conn.execute(
        sa.insert(CHANGES),
        [
            {
                "finding_id": row.id,
                "change": change,
                "at": now,
                "job_key": row.job_key,
                "data": finding_json(row),
            }
            for row in sorted(rows, key=lambda row: row.id)
        ],
    )


def last_change_id(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(CHANGES.c.id), 0))).scalar_one())

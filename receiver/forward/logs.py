"""Reading the two logs a destination follows, past its place: the events it takes (its
``endpoints`` and ``event_types`` filters, in SQL) and the finding changes. Ids follow commit
order in both (receiver.store.write, receiver.store.finding_log), so reading past the last id
seen never skips a row that commits late."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from receiver.config import DestinationSettings
from receiver.forward import event_rows
from receiver.forward.messages import Message, finding_message
from receiver.store.models import Event, FindingChange

EVENTS = Event.__table__  # type: ignore[attr-defined]
CHANGES = FindingChange.__table__  # type: ignore[attr-defined]


def event_filters(destination: DestinationSettings) -> list[Any]:
    conditions = []
    if destination.endpoints is not None:
        conditions.append(EVENTS.c.endpoint.in_(sorted(destination.endpoints)))
    if destination.event_types is not None:
        conditions.append(EVENTS.c.event_type.in_(sorted(destination.event_types)))
    return conditions


def read_events(
    conn: Connection, destination: DestinationSettings, *, after: int, limit: int
) -> tuple[list[Message], int]:
    """The destination's next events after ``after`` (at most ``limit``), and the last event id
    when they were read: every event up to it that is not listed is not for this destination."""
    head = event_rows.last_id(conn)
    if head <= after:
        return [], head
    return event_rows.after(conn, destination, after=after, head=head, limit=limit), head


def read_findings(conn: Connection, *, after: int, limit: int) -> tuple[list[Message], int]:
    head = int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(CHANGES.c.id), 0))).scalar_one())
    if head <= after:
        return [], head
    query = (
        sa.select(CHANGES)
        .where(CHANGES.c.id > after, CHANGES.c.id <= head)
        .order_by(CHANGES.c.id)
        .limit(limit)
    )
    return [finding_message(row) for row in conn.execute(query)], head

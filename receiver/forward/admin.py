"""What the query API and the ``destinations`` command show and change, read from the store
(so every replica answers the same, whichever one is sending).

``overview`` (``GET /v1/destinations``): each destination's state, lag in events and seconds,
last delivery and error, dead letters. ``attempts`` (the bounded log), ``messages`` (parked and
dead-lettered), ``resend`` (event ids, a time range, or the dead letters), ``enable`` and
``disable``. Secrets never appear: URLs are masked (receiver.config.destinations.masked_url).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from receiver.config import DestinationSettings
from receiver.errors import NotFound, QueryError
from receiver.forward import logs, store
from receiver.forward.conditions import ACTIVE, DISABLED, RETRYING
from receiver.forward.messages import (
    EVENT,
    RESEND_PREFIX,
    event_message_id,
    event_order_key,
)
from receiver.store.views import iso

MAX_RESEND = 100_000
MAX_ATTEMPTS_PAGE = 1000


def find(destinations: Sequence[DestinationSettings], name: str) -> DestinationSettings:
    for destination in destinations:
        if destination.name == name:
            return destination
    raise NotFound(f"no destination named {name[:40]!r}")


def overview(
    conn: Connection,
    destinations: Sequence[DestinationSettings],
    *,
    now: datetime,
    places: Mapping[str, tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """``places``: (event, finding change) places this replica's sender knows, fresher than
    the saved ones."""
    store.ensure(conn, [d.name for d in destinations], now=now)
    rows = store.states(conn, [d.name for d in destinations])
    for name, (events, changes) in (places or {}).items():
        if name in rows:
            row = rows[name]
            row.event_cursor = max(row.event_cursor, events)
            row.finding_cursor = max(row.finding_cursor, changes)
    return [describe(conn, d, rows[d.name], now=now) for d in destinations if d.name in rows]


def describe(
    conn: Connection, destination: DestinationSettings, row: store.StateRow, *, now: datetime
) -> dict[str, Any]:
    lag_events, oldest = _lag(conn, destination, row)
    parked = _count(conn, destination.name, store.PENDING)
    dead = _count(conn, destination.name, store.DEAD)
    retrying_messages = conn.execute(
        sa.select(sa.func.count())
        .select_from(store.PARKED)
        .where(
            store.PARKED.c.destination == destination.name,
            store.PARKED.c.state == store.PENDING,
            store.PARKED.c.attempts > 0,
        )
    ).scalar_one()
    if row.disabled_at is not None:
        state = DISABLED
    elif row.failing_since is not None or retrying_messages:
        state = RETRYING
    else:
        state = ACTIVE
    return {
        "name": destination.name,
        "kind": destination.kind,
        "url": destination.masked_url(),
        "format": destination.format,
        "state": state,
        "lag_events": lag_events,
        "lag_seconds": round(max((now - oldest).total_seconds(), 0.0), 3) if oldest else 0.0,
        "last_delivered_at": iso(row.last_delivered_at),
        "last_error": row.last_error,
        "last_error_at": iso(row.last_error_at),
        "dead_letters": dead,
        "parked": parked,
        "failing_since": iso(row.failing_since),
        "failures": row.failures,
        "retry_at": iso(row.retry_at),
        "disabled_at": iso(row.disabled_at),
        "disabled_reason": row.disabled_reason,
        "position": {"event_id": row.event_cursor, "finding_change_id": row.finding_cursor},
        "sender": row.lease_owner,
        "filters": {
            "event_types": sorted(destination.event_types) if destination.event_types else None,
            "endpoints": sorted(destination.endpoints) if destination.endpoints else None,
            "findings": destination.takes_findings,
            "events": destination.takes_events,
        },
    }


def _count(conn: Connection, name: str, state: str) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(store.PARKED)
            .where(store.PARKED.c.destination == name, store.PARKED.c.state == state)
        ).scalar_one()
    )


def _lag(
    conn: Connection, destination: DestinationSettings, row: store.StateRow
) -> tuple[int, datetime | None]:
    """Messages not yet taken (past the place, and parked) and when the oldest was stored."""
    counted: list[tuple[int, datetime | None]] = []
    if destination.takes_events:
        events = store.EVENTS.c
        after = [events.id > row.event_cursor, *logs.event_filters(destination)]
        counted.append(_past(conn, events.id, events.received_at, after))
    if destination.takes_findings:
        changes = store.CHANGES.c
        counted.append(_past(conn, changes.id, changes.at, [changes.id > row.finding_cursor]))
    parked = store.PARKED.c
    waiting = [parked.destination == destination.name, parked.state == store.PENDING]
    counted.append(_past(conn, parked.id, parked.created_at, waiting))
    oldest = [first for _, first in counted if first is not None]
    return sum(count for count, _ in counted), min(oldest) if oldest else None


def _past(
    conn: Connection, id_column: Any, time_column: Any, conditions: list[Any]
) -> tuple[int, datetime | None]:
    """How many rows meet ``conditions``, and the time of the first of them (by id)."""
    count = conn.execute(
        sa.select(sa.func.count()).select_from(id_column.table).where(*conditions)
    ).scalar_one()
    first = conn.execute(
        sa.select(time_column).where(*conditions).order_by(id_column).limit(1)
    ).scalar()
    return int(count), first


def attempts(
    conn: Connection, name: str, *, limit: int = 100, before: int | None = None
) -> dict[str, Any]:
    """The newest attempts first; ``before`` (an attempt id) pages back."""
    query = sa.select(store.ATTEMPTS).where(store.ATTEMPTS.c.destination == name)
    if before is not None:
        query = query.where(store.ATTEMPTS.c.id < before)
    rows = list(conn.execute(query.order_by(store.ATTEMPTS.c.id.desc()).limit(limit)))
    items = [
        {
            "id": row.id,
            "at": iso(row.at),
            "message_id": row.message_id,
            "messages": row.messages,
            "outcome": row.outcome,
            "status_code": row.status_code,
            "latency_ms": row.latency_ms,
            "error": row.error,
            "response": row.response,
        }
        for row in rows
    ]
    more = len(rows) == limit
    return {"attempts": items, "next_before": rows[-1].id if more and rows else None}


def messages(conn: Connection, name: str, *, state: str, limit: int = 100) -> list[dict[str, Any]]:
    """Parked (``pending``) or dead-lettered (``dead``) messages, oldest first."""
    if state not in (store.PENDING, store.DEAD):
        raise QueryError("state: must be pending or dead")
    rows = conn.execute(
        sa.select(store.PARKED)
        .where(store.PARKED.c.destination == name, store.PARKED.c.state == state)
        .order_by(store.PARKED.c.id)
        .limit(limit)
    )
    return [
        {
            "message_id": row.message_id,
            "state": row.state,
            "attempts": row.attempts,
            "next_attempt_at": iso(row.next_attempt_at) if row.state == store.PENDING else None,
            "last_error": row.last_error,
            "queued_at": iso(row.created_at),
            "resend": row.order_key.startswith(RESEND_PREFIX),
        }
        for row in rows
    ]


def resend(
    conn: Connection,
    destination: DestinationSettings,
    *,
    event_ids: Sequence[int] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    dead_letters: bool = False,
    now: datetime,
) -> dict[str, int]:
    """Queue messages to be sent again to ``destination`` with their ids unchanged: events by id
    or by received time (those the destination's filters take), and/or its dead letters."""
    if event_ids is None and since is None and until is None and not dead_letters:
        raise QueryError("resend: give event_ids, a since/until range, or dead_letters")
    queued = skipped = 0
    if dead_letters:
        queued += _revive(conn, destination.name, None, now)
    if event_ids is not None or since is not None or until is not None:
        if not destination.takes_events:
            raise QueryError(f"destination {destination.name} takes findings only")
        query = sa.select(store.EVENTS).order_by(store.EVENTS.c.id)
        if event_ids is not None:
            query = query.where(store.EVENTS.c.id.in_(list(event_ids)))
        if since is not None:
            query = query.where(store.EVENTS.c.received_at >= since)
        if until is not None:
            query = query.where(store.EVENTS.c.received_at <= until)
        rows = list(conn.execute(query.limit(MAX_RESEND + 1)))
        if len(rows) > MAX_RESEND:
            raise QueryError(f"resend: more than {MAX_RESEND} events; narrow the range")
        if event_ids is not None:
            skipped += len(set(event_ids)) - len(rows)
        wanted = [
            r for r in rows if destination.wants(endpoint=r.endpoint, event_type=r.event_type)
        ]
        skipped += len(rows) - len(wanted)
        ids = [event_message_id(row.id) for row in wanted]
        _revive(conn, destination.name, ids, now)
        # Every one wanted is now queued: revived, added below, or waiting already.
        queued += len(wanted)
        fresh = [
            {
                "destination": destination.name,
                "message_id": event_message_id(row.id),
                "source": EVENT,
                "source_id": row.id,
                "order_key": RESEND_PREFIX + event_order_key(row.job_key, row.room_key),
                "state": store.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "last_error": None,
                "created_at": now,
            }
            for row in wanted
        ]
        for start in range(0, len(fresh), 500):
            chunk = fresh[start : start + 500]
            insert = store.insert_for(conn)(store.PARKED).values(chunk)
            # Waiting already (perhaps in a round under way): queued again from now.
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["destination", "message_id"],
                    set_={"state": store.PENDING, "next_attempt_at": now, "created_at": now},
                )
            )
    return {"queued": queued, "skipped": skipped}


def _revive(conn: Connection, name: str, message_ids: list[str] | None, now: datetime) -> int:
    """Dead letters (all of ``name``'s, or these) back in the queue, as resends."""
    where = [store.PARKED.c.destination == name, store.PARKED.c.state == store.DEAD]
    total = 0
    chunks: list[list[str] | None] = [None]
    if message_ids is not None:
        chunks = [message_ids[i : i + 500] for i in range(0, len(message_ids), 500)]
    for chunk in chunks:
        condition = where if chunk is None else [*where, store.PARKED.c.message_id.in_(chunk)]
        rows = list(
            conn.execute(sa.select(store.PARKED.c.id, store.PARKED.c.order_key).where(*condition))
        )
        for row_id, key in rows:
            new_key = key if key.startswith(RESEND_PREFIX) else RESEND_PREFIX + key
            conn.execute(
                sa.update(store.PARKED)
                .where(store.PARKED.c.id == row_id)
                .values(
                    state=store.PENDING, attempts=0, next_attempt_at=now, order_key=new_key[:160]
                )
            )
        total += len(rows)
    return total


def enable(conn: Connection, destination: DestinationSettings, *, now: datetime) -> None:
    store.ensure(conn, [destination.name], now=now)
    conn.execute(
        sa.update(store.STATE)
        .where(store.STATE.c.name == destination.name)
        .values(
            disabled_at=None, disabled_reason=None, failing_since=None, failures=0, retry_at=None
        )
    )


def disable(
    conn: Connection, destination: DestinationSettings, *, reason: str, now: datetime
) -> None:
    store.ensure(conn, [destination.name], now=now)
    conn.execute(
        sa.update(store.STATE)
        .where(store.STATE.c.name == destination.name)
        .values(disabled_at=now, disabled_reason=reason[:300])
    )

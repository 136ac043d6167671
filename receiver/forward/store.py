"""What forwarding keeps in the database, read and written on a thread (never on the intake).

- ``forward_state``: each destination's place in the event log and in the finding-change log
  (everything up to it is settled), its lease, and its condition (failing since, retry at,
  disabled, last error). A new destination starts at the logs' current end: it is handed what
  is stored after it was added (``resend`` hands on older events).
- ``forward_messages``: the messages a destination must be sent on their own (refused and
  waiting, queued behind such a message of the same job, resent, or dead-lettered).
- ``forward_attempts``: the bounded log of attempts.

**Leases.** One replica at a time sends to a destination: the one whose ``lease_owner`` it is,
until ``lease_until``. Leases are taken and renewed on the database's clock on PostgreSQL
(replicas on several machines need not agree on the time) and every write a sender makes is
fenced by ``lease_owner``: a replica that lost its lease (it stalled past ``lease_until``, and
another took over) writes nothing, and stops. A replica that dies mid-send leaves its lease to
run out; the next owner starts from the saved place, so what was in flight is sent again, with
the same ids (at least once).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from receiver.forward import event_rows
from receiver.forward.messages import (
    EVENT,
    FINDING,
    Message,
    finding_message,
    with_order_key,
)
from receiver.store.models import (
    Event,
    FindingChange,
    ForwardAttempt,
    ForwardMessage,
    ForwardState,
)

EVENTS = Event.__table__  # type: ignore[attr-defined]
CHANGES = FindingChange.__table__  # type: ignore[attr-defined]
STATE = ForwardState.__table__  # type: ignore[attr-defined]
PARKED = ForwardMessage.__table__  # type: ignore[attr-defined]
ATTEMPTS = ForwardAttempt.__table__  # type: ignore[attr-defined]

PENDING = "pending"
DEAD = "dead"
# The attempts log keeps this many rows per destination.
ATTEMPTS_KEPT = 1000


@dataclass
class StateRow:
    """A destination's ``forward_state`` row, as read."""

    name: str
    event_cursor: int
    finding_cursor: int
    lease_owner: str | None
    disabled_at: datetime | None
    disabled_reason: str | None
    failing_since: datetime | None
    failures: int
    retry_at: datetime | None
    last_delivered_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None


@dataclass
class Parked:
    """A ``forward_messages`` row."""

    id: int
    message_id: str
    source: str
    source_id: int
    order_key: str
    attempts: int
    next_attempt_at: datetime
    # When it was queued (again): a resend of a message already waiting re-queues it, and what
    # a round in flight decided about the earlier one then no longer applies to it.
    queued_at: datetime


@dataclass
class Save:
    """What one round of sending changes, written in one transaction, fenced by the lease."""

    event_cursor: int | None = None
    finding_cursor: int | None = None
    # Column values of forward_state (failing_since, failures, retry_at, last_error, ...).
    state: dict[str, Any] = field(default_factory=dict)
    park: list[dict[str, Any]] = field(default_factory=list)
    # (row id, queued_at as read): delivered, unless queued again since.
    delete: list[tuple[int, datetime]] = field(default_factory=list)
    update: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def empty(self) -> bool:
        return (
            self.event_cursor is None
            and self.finding_cursor is None
            and not (self.state or self.park or self.delete or self.update or self.attempts)
        )


def _db_now(conn: Connection) -> Any:
    """Now, in seconds since the epoch, on the database's clock where there is one."""
    if conn.dialect.name == "postgresql":
        return sa.func.extract("epoch", sa.func.clock_timestamp())
    return sa.literal(time.time(), sa.Float())


def insert_for(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def head_ids(conn: Connection) -> tuple[int, int]:
    """The last event id and the last finding change id."""
    events = conn.execute(sa.select(sa.func.coalesce(sa.func.max(EVENTS.c.id), 0))).scalar_one()
    changes = conn.execute(sa.select(sa.func.coalesce(sa.func.max(CHANGES.c.id), 0))).scalar_one()
    return int(events), int(changes)


def ensure(conn: Connection, names: Iterable[str], *, now: datetime) -> None:
    """A ``forward_state`` row for each destination, new ones at the logs' current end."""
    names = list(names)
    if not names:
        return
    known = set(conn.execute(sa.select(STATE.c.name).where(STATE.c.name.in_(names))).scalars())
    missing = [name for name in names if name not in known]
    if not missing:
        return
    events, changes = head_ids(conn)
    rows = [
        {
            "name": name,
            "event_cursor": events,
            "finding_cursor": changes,
            "lease_until": 0.0,
            "failures": 0,
            "created_at": now,
        }
        for name in missing
    ]
    conn.execute(
        insert_for(conn)(STATE).values(rows).on_conflict_do_nothing(index_elements=["name"])
    )


def claim(
    conn: Connection, names: Sequence[str], *, owner: str, lease_seconds: float
) -> list[StateRow]:
    """Take or renew the lease of every destination in ``names`` that is free, run out, or
    already ours; the rows of those now ours."""
    if not names:
        return []
    now = _db_now(conn)
    conn.execute(
        sa.update(STATE)
        .where(
            STATE.c.name.in_(list(names)),
            sa.or_(
                STATE.c.lease_owner == owner,
                STATE.c.lease_owner.is_(None),
                STATE.c.lease_until < now,
            ),
        )
        .values(lease_owner=owner, lease_until=now + lease_seconds)
    )
    rows = conn.execute(
        sa.select(STATE).where(STATE.c.name.in_(list(names)), STATE.c.lease_owner == owner)
    )
    return [_state(row) for row in rows]


def release(conn: Connection, names: Sequence[str], *, owner: str) -> None:
    """Let go of these leases at once (a replica stopping), for another replica to take."""
    if names:
        conn.execute(
            sa.update(STATE)
            .where(STATE.c.name.in_(list(names)), STATE.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=0.0)
        )


def states(conn: Connection, names: Sequence[str]) -> dict[str, StateRow]:
    rows = conn.execute(sa.select(STATE).where(STATE.c.name.in_(list(names))))
    return {row.name: _state(row) for row in rows}


def _state(row: Any) -> StateRow:
    return StateRow(
        name=row.name,
        event_cursor=int(row.event_cursor),
        finding_cursor=int(row.finding_cursor),
        lease_owner=row.lease_owner,
        disabled_at=row.disabled_at,
        disabled_reason=row.disabled_reason,
        failing_since=row.failing_since,
        failures=int(row.failures),
        retry_at=row.retry_at,
        last_delivered_at=row.last_delivered_at,
        last_error=row.last_error,
        last_error_at=row.last_error_at,
    )


def parked_heads(conn: Connection, name: str) -> tuple[list[Parked], int]:
    """The first pending message of each order key (whose own turn decides when the key goes
    on), and how many are pending outside resends (the bound on parking)."""
    first = (
        sa.select(PARKED.c.order_key, sa.func.min(PARKED.c.id).label("id"))
        .where(PARKED.c.destination == name, PARKED.c.state == PENDING)
        .group_by(PARKED.c.order_key)
        .subquery()
    )
    rows = conn.execute(sa.select(PARKED).join(first, PARKED.c.id == first.c.id))
    heads = [_parked(row) for row in rows]
    count = conn.execute(
        sa.select(sa.func.count())
        .select_from(PARKED)
        .where(
            PARKED.c.destination == name,
            PARKED.c.state == PENDING,
            sa.not_(PARKED.c.order_key.startswith("r:")),
        )
    ).scalar_one()
    return sorted(heads, key=lambda head: head.id), int(count)


def parked_runs(
    conn: Connection, name: str, order_keys: Sequence[str], *, limit: int
) -> list[tuple[Parked, Message | None]]:
    """The pending messages of ``order_keys`` in order, each with its message (None when its
    event or finding change is no longer stored)."""
    rows = [
        _parked(row)
        for row in conn.execute(
            sa.select(PARKED)
            .where(
                PARKED.c.destination == name,
                PARKED.c.state == PENDING,
                PARKED.c.order_key.in_(list(order_keys)),
            )
            .order_by(PARKED.c.id)
            .limit(limit)
        )
    ]
    events = event_rows.by_ids(conn, [row.source_id for row in rows if row.source == EVENT])
    found: dict[tuple[str, int], Message] = {(EVENT, i): m for i, m in events.items()}
    changes = [row.source_id for row in rows if row.source == FINDING]
    for start in range(0, len(changes), 500):
        chunk = changes[start : start + 500]
        for change in conn.execute(sa.select(CHANGES).where(CHANGES.c.id.in_(chunk))):
            found[(FINDING, change.id)] = finding_message(change)
    runs: list[tuple[Parked, Message | None]] = []
    for row in rows:
        message = found.get((row.source, row.source_id))
        if message is not None and message.order_key != row.order_key:
            message = with_order_key(message, row.order_key)
        runs.append((row, message))
    return runs


def _parked(row: Any) -> Parked:
    return Parked(
        id=int(row.id),
        message_id=row.message_id,
        source=row.source,
        source_id=int(row.source_id),
        order_key=row.order_key,
        attempts=int(row.attempts),
        next_attempt_at=row.next_attempt_at,
        queued_at=row.created_at,
    )


def park_row(
    name: str,
    message: Message,
    *,
    attempts: int,
    next_attempt_at: datetime,
    error: str | None,
    now: datetime,
) -> dict[str, Any]:
    return {
        "destination": name,
        "message_id": message.id,
        "source": message.source,
        "source_id": message.source_id,
        "order_key": message.order_key,
        "state": PENDING,
        "attempts": attempts,
        "next_attempt_at": next_attempt_at,
        "last_error": error[:500] if error else None,
        "created_at": now,
    }


def save(conn: Connection, name: str, *, owner: str, change: Save) -> bool:
    """Write ``change`` if this replica still holds the lease; False (nothing written) if not."""
    values: dict[str, Any] = dict(change.state)
    if change.event_cursor is not None:
        values["event_cursor"] = change.event_cursor
    if change.finding_cursor is not None:
        values["finding_cursor"] = change.finding_cursor
    fence = sa.update(STATE).where(STATE.c.name == name, STATE.c.lease_owner == owner)
    # Touch the row even with nothing to set: the fence must hold for the rest to be written.
    result = conn.execute(fence.values(values or {"lease_owner": owner}))
    if result.rowcount != 1:
        return False
    if change.park:
        insert = insert_for(conn)(PARKED).values(change.park)
        conn.execute(insert.on_conflict_do_nothing(index_elements=["destination", "message_id"]))
    for update in change.update:
        conn.execute(
            sa.update(PARKED)
            .where(PARKED.c.id == update["id"], PARKED.c.created_at == update["queued_at"])
            .values({k: v for k, v in update.items() if k not in ("id", "queued_at")})
        )
    if change.delete:
        conn.execute(
            sa.delete(PARKED).where(
                PARKED.c.id == sa.bindparam("row_id"),
                PARKED.c.created_at == sa.bindparam("queued_at", type_=PARKED.c.created_at.type),
            ),
            [{"row_id": row_id, "queued_at": queued_at} for row_id, queued_at in change.delete],
        )
    if change.attempts:
        conn.execute(sa.insert(ATTEMPTS), change.attempts)
    return True


def prune_attempts(conn: Connection, name: str, *, keep: int = ATTEMPTS_KEPT) -> int:
    """Keep the newest ``keep`` attempts of ``name``; returns how many went."""
    cutoff = conn.execute(
        sa.select(ATTEMPTS.c.id)
        .where(ATTEMPTS.c.destination == name)
        .order_by(ATTEMPTS.c.id.desc())
        .offset(keep)
        .limit(1)
    ).scalar()
    if cutoff is None:
        return 0
    result = conn.execute(
        sa.delete(ATTEMPTS).where(ATTEMPTS.c.destination == name, ATTEMPTS.c.id <= cutoff)
    )
    return int(result.rowcount or 0)

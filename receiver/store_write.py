"""One batch of deliveries written through the database driver itself (sqlite3 or psycopg).

This is the hot path: every acknowledged callback goes through it, so it skips the ORM and
SQLAlchemy's per-row parameter processing and sends prepared, fixed-shape statements with rows
built once (orjson for JSON columns). The tables are those of ``receiver.models``; the value
formats are the ones SQLAlchemy reads back (SQLite datetimes as ``YYYY-MM-DD HH:MM:SS.ffffff``
UTC text, JSON as text; PostgreSQL ``timestamptz`` and ``jsonb``).

Duplicates are decided by the database: ``deliveries.dedup_key`` is unique, rows go in with
``ON CONFLICT DO NOTHING``, and a key that did not come back belongs to a row that another
transaction (another batch, another replica) committed first.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from receiver.errors import StoreUnavailable
from receiver.events import Event as DecodedEvent
from receiver.ids import id_key
from receiver.models import DeliveryStatus


@dataclass(frozen=True, slots=True)
class IncomingDelivery:
    """A verified delivery, ready to store. ``event`` is None when the body did not decode."""

    endpoint: str
    body: bytes
    received_at: datetime
    signed_at: datetime | None
    key_index: int | None
    time_unit: str | None
    headers: dict[str, str]
    query: list[tuple[str, str]]
    remote_addr: str | None
    event: DecodedEvent | None
    error: str | None = None
    dedup_key: str = field(default="")
    body_sha256: str = field(default="")

    def __post_init__(self) -> None:
        if not self.body_sha256:
            object.__setattr__(self, "body_sha256", hashlib.sha256(self.body).hexdigest())
        if not self.dedup_key:
            object.__setattr__(self, "dedup_key", dedup_key_for(self))


def dedup_key_for(item: IncomingDelivery) -> str:
    """Same endpoint, same signing time, same body: the same delivery.

    Without a signing time (auth_type NONE) nothing tells a retry from a new event with the same
    content (an RTMP state can repeat), so such deliveries get a unique key and are all kept.
    """
    if item.signed_at is None:
        return "u:" + os.urandom(16).hex()
    stamp = round(item.signed_at.timestamp() * 1000)
    text = f"{item.endpoint}\n{stamp}\n{item.body_sha256 or hashlib.sha256(item.body).hexdigest()}"
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    result: str  # "stored" | "duplicate"
    status: str  # status of the original delivery: "stored" | "undecodable"
    delivery_id: int
    event_id: int | None


# Any fixed 64-bit number (migrations/env.py and crosscheck_run use others).
COMMIT_ORDER_LOCK = 0x6D73_7276_6964_7331

_DELIVERY_COLUMNS = (
    "endpoint, status, dedup_key, duplicate_of, received_at, signed_at, key_index, time_unit, "
    "body, body_sha256, body_size, headers, query, remote_addr, error"
)
_EVENT_COLUMNS = (
    "delivery_id, endpoint, event_type, room_id, job_id, room_key, job_key, received_at, "
    "signed_at, message, message_encoding, extra"
)
# The statements, built once from the constants above (no input reaches the SQL text).
_SQLITE_DELIVERY = f"INSERT INTO deliveries ({_DELIVERY_COLUMNS}) VALUES ({', '.join('?' * 15)})"  # noqa: S608
_SQLITE_EVENT = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES ({', '.join('?' * 12)})"  # noqa: S608
_PG_DELIVERY = (
    f"INSERT INTO deliveries ({_DELIVERY_COLUMNS}) "  # noqa: S608
    f"VALUES ({', '.join(['%s'] * 11)}, %s::jsonb, %s::jsonb, %s, %s)"
)
_PG_EVENT = (
    f"INSERT INTO events ({_EVENT_COLUMNS}) "  # noqa: S608
    f"VALUES ({', '.join(['%s'] * 9)}, %s::jsonb, %s, %s::jsonb) RETURNING delivery_id, id"
)
_ON_CONFLICT = " ON CONFLICT (dedup_key) DO NOTHING"
_EXISTING = (
    "SELECT d.dedup_key, d.id, d.status, e.id FROM deliveries d "
    "LEFT JOIN events e ON e.delivery_id = d.id WHERE d.dedup_key IN "
)


def _sqlite_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    # isoformat is several times faster than strftime, and gives the same text here.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _delivery_values(item: IncomingDelivery, *, sqlite: bool) -> list[Any]:
    stamp = _sqlite_time if sqlite else _same
    return [
        item.endpoint,
        DeliveryStatus.STORED if item.event is not None else DeliveryStatus.UNDECODABLE,
        item.dedup_key,
        None,
        stamp(item.received_at),
        stamp(item.signed_at),
        item.key_index,
        item.time_unit,
        item.body,
        item.body_sha256,
        len(item.body),
        _json(item.headers),
        _json([list(pair) for pair in item.query]),
        # From X-Forwarded-For when a trusted proxy sets it: any length, the column holds 64.
        item.remote_addr[:64] if item.remote_addr else item.remote_addr,
        item.error[:500] if item.error else None,
    ]


def _receipt_values(item: IncomingDelivery, original_id: int, *, sqlite: bool) -> list[Any]:
    values = _delivery_values(item, sqlite=sqlite)
    values[1] = DeliveryStatus.DUPLICATE
    values[2] = None  # dedup_key: only the original holds it
    values[3] = original_id
    values[8] = None  # body: stored once, with the original
    return values


def _event_values(item: IncomingDelivery, delivery_id: int, *, sqlite: bool) -> list[Any]:
    event = item.event
    assert event is not None
    stamp = _sqlite_time if sqlite else _same
    return [
        delivery_id,
        item.endpoint,
        event.event_type,
        event.room_id,
        event.job_id,
        None if event.room_id is None else id_key(event.room_id),
        None if event.job_id is None else id_key(event.job_id),
        stamp(item.received_at),
        stamp(item.signed_at),
        _json(event.message),
        event.message_encoding,
        _json(event.extra),
    ]


def _same(value: datetime | None) -> datetime | None:
    return value


def write_sqlite(cur: Any, items: Sequence[IncomingDelivery]) -> list[WriteOutcome]:
    """In a transaction begun with BEGIN IMMEDIATE (this connection holds the write lock, so the
    rows past ``max(id)`` after the inserts are exactly the ones this batch inserted)."""
    originals, first = _originals(items)
    before = cur.execute("SELECT coalesce(max(id), 0) FROM deliveries").fetchone()[0]
    cur.executemany(
        _SQLITE_DELIVERY + _ON_CONFLICT,
        [_delivery_values(item, sqlite=True) for item in originals],
    )
    inserted = dict(
        cur.execute("SELECT dedup_key, id FROM deliveries WHERE id > ?", (before,)).fetchall()
    )
    event_ids: dict[int, int] = {}
    event_rows = [
        _event_values(item, inserted[item.dedup_key], sqlite=True)
        for item in originals
        if item.event is not None and item.dedup_key in inserted
    ]
    if event_rows:
        before_events = cur.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        cur.executemany(_SQLITE_EVENT, event_rows)
        event_ids = {
            delivery_id: event_id
            for event_id, delivery_id in cur.execute(
                "SELECT id, delivery_id FROM events WHERE id > ?", (before_events,)
            )
        }
    missing = [key for key in first if key not in inserted]
    existing = _existing(cur, missing, "?") if missing else {}
    outcomes, receipts = _outcomes(items, first, inserted, event_ids, existing, sqlite=True)
    if receipts:
        cur.executemany(_SQLITE_DELIVERY, receipts)
    return outcomes


def write_postgres(cur: Any, items: Sequence[IncomingDelivery]) -> list[WriteOutcome]:
    """In an open transaction. Replicas take turns: the advisory lock lasts until this
    transaction commits, so ids are handed out in commit order, every id a reader can see is
    below every id still uncommitted, and keyset pages (receiver.queries) never skip an event
    that commits late. The same order also rules out deadlocks between replicas."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (COMMIT_ORDER_LOCK,))
    items = [_pg_safe(item) for item in items]
    originals, first = _originals(items)
    cur.executemany(
        _PG_DELIVERY + _ON_CONFLICT + " RETURNING dedup_key, id",
        [_delivery_values(item, sqlite=False) for item in originals],
        returning=True,
    )
    inserted = dict(_all_results(cur))
    event_ids: dict[int, int] = {}
    event_rows = [
        _event_values(item, inserted[item.dedup_key], sqlite=False)
        for item in originals
        if item.event is not None and item.dedup_key in inserted
    ]
    if event_rows:
        cur.executemany(_PG_EVENT, event_rows, returning=True)
        event_ids = dict(_all_results(cur))
    missing = [key for key in first if key not in inserted]
    existing = _existing(cur, missing, "%s") if missing else {}
    outcomes, receipts = _outcomes(items, first, inserted, event_ids, existing, sqlite=False)
    if receipts:
        cur.executemany(_PG_DELIVERY, receipts)
    return outcomes


def _marks(count: int, mark: str) -> str:
    return ", ".join([mark] * count)


def _all_results(cur: Any) -> list[tuple[Any, Any]]:
    rows: list[tuple[Any, Any]] = []
    while True:
        rows.extend(cur.fetchall())
        if not cur.nextset():
            return rows


def _originals(
    items: Sequence[IncomingDelivery],
) -> tuple[list[IncomingDelivery], dict[str, int]]:
    """The first item of each dedup key, in key order: replicas that insert overlapping keys
    wait for each other in one direction only."""
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        first.setdefault(item.dedup_key, index)
    originals = sorted((items[i] for i in first.values()), key=lambda item: item.dedup_key)
    return originals, first


def _existing(cur: Any, keys: list[str], mark: str) -> dict[str, WriteOutcome]:
    found: dict[str, WriteOutcome] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        marks = _marks(len(chunk), mark)
        cur.execute(_EXISTING + f"({marks})", chunk)
        for key, delivery_id, status, event_id in cur.fetchall():
            found[key] = WriteOutcome("duplicate", status, delivery_id, event_id)
    return found


def _outcomes(
    items: Sequence[IncomingDelivery],
    first: dict[str, int],
    inserted: dict[str, int],
    event_ids: dict[int, int],
    existing: dict[str, WriteOutcome],
    *,
    sqlite: bool,
) -> tuple[list[WriteOutcome], list[list[Any]]]:
    outcomes: list[WriteOutcome] = []
    receipts: list[list[Any]] = []
    for index, item in enumerate(items):
        key = item.dedup_key
        delivery_id = inserted.get(key)
        if delivery_id is not None:
            original = items[first[key]]
            status = DeliveryStatus.STORED if original.event else DeliveryStatus.UNDECODABLE
            result = "stored" if first[key] == index else "duplicate"
            outcome = WriteOutcome(result, status, delivery_id, event_ids.get(delivery_id))
        else:
            found = existing.get(key)
            if found is None:
                # Cannot happen while the unique constraint holds: a conflicting row is committed.
                raise StoreUnavailable("a conflicting delivery could not be read back")
            outcome = found
        outcomes.append(outcome)
        if outcome.result == "duplicate":
            receipts.append(_receipt_values(item, outcome.delivery_id, sqlite=sqlite))
    return outcomes, receipts


def _no_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nul(v) for v in value]
    return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def _pg_safe(item: IncomingDelivery) -> IncomingDelivery:
    """PostgreSQL text and JSONB cannot hold U+0000; the raw body (bytea) keeps the exact bytes.

    The decoded values are searched, not the body's bytes: JSON can spell U+0000 without the
    bytes ``\\u0000`` (an escaped backslash and an escaped "u" inside the message string)."""
    event = item.event
    values: list[Any] = [item.query, item.headers, item.error]
    if event is not None:
        values += [event.event_type, event.room_id, event.job_id, event.message, event.extra]
    if not _has_nul(values):
        return item
    if event is not None:
        event = replace(
            event,
            event_type=_no_nul(event.event_type),
            room_id=_no_nul(event.room_id),
            job_id=_no_nul(event.job_id),
            message=_no_nul(event.message),
            extra=_no_nul(event.extra),
        )
    return replace(
        item,
        event=event,
        query=_no_nul(item.query),
        headers=_no_nul(item.headers),
        error=_no_nul(item.error),
        dedup_key=item.dedup_key,
    )

"""One batch of deliveries written through the database driver itself (sqlite3 or psycopg).

This is the hot path: every acknowledged callback goes through it, so it skips the ORM and
SQLAlchemy's per-row parameter processing and sends prepared, fixed-shape statements with rows
built once (orjson for JSON columns). The tables are those of ``receiver.store.models``; the value
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

from receiver.errors import DecodeError, StoreUnavailable
from receiver.protocol.events import Event as DecodedEvent
from receiver.protocol.events import decode
from receiver.protocol.ids import id_key
from receiver.store.statuses import DeliveryStatus


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
    error: str | None = None  # why this delivery's body did not decode (set by write_fields)


Fields = tuple[
    str,
    bytes,
    datetime,
    "datetime | None",
    "int | None",
    "str | None",
    dict[str, str],
    list[tuple[str, str]],
    "str | None",
]
"""A verified request as intake hands it to the writer, not yet decoded: endpoint, body,
received_at, signed_at, key_index, time_unit, kept headers, kept query, remote_addr."""


def fields_of(item: IncomingDelivery) -> Fields:
    """The request ``item`` was built from (delivery_of's argument)."""
    return (
        item.endpoint,
        item.body,
        item.received_at,
        item.signed_at,
        item.key_index,
        item.time_unit,
        item.headers,
        item.query,
        item.remote_addr,
    )


def delivery_of(fields: Fields) -> IncomingDelivery:
    """Decode a verified request's body and build the delivery to store. Run where the rows are
    built: on the event loop for the thread writer, in the writer process otherwise."""
    endpoint, body, received_at, signed_at, key_index, time_unit, headers, query, remote = fields
    try:
        event, error = decode(body), None
    except DecodeError as exc:
        event, error = None, exc.message
    return IncomingDelivery(
        endpoint=endpoint,
        body=body,
        received_at=received_at,
        signed_at=signed_at,
        key_index=key_index,
        time_unit=time_unit,
        headers=headers,
        query=query,
        remote_addr=remote,
        event=event,
        error=error,
    )


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
# Heads of multi-row inserts (_insert_rows adds one group of marks per row).
_SQLITE_DELIVERY_HEAD = f"INSERT INTO deliveries ({_DELIVERY_COLUMNS}) VALUES"
_SQLITE_EVENT_HEAD = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES"
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


Rows = tuple[list[Any], list[Any] | None]
"""One delivery's values, built once: its ``deliveries`` row, and its ``events`` row (the
delivery id, index 0, still to fill in) or None when the body did not decode."""


def prepare(item: IncomingDelivery, *, sqlite: bool) -> Rows:
    """The rows of ``item``, built on the caller's thread (the event loop's, at intake), so the
    writer thread spends its time in the driver rather than in Python."""
    if not sqlite:
        item = _pg_safe(item)
    stamp = _sqlite_time if sqlite else _same
    received, signed = stamp(item.received_at), stamp(item.signed_at)
    delivery = _delivery_values(item, received, signed)
    event = None if item.event is None else _event_values(item, received, signed)
    return delivery, event


def _delivery_values(item: IncomingDelivery, received: Any, signed: Any) -> list[Any]:
    return [
        item.endpoint,
        DeliveryStatus.STORED if item.event is not None else DeliveryStatus.UNDECODABLE,
        item.dedup_key,
        None,
        received,
        signed,
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


def _receipt_values(delivery: list[Any], original_id: int) -> list[Any]:
    values = list(delivery)
    values[1] = DeliveryStatus.DUPLICATE
    values[2] = None  # dedup_key: only the original holds it
    values[3] = original_id
    values[8] = None  # body: stored once, with the original
    return values


def _event_values(item: IncomingDelivery, received: Any, signed: Any) -> list[Any]:
    event = item.event
    assert event is not None
    return [
        None,  # delivery_id: known once the delivery row is in
        item.endpoint,
        event.event_type,
        event.room_id,
        event.job_id,
        None if event.room_id is None else id_key(event.room_id),
        None if event.job_id is None else id_key(event.job_id),
        received,
        signed,
        _json(event.message),
        event.message_encoding,
        _json(event.extra),
    ]


def _same(value: datetime | None) -> datetime | None:
    return value


def write_sqlite(
    cur: Any, items: Sequence[IncomingDelivery], rows: Sequence[Rows] | None = None
) -> list[WriteOutcome]:
    """In a transaction begun with BEGIN IMMEDIATE: this connection holds the write lock, so no
    other writer can add a row between the statements (see :func:`_insert_rows` for the ids).
    ``rows``: each item's :func:`prepare` (built here when not given).

    Few statements per batch, whatever its size: the keys already stored are read first, then the
    new rows go in with one multi-row INSERT per table. The sqlite3 module lets go of the GIL at
    every step of a statement; with the event loop's thread waiting for it, each step costs two
    thread switches, so a statement per row would cost more than the row itself."""
    if rows is None:
        rows = [prepare(item, sqlite=True) for item in items]
    originals, first = _originals(items)
    existing = _existing(cur, [items[i].dedup_key for i in originals], "?")
    fresh = [i for i in originals if items[i].dedup_key not in existing]
    inserted: dict[str, int] = {}
    event_ids: dict[int, int] = {}
    if fresh:
        delivery_rows = [rows[i][0] for i in fresh]
        keys = [items[i].dedup_key for i in fresh]
        ids = _insert_rows(cur, "deliveries", _SQLITE_DELIVERY_HEAD, delivery_rows, _ON_CONFLICT)
        if ids is None:  # cannot happen under the write lock; read the ids back to be sure
            inserted = dict(
                _select_in(cur, "SELECT dedup_key, id FROM deliveries", "dedup_key", keys)
            )
        else:
            inserted = dict(zip(keys, ids, strict=True))
    event_rows = _event_rows(items, rows, originals, inserted)
    if event_rows:
        ids = _insert_rows(cur, "events", _SQLITE_EVENT_HEAD, event_rows)
        if ids is None:
            owners = [row[0] for row in event_rows]
            event_ids = dict(
                _select_in(cur, "SELECT delivery_id, id FROM events", "delivery_id", owners)
            )
        else:
            event_ids = {row[0]: event_id for row, event_id in zip(event_rows, ids, strict=True)}
    outcomes, receipts = _outcomes(items, rows, first, inserted, event_ids, existing)
    if receipts:
        cur.executemany(_SQLITE_DELIVERY, receipts)
    return outcomes


# Rows per multi-row INSERT: 15 columns x 256 rows stays far below SQLite's 32,766 variables.
_ROWS_PER_INSERT = 256


def _insert_rows(
    cur: Any, table: str, head: str, rows: Sequence[Sequence[Any]], tail: str = ""
) -> list[int] | None:
    """``head`` (``INSERT INTO table (...) VALUES``) + ``(?, ...), (?, ...)`` + ``tail``: one
    statement, one step, per 256 rows. Returns the new rows' ids in order, or None if that
    cannot be told for sure (some row did not go in), for the caller to read them back."""
    mark = "(" + ", ".join("?" * len(rows[0])) + ")"
    ids: list[int] | None = []
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        marks = ", ".join([mark] * len(chunk))
        cur.execute(f"{head} {marks}{tail}", [v for row in chunk for v in row])
        new = _new_ids(cur, table, len(chunk))
        ids = None if ids is None or new is None else ids + new
    return ids


def _new_ids(cur: Any, table: str, count: int) -> list[int] | None:
    """The ids the last INSERT gave, in VALUES order, or None if that cannot be told for sure.

    SQLite gives each new row max(rowid) + 1, so under the write lock an INSERT of ``count`` rows
    that all went in has ids ``last - count + 1 .. last``: exactly when ``changes()`` is
    ``count`` and the table holds ``count`` rows past ``last - count``. One query, one step."""
    query = (
        "SELECT changes(), last_insert_rowid(), "  # noqa: S608 - table is a constant
        f"(SELECT count(*) FROM {table} WHERE id > last_insert_rowid() - changes())"
    )
    changed, last, after = cur.execute(query).fetchone()
    if changed != count or after != count:
        return None
    return list(range(last - count + 1, last + 1))


def _select_in(cur: Any, select: str, column: str, values: list[Any]) -> list[tuple[Any, Any]]:
    found: list[tuple[Any, Any]] = []
    for start in range(0, len(values), 500):
        chunk = values[start : start + 500]
        found += cur.execute(f"{select} WHERE {column} IN ({_marks(len(chunk), '?')})", chunk)
    return found


def _event_rows(
    items: Sequence[IncomingDelivery],
    rows: Sequence[Rows],
    originals: list[int],
    inserted: dict[str, int],
) -> list[list[Any]]:
    """The events rows of the originals this batch inserted, their delivery ids filled in."""
    event_rows = []
    for index in originals:
        event = rows[index][1]
        delivery_id = inserted.get(items[index].dedup_key)
        if event is not None and delivery_id is not None:
            event = list(event)
            event[0] = delivery_id
            event_rows.append(event)
    return event_rows


def write_postgres(
    cur: Any, items: Sequence[IncomingDelivery], rows: Sequence[Rows] | None = None
) -> list[WriteOutcome]:
    """In an open transaction. Replicas take turns: the advisory lock lasts until this
    transaction commits, so ids are handed out in commit order, every id a reader can see is
    below every id still uncommitted, and keyset pages (receiver.store.queries) never skip an event
    that commits late. The same order also rules out deadlocks between replicas."""
    if rows is None:
        rows = [prepare(item, sqlite=False) for item in items]
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (COMMIT_ORDER_LOCK,))
    originals, first = _originals(items)
    cur.executemany(
        _PG_DELIVERY + _ON_CONFLICT + " RETURNING dedup_key, id",
        [rows[i][0] for i in originals],
        returning=True,
    )
    inserted = dict(_all_results(cur))
    event_ids: dict[int, int] = {}
    event_rows = _event_rows(items, rows, originals, inserted)
    if event_rows:
        cur.executemany(_PG_EVENT, event_rows, returning=True)
        event_ids = dict(_all_results(cur))
    missing = [key for key in first if key not in inserted]
    existing = _existing(cur, missing, "%s") if missing else {}
    outcomes, receipts = _outcomes(items, rows, first, inserted, event_ids, existing)
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


def _originals(items: Sequence[IncomingDelivery]) -> tuple[list[int], dict[str, int]]:
    """The index of the first item of each dedup key, in key order: replicas that insert
    overlapping keys wait for each other in one direction only."""
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        first.setdefault(item.dedup_key, index)
    originals = sorted(first.values(), key=lambda index: items[index].dedup_key)
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
    rows: Sequence[Rows],
    first: dict[str, int],
    inserted: dict[str, int],
    event_ids: dict[int, int],
    existing: dict[str, WriteOutcome],
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
            receipts.append(_receipt_values(rows[index][0], outcome.delivery_id))
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

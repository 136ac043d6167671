"""One batch of deliveries committed through the database driver itself (sqlite3 or psycopg).

This is the hot path: every acknowledged callback goes through it, so it skips the ORM and
SQLAlchemy's per-row parameter processing and sends prepared, fixed-shape statements with the
rows built once beforehand (receiver.store.rows). The tables are those of
``receiver.store.models``.

Duplicates are decided by the database: ``deliveries.dedup_key`` is unique, rows go in with
``ON CONFLICT DO NOTHING``, and a key that did not come back belongs to a row that another
transaction (another batch, another replica) committed first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from receiver.errors import StoreUnavailable
from receiver.store.incoming import IncomingDelivery, WriteOutcome
from receiver.store.rows import Rows, prepare, receipt_values
from receiver.store.statuses import DeliveryStatus

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
    below every id still uncommitted, and keyset pages (receiver.store.paging) never skip an event
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
            receipts.append(receipt_values(rows[index][0], outcome.delivery_id))
    return outcomes, receipts

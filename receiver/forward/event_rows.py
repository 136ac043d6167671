"""Events read for forwarding straight from the database driver, their messages written as
bytes in one formatting step.

At full load the forwarder reads every event the intake stores, so this is its hot path
(bench/forward.py measures it). The SQL goes to the driver (no SQLAlchemy row processing); the
database hands back the times already as the API shows them and the received time in seconds;
the stored JSON of the event goes into the message as it is, and is parsed only when it holds a
``stream_key``, to mask it as every answer does. The message is the same JSON, field for field,
as ``GET /v1/events/{id}`` answers (tests/forward/test_event_rows.py compares them on both
stores).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.engine import Connection

from receiver.config import DestinationSettings
from receiver.forward.messages import EVENT, Message, event_order_key
from receiver.protocol.events import mask_stream_key, masked_message
from receiver.store.views import iso

_COLUMNS = (
    "id, endpoint, event_type, room_id, job_id, room_key, job_key, received_at, signed_at, "
    "message, message_encoding, extra, delivery_id"
)
# JSONB as its text: valid JSON, in PostgreSQL's spacing.
_PG_COLUMNS = _COLUMNS.replace("message,", "message::text,").replace("extra,", "extra::text,")
# The message, with every value already JSON (a time, a stored object, an escaped string)
# but the ids and the type's text inside its quotes.
_BODY = (
    '{"type":"metastudio.%s","timestamp":%s,"data":{"id":%d,"endpoint":%s,"event_type":%s,'
    '"room_id":%s,"job_id":%s,"received_at":%s,"signed_at":%s,"message":%s,'
    '"message_encoding":%s,"extra":%s,"delivery_id":%d}}'
)
_STREAM_KEY = '"stream_key"'
# A stream key written plainly (a string without escapes) where a key may stand: masked in the
# text itself. Anything else that names a stream key is parsed and masked as the API masks it.
_PLAIN_STREAM_KEY = re.compile(r'([{,]\s*"stream_key"\s*:\s*)"([^"\\]*)"')


def _mark(conn: Connection) -> str:
    return "%s" if conn.dialect.name == "postgresql" else "?"


def last_id(conn: Connection) -> int:
    """The last event id (0 with none): what the forwarder asks most, so straight to the driver."""
    row = conn.exec_driver_sql("SELECT max(id) FROM events").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def after(
    conn: Connection, destination: DestinationSettings, *, after: int, head: int, limit: int
) -> list[Message]:
    """The destination's events with ids in (``after``, ``head``], at most ``limit``."""
    mark = _mark(conn)
    conditions = [f"id > {mark}", f"id <= {mark}"]
    params: list[Any] = [after, head]
    for column, names in (
        ("endpoint", destination.endpoints),
        ("event_type", destination.event_types),
    ):
        if names is not None:
            conditions.append(f"{column} IN ({', '.join([mark] * len(names))})")
            params += sorted(names)
    return _select(
        conn, f"WHERE {' AND '.join(conditions)} ORDER BY id LIMIT {mark}", [*params, limit]
    )


def by_ids(conn: Connection, ids: Sequence[int]) -> dict[int, Message]:
    """The events of ``ids`` that are stored, by id."""
    found: dict[int, Message] = {}
    mark = _mark(conn)
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        rows = _select(conn, f"WHERE id IN ({', '.join([mark] * len(chunk))})", chunk)
        found.update((message.source_id, message) for message in rows)
    return found


def _select(conn: Connection, tail: str, params: list[Any]) -> list[Message]:
    postgres = conn.dialect.name == "postgresql"
    columns = _PG_COLUMNS if postgres else _COLUMNS
    sql = f"SELECT {columns} FROM events {tail}"  # noqa: S608 - constants and placeholders
    rows = conn.exec_driver_sql(sql, tuple(params)).fetchall()
    times = _pg_times if postgres else _sqlite_times
    return [_message(row, times) for row in rows]


def _message(row: Sequence[Any], times: Any) -> Message:
    (event_id, endpoint, event_type, room_id, job_id, room_key, job_key) = row[:7]
    received_at, signed_at, message, encoding, extra, delivery_id = row[7:]
    received, signed, epoch = times(received_at, signed_at)
    kind = _quoted(event_type)
    body = _BODY % (
        kind[1:-1],
        received,
        event_id,
        _quoted(endpoint),
        kind,
        _quoted(room_id),
        _quoted(job_id),
        received,
        signed,
        _json_text(event_type, message),
        _quoted(encoding),
        _json_text(event_type, extra),
        delivery_id,
    )
    return Message(  # by position: the fields of Message, in order
        f"evt_{event_id}",
        "metastudio." + event_type,
        body.encode(),
        event_order_key(job_key, room_key),
        EVENT,
        event_id,
        epoch,
        None,
    )


def _json_text(event_type: str, stored: str) -> str:
    """The stored JSON as it is, with its stream keys masked (receiver.protocol.events)."""
    if _STREAM_KEY not in stored:
        return stored
    masked, found = _PLAIN_STREAM_KEY.subn(_mask, stored)
    if found == stored.count(_STREAM_KEY):
        return masked
    return orjson.dumps(masked_message(event_type, orjson.loads(stored))).decode()


def _mask(match: re.Match[str]) -> str:
    return f'{match[1]}"{mask_stream_key(match[2])}"'


# Each second seen (a second's events share it): the time as JSON up to its fraction, and
# seconds since the epoch. Emptied when it grows past CACHED, like _QUOTED.
_SECONDS: dict[str, tuple[str, float]] = {}
CACHED = 4096


def _sqlite_times(received: str, signed: str | None) -> tuple[str, str, float]:
    """Times stored as ``2024-09-10 00:30:00.250000`` (receiver.store.rows) as JSON, as
    receiver.store.views.iso shows them (``"2024-09-10T00:30:00.250000Z"``, no fraction when
    it is zero, ``null``), and the received time in seconds since the epoch."""
    if len(received) != 26:  # not as receiver.store.rows writes it: the slow way
        moment = datetime.fromisoformat(received).replace(tzinfo=UTC)
        other = None if signed is None else datetime.fromisoformat(signed).replace(tzinfo=UTC)
        return _pg_times(moment, other)
    shown, start, fraction = _sqlite_iso(received)
    return shown, "null" if signed is None else _sqlite_iso(signed)[0], start + float(fraction)


def _sqlite_iso(value: str) -> tuple[str, float, str]:
    """``value`` as JSON, the seconds since the epoch of its whole second, and its fraction."""
    if len(value) != 26:
        moment = datetime.fromisoformat(value).replace(tzinfo=UTC)
        return orjson.dumps(iso(moment)).decode(), moment.timestamp(), "0"
    second, fraction = value[:19], value[19:]
    known = _SECONDS.get(second)
    if known is None:
        if len(_SECONDS) >= CACHED:
            _SECONDS.clear()
        moment = datetime.fromisoformat(second).replace(tzinfo=UTC)
        known = _SECONDS[second] = (f'"{second[:10]}T{second[11:]}', moment.timestamp())
    head, start = known
    if fraction == ".000000":
        return head + 'Z"', start, fraction
    return head + fraction + 'Z"', start, fraction


# Endpoints, types, encodings, room and job ids as JSON strings: few and repeated.
_QUOTED: dict[str | None, str] = {}


def _quoted(value: str | None) -> str:
    known = _QUOTED.get(value)
    if known is None:
        if len(_QUOTED) >= CACHED:
            _QUOTED.clear()
        known = _QUOTED[value] = orjson.dumps(value).decode()
    return known


def _pg_times(received: datetime, signed: datetime | None) -> tuple[str, str, float]:
    shown = orjson.dumps(iso(received.astimezone(UTC))).decode()
    other = "null" if signed is None else orjson.dumps(iso(signed.astimezone(UTC))).decode()
    return shown, other, received.timestamp()

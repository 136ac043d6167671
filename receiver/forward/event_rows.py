"""Events read for forwarding straight from the database driver, and their messages built as
bytes without a round trip through Python objects.

At full load the forwarder reads every event the intake stores, so this is its hot path. The
SQL goes to the driver itself (no SQLAlchemy row processing), each stored JSON text is spliced
into the payload as it is, and only a message that holds a ``stream_key`` is parsed (to mask it,
as every answer does). The result is the same JSON, field for field, as
``receiver.forward.messages.event_message`` builds from ``receiver.store.views.event_json``
(tests/forward/test_event_rows.py compares the two on both stores).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.engine import Connection

from receiver.config import DestinationSettings
from receiver.forward.messages import EVENT, Message, event_message_id, event_order_key
from receiver.protocol.events import masked_message
from receiver.store.views import iso

_SQLITE_COLUMNS = (
    "id, endpoint, event_type, room_id, job_id, room_key, job_key, received_at, signed_at, "
    "message, message_encoding, extra, delivery_id"
)
# JSONB as its text: spliced in as it is (valid JSON, PostgreSQL's spacing).
_PG_COLUMNS = _SQLITE_COLUMNS.replace("message,", "message::text,").replace(
    "extra,", "extra::text,"
)
_STREAM_KEY = b"stream_key"
_NULL = b"null"


def _marks(conn: Connection, count: int) -> str:
    mark = "%s" if conn.dialect.name == "postgresql" else "?"
    return ", ".join([mark] * count)


def last_id(conn: Connection) -> int:
    """The last event id (0 with none): what the forwarder asks most, so straight to the driver."""
    row = conn.exec_driver_sql("SELECT max(id) FROM events").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def after(
    conn: Connection, destination: DestinationSettings, *, after: int, head: int, limit: int
) -> list[Message]:
    """The destination's events with ids in (``after``, ``head``], at most ``limit``."""
    conditions = ["id > {m}", "id <= {m}"]
    params: list[Any] = [after, head]
    if destination.endpoints is not None:
        names = sorted(destination.endpoints)
        conditions.append(f"endpoint IN ({_marks(conn, len(names))})")
        params += names
    if destination.event_types is not None:
        types = sorted(destination.event_types)
        conditions.append(f"event_type IN ({_marks(conn, len(types))})")
        params += types
    mark = "%s" if conn.dialect.name == "postgresql" else "?"
    where = " AND ".join(conditions).replace("{m}", mark)
    return _select(conn, f"WHERE {where} ORDER BY id LIMIT {mark}", [*params, limit])


def by_ids(conn: Connection, ids: Sequence[int]) -> dict[int, Message]:
    """The events of ``ids`` that are stored, by id."""
    found: dict[int, Message] = {}
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        rows = _select(conn, f"WHERE id IN ({_marks(conn, len(chunk))})", chunk)
        found.update((message.source_id, message) for message in rows)
    return found


def _select(conn: Connection, tail: str, params: list[Any]) -> list[Message]:
    postgres = conn.dialect.name == "postgresql"
    columns = _PG_COLUMNS if postgres else _SQLITE_COLUMNS
    sql = f"SELECT {columns} FROM events {tail}"  # noqa: S608 - constants and placeholders
    cursor = conn.exec_driver_sql(sql, tuple(params))
    stamp = _pg_time if postgres else _sqlite_time
    return [_message(row, stamp) for row in cursor.fetchall()]


def _message(row: Sequence[Any], stamp: Any) -> Message:
    (event_id, endpoint, event_type, room_id, job_id, room_key, job_key) = row[:7]
    received, signed, message, encoding, extra, delivery_id = row[7:]
    received_text = stamp(received)
    message_json = _json_text(event_type, message)
    extra_json = _json_text(event_type, extra)
    dumps = orjson.dumps
    body = b"".join(
        (
            b'{"type":',
            dumps("metastudio." + event_type),
            b',"timestamp":',
            received_text,
            b',"data":{"id":',
            str(event_id).encode(),
            b',"endpoint":',
            dumps(endpoint),
            b',"event_type":',
            dumps(event_type),
            b',"room_id":',
            dumps(room_id),
            b',"job_id":',
            dumps(job_id),
            b',"received_at":',
            received_text,
            b',"signed_at":',
            _NULL if signed is None else stamp(signed),
            b',"message":',
            message_json,
            b',"message_encoding":',
            dumps(encoding),
            b',"extra":',
            extra_json,
            b',"delivery_id":',
            str(delivery_id).encode(),
            b"}}",
        )
    )
    return Message(
        id=event_message_id(event_id),
        type="metastudio." + event_type,
        body=body,
        order_key=event_order_key(job_key, room_key),
        source=EVENT,
        source_id=int(event_id),
        stored_at=_when(received),
        data=None,
    )


def _json_text(event_type: str, stored: Any) -> bytes:
    """The stored JSON as it is, or parsed and masked when it holds a stream key."""
    text = stored.encode() if isinstance(stored, str) else bytes(stored)
    if _STREAM_KEY not in text:
        return text
    return orjson.dumps(masked_message(event_type, orjson.loads(text)))


def _sqlite_time(value: str) -> bytes:
    """``2024-09-10 00:30:00.250000`` (as receiver.store.rows writes it) as the API shows it
    (receiver.store.views.iso): ``"2024-09-10T00:30:00.250000Z"``, and no fraction when the
    microseconds are zero."""
    if len(value) == 26 and value[10] == " " and value[19] == ".":
        if value.endswith(".000000"):
            return b'"' + (value[:10] + "T" + value[11:19] + "Z").encode() + b'"'
        return b'"' + (value[:10] + "T" + value[11:] + "Z").encode() + b'"'
    return orjson.dumps(iso(datetime.fromisoformat(value).replace(tzinfo=UTC)))


def _pg_time(value: datetime) -> bytes:
    return orjson.dumps(iso(value.astimezone(UTC)))


def _when(value: str | datetime) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(value).replace(tzinfo=UTC)

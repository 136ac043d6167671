"""A delivery's rows, built once, before the writer needs them.

This is the hot path's first half: :func:`prepare` turns an :class:`IncomingDelivery` into the
values of its ``deliveries`` and ``events`` rows in the formats SQLAlchemy reads back (SQLite
datetimes as ``YYYY-MM-DD HH:MM:SS.ffffff`` UTC text, JSON as text via orjson; PostgreSQL
``timestamptz`` and ``jsonb``, with U+0000, which PostgreSQL text cannot hold, replaced). It runs
where the delivery was decoded (the event loop, or the writer process), so the writer spends
its time in the driver; receiver.store.write sends the rows.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson

from receiver.protocol.ids import id_key
from receiver.store.incoming import IncomingDelivery
from receiver.store.statuses import DeliveryStatus

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


def receipt_values(delivery: list[Any], original_id: int) -> list[Any]:
    """The ``deliveries`` row of a duplicate: ``delivery``'s, pointing at the original."""
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


def _sqlite_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    # isoformat is several times faster than strftime, and gives the same text here.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


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

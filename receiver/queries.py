"""The read side: filtered, keyset-paginated queries over what was stored.

Pages are ordered by id. Ids are handed out in commit order (on PostgreSQL the write transaction
holds an advisory lock while it allocates them, see ``store.py``; SQLite has one writer at a
time), so an event committed after a page was read always has a larger id than every event on
that page: following ``next_cursor`` sees every event exactly once while new ones arrive.

A cursor is opaque to clients: base64url of ``v1.<last id>.<filter digest>``. It is refused (400)
when it is malformed or was issued for other filters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from receiver.errors import QueryError
from receiver.events import EventType, mask_stream_key, masked_message
from receiver.models import Delivery, DeliveryStatus, Event, Finding, JobSnapshot, Rejection

EVENTS = Event.__table__  # type: ignore[attr-defined]
DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
REJECTIONS = Rejection.__table__  # type: ignore[attr-defined]
FINDINGS = Finding.__table__  # type: ignore[attr-defined]
SNAPSHOTS = JobSnapshot.__table__  # type: ignore[attr-defined]
FINDING_STATUSES = ("open", "resolved", "all")

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_FILTER_LENGTH = 256
MAX_TIMELINE = 10000
EXPORT_FORMAT = "metastudio-receiver/export/v1"
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


def _json_source(text: str) -> bytes:
    """A pattern for ``text`` as JSON source writes it: each character as itself or as a \\u
    escape behind any number of backslashes (JSON text inside a JSON string doubles them)."""
    parts = []
    for char in text:
        code = "".join(f"[{h}{h.upper()}]" for h in f"{ord(char):04x}")
        parts.append(f"(?:{re.escape(char)}|\\\\+u{code})")
    return "".join(parts).encode()


# A stream_key's name, quote and colon, in a body or in JSON text inside one of its strings.
_STREAM_KEY_TEXT = re.compile(
    _json_source("stream_key") + rb'\\*"(?:\s|\\+[nrt])*:(?:\s|\\+[nrt])*'
)
_SAFE_TAIL = re.compile(r"[A-Za-z0-9_-]{4}")


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


# -- parameters --------------------------------------------------------------------------------


def parse_limit(value: str | None, *, default: int = DEFAULT_LIMIT, high: int = MAX_LIMIT) -> int:
    if value is None:
        return default
    # ASCII digits only: str.isdigit() also takes "²" (int() refuses it) and "٣" (int() reads 3).
    if not (value.isascii() and value.isdigit() and len(value) <= 9) or not 1 <= int(value) <= high:
        raise QueryError(f"limit: must be a whole number from 1 to {high}, not {value[:40]!r}")
    return int(value)


def parse_time(name: str, value: str | None) -> datetime | None:
    """RFC 3339 (``2024-09-10T00:30:00Z``, ``...+08:00``), refused otherwise."""
    if value is None:
        return None
    if not _RFC3339.match(value):
        raise QueryError(f"{name}: must be an RFC 3339 time like 2024-09-10T00:30:00Z")
    text = value.replace("z", "Z").replace("Z", "+00:00")
    fraction = re.search(r"\.(\d+)", text)
    if fraction and len(fraction.group(1)) > 6:  # Python keeps microseconds
        text = text.replace(fraction.group(0), "." + fraction.group(1)[:6])
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        raise QueryError(f"{name}: {value[:40]!r} is not a real date and time") from None


def parse_text(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not value or len(value) > MAX_FILTER_LENGTH:
        raise QueryError(f"{name}: must be 1 to {MAX_FILTER_LENGTH} characters")
    if "\x00" in value:  # PostgreSQL text cannot hold it (the query would fail: a 503)
        raise QueryError(f"{name}: must not contain U+0000")
    return value


def parse_list(name: str, value: str | None) -> list[str] | None:
    if value is None:
        return None
    if "\x00" in value:
        raise QueryError(f"{name}: must not contain U+0000")
    items = [part.strip() for part in value.split(",") if part.strip()]
    if not items or len(items) > 50 or any(len(item) > MAX_FILTER_LENGTH for item in items):
        raise QueryError(f"{name}: must be a comma-separated list of 1 to 50 values")
    return items


def encode_cursor(last_id: int, filters: Mapping[str, Any]) -> str:
    raw = f"v1.{last_id}.{_digest(filters)}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, filters: Mapping[str, Any]) -> int | None:
    if cursor is None:
        return None
    try:
        if len(cursor) > 200:
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        version, last_id, digest = raw.split(".")
        if version != "v1" or not last_id.isdigit() or len(last_id) > 19:
            raise ValueError
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise QueryError("cursor: not a cursor this API issued") from None
    if digest != _digest(filters):
        raise QueryError("cursor: was issued for other filters; start again without it")
    return int(last_id)


def _digest(filters: Mapping[str, Any]) -> str:
    canonical = repr(sorted((k, repr(v)) for k, v in filters.items() if v is not None))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# -- rendering ---------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def event_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "endpoint": row.endpoint,
        "event_type": row.event_type,
        "room_id": row.room_id,
        "job_id": row.job_id,
        "received_at": _iso(row.received_at),
        "signed_at": _iso(row.signed_at),
        "message": masked_message(row.event_type, row.message),
        "message_encoding": row.message_encoding,
        "extra": masked_message(row.event_type, row.extra),
        "delivery_id": row.delivery_id,
    }


def masked_body_text(body: bytes | None) -> str | None:
    """The raw body as text for people, with every stream_key value masked: at any depth of JSON
    inside JSON strings, whatever it escapes, up to the end when the body is cut short."""
    if body is None:
        return None
    out, done = bytearray(), 0
    for match in _STREAM_KEY_TEXT.finditer(body):
        if match.start() < done:
            continue
        start, end = _value_span(body, match.end())
        out += body[done:start] + _masked_raw(body[start:end])
        done = end
    return bytes(out + body[done:]).decode("utf-8", "replace")


def _value_span(body: bytes, at: int) -> tuple[int, int]:
    """Where the value starting at ``at`` is, without its quotes. A string opened by a quote after
    k backslashes (k = 0, 1, 3, ... for each level of JSON in a string) is closed by the first
    quote after a run of r backslashes with r % (2k + 2) == k; other runs escape the quote."""
    k = len(body[at:]) - len(body[at:].lstrip(b"\\"))
    if body[at + k : at + k + 1] != b'"':  # not a string: a number, true, ...
        end = at
        while end < len(body) and body[end : end + 1] not in b',}]" \t\r\n\\':
            end += 1
        return at, end
    start = at + k + 1
    for quote in re.finditer(rb'(\\*)"', body[start:]):
        run = len(quote.group(1))
        if run % (2 * k + 2) == k:
            return start, start + quote.end() - 1 - k
    return start, len(body)


def _masked_raw(raw: bytes) -> bytes:
    # The last characters are shown (as mask_stream_key does) only when they are plainly written.
    masked = mask_stream_key(raw.decode("utf-8", "replace")) or ""
    plain = b"\\" not in raw and _SAFE_TAIL.fullmatch(masked[4:])
    return masked.encode() if plain else b"****"


def delivery_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "endpoint": row.endpoint,
        "status": row.status,
        "received_at": _iso(row.received_at),
        "signed_at": _iso(row.signed_at),
        "key_index": row.key_index,
        "time_unit": row.time_unit,
        "body_size": row.body_size,
        "body_sha256": row.body_sha256,
        "body": masked_body_text(row.body),
        "headers": row.headers,
        "query": row.query,
        "remote_addr": row.remote_addr,
        "error": row.error,
        "duplicate_of": row.duplicate_of,
        "event_id": row.event_id,
    }


def rejection_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "received_at": _iso(row.received_at),
        "endpoint": row.endpoint,
        "reason": row.reason,
        "error_code": row.error_code,
        "detail": row.detail,
        "remote_addr": row.remote_addr,
        "clock_skew_seconds": row.clock_skew_seconds,
        "body_size": row.body_size,
        "body_sha256": row.body_sha256,
        "body_prefix": row.body_prefix,
        # How many refusals over the log's rate limit were left out just before this one.
        "suppressed_before": row.suppressed_before,
    }


def finding_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "status": "open" if row.resolved_at is None else "resolved",
        "room_id": row.room_id,
        "job_id": row.job_id,
        "endpoint": row.endpoint,
        "event_id": row.event_id,
        "detail": row.detail,
        "data": row.data,
        "first_seen_at": _iso(row.first_seen_at),
        "last_seen_at": _iso(row.last_seen_at),
        "resolved_at": _iso(row.resolved_at),
        "occurrences": row.occurrences,
    }


def snapshot_json(row: Any) -> dict[str, Any]:
    data = dict(row.data)
    config = data.get("live_event_callback_config")
    if isinstance(config, dict) and config.get("key"):
        # The callback key is the endpoint's signing secret: never shown.
        data["live_event_callback_config"] = {**config, "key": "****"}
    return {
        "job_id": row.job_id,
        "room_id": row.room_id,
        "state": row.state,
        "fetched_at": _iso(row.fetched_at),
        "first_fetched_at": _iso(row.first_fetched_at),
        "job": data,
    }


# -- queries -----------------------------------------------------------------------------------


def _page(
    conn: Connection,
    query: sa.Select[Any],
    id_column: sa.ColumnElement[int],
    *,
    limit: int,
    after: int | None,
    filters: Mapping[str, Any],
    render: Any,
) -> Page:
    if after is not None:
        query = query.where(id_column > after)
    rows = conn.execute(query.order_by(id_column).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode_cursor(rows[-1].id, filters) if more and rows else None
    return Page([render(row) for row in rows], cursor)


def list_events(
    conn: Connection,
    *,
    endpoint: str | None = None,
    room_id: str | None = None,
    job_id: str | None = None,
    event_types: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page:
    filters = {
        "endpoint": endpoint,
        "room_id": room_id,
        "job_id": job_id,
        "event_type": tuple(event_types) if event_types else None,
        "since": since,
        "until": until,
    }
    after = decode_cursor(cursor, filters)
    query = _filtered_events(
        sa.select(EVENTS),
        endpoint=endpoint,
        room_id=room_id,
        job_id=job_id,
        event_types=event_types,
        since=since,
        until=until,
    )
    return _page(
        conn, query, EVENTS.c.id, limit=limit, after=after, filters=filters, render=event_json
    )


def _filtered_events(
    query: sa.Select[Any],
    *,
    endpoint: str | None,
    room_id: str | None,
    job_id: str | None,
    event_types: Sequence[str] | None,
    since: datetime | None,
    until: datetime | None,
) -> sa.Select[Any]:
    if endpoint is not None:
        query = query.where(EVENTS.c.endpoint == endpoint)
    if room_id is not None:
        query = query.where(EVENTS.c.room_id == room_id)
    if job_id is not None:
        query = query.where(EVENTS.c.job_id == job_id)
    if event_types:
        query = query.where(EVENTS.c.event_type.in_(list(event_types)))
    if since is not None:
        query = query.where(EVENTS.c.received_at >= since)
    if until is not None:
        query = query.where(EVENTS.c.received_at <= until)
    return query


def get_event(conn: Connection, event_id: int) -> dict[str, Any] | None:
    row = conn.execute(sa.select(EVENTS).where(EVENTS.c.id == event_id)).first()
    return None if row is None else event_json(row)


def list_deliveries(
    conn: Connection,
    *,
    status: str | None = None,
    endpoint: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page:
    if status is not None and status not in DeliveryStatus.ALL:
        raise QueryError(f"status: must be one of {', '.join(DeliveryStatus.ALL)}")
    filters = {"status": status, "endpoint": endpoint, "since": since, "until": until}
    after = decode_cursor(cursor, filters)
    query = sa.select(*DELIVERIES.c, EVENTS.c.id.label("event_id")).select_from(
        DELIVERIES.outerjoin(
            EVENTS,
            EVENTS.c.delivery_id == sa.func.coalesce(DELIVERIES.c.duplicate_of, DELIVERIES.c.id),
        )
    )
    if status is not None:
        query = query.where(DELIVERIES.c.status == status)
    if endpoint is not None:
        query = query.where(DELIVERIES.c.endpoint == endpoint)
    if since is not None:
        query = query.where(DELIVERIES.c.received_at >= since)
    if until is not None:
        query = query.where(DELIVERIES.c.received_at <= until)
    return _page(
        conn,
        query,
        DELIVERIES.c.id,
        limit=limit,
        after=after,
        filters=filters,
        render=delivery_json,
    )


def list_rejections(
    conn: Connection,
    *,
    endpoint: str | None = None,
    reason: str | None = None,
    since: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page:
    filters = {"endpoint": endpoint, "reason": reason, "since": since}
    after = decode_cursor(cursor, filters)
    query = sa.select(REJECTIONS)
    if endpoint is not None:
        query = query.where(REJECTIONS.c.endpoint == endpoint)
    if reason is not None:
        query = query.where(REJECTIONS.c.reason == reason)
    if since is not None:
        query = query.where(REJECTIONS.c.received_at >= since)
    return _page(
        conn,
        query,
        REJECTIONS.c.id,
        limit=limit,
        after=after,
        filters=filters,
        render=rejection_json,
    )


def job_view(
    conn: Connection, job_id: str, *, limit: int = MAX_TIMELINE, cursor: str | None = None
) -> dict[str, Any] | None:
    """A job's timeline, what it implies, MetaStudio's latest snapshot of it and its findings.
    None when nothing names the job (no event, snapshot or finding)."""
    timeline = list_events(conn, job_id=job_id, limit=limit, cursor=cursor)
    # A job MetaStudio lists (a snapshot) or a finding names, e.g. one that FAILED before it sent
    # a callback, has a view too: the finding's job_id must lead somewhere.
    snapshot = latest_snapshot(conn, job_id)
    findings = [
        finding_json(row)
        for row in conn.execute(
            sa.select(FINDINGS).where(FINDINGS.c.job_id == job_id).order_by(FINDINGS.c.id)
        )
    ]
    if not timeline.items and cursor is None and snapshot is None and not findings:
        return None
    by_job = EVENTS.c.job_id == job_id
    counts: dict[str, int] = dict(
        conn.execute(
            sa.select(EVENTS.c.event_type, sa.func.count())
            .where(by_job)
            .group_by(EVENTS.c.event_type)
        ).all()
    )
    # The first and the last event by id (ids follow commit order), read from the two ends of
    # ix_events_job_id_id. min()/max() of received_at would let PostgreSQL walk the whole
    # received_at index instead, filtering on job_id (about 200 ms over 1M events).
    first_row = conn.execute(
        sa.select(EVENTS.c.received_at).where(by_job).order_by(EVENTS.c.id).limit(1)
    ).first()
    last_row = conn.execute(
        sa.select(EVENTS.c.received_at, EVENTS.c.room_id)
        .where(by_job)
        .order_by(EVENTS.c.id.desc())
        .limit(1)
    ).first()
    first_last = (
        first_row[0] if first_row else None,
        last_row[0] if last_row else None,
    )
    room = last_row[1] if last_row else None
    if room is None:
        room = snapshot["room_id"] if snapshot else findings[0]["room_id"] if findings else None
    return {
        "job_id": job_id,
        "room_id": room,
        "event_count": sum(counts.values()),
        "event_counts": counts,
        "first_received_at": _iso(first_last[0]),
        "last_received_at": _iso(first_last[1]),
        "rtmp": _rtmp_state(conn, job_id),
        "script": _script_position(conn, job_id),
        "replies": _replies(conn, job_id),
        "timeline": timeline.items,
        "next_cursor": timeline.next_cursor,
        "metastudio": snapshot,
        "findings": findings,
    }


def latest_snapshot(conn: Connection, job_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        sa.select(SNAPSHOTS)
        .where(SNAPSHOTS.c.job_id == job_id)
        .order_by(SNAPSHOTS.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else snapshot_json(row)


def list_findings(
    conn: Connection,
    *,
    room_id: str | None = None,
    job_id: str | None = None,
    kind: str | None = None,
    status: str = "all",
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page:
    if status not in FINDING_STATUSES:
        raise QueryError(f"status: must be one of {', '.join(FINDING_STATUSES)}")
    filters = {"room_id": room_id, "job_id": job_id, "kind": kind, "status": status}
    after = decode_cursor(cursor, filters)
    query = sa.select(FINDINGS)
    if room_id is not None:
        query = query.where(FINDINGS.c.room_id == room_id)
    if job_id is not None:
        query = query.where(FINDINGS.c.job_id == job_id)
    if kind is not None:
        query = query.where(FINDINGS.c.kind == kind)
    if status == "open":
        query = query.where(FINDINGS.c.resolved_at.is_(None))
    elif status == "resolved":
        query = query.where(FINDINGS.c.resolved_at.is_not(None))
    return _page(
        conn,
        query,
        FINDINGS.c.id,
        limit=limit,
        after=after,
        filters=filters,
        render=finding_json,
    )


def _latest_of_type(conn: Connection, job_id: str, event_type: str, n: int) -> list[Any]:
    query = (
        sa.select(EVENTS.c.id, EVENTS.c.received_at, EVENTS.c.signed_at, EVENTS.c.message)
        .where(EVENTS.c.job_id == job_id, EVENTS.c.event_type == event_type)
        .order_by(EVENTS.c.id.desc())
        .limit(n)
    )
    return list(conn.execute(query).all())


def _rtmp_state(conn: Connection, job_id: str) -> dict[str, Any] | None:
    """The last RTMP state and when the stream entered it (first event of the latest run)."""
    state: str | None = None
    since_row: Any = None
    last_row: Any = None
    batch = 200
    offset_id: int | None = None
    while True:
        query = (
            sa.select(EVENTS.c.id, EVENTS.c.received_at, EVENTS.c.signed_at, EVENTS.c.message)
            .where(
                EVENTS.c.job_id == job_id,
                EVENTS.c.event_type == EventType.RTMP_STREAM_STATE_CHANGE.value,
            )
            .order_by(EVENTS.c.id.desc())
            .limit(batch)
        )
        if offset_id is not None:
            query = query.where(EVENTS.c.id < offset_id)
        rows = conn.execute(query).all()
        for row in rows:
            row_state = row.message.get("state")
            if last_row is None:
                last_row, state = row, row_state
            elif row_state != state:
                return _rtmp_answer(state, since_row or last_row, last_row)
            since_row = row
        if len(rows) < batch:
            break
        offset_id = rows[-1].id
    if last_row is None:
        return None
    return _rtmp_answer(state, since_row or last_row, last_row)


def _rtmp_answer(state: str | None, since_row: Any, last_row: Any) -> dict[str, Any]:
    return {
        "state": state,
        "since": _iso(since_row.signed_at or since_row.received_at),
        "since_event_id": since_row.id,
        "last_event_id": last_row.id,
        "output_url": last_row.message.get("output_url"),
        "stream_key": mask_stream_key(last_row.message.get("stream_key")),
    }


def _script_position(conn: Connection, job_id: str) -> dict[str, Any] | None:
    rows = _latest_of_type(conn, job_id, EventType.SHOOT_SCRIPT_SWITCH.value, 1)
    if not rows:
        return None
    message = rows[0].message
    return {
        "scene_script_name": message.get("scene_script_name"),
        "shoot_script_sequence_no": message.get("shoot_script_sequence_no"),
        "shoot_script_title": message.get("shoot_script_title"),
        "since": _iso(rows[0].signed_at or rows[0].received_at),
        "event_id": rows[0].id,
    }


def _replies(conn: Connection, job_id: str) -> dict[str, Any]:
    recent = _latest_of_type(conn, job_id, EventType.REPLY_COMMAND_FINISH.value, 20)
    total = conn.execute(
        sa.select(sa.func.count()).where(
            EVENTS.c.job_id == job_id,
            EVENTS.c.event_type == EventType.REPLY_COMMAND_FINISH.value,
        )
    ).scalar_one()
    return {
        "finished": total,
        "recent": [
            {
                "reply_id": row.message.get("reply_id"),
                "at": _iso(row.signed_at or row.received_at),
                "event_id": row.id,
            }
            for row in recent
        ],
    }


def export_events(
    conn: Connection,
    *,
    endpoint: str | None = None,
    room_id: str | None = None,
    job_id: str | None = None,
    event_types: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    chunk: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Every matching event with its delivery's original bytes (base64), oldest first.

    This is the JSON Lines record of ``metastudio-receiver export``, read back by ``replay``. It
    holds the raw body, stream key included: export files are as secret as the database.
    """
    base = _filtered_events(
        sa.select(
            *EVENTS.c, DELIVERIES.c.body, DELIVERIES.c.headers.label("delivery_headers")
        ).select_from(EVENTS.join(DELIVERIES, DELIVERIES.c.id == EVENTS.c.delivery_id)),
        endpoint=endpoint,
        room_id=room_id,
        job_id=job_id,
        event_types=event_types,
        since=since,
        until=until,
    )
    after = 0
    while True:
        rows = conn.execute(base.where(EVENTS.c.id > after).order_by(EVENTS.c.id).limit(chunk))
        count = 0
        for row in rows:
            count += 1
            after = row.id
            yield {
                "format": EXPORT_FORMAT,
                "event_id": row.id,
                "delivery_id": row.delivery_id,
                "endpoint": row.endpoint,
                "event_type": row.event_type,
                "room_id": row.room_id,
                "job_id": row.job_id,
                "received_at": _iso(row.received_at),
                "signed_at": _iso(row.signed_at),
                "message": row.message,
                "body_b64": base64.b64encode(row.body or b"").decode(),
                "headers": row.delivery_headers,
            }
        if count < chunk:
            return

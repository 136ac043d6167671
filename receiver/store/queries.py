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

from receiver.errors import NotFound, QueryError
from receiver.protocol.ids import id_key, optional_key
from receiver.store.models import Delivery, DeliveryStatus, Event, Finding, JobSnapshot, Rejection
from receiver.store.views import delivery_json, event_json, finding_json, iso, rejection_json

EVENTS = Event.__table__  # type: ignore[attr-defined]
DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
REJECTIONS = Rejection.__table__  # type: ignore[attr-defined]
FINDINGS = Finding.__table__  # type: ignore[attr-defined]
SNAPSHOTS = JobSnapshot.__table__  # type: ignore[attr-defined]
FINDING_STATUSES = ("open", "acknowledged", "muted", "resolved", "all")

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_FILTER_LENGTH = 256
MAX_TIMELINE = 10000
EXPORT_FORMAT = "metastudio-receiver/export/v1"
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


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
    except (ValueError, OverflowError):  # OverflowError: the offset moves it past year 1 or 9999
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
    # A cursor names the filters by their keys: one issued for either spelling serves both.
    filters = {
        "endpoint": endpoint,
        "room_id": optional_key(room_id),
        "job_id": optional_key(job_id),
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
        query = query.where(EVENTS.c.room_key == id_key(room_id))
    if job_id is not None:
        query = query.where(EVENTS.c.job_key == id_key(job_id))
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
    room_key, job_key = optional_key(room_id), optional_key(job_id)
    filters = {"room_id": room_key, "job_id": job_key, "kind": kind, "status": status}
    after = decode_cursor(cursor, filters)
    query = sa.select(FINDINGS)
    if room_key is not None:
        query = query.where(FINDINGS.c.room_key == room_key)
    if job_key is not None:
        query = query.where(FINDINGS.c.job_key == job_key)
    if kind is not None:
        query = query.where(FINDINGS.c.kind == kind)
    if status == "open":
        query = query.where(FINDINGS.c.resolved_at.is_(None), FINDINGS.c.acked_at.is_(None))
    elif status in ("acknowledged", "muted"):
        action = "ack" if status == "acknowledged" else "mute"
        query = query.where(
            FINDINGS.c.resolved_at.is_(None),
            FINDINGS.c.acked_at.is_not(None),
            FINDINGS.c.ack_action == action,
        )
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


def events_after(
    conn: Connection,
    after: int,
    *,
    room_id: str | None = None,
    job_id: str | None = None,
    limit: int = MAX_LIMIT,
) -> list[dict[str, Any]]:
    """Events with an id above ``after``, oldest first (the live stream, /v1/events/stream).
    Ids are handed out in commit order (receiver.store.write), so reading past the last id seen
    never skips an event that commits late."""
    query = sa.select(EVENTS).where(EVENTS.c.id > after)
    room_key, job_key = optional_key(room_id), optional_key(job_id)
    if room_key is not None:
        query = query.where(EVENTS.c.room_key == room_key)
    if job_key is not None:
        query = query.where(EVENTS.c.job_key == job_key)
    rows = conn.execute(query.order_by(EVENTS.c.id).limit(limit))
    return [event_json(row) for row in rows]


def last_event_id(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(EVENTS.c.id), 0))).scalar_one())


def acknowledge_finding(
    conn: Connection, finding_id: int, *, action: str, reason: str, by: str, now: datetime
) -> dict[str, Any]:
    """Record who acknowledged (or muted) a finding, when and why; its answer as JSON."""
    updated = conn.execute(
        sa.update(FINDINGS)
        .where(FINDINGS.c.id == finding_id)
        .values(ack_action=action, acked_by=by[:160], acked_at=now, ack_reason=reason[:500])
    )
    if updated.rowcount == 0:
        raise NotFound(f"no finding {finding_id}")
    row = conn.execute(sa.select(FINDINGS).where(FINDINGS.c.id == finding_id)).one()
    return finding_json(row)


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
                "received_at": iso(row.received_at),
                "signed_at": iso(row.signed_at),
                "message": row.message,
                "body_b64": base64.b64encode(row.body or b"").decode(),
                "headers": row.delivery_headers,
            }
        if count < chunk:
            return

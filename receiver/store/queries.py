"""The read side: what was stored, filtered, in keyset pages (receiver.store.paging).

The ``parse_*`` functions check filters as the query API and the command line take them. Each
list names its filters once, in a :class:`Listing` of the column and comparison each narrows by;
the same names make up its cursor, so a cursor issued for other filters is refused. Also here:
the live stream's reads, acknowledging a finding, and the export record.
"""

from __future__ import annotations

import base64
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from receiver.errors import NotFound, QueryError
from receiver.protocol.ids import optional_key
from receiver.store import finding_log
from receiver.store.models import Delivery, DeliveryStatus, Event, Finding, JobSnapshot, Rejection
from receiver.store.paging import Listing, Page, matching, page
from receiver.store.views import delivery_json, event_json, finding_json, iso, rejection_json

EVENTS = Event.__table__  # type: ignore[attr-defined]
DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
REJECTIONS = Rejection.__table__  # type: ignore[attr-defined]
FINDINGS = Finding.__table__  # type: ignore[attr-defined]
SNAPSHOTS = JobSnapshot.__table__  # type: ignore[attr-defined]

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_FILTER_LENGTH = 256
MAX_TIMELINE = 10000
EXPORT_FORMAT = "metastudio-receiver/export/v1"
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


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


# A filter's parser: (its name, its text or None when not given) -> the store query's value.
Parser = Callable[[str, str | None], Any]

# The event filters, by the names the query API and the command line give them, each with its
# parser, in the order they are checked (the first error is the answer). list_events and
# export_events take event_type as event_types.
EVENT_FILTERS: dict[str, Parser] = {
    "endpoint": parse_text,
    "room_id": parse_text,
    "job_id": parse_text,
    "event_type": parse_list,
    "since": parse_time,
    "until": parse_time,
}
KEYWORDS = {"event_type": "event_types"}


def event_filters(given: Mapping[str, str | None]) -> dict[str, Any]:
    """list_events' and export_events' filter arguments, from the filters as given (text)."""
    return {
        KEYWORDS.get(name, name): parse(name, given.get(name))
        for name, parse in EVENT_FILTERS.items()
    }


# -- the lists ---------------------------------------------------------------------------------


def _one_of(column: Any, values: Sequence[str]) -> Any:
    return column.in_(list(values))


_EVENTS = Listing(
    EVENTS.c.id,
    {
        "endpoint": (EVENTS.c.endpoint, operator.eq),
        "room_id": (EVENTS.c.room_key, operator.eq),
        "job_id": (EVENTS.c.job_key, operator.eq),
        "event_type": (EVENTS.c.event_type, _one_of),
        "since": (EVENTS.c.received_at, operator.ge),
        "until": (EVENTS.c.received_at, operator.le),
    },
    event_json,
)
_DELIVERIES = Listing(
    DELIVERIES.c.id,
    {
        "status": (DELIVERIES.c.status, operator.eq),
        "endpoint": (DELIVERIES.c.endpoint, operator.eq),
        "since": (DELIVERIES.c.received_at, operator.ge),
        "until": (DELIVERIES.c.received_at, operator.le),
    },
    delivery_json,
)
_REJECTIONS = Listing(
    REJECTIONS.c.id,
    {
        "endpoint": (REJECTIONS.c.endpoint, operator.eq),
        "reason": (REJECTIONS.c.reason, operator.eq),
        "since": (REJECTIONS.c.received_at, operator.ge),
    },
    rejection_json,
)
_FINDINGS = Listing(
    FINDINGS.c.id,
    {
        "room_id": (FINDINGS.c.room_key, operator.eq),
        "job_id": (FINDINGS.c.job_key, operator.eq),
        "kind": (FINDINGS.c.kind, operator.eq),
    },
    finding_json,
)


def _acked(action: str) -> tuple[Any, ...]:
    """Unresolved, and acknowledged with ``action`` (ack or mute)."""
    unresolved, acked = FINDINGS.c.resolved_at.is_(None), FINDINGS.c.acked_at.is_not(None)
    return unresolved, acked, FINDINGS.c.ack_action == action


# A finding's status is not one column: the conditions of each.
_FINDING_STATES: dict[str, tuple[Any, ...]] = {
    "open": (FINDINGS.c.resolved_at.is_(None), FINDINGS.c.acked_at.is_(None)),
    "acknowledged": _acked("ack"),
    "muted": _acked("mute"),
    "resolved": (FINDINGS.c.resolved_at.is_not(None),),
    "all": (),
}
FINDING_STATUSES = tuple(_FINDING_STATES)


def _event_filters(
    *,
    endpoint: str | None,
    room_id: str | None,
    job_id: str | None,
    event_types: Sequence[str] | None,
    since: datetime | None,
    until: datetime | None,
) -> dict[str, Any]:
    # By the ids' keys: a cursor issued for either spelling of an id serves both.
    return {
        "endpoint": endpoint,
        "room_id": optional_key(room_id),
        "job_id": optional_key(job_id),
        "event_type": tuple(event_types) if event_types else None,
        "since": since,
        "until": until,
    }


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
    filters = _event_filters(
        endpoint=endpoint,
        room_id=room_id,
        job_id=job_id,
        event_types=event_types,
        since=since,
        until=until,
    )
    return page(conn, _EVENTS, sa.select(EVENTS), filters, limit=limit, cursor=cursor)


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
    query = sa.select(*DELIVERIES.c, EVENTS.c.id.label("event_id")).select_from(
        DELIVERIES.outerjoin(
            EVENTS,
            EVENTS.c.delivery_id == sa.func.coalesce(DELIVERIES.c.duplicate_of, DELIVERIES.c.id),
        )
    )
    return page(conn, _DELIVERIES, query, filters, limit=limit, cursor=cursor)


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
    return page(conn, _REJECTIONS, sa.select(REJECTIONS), filters, limit=limit, cursor=cursor)


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
    filters = {
        "room_id": optional_key(room_id),
        "job_id": optional_key(job_id),
        "kind": kind,
        "status": status,
    }
    also = _FINDING_STATES[status]
    return page(
        conn, _FINDINGS, sa.select(FINDINGS), filters, limit=limit, cursor=cursor, also=also
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
    keys = {"room_id": optional_key(room_id), "job_id": optional_key(job_id)}
    query = matching(sa.select(EVENTS).where(EVENTS.c.id > after), keys, _EVENTS.conditions)
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
    finding_log.record(conn, [finding_id], finding_log.ACKNOWLEDGED, now=now)
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
    filters = _event_filters(
        endpoint=endpoint,
        room_id=room_id,
        job_id=job_id,
        event_types=event_types,
        since=since,
        until=until,
    )
    base = matching(
        sa.select(
            *EVENTS.c, DELIVERIES.c.body, DELIVERIES.c.headers.label("delivery_headers")
        ).select_from(EVENTS.join(DELIVERIES, DELIVERIES.c.id == EVENTS.c.delivery_id)),
        filters,
        _EVENTS.conditions,
    )
    after = 0
    while True:
        rows = conn.execute(base.where(EVENTS.c.id > after).order_by(EVENTS.c.id).limit(chunk))
        count = 0
        for row in rows:
            count += 1
            after = row.id
            yield export_record(row)
        if count < chunk:
            return


def export_record(row: Any) -> dict[str, Any]:
    """One export (and archive) record: an ``events`` row with its delivery's ``body`` and
    ``delivery_headers``."""
    return {
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

"""The job view (GET /v1/jobs/{job_id}): a job's timeline and what its events imply."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from receiver.protocol.events import EventType, mask_stream_key
from receiver.protocol.ids import id_key
from receiver.store.queries import EVENTS, FINDINGS, MAX_TIMELINE, SNAPSHOTS, list_events
from receiver.store.views import finding_json, iso, snapshot_json


def job_view(
    conn: Connection, job_id: str, *, limit: int = MAX_TIMELINE, cursor: str | None = None
) -> dict[str, Any] | None:
    """A job's timeline, what it implies, MetaStudio's latest snapshot of it and its findings.
    None when nothing names the job (no event, snapshot or finding).

    ``job_id`` in either of MetaStudio's spellings (``receiver.protocol.ids``) finds the same job;
    the
    answer's ``job_id`` is spelled as the job's latest event (else MetaStudio) spelled it.
    """
    key = id_key(job_id)
    timeline = list_events(conn, job_id=job_id, limit=limit, cursor=cursor)
    # A job MetaStudio lists (a snapshot) or a finding names, e.g. one that FAILED before it sent
    # a callback, has a view too: the finding's job_id must lead somewhere.
    snapshot = latest_snapshot(conn, job_id)
    findings = [
        finding_json(row)
        for row in conn.execute(
            sa.select(FINDINGS).where(FINDINGS.c.job_key == key).order_by(FINDINGS.c.id)
        )
    ]
    if not timeline.items and cursor is None and snapshot is None and not findings:
        return None
    by_job = EVENTS.c.job_key == key
    counts: dict[str, int] = dict(
        conn.execute(
            sa.select(EVENTS.c.event_type, sa.func.count())
            .where(by_job)
            .group_by(EVENTS.c.event_type)
        ).all()
    )
    # The first and the last event by id (ids follow commit order), read from the two ends of
    # ix_events_job_key_id. min()/max() of received_at would let PostgreSQL walk the whole
    # received_at index instead, filtering on job_id (about 200 ms over 1M events).
    first_row = conn.execute(
        sa.select(EVENTS.c.received_at).where(by_job).order_by(EVENTS.c.id).limit(1)
    ).first()
    last_row = conn.execute(
        sa.select(EVENTS.c.received_at, EVENTS.c.room_id, EVENTS.c.job_id)
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
    spelled = (
        last_row[2]
        if last_row
        else snapshot["job_id"]
        if snapshot
        else findings[0]["job_id"]
        if findings
        else None
    )
    return {
        "job_id": spelled or job_id,
        "job_key": key,
        "room_id": room,
        "event_count": sum(counts.values()),
        "event_counts": counts,
        "first_received_at": iso(first_last[0]),
        "last_received_at": iso(first_last[1]),
        "rtmp": rtmp_state(conn, key),
        "script": _script_position(conn, key),
        "replies": _replies(conn, key),
        "timeline": timeline.items,
        "next_cursor": timeline.next_cursor,
        "metastudio": snapshot,
        "findings": findings,
    }


def latest_snapshot(conn: Connection, job_id: str) -> dict[str, Any] | None:
    """MetaStudio's latest listing of the job, found by either spelling of its id."""
    row = conn.execute(
        sa.select(SNAPSHOTS)
        .where(SNAPSHOTS.c.job_key == id_key(job_id))
        .order_by(SNAPSHOTS.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else snapshot_json(row)


def _latest_of_type(conn: Connection, key: str, event_type: str, n: int) -> list[Any]:
    query = (
        sa.select(EVENTS.c.id, EVENTS.c.received_at, EVENTS.c.signed_at, EVENTS.c.message)
        .where(EVENTS.c.job_key == key, EVENTS.c.event_type == event_type)
        .order_by(EVENTS.c.id.desc())
        .limit(n)
    )
    return list(conn.execute(query).all())


def rtmp_state(conn: Connection, key: str) -> dict[str, Any] | None:
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
                EVENTS.c.job_key == key,
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
        "since": iso(since_row.signed_at or since_row.received_at),
        "since_event_id": since_row.id,
        "last_event_id": last_row.id,
        "output_url": last_row.message.get("output_url"),
        "stream_key": mask_stream_key(last_row.message.get("stream_key")),
    }


def _script_position(conn: Connection, key: str) -> dict[str, Any] | None:
    rows = _latest_of_type(conn, key, EventType.SHOOT_SCRIPT_SWITCH.value, 1)
    if not rows:
        return None
    message = rows[0].message
    return {
        "scene_script_name": message.get("scene_script_name"),
        "shoot_script_sequence_no": message.get("shoot_script_sequence_no"),
        "shoot_script_title": message.get("shoot_script_title"),
        "since": iso(rows[0].signed_at or rows[0].received_at),
        "event_id": rows[0].id,
    }


def _replies(conn: Connection, key: str) -> dict[str, Any]:
    recent = _latest_of_type(conn, key, EventType.REPLY_COMMAND_FINISH.value, 20)
    total = conn.execute(
        sa.select(sa.func.count()).where(
            EVENTS.c.job_key == key,
            EVENTS.c.event_type == EventType.REPLY_COMMAND_FINISH.value,
        )
    ).scalar_one()
    return {
        "finished": total,
        "recent": [
            {
                "reply_id": row.message.get("reply_id"),
                "at": iso(row.signed_at or row.received_at),
                "event_id": row.id,
            }
            for row in recent
        ],
    }

"""What the web console (receiver.web.console.routes) shows, read from the store: the jobs seen
with their
states and open findings, and one job's page (its view from receiver.crosscheck.jobs, the strip
chart of
its RTMP states, its deliveries and the recent rejections of its endpoints). Stream keys are
masked as everywhere (the events come through receiver.store.views)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from receiver.crosscheck import jobs
from receiver.protocol.ids import id_key
from receiver.store.models import Delivery, Event, Finding, Rejection
from receiver.store.views import delivery_json, iso, rejection_json

EVENTS = Event.__table__  # type: ignore[attr-defined]
FINDINGS = Finding.__table__  # type: ignore[attr-defined]
DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
REJECTIONS = Rejection.__table__  # type: ignore[attr-defined]

MAX_JOBS = 200
STATE_COLOURS = {
    "CONNECTING": "#e0a800",
    "CONNECTED": "#2e9d4f",
    "RECONNECTING": "#e07b00",
    "DISCONNECTED": "#c0392b",
    "END": "#6c757d",
}
OTHER_COLOUR = "#8e44ad"


def jobs_seen(conn: Connection, *, limit: int = MAX_JOBS) -> list[dict[str, Any]]:
    """The jobs with events, most recently active first: room, counts, the RTMP state from the
    events, MetaStudio's latest state of the job, and its open findings."""
    groups = conn.execute(
        sa.select(
            EVENTS.c.job_key,
            sa.func.max(EVENTS.c.id).label("last_id"),
            sa.func.count().label("events"),
        )
        .where(EVENTS.c.job_key.is_not(None))
        .group_by(EVENTS.c.job_key)
        .order_by(sa.desc("last_id"))
        .limit(limit)
    ).all()
    open_counts: dict[str, int] = dict(
        conn.execute(
            sa.select(FINDINGS.c.job_key, sa.func.count())
            .where(FINDINGS.c.resolved_at.is_(None), FINDINGS.c.acked_at.is_(None))
            .group_by(FINDINGS.c.job_key)
        ).all()
    )
    out = []
    for key, last_id, count in groups:
        last = conn.execute(
            sa.select(EVENTS.c.job_id, EVENTS.c.room_id, EVENTS.c.received_at).where(
                EVENTS.c.id == last_id
            )
        ).one()
        snapshot = jobs.latest_snapshot(conn, last.job_id)
        rtmp = jobs.rtmp_state(conn, key)
        out.append(
            {
                "job_id": last.job_id,
                "room_id": last.room_id,
                "events": count,
                "last_received_at": iso(last.received_at),
                "rtmp_state": rtmp["state"] if rtmp else None,
                "metastudio_state": snapshot["state"] if snapshot else None,
                "open_findings": open_counts.get(key, 0),
            }
        )
    return out


def rooms_of(job_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs grouped by room, rooms in order of their latest activity."""
    rooms: dict[str, dict[str, Any]] = {}
    for job in job_rows:
        room = job["room_id"] or "(no room)"
        entry = rooms.setdefault(id_key(room), {"room_id": room, "jobs": [], "open_findings": 0})
        entry["jobs"].append(job)
        entry["open_findings"] += job["open_findings"]
    return list(rooms.values())


def job_page(conn: Connection, job_id: str) -> dict[str, Any] | None:
    view = jobs.job_view(conn, job_id)
    if view is None:
        return None
    timeline = view["timeline"]
    delivery_ids = sorted({e["delivery_id"] for e in timeline})
    deliveries = []
    if delivery_ids:
        original = sa.func.coalesce(DELIVERIES.c.duplicate_of, DELIVERIES.c.id)
        rows = conn.execute(
            sa.select(*DELIVERIES.c, EVENTS.c.id.label("event_id"))
            .select_from(DELIVERIES.outerjoin(EVENTS, EVENTS.c.delivery_id == original))
            .where(original.in_(delivery_ids))
            .order_by(DELIVERIES.c.id)
        )
        deliveries = [delivery_json(row) for row in rows]
    endpoints = sorted({e["endpoint"] for e in timeline})
    rejections = []
    if endpoints:
        rows = conn.execute(
            sa.select(REJECTIONS)
            .where(REJECTIONS.c.endpoint.in_(endpoints))
            .order_by(REJECTIONS.c.id.desc())
            .limit(20)
        )
        rejections = [rejection_json(row) for row in rows]
    return {
        **view,
        "strip": strip_chart(timeline),
        "deliveries": deliveries,
        "rejections": rejections,
    }


def strip_chart(timeline: list[dict[str, Any]], now: datetime | None = None) -> dict[str, Any]:
    """The RTMP states over time as segments of a bar: each state lasts from its event to the
    next state's (the last one to the latest event of the job, or now if it is still live)."""
    states = [
        (datetime.fromisoformat(e["received_at"]), str(e["message"].get("state", "?")))
        for e in timeline
        if e["event_type"] == "RTMP_STREAM_STATE_CHANGE" and e.get("received_at")
    ]
    if not states:
        return {"segments": [], "legend": [], "start": None, "end": None}
    times = [datetime.fromisoformat(e["received_at"]) for e in timeline if e.get("received_at")]
    start = states[0][0]
    end = max(times)
    if states[-1][1] != "END":
        end = max(end, now or datetime.now(UTC))
    span = max((end - start).total_seconds(), 1e-6)
    segments = []
    for index, (at, state) in enumerate(states):
        until = states[index + 1][0] if index + 1 < len(states) else end
        left = (at - start).total_seconds() / span * 100
        width = max((until - at).total_seconds() / span * 100, 0.5)
        segments.append(
            {
                "state": state,
                "at": at.isoformat(),
                "left": round(left, 3),
                "width": round(min(width, 100 - left), 3),
                "colour": STATE_COLOURS.get(state, OTHER_COLOUR),
            }
        )
    legend = sorted({(s["state"], s["colour"]) for s in segments})
    return {
        "segments": segments,
        "legend": legend,
        "start": start.isoformat(),
        "end": end.isoformat(),
    }

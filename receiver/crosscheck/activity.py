"""What the store says was received, as a cross-check run asks it: the rooms to ask MetaStudio
about, and each room's jobs as ``rules.JobActivity`` (counts, first and last events, the last
RTMP state), aggregated from the events in the database.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from receiver.crosscheck import rules
from receiver.protocol.events import EventType
from receiver.store.models import Event, Finding, UTCDateTime

EVENTS = Event.__table__  # type: ignore[attr-defined]
FINDINGS = Finding.__table__  # type: ignore[attr-defined]


def rooms_to_check(engine: sa.Engine, *, since: datetime) -> dict[str, str]:
    """room key -> a spelling of it, for every room with events received since ``since`` or open
    findings."""
    recent = (
        sa.select(EVENTS.c.room_key, sa.func.max(EVENTS.c.room_id))
        .where(EVENTS.c.room_key.is_not(None), EVENTS.c.received_at >= since)
        .group_by(EVENTS.c.room_key)
    )
    flagged = (
        sa.select(FINDINGS.c.room_key, sa.func.max(FINDINGS.c.room_id))
        .where(FINDINGS.c.room_key.is_not(None), FINDINGS.c.resolved_at.is_(None))
        .group_by(FINDINGS.c.room_key)
    )
    found: dict[str, str] = {}
    with engine.connect() as conn:
        for key, spelling in [*conn.execute(flagged), *conn.execute(recent)]:
            found[key] = spelling
    return found


def room_activity(engine: sa.Engine, *, room: str) -> list[rules.JobActivity]:
    """Each job of the room (by key) that events name, as the rules read it."""
    when = sa.func.coalesce(EVENTS.c.signed_at, EVENTS.c.received_at, type_=UTCDateTime())
    # By job key: the events of one job may spell its id both ways; max() picks one
    # spelling as received for the findings to show.
    per_job = (
        sa.select(
            EVENTS.c.job_key,
            sa.func.max(EVENTS.c.job_id),
            sa.func.max(EVENTS.c.room_id),
            EVENTS.c.endpoint,
            EVENTS.c.event_type,
            sa.func.count(),
            sa.func.min(when, type_=UTCDateTime()),
            sa.func.max(when, type_=UTCDateTime()),
            sa.func.min(EVENTS.c.id),
            sa.func.max(EVENTS.c.id),
        )
        .where(EVENTS.c.room_key == room, EVENTS.c.job_key.is_not(None))
        .group_by(EVENTS.c.job_key, EVENTS.c.endpoint, EVENTS.c.event_type)
    )
    rtmp = EventType.RTMP_STREAM_STATE_CHANGE.value
    last_rtmp: dict[str, int] = {}
    acc: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"endpoints": set(), "types": set(), "count": 0, "first": None, "last": None}
    )
    with engine.connect() as conn:
        for row in conn.execute(per_job):
            job_id, spelled, room_spelled, endpoint, event_type, count = row[:6]
            first, last, low, high = row[6:]
            a = acc[job_id]
            a["job_id"] = max(a.get("job_id", spelled), spelled)
            a["room_id"] = max(a.get("room_id", room_spelled), room_spelled)
            a["endpoints"].add(endpoint)
            a["types"].add(event_type)
            a["count"] += count
            if a["first"] is None or first < a["first"]:
                a["first"], a["first_id"] = first, low
            if a["last"] is None or last > a["last"]:
                a["last"] = last
            a["last_id"] = max(a.get("last_id", 0), high)
            if event_type == rtmp:
                last_rtmp[job_id] = max(last_rtmp.get(job_id, 0), high)
        # Each job's last RTMP event, by primary key: the grouped read above has their ids.
        # (A subquery on room_id and event_type made SQLite walk the event_type index, i.e.
        # every room's RTMP events, once per room.)
        states: dict[str, tuple[Any, Any, Any]] = {}
        ids = sorted(last_rtmp.values())
        for start in range(0, len(ids), 500):
            chunk = sa.select(EVENTS.c.job_key, EVENTS.c.message, when, EVENTS.c.id).where(
                EVENTS.c.id.in_(ids[start : start + 500])
            )
            for job_id, message, at, event_id in conn.execute(chunk):
                states[job_id] = (message.get("state"), at, event_id)
    out = []
    for job_id, a in acc.items():
        state, at, event_id = states.get(job_id, (None, None, None))
        out.append(
            rules.JobActivity(
                job_id=a["job_id"],
                room_id=a["room_id"],
                endpoints=frozenset(a["endpoints"]),
                event_count=a["count"],
                first_at=a["first"],
                last_at=a["last"],
                first_event_id=a["first_id"],
                last_event_id=a["last_id"],
                event_types=frozenset(a["types"]),
                rtmp_state=state,
                rtmp_at=at,
                rtmp_event_id=event_id,
            )
        )
    return out

"""What a cross-check run writes to the store, and the open findings its report lists.

MetaStudio's answer for a room becomes job snapshots (a new row only when a job changed) and the
rules' drafts become findings, one row per condition (``rules.Draft.fingerprint``): upserted when
seen again, reopened when they return, resolved when a run no longer finds them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from receiver.crosscheck import rules
from receiver.protocol.ids import api_form, id_key
from receiver.store import finding_log
from receiver.store.models import Finding, JobSnapshot
from receiver.store.views import finding_json

FINDINGS = Finding.__table__  # type: ignore[attr-defined]
SNAPSHOTS = JobSnapshot.__table__  # type: ignore[attr-defined]


def save_room(
    engine: sa.Engine,
    *,
    room: str,
    jobs: list[Mapping[str, Any]] | None,
    drafts: list[rules.Draft],
    resolvable: Sequence[str],
    now: datetime,
) -> tuple[int, int]:
    """One room's answer in one transaction: MetaStudio's jobs (None when it did not answer) as
    snapshots, ``drafts`` as findings, and the room's open findings of a ``resolvable`` kind that
    no draft repeats resolved. Returns (findings opened, findings resolved)."""
    with engine.begin() as conn:
        if jobs is not None:
            _save_snapshots(conn, room, jobs, now)
        opened = upsert_findings(conn, drafts, now)
        keep = {draft.fingerprint for draft in drafts}
        stale = [
            (fid, fingerprint)
            for fid, fingerprint in conn.execute(
                sa.select(FINDINGS.c.id, FINDINGS.c.fingerprint).where(
                    FINDINGS.c.room_key == room,
                    FINDINGS.c.resolved_at.is_(None),
                    FINDINGS.c.kind.in_(list(resolvable)),
                )
            )
            if fingerprint not in keep
        ]
        if stale:
            resolved = [fid for fid, _ in stale]
            conn.execute(
                sa.update(FINDINGS).where(FINDINGS.c.id.in_(resolved)).values(resolved_at=now)
            )
            finding_log.record(conn, resolved, finding_log.RESOLVED, now=now)
    return opened, len(stale)


def _save_snapshots(
    conn: Connection, room: str, jobs: list[Mapping[str, Any]], now: datetime
) -> None:
    """``room`` is the room's key; the rows keep MetaStudio's spelling of the ids."""
    latest = {
        job_key: (sid, digest)
        for job_key, sid, digest in conn.execute(
            sa.select(SNAPSHOTS.c.job_key, SNAPSHOTS.c.id, SNAPSHOTS.c.data_sha256).where(
                SNAPSHOTS.c.id.in_(
                    sa.select(sa.func.max(SNAPSHOTS.c.id))
                    .where(SNAPSHOTS.c.room_key == room)
                    .group_by(SNAPSHOTS.c.job_key)
                )
            )
        )
    }
    unchanged: list[int] = []
    new_rows: list[dict[str, Any]] = []
    for job in jobs:
        job_id = str(job.get("job_id") or "")[:128]
        if not job_id:
            continue
        listed_room = job.get("room_id")
        if not isinstance(listed_room, str) or id_key(listed_room) != room:
            listed_room = api_form(room)  # Table 6 has room_id, the example answer omits it
        data = dict(job)
        digest = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()
        previous = latest.get(id_key(job_id))
        if previous is not None and previous[1] == digest:
            unchanged.append(previous[0])
            continue
        state = job.get("state")
        new_rows.append(
            {
                "job_id": job_id,
                "room_id": listed_room[:128],
                "job_key": id_key(job_id),
                "room_key": room[:128],
                "state": str(state)[:32] if state is not None else None,
                "data": data,
                "data_sha256": digest,
                "first_fetched_at": now,
                "fetched_at": now,
            }
        )
    if unchanged:
        conn.execute(
            sa.update(SNAPSHOTS).where(SNAPSHOTS.c.id.in_(unchanged)).values(fetched_at=now)
        )
    if new_rows:
        conn.execute(sa.insert(SNAPSHOTS), new_rows)


def upsert_findings(conn: Connection, drafts: list[rules.Draft], now: datetime) -> int:
    """One row per condition (``Draft.fingerprint``): new ones inserted, known ones seen again,
    resolved ones reopened (both logged as opened: receiver.store.finding_log). Returns how many
    were opened or reopened."""
    if not drafts:
        return 0
    unique = {draft.fingerprint: draft for draft in drafts}
    existing = {
        fingerprint: (fid, resolved, action)
        for fid, fingerprint, resolved, action in conn.execute(
            sa.select(
                FINDINGS.c.id, FINDINGS.c.fingerprint, FINDINGS.c.resolved_at, FINDINGS.c.ack_action
            ).where(FINDINGS.c.fingerprint.in_(list(unique)))
        )
    }
    opened: list[int] = []
    for fingerprint, draft in unique.items():
        found = existing.get(fingerprint)
        if found is None:
            inserted = conn.execute(
                sa.insert(FINDINGS).values(
                    fingerprint=fingerprint,
                    kind=draft.kind,
                    room_id=draft.room_id,
                    job_id=draft.job_id,
                    room_key=draft.room_key,
                    job_key=draft.job_key,
                    endpoint=draft.endpoint,
                    event_id=draft.event_id,
                    detail=draft.detail[:1000],
                    data=draft.data,
                    first_seen_at=now,
                    last_seen_at=now,
                    occurrences=1,
                )
            )
            key = inserted.inserted_primary_key
            assert key is not None
            opened.append(int(key[0]))
            continue
        fid, resolved, action = found
        changes: dict[str, Any] = {}
        if resolved is not None:
            opened.append(fid)
            if action == "ack":  # handled once; its return is news. A mute holds.
                changes = {
                    "ack_action": None,
                    "acked_by": None,
                    "acked_at": None,
                    "ack_reason": None,
                }
        conn.execute(
            sa.update(FINDINGS)
            .where(FINDINGS.c.id == fid)
            .values(
                detail=draft.detail[:1000],
                data=draft.data,
                last_seen_at=now,
                resolved_at=None,
                occurrences=FINDINGS.c.occurrences + 1,
                **changes,
            )
        )
    finding_log.record(conn, opened, finding_log.OPENED, now=now)
    return len(opened)


def resolve_findings(conn: Connection, fingerprints: Sequence[str], now: datetime) -> int:
    """Resolve the open findings of these conditions (logged: receiver.store.finding_log);
    how many there were."""
    if not fingerprints:
        return 0
    ids = list(
        conn.execute(
            sa.select(FINDINGS.c.id).where(
                FINDINGS.c.fingerprint.in_(list(fingerprints)), FINDINGS.c.resolved_at.is_(None)
            )
        ).scalars()
    )
    if ids:
        conn.execute(sa.update(FINDINGS).where(FINDINGS.c.id.in_(ids)).values(resolved_at=now))
        finding_log.record(conn, ids, finding_log.RESOLVED, now=now)
    return len(ids)


def open_findings(engine: sa.Engine, *, rooms: list[str], full: bool) -> list[dict[str, Any]]:
    """The open, unacknowledged findings of ``rooms`` (all when empty) for a run's report; a
    ``full`` run's include the endpoints' findings it looked for."""
    query = (
        sa.select(FINDINGS)
        .where(FINDINGS.c.resolved_at.is_(None), FINDINGS.c.acked_at.is_(None))
        .order_by(FINDINGS.c.id)
        .limit(1000)
    )
    if rooms:
        mine = FINDINGS.c.room_key.in_(rooms)
        if full:  # and the endpoints' findings (no room) that this run looked for
            mine = sa.or_(mine, FINDINGS.c.kind.in_(rules.DELIVERY_KINDS))
        query = query.where(mine)
    with engine.connect() as conn:
        return [finding_json(row) for row in conn.execute(query)]

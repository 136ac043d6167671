"""The cross-check run: ask MetaStudio about every room events came from, store what it says, and
store the findings of ``receiver.crosscheck`` (one row per condition, resolved when it clears).

One run at a time: with several replicas on one PostgreSQL, the run holds an advisory lock and a
replica that cannot take it skips its turn; on SQLite (one process per file) an in-process lock.
MetaStudio answering 401 or 500, or not answering, becomes a finding, never a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from receiver import crosscheck as rules
from receiver.config import EndpointSettings
from receiver.errors import (
    MetaStudioAuthError,
    MetaStudioBadRequest,
    MetaStudioError,
    StoreUnavailable,
)
from receiver.events import EventType
from receiver.models import Event, Finding, JobSnapshot, UTCDateTime

log = logging.getLogger("receiver.crosscheck")

EVENTS = Event.__table__  # type: ignore[attr-defined]
FINDINGS = Finding.__table__  # type: ignore[attr-defined]
SNAPSHOTS = JobSnapshot.__table__  # type: ignore[attr-defined]

# Any fixed 64-bit number, different from the migration lock in migrations/env.py.
CROSSCHECK_LOCK = 0x6D73_7276_6363_6B31


class RoomJobsLike(Protocol):
    @property
    def jobs(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def complete(self) -> bool: ...


class JobSource(Protocol):
    async def list_room_jobs(self, room_id: str) -> RoomJobsLike: ...


@dataclass
class RunReport:
    started_at: datetime
    finished_at: datetime | None = None
    skipped: str | None = None
    rooms_checked: int = 0
    rooms_failed: int = 0
    jobs_seen: int = 0
    findings_opened: int = 0
    findings_resolved: int = 0
    open_findings: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at) if self.finished_at else None,
            "skipped": self.skipped,
            "rooms_checked": self.rooms_checked,
            "rooms_failed": self.rooms_failed,
            "jobs_seen": self.jobs_seen,
            "findings_opened": self.findings_opened,
            "findings_resolved": self.findings_resolved,
            "open_findings": self.open_findings,
        }


class CrossChecker:
    def __init__(
        self,
        *,
        engine: sa.Engine,
        source: JobSource,
        endpoints: Mapping[str, EndpointSettings],
        policy: rules.Policy | None = None,
        lookback: timedelta = timedelta(days=7),
        concurrency: int = 4,
    ) -> None:
        self.engine = engine
        self.source = source
        self.endpoints = endpoints
        self.policy = policy or rules.Policy()
        self.lookback = lookback
        self.concurrency = concurrency
        self._local = asyncio.Lock()
        self.last_report: RunReport | None = None

    async def run(self, *, room_id: str | None = None, now: datetime | None = None) -> RunReport:
        now = now or datetime.now(UTC)
        clock = time.monotonic()
        report = RunReport(started_at=now)
        if self._local.locked():
            report.skipped = "a cross-check is already running in this process"
            return report
        async with self._local:
            try:
                acquired, holder = await asyncio.to_thread(self._take_lock)
                if not acquired:
                    report.skipped = "another replica is running the cross-check"
                    return report
                try:
                    await self._run(report, room_id=room_id, now=now)
                finally:
                    if holder is not None:
                        await asyncio.to_thread(self._release_lock, holder)
            except sa.exc.DBAPIError as exc:
                # The store, not MetaStudio, failed: the caller answers 503, the periodic run
                # logs it and tries again next time.
                problem = type(exc.orig).__name__
                raise StoreUnavailable(
                    f"the cross-check could not use the store: {problem}"
                ) from exc
        # On the run's own clock: with ``now`` given, finished_at is never before started_at.
        report.finished_at = now + timedelta(seconds=time.monotonic() - clock)
        self.last_report = report
        return report

    def _take_lock(self) -> tuple[bool, Connection | None]:
        """PostgreSQL: a session advisory lock on a connection held for the run."""
        if self.engine.dialect.name != "postgresql":
            return True, None
        conn = self.engine.connect()
        got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": CROSSCHECK_LOCK})
        if got.scalar():
            conn.commit()
            return True, conn
        conn.close()
        return False, None

    def _release_lock(self, conn: Connection) -> None:
        try:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": CROSSCHECK_LOCK})
            conn.commit()
        finally:
            conn.close()

    async def _run(self, report: RunReport, *, room_id: str | None, now: datetime) -> None:
        rooms = [room_id] if room_id else await asyncio.to_thread(self._rooms, now)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(room: str) -> None:
            async with gate:
                await self._room(report, room, now)

        await asyncio.gather(*(one(room) for room in rooms))
        report.open_findings = await asyncio.to_thread(self._open_findings, rooms)

    async def _room(self, report: RunReport, room: str, now: datetime) -> None:
        try:
            answer = await self.source.list_room_jobs(room)
        except MetaStudioError as exc:
            kind = (
                rules.METASTUDIO_UNAUTHORIZED
                if isinstance(exc, MetaStudioAuthError)
                else rules.METASTUDIO_BAD_REQUEST
                if isinstance(exc, MetaStudioBadRequest)
                else rules.METASTUDIO_UNREACHABLE
            )
            log.warning("cross-check of room %s: %s", room, exc.message)
            draft = rules.api_problem(kind, room, exc.message)
            opened, resolved = await asyncio.to_thread(
                self._save, room, None, [draft], rules.API_KINDS, now
            )
            report.rooms_failed += 1
            report.findings_opened += opened
            report.findings_resolved += resolved
            return
        jobs = list(answer.jobs)
        activity = await asyncio.to_thread(self._activity, room)
        drafts = rules.evaluate_room(
            room_id=room,
            jobs=jobs,
            activity=activity,
            endpoints=self.endpoints,
            now=now,
            policy=self.policy,
            complete=answer.complete,
        )
        opened, resolved = await asyncio.to_thread(
            self._save, room, jobs, drafts, _resolvable(answer.complete), now
        )
        report.rooms_checked += 1
        report.jobs_seen += len(jobs)
        report.findings_opened += opened
        report.findings_resolved += resolved

    # -- reads -------------------------------------------------------------------------------

    def _rooms(self, now: datetime) -> list[str]:
        recent = (
            sa.select(EVENTS.c.room_id)
            .where(EVENTS.c.room_id.is_not(None), EVENTS.c.received_at >= now - self.lookback)
            .distinct()
        )
        flagged = (
            sa.select(FINDINGS.c.room_id)
            .where(FINDINGS.c.room_id.is_not(None), FINDINGS.c.resolved_at.is_(None))
            .distinct()
        )
        with self.engine.connect() as conn:
            found = {row[0] for row in conn.execute(recent)} | {
                row[0] for row in conn.execute(flagged)
            }
        return sorted(found)

    def _activity(self, room: str) -> list[rules.JobActivity]:
        when = sa.func.coalesce(EVENTS.c.signed_at, EVENTS.c.received_at, type_=UTCDateTime())
        per_job = (
            sa.select(
                EVENTS.c.job_id,
                EVENTS.c.endpoint,
                EVENTS.c.event_type,
                sa.func.count(),
                sa.func.min(when, type_=UTCDateTime()),
                sa.func.max(when, type_=UTCDateTime()),
                sa.func.min(EVENTS.c.id),
                sa.func.max(EVENTS.c.id),
            )
            .where(EVENTS.c.room_id == room, EVENTS.c.job_id.is_not(None))
            .group_by(EVENTS.c.job_id, EVENTS.c.endpoint, EVENTS.c.event_type)
        )
        rtmp = EventType.RTMP_STREAM_STATE_CHANGE.value
        last_rtmp: dict[str, int] = {}
        acc: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"endpoints": set(), "types": set(), "count": 0, "first": None, "last": None}
        )
        with self.engine.connect() as conn:
            for job_id, endpoint, event_type, count, first, last, low, high in conn.execute(
                per_job
            ):
                a = acc[job_id]
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
                chunk = sa.select(EVENTS.c.job_id, EVENTS.c.message, when, EVENTS.c.id).where(
                    EVENTS.c.id.in_(ids[start : start + 500])
                )
                for job_id, message, at, event_id in conn.execute(chunk):
                    states[job_id] = (message.get("state"), at, event_id)
        out = []
        for job_id, a in acc.items():
            state, at, event_id = states.get(job_id, (None, None, None))
            out.append(
                rules.JobActivity(
                    job_id=job_id,
                    room_id=room,
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

    def _open_findings(self, rooms: list[str]) -> list[dict[str, Any]]:
        from receiver.views import finding_json

        query = (
            sa.select(FINDINGS)
            .where(FINDINGS.c.resolved_at.is_(None))
            .order_by(FINDINGS.c.id)
            .limit(1000)
        )
        if rooms:
            query = query.where(FINDINGS.c.room_id.in_(rooms))
        with self.engine.connect() as conn:
            return [finding_json(row) for row in conn.execute(query)]

    # -- writes ------------------------------------------------------------------------------

    def _save(
        self,
        room: str,
        jobs: list[Mapping[str, Any]] | None,
        drafts: list[rules.Draft],
        resolvable: Sequence[str],
        now: datetime,
    ) -> tuple[int, int]:
        with self.engine.begin() as conn:
            if jobs is not None:
                _save_snapshots(conn, room, jobs, now)
            opened = _upsert_findings(conn, drafts, now)
            keep = {draft.fingerprint for draft in drafts}
            stale = [
                (fid, fingerprint)
                for fid, fingerprint in conn.execute(
                    sa.select(FINDINGS.c.id, FINDINGS.c.fingerprint).where(
                        FINDINGS.c.room_id == room,
                        FINDINGS.c.resolved_at.is_(None),
                        FINDINGS.c.kind.in_(list(resolvable)),
                    )
                )
                if fingerprint not in keep
            ]
            if stale:
                conn.execute(
                    sa.update(FINDINGS)
                    .where(FINDINGS.c.id.in_([fid for fid, _ in stale]))
                    .values(resolved_at=now)
                )
        return opened, len(stale)


def _save_snapshots(
    conn: Connection, room: str, jobs: list[Mapping[str, Any]], now: datetime
) -> None:
    latest = {
        job_id: (sid, digest)
        for job_id, sid, digest in conn.execute(
            sa.select(SNAPSHOTS.c.job_id, SNAPSHOTS.c.id, SNAPSHOTS.c.data_sha256).where(
                SNAPSHOTS.c.id.in_(
                    sa.select(sa.func.max(SNAPSHOTS.c.id))
                    .where(SNAPSHOTS.c.room_id == room)
                    .group_by(SNAPSHOTS.c.job_id)
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
        data = dict(job)
        digest = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()
        previous = latest.get(job_id)
        if previous is not None and previous[1] == digest:
            unchanged.append(previous[0])
            continue
        state = job.get("state")
        new_rows.append(
            {
                "job_id": job_id,
                "room_id": room[:128],
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


def _upsert_findings(conn: Connection, drafts: list[rules.Draft], now: datetime) -> int:
    if not drafts:
        return 0
    unique = {draft.fingerprint: draft for draft in drafts}
    existing = {
        fingerprint: (fid, resolved)
        for fid, fingerprint, resolved in conn.execute(
            sa.select(FINDINGS.c.id, FINDINGS.c.fingerprint, FINDINGS.c.resolved_at).where(
                FINDINGS.c.fingerprint.in_(list(unique))
            )
        )
    }
    opened = 0
    for fingerprint, draft in unique.items():
        found = existing.get(fingerprint)
        if found is None:
            conn.execute(
                sa.insert(FINDINGS).values(
                    fingerprint=fingerprint,
                    kind=draft.kind,
                    room_id=draft.room_id,
                    job_id=draft.job_id,
                    endpoint=draft.endpoint,
                    event_id=draft.event_id,
                    detail=draft.detail[:1000],
                    data=draft.data,
                    first_seen_at=now,
                    last_seen_at=now,
                    occurrences=1,
                )
            )
            opened += 1
            continue
        fid, resolved = found
        if resolved is not None:
            opened += 1
        conn.execute(
            sa.update(FINDINGS)
            .where(FINDINGS.c.id == fid)
            .values(
                detail=draft.detail[:1000],
                data=draft.data,
                last_seen_at=now,
                resolved_at=None,
                occurrences=FINDINGS.c.occurrences + 1,
            )
        )
    return opened


def _resolvable(complete: bool) -> tuple[str, ...]:
    """The finding kinds a successful query can clear. A partial listing (paging stopped before
    MetaStudio's count) proves nothing about jobs it does not show: unknown_job stays as it is."""
    if complete:
        return rules.ALL_KINDS
    return tuple(kind for kind in rules.ALL_KINDS if kind != rules.UNKNOWN_JOB)


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")

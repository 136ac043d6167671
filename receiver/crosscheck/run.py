"""The cross-check run: ask MetaStudio about every room events came from, store what it says, and
store the findings of ``receiver.crosscheck.rules`` (one row per condition, resolved when it
clears).
A full run also looks through the deliveries received since the last one for a signature that
carried different bodies, which needs nothing of MetaStudio.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from receiver.config import EndpointSettings
from receiver.crosscheck import rules
from receiver.errors import (
    MetaStudioAuthError,
    MetaStudioBadRequest,
    MetaStudioError,
    StoreUnavailable,
)
from receiver.protocol.events import EventType
from receiver.protocol.ids import api_form, id_key
from receiver.protocol.signing import AuthType
from receiver.store.models import Delivery, DeliveryStatus, Event, Finding, JobSnapshot, UTCDateTime

log = logging.getLogger("receiver.crosscheck")

DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
EVENTS = Event.__table__  # type: ignore[attr-defined]
FINDINGS = Finding.__table__  # type: ignore[attr-defined]
SNAPSHOTS = JobSnapshot.__table__  # type: ignore[attr-defined]

# Any fixed 64-bit number, different from the migration lock in migrations/env.py.
CROSSCHECK_LOCK = 0x6D73_7276_6363_6B31

# How long after its received_at a delivery may still commit (the writer retries a busy store),
# and how far the id order may lag the received_at order: the reused-signature scan looks back
# this much further than the window alone requires.
LATE_COMMIT = timedelta(seconds=60)


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
        # Where the last full run's reused-signature scan reached (in memory: a restarted or
        # another replica's checker scans ``lookback`` once, which only re-finds known ones).
        self._signatures_scanned_to: datetime | None = None
        # Told how each run ended (metrics); see run().
        self.on_outcome: Callable[[str], None] | None = None

    async def run(self, *, room_id: str | None = None, now: datetime | None = None) -> RunReport:
        """One cross-check (of one room, or of every room events came from; ``room_id`` in
        either of MetaStudio's spellings, see ``receiver.protocol.ids``). Raises
        StoreUnavailable when the store fails; ``on_outcome`` hears "ran", "skipped" (another
        run holds the lock, here or on another replica) or "store_error"."""
        try:
            report = await self._run_once(room_id=room_id, now=now)
        except StoreUnavailable:
            self._outcome("store_error")
            raise
        self._outcome("skipped" if report.skipped else "ran")
        return report

    def _outcome(self, outcome: str) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    async def _run_once(self, *, room_id: str | None, now: datetime | None) -> RunReport:
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
        # Rooms by key (one query per room, whichever spelling its events used), each with a
        # spelling as received for the findings that name only the room.
        if room_id:
            spelled = {id_key(room_id): room_id}
        else:
            spelled = await asyncio.to_thread(self._rooms, now)
        rooms = sorted(spelled)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(room: str) -> None:
            async with gate:
                await self._room(report, room, spelled[room], now)

        await asyncio.gather(*(one(room) for room in rooms))
        if room_id is None:
            # A signature belongs to an endpoint, not a room, and needs nothing of MetaStudio:
            # every full run looks for reuse, whatever the rooms' queries answered.
            report.findings_opened += await asyncio.to_thread(self._reused_signatures, now)
        report.open_findings = await asyncio.to_thread(self._open_findings, rooms, room_id is None)

    async def _room(self, report: RunReport, room: str, spelling: str, now: datetime) -> None:
        """One room: ``room`` is its key, ``spelling`` as events or findings name it (the job
        source asks MetaStudio in its own spelling, ``receiver.protocol.ids.api_form``)."""
        try:
            answer = await self.source.list_room_jobs(spelling)
        except MetaStudioError as exc:
            kind = (
                rules.METASTUDIO_UNAUTHORIZED
                if isinstance(exc, MetaStudioAuthError)
                else rules.METASTUDIO_BAD_REQUEST
                if isinstance(exc, MetaStudioBadRequest)
                else rules.METASTUDIO_UNREACHABLE
            )
            log.warning("cross-check of room %s: %s", room, exc.message)
            draft = rules.api_problem(kind, spelling, exc.message)
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
            room_id=spelling,
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

    def _rooms(self, now: datetime) -> dict[str, str]:
        """room key -> a spelling of it, for every room with recent events or open findings."""
        recent = (
            sa.select(EVENTS.c.room_key, sa.func.max(EVENTS.c.room_id))
            .where(EVENTS.c.room_key.is_not(None), EVENTS.c.received_at >= now - self.lookback)
            .group_by(EVENTS.c.room_key)
        )
        flagged = (
            sa.select(FINDINGS.c.room_key, sa.func.max(FINDINGS.c.room_id))
            .where(FINDINGS.c.room_key.is_not(None), FINDINGS.c.resolved_at.is_(None))
            .group_by(FINDINGS.c.room_key)
        )
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for key, spelling in [*conn.execute(flagged), *conn.execute(recent)]:
                found[key] = spelling
        return found

    def _activity(self, room: str) -> list[rules.JobActivity]:
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
        with self.engine.connect() as conn:
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

    def _open_findings(self, rooms: list[str], full: bool) -> list[dict[str, Any]]:
        from receiver.store.views import finding_json

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
        with self.engine.connect() as conn:
            return [finding_json(row) for row in conn.execute(query)]

    def _reused_signatures(self, now: datetime) -> int:
        """Store a finding for each signature that carried different bodies (see
        ``rules.reused_signatures``) among the deliveries received since the last full run.

        No index serves this, on purpose: each one is paid on every insert of the write path.
        All the deliveries of one signature are received within the endpoint's tolerance of its
        signing time, so those of a signature with a new member were received at most twice the
        tolerance before it: the scan reads the id range from there on (the primary key, read
        backwards from the newest row, finds where it starts) and groups it in the database.
        """
        tolerance = max(
            (e.tolerance_seconds for e in self.endpoints.values() if e.auth_type != AuthType.NONE),
            default=300.0,
        )
        since = (self._signatures_scanned_to or now - self.lookback) - LATE_COMMIT
        floor = since - timedelta(seconds=2 * tolerance) - LATE_COMMIT
        d = DELIVERIES
        body_kept = d.c.status.in_([DeliveryStatus.STORED, DeliveryStatus.UNDECODABLE])
        key = (d.c.endpoint, d.c.signed_at, d.c.time_unit, d.c.key_index)
        with self.engine.begin() as conn:
            start = conn.execute(
                sa.select(d.c.id).where(d.c.received_at < floor).order_by(d.c.id.desc()).limit(1)
            ).scalar()
            in_range = sa.and_(d.c.id > (start or 0), d.c.signed_at.is_not(None), body_kept)
            reused = (
                sa.select(*key)
                .where(in_range)
                .group_by(*key)
                .having(
                    sa.func.count(sa.distinct(d.c.body_sha256)) > 1,
                    sa.func.max(d.c.received_at, type_=UTCDateTime()) >= since,
                    # MetaStudio's own seconds (most groups, on a busy endpoint) stay in the
                    # database; the rule decides on the few that are spread wider.
                    _spread_over(self.engine.dialect.name, self.policy.reuse_spread),
                )
                .subquery()
            )
            members = (
                sa.select(
                    d.c.id,
                    *key,
                    d.c.body_sha256,
                    d.c.received_at,
                    EVENTS.c.id,
                    EVENTS.c.room_id,
                    EVENTS.c.job_id,
                )
                .select_from(
                    d.join(reused, sa.and_(*(c == reused.c[c.name] for c in key))).outerjoin(
                        EVENTS, EVENTS.c.delivery_id == d.c.id
                    )
                )
                .where(in_range)
            )
            found = [
                rules.SignedDelivery(
                    delivery_id=row[0],
                    endpoint=row[1],
                    signed_at=row[2],
                    time_unit=row[3],
                    key_index=row[4],
                    body_sha256=row[5],
                    received_at=row[6],
                    event_id=row[7],
                    room_id=row[8],
                    job_id=row[9],
                )
                for row in conn.execute(members)
            ]
            opened = _upsert_findings(conn, rules.reused_signatures(found, self.policy), now)
        # The run's own now, even if earlier than the last: scanning more is only slower.
        self._signatures_scanned_to = now
        return opened

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
                        FINDINGS.c.room_key == room,
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


def _upsert_findings(conn: Connection, drafts: list[rules.Draft], now: datetime) -> int:
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
            opened += 1
            continue
        fid, resolved, action = found
        changes: dict[str, Any] = {}
        if resolved is not None:
            opened += 1
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
    return opened


def _spread_over(dialect: str, spread: timedelta) -> sa.ColumnElement[bool]:
    """max(received_at) - min(received_at) > spread, for a group of deliveries."""
    first, last = sa.func.min(DELIVERIES.c.received_at), sa.func.max(DELIVERIES.c.received_at)
    seconds = spread.total_seconds()
    if dialect == "sqlite":  # datetimes are text there: julianday() reads them as days
        return (sa.func.julianday(last) - sa.func.julianday(first)) * 86400.0 > seconds
    return sa.func.extract("epoch", last - first) > seconds


def _resolvable(complete: bool) -> tuple[str, ...]:
    """The finding kinds a successful query can clear. A partial listing (paging stopped before
    MetaStudio's count) proves nothing about jobs it does not show: unknown_job stays as it is.

    A reused signature is a fact about what was stored, not a state MetaStudio reports: nothing
    a later run sees clears it, so it stays open (and carries no room for a room's run to
    resolve). More bodies under the same signature update the same row.
    """
    kinds = tuple(kind for kind in rules.ALL_KINDS if kind not in rules.DELIVERY_KINDS)
    if complete:
        return kinds
    return tuple(kind for kind in kinds if kind != rules.UNKNOWN_JOB)


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")

"""The cross-check run: ask MetaStudio about every room events came from, store what it says, and
store the findings of ``receiver.crosscheck.rules`` (one row per condition, resolved when it
clears).
A full run also looks through the deliveries received since the last one for a signature that
carried different bodies, which needs nothing of MetaStudio.

One run at a time: with several replicas on one PostgreSQL, the run holds an advisory lock and a
replica that cannot take it skips its turn; on SQLite (one process per file) an in-process lock.
MetaStudio answering 401 or 500, or not answering, becomes a finding, never a crash.

This module runs it; what it reads of the events is ``activity``, what it writes (snapshots,
findings) ``run_store``, and the reused-signature scan ``signature_scan``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from receiver.config import EndpointSettings
from receiver.crosscheck import activity, rules, run_store, signature_scan
from receiver.errors import (
    MetaStudioAuthError,
    MetaStudioBadRequest,
    MetaStudioError,
    StoreUnavailable,
)
from receiver.protocol.ids import id_key

log = logging.getLogger("receiver.crosscheck")

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
            "started_at": rules.iso(self.started_at),
            "finished_at": rules.iso(self.finished_at) if self.finished_at else None,
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

    async def run(
        self, *, room_id: str | None = None, now: datetime | None = None, fresh: bool = False
    ) -> RunReport:
        """One cross-check (of one room, or of every room events came from; ``room_id`` in
        either of MetaStudio's spellings, see ``receiver.protocol.ids``). Raises
        StoreUnavailable when the store fails; ``on_outcome`` hears "ran", "skipped" (another
        run holds the lock, here or on another replica) or "store_error".

        ``fresh``: ask MetaStudio afresh rather than from the short cache of its answers, as a
        run someone asked for must (a credential revoked a moment ago shows in that run)."""
        invalidate = getattr(self.source, "invalidate", None)
        if fresh and invalidate is not None:
            invalidate(room_id)
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
        report.open_findings = await asyncio.to_thread(
            run_store.open_findings, self.engine, rooms=rooms, full=room_id is None
        )

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

    # -- the store, in worker threads (bench/crosscheck.py times _rooms, _activity and _save) --

    def _rooms(self, now: datetime) -> dict[str, str]:
        return activity.rooms_to_check(self.engine, since=now - self.lookback)

    def _activity(self, room: str) -> list[rules.JobActivity]:
        return activity.room_activity(self.engine, room=room)

    def _save(
        self,
        room: str,
        jobs: list[Mapping[str, Any]] | None,
        drafts: list[rules.Draft],
        resolvable: Sequence[str],
        now: datetime,
    ) -> tuple[int, int]:
        return run_store.save_room(
            self.engine, room=room, jobs=jobs, drafts=drafts, resolvable=resolvable, now=now
        )

    def _reused_signatures(self, now: datetime) -> int:
        opened = signature_scan.scan_reused_signatures(
            self.engine,
            endpoints=self.endpoints,
            policy=self.policy,
            scanned_to=self._signatures_scanned_to or now - self.lookback,
            now=now,
        )
        # The run's own now, even if earlier than the last: scanning more is only slower.
        self._signatures_scanned_to = now
        return opened


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

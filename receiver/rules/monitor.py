"""The stream rules at work: follow the RTMP events of the log, keep each job's health, open and
resolve ``stream_down`` and ``stream_flapping`` (receiver.rules.stream).

It runs on the server's event loop (RTMP events are few: the work is small) and talks to the
store on a thread. Every ``TICK_SECONDS``, and soon after a committed batch (at most one
round every ``ROUND_GAP_SECONDS``, however often the intake commits: a round a batch cost the
intake nearly half its throughput under load, bench/ingest.py), it reads the RTMP events past
its place, applies them, and judges every job that has one of the rules' conditions pending
(down and not yet reported, a finding open) at the current time: that is how a stream that
stays down opens its finding when no further callback comes. The jobs' health, the findings
and the place are written in one transaction; a job only ever seen up gets no health row.

One replica at a time: its place and lease are a ``forward_state`` row named ``_rules`` (no
destination can have that name), taken and fenced as a destination's are
(receiver.forward.store). After a restart it goes on from its place, and the health it kept
(when each job went down) opens the findings on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from receiver.config.rules import RulesSettings
from receiver.crosscheck.run_store import resolve_findings, upsert_findings
from receiver.forward import store as places
from receiver.forward.forwarder import LEASE_SECONDS, RENEW_SECONDS, replica_id
from receiver.protocol.ids import id_key
from receiver.rules.stream import DOWN, Health, RtmpEvent, apply, judge
from receiver.store.models import Event, StreamHealth
from receiver.store.writer import dispose_when_idle

log = logging.getLogger("receiver.rules")

NAME = "_rules"
TICK_SECONDS = 0.5
# Rounds are at least this far apart; a wake-up meanwhile is kept for the next round.
ROUND_GAP_SECONDS = 0.25
BATCH = 1000
EVENTS = Event.__table__  # type: ignore[attr-defined]
HEALTH = StreamHealth.__table__  # type: ignore[attr-defined]
RTMP = "RTMP_STREAM_STATE_CHANGE"
QUIET_SAVE_SECONDS = 5.0


class StreamMonitor:
    def __init__(self, rules: RulesSettings, *, engine: Engine, owner: str | None = None) -> None:
        self.rules = rules
        self.engine = engine
        self.owner = owner or replica_id()
        self._woken = asyncio.Event()
        self.closing = asyncio.Event()
        self.cursor = 0
        self.owning = False
        self._lease_until = 0.0
        self._claimed_at = 0.0
        self._saved_at = 0.0
        self._saved_cursor = 0
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Events were committed: look now."""
        self._woken.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-rules")

    async def stop(self) -> None:
        self.closing.set()
        self._woken.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 10)
        if self.owning:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._release)
        await dispose_when_idle(self.engine)

    def _release(self) -> None:
        with self.engine.begin() as conn:
            places.release(conn, [NAME], owner=self.owner)

    async def _run(self) -> None:
        failing = False
        while not self.closing.is_set():
            self._woken.clear()  # a wake-up from now on calls for another round
            try:
                await self.step(datetime.now(UTC))
                if failing:
                    log.info("stream rules: the store answers again")
                failing = False
            except DBAPIError as exc:
                if not failing:
                    log.warning(
                        "stream rules: the store did not answer (%s)", type(exc.orig).__name__
                    )
                failing = True
            except Exception:
                log.exception("stream rules: unexpected error; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), timeout=ROUND_GAP_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), timeout=TICK_SECONDS - ROUND_GAP_SECONDS)

    async def step(self, now: datetime) -> int:
        """One look: the lease, the new RTMP events, the verdicts. Returns the findings opened
        or resolved."""
        if time.monotonic() - self._claimed_at >= RENEW_SECONDS or not self.owning:
            await asyncio.to_thread(self._claim)
        if not self.owning or time.monotonic() >= self._lease_until:
            return 0
        changed, cursor = await asyncio.to_thread(self._round, self.cursor, now)
        if cursor is None:  # the lease was lost: another replica has it
            self.owning = False
            return 0
        self.cursor = cursor
        return changed

    def _claim(self) -> None:
        started = time.monotonic()
        with self.engine.begin() as conn:
            places.ensure(conn, [NAME], now=datetime.now(UTC))
            rows = places.claim(conn, [NAME], owner=self.owner, lease_seconds=LEASE_SECONDS)
        self._claimed_at = started
        if rows:
            if not self.owning:
                self.cursor = self._saved_cursor = rows[0].event_cursor
            self.owning = True
            self._lease_until = started + LEASE_SECONDS - 1.0
        else:
            self.owning = False

    def _round(self, cursor: int, now: datetime) -> tuple[int, int | None]:
        try:
            return self._round_in(cursor, now)
        except _LeaseLost:
            return 0, None

    def _round_in(self, cursor: int, now: datetime) -> tuple[int, int | None]:
        with self.engine.begin() as conn:
            events, cursor = _rtmp_events(conn, after=cursor)
            healths = _pending(conn, [event.job_key for event in events])
            stored = set(healths)
            for event in events:
                healths[event.job_key] = apply(healths.get(event.job_key), event, self.rules)
            opened, resolved = [], []
            judged: list[Health] = []
            for health in healths.values():
                verdict = judge(health, now, self.rules)
                opened += verdict.open
                resolved += verdict.resolve
                judged.append(verdict.health)
            touched = {event.job_key for event in events} | {
                h.job_key for h, j in zip(healths.values(), judged, strict=True) if h != j
            }
            if not (events or opened or resolved or touched):
                # Only the place moved (no RTMP events): saved now and then, so the prune
                # (receiver.store.retention) may take the events it passed.
                quiet = time.monotonic() - self._saved_at < QUIET_SAVE_SECONDS
                if cursor == self._saved_cursor or quiet:
                    return 0, cursor
                moved = places.Save(event_cursor=cursor)
                if not places.save(conn, NAME, owner=self.owner, change=moved):
                    raise _LeaseLost
                self._saved_at, self._saved_cursor = time.monotonic(), cursor
                return 0, cursor
            change = places.Save(event_cursor=cursor)
            if not places.save(conn, NAME, owner=self.owner, change=change):
                raise _LeaseLost  # nothing of this round is written
            # A job seen only up, with no row yet, needs none: its next event starts it from
            # nothing to the same effect. (Most jobs: one write an RTMP event would otherwise
            # take the store's write lock from the intake.)
            _store(
                conn,
                [h for h in judged if h.job_key in touched and (h.job_key in stored or _kept(h))],
            )
            self._saved_at, self._saved_cursor = time.monotonic(), cursor
            if opened:
                upsert_findings(conn, opened, now)
            if resolved:
                resolve_findings(conn, [draft.fingerprint for draft in resolved], now)
        for draft in opened:
            log.warning("stream rules: %s opened: %s", draft.kind, draft.detail)
        for draft in resolved:
            log.info("stream rules: %s resolved for job %s", draft.kind, draft.job_id)
        return len(opened) + len(resolved), cursor


class _LeaseLost(Exception):
    pass


def _kept(health: Health) -> bool:
    """Whether a rule needs this health remembered: down, counting reconnects, or reported."""
    return bool(
        health.down_since is not None
        or health.reconnects
        or health.down_open
        or health.flapping_open
    )


def _rtmp_events(conn: Connection, *, after: int) -> tuple[list[RtmpEvent], int]:
    head = int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(EVENTS.c.id), 0))).scalar_one())
    rows = conn.execute(
        sa.select(
            EVENTS.c.id,
            EVENTS.c.job_id,
            EVENTS.c.job_key,
            EVENTS.c.room_id,
            EVENTS.c.endpoint,
            EVENTS.c.message,
            EVENTS.c.received_at,
        )
        .where(EVENTS.c.id > after, EVENTS.c.id <= head, EVENTS.c.event_type == RTMP)
        .order_by(EVENTS.c.id)
        .limit(BATCH)
    ).all()
    events = []
    for row in rows:
        state = row.message.get("state") if isinstance(row.message, dict) else None
        if row.job_id is None or not isinstance(state, str):
            continue
        events.append(
            RtmpEvent(
                id=row.id,
                job_key=row.job_key or id_key(row.job_id),
                job_id=row.job_id,
                room_id=row.room_id,
                endpoint=row.endpoint,
                state=state.upper(),
                received_at=row.received_at,
            )
        )
    place = rows[-1].id if len(rows) == BATCH else head
    return events, max(after, place)


def _pending(conn: Connection, job_keys: Sequence[str]) -> dict[str, Health]:
    """The health of these jobs, and of every job a rule may still open or resolve for."""
    condition = sa.or_(
        HEALTH.c.down_open,
        HEALTH.c.flapping_open,
        sa.and_(HEALTH.c.down_since.is_not(None), HEALTH.c.state.in_(sorted(DOWN))),
    )
    if job_keys:
        condition = sa.or_(condition, HEALTH.c.job_key.in_(sorted(set(job_keys))))
    rows = conn.execute(sa.select(HEALTH).where(condition))
    return {row.job_key: _health(row) for row in rows}


def _health(row: Any) -> Health:
    return Health(
        job_key=row.job_key,
        job_id=row.job_id,
        room_id=row.room_id,
        endpoint=row.endpoint,
        state=row.state,
        state_at=row.state_at,
        last_event_id=int(row.last_event_id),
        down_since=row.down_since,
        down_event_id=row.down_event_id,
        reconnects=tuple(float(t) for t in row.reconnects or ()),
        down_open=bool(row.down_open),
        flapping_open=bool(row.flapping_open),
    )


def _store(conn: Connection, healths: Sequence[Health]) -> None:
    if not healths:
        return
    keys = [h.job_key for h in healths]
    conn.execute(sa.delete(HEALTH).where(HEALTH.c.job_key.in_(keys)))
    conn.execute(
        sa.insert(HEALTH),
        [
            {
                "job_key": h.job_key,
                "job_id": h.job_id[:128],
                "room_id": h.room_id[:128] if h.room_id else None,
                "endpoint": h.endpoint,
                "state": h.state[:32],
                "state_at": h.state_at,
                "down_since": h.down_since,
                "down_event_id": h.down_event_id,
                "reconnects": list(h.reconnects),
                "down_open": h.down_open,
                "flapping_open": h.flapping_open,
                "last_event_id": h.last_event_id,
            }
            for h in healths
        ],
    )

"""One destination's loop: read past its place, send, settle, save; wait when there is nothing.

The loop runs on the server's event loop and talks to the store on a thread. It sends only while
its replica holds the destination's lease (receiver.forward.forwarder renews it); every write is
fenced by that lease (receiver.forward.store.save).

Each round: parked messages whose turn has come (refused ones on their schedule, those queued
behind them, resends), then the event log past its place, then the finding-change log. Where the
place ends up, what is parked and what failed is decided by receiver.forward.settle. The place
is saved at once when something was parked or the destination's condition changed, and at
most every ``FLUSH_SECONDS`` otherwise: after a crash, what was delivered since is sent again,
with the same ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from receiver.config import DestinationSettings
from receiver.errors import StoreUnavailable
from receiver.forward import logs, schedule, store
from receiver.forward.attempts import AttemptLog
from receiver.forward.conditions import Conditions
from receiver.forward.messages import EVENT, FINDING, Message
from receiver.forward.settle import LogRound, settle_log, settle_parked
from receiver.forward.transport import Outcome, Transport

log = logging.getLogger("receiver.forward")
T = TypeVar("T")

BATCH = 1000
PARKED_BATCH = 500
# Parking stops (the place is held) beyond this many parked messages per destination.
MAX_PARKED = 10000
IDLE_SECONDS = 0.1
# A round that read at least LINGER_FROM messages is followed by a pause that makes it last
# LINGER_SECONDS from its start.
LINGER_FROM = 2
LINGER_SECONDS = 0.05
FLUSH_SECONDS = 0.5
PARKED_RECHECK_SECONDS = 1.0
PRUNE_SECONDS = 60.0


class DestinationLoop:
    def __init__(
        self,
        destination: DestinationSettings,
        *,
        engine: Engine,
        transport: Transport,
        owner: str,
        on_delivered: Callable[[str, list[tuple[Message, Outcome]], datetime], None] | None = None,
        on_outcome: Callable[[str, str, int], None] | None = None,
        own_process: bool = False,
    ) -> None:
        self.destination = destination
        self.name = destination.name
        self.engine = engine
        self.transport = transport
        self.owner = owner
        self.on_delivered = on_delivered
        self.on_outcome = on_outcome
        self.wake = asyncio.Event()
        self.conditions = Conditions(destination)
        # While this replica holds the lease: its place (ahead of what is saved), and until
        # when (monotonic) the lease surely lasts.
        self.owning = False
        self.lease_until = 0.0
        self.event_cursor = 0
        self.finding_cursor = 0
        self._dirty = False
        self._last_flush = 0.0
        self._last_prune = time.monotonic()
        self.attempts = AttemptLog(
            self.name, per_message=transport.per_message_attempts, on_outcome=on_outcome
        )
        self._blocked: set[str] = set()
        self._parked_count = 0
        self._parked_due: datetime | None = None
        self._parked_checked = 0.0
        self._saving = 0.0
        # In its own process, SQLite reads run on this loop: a WAL read never waits for the
        # writer, and the hop to a thread cost a quarter of the CPU per message. Writes,
        # PostgreSQL (the network) and a forwarder on the server's loop use a thread.
        self._inline_reads = own_process and engine.dialect.name == "sqlite"

    # -- the lease (called by the forwarder) --------------------------------------------------

    def granted(self, row: store.StateRow, *, valid_until: float, read_at: float) -> None:
        if not self.owning:
            self.owning = True
            self.event_cursor, self.finding_cursor = row.event_cursor, row.finding_cursor
            self._parked_checked = 0.0
            self.conditions.adopt(row)
            self.wake.set()
        elif read_at > self._saving:  # not older than what this loop last wrote
            self.conditions.adopt(row)
        self.lease_until = valid_until

    def lost(self) -> None:
        if self.owning:
            log.info("destination %s: another replica holds it now", self.name)
        self.owning = False
        self.attempts.take()
        self._dirty = False

    def recheck_parked(self) -> None:
        self._parked_checked = 0.0

    def holds(self) -> bool:
        return self.owning and time.monotonic() < self.lease_until

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, closing: asyncio.Event) -> None:
        failing = False
        while not closing.is_set():
            try:
                wait = await self.step()
                if failing:
                    log.info("destination %s: the store answers again", self.name)
                failing = False
            except StoreUnavailable as exc:
                if not failing:
                    log.warning("destination %s: %s; trying again", self.name, exc.message)
                failing, wait = True, 1.0
            except Exception:  # a bug must not end forwarding for good: logged, tried again
                log.exception("destination %s: unexpected error; trying again in 5 s", self.name)
                wait = 5.0
            if wait is None:
                continue
            if wait < 0:  # linger: at least this long, whatever wakes it
                await asyncio.sleep(-wait)
                continue
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=wait)

    async def step(self) -> float | None:
        """One round; how long to wait for a wake-up before the next (None: go on at once;
        negative: pause that long, wake-ups or not)."""
        if not self.holds():
            return IDLE_SECONDS * 5
        started = time.monotonic()
        now = datetime.now(UTC)
        hold = self.conditions.hold(now)
        if hold is not None:
            await self.flush(force=False)
            return min(max(hold, 0.05), 1.0)
        busy = await self._parked_round(now)
        read = 0
        if self.conditions.hold(now) is None and self.destination.takes_events:
            read += await self._log_round(EVENT)
        if self.conditions.hold(now) is None and self.destination.takes_findings:
            read += await self._log_round(FINDING)
        await self.flush(force=False)
        if read >= BATCH or (busy and not read):
            return None
        if read >= LINGER_FROM:
            # Under load: let the next batch fill for a moment. A round's fixed cost (two
            # queries, a thread hop, a round trip to the destination) is then shared by many
            # messages instead of a few; a lone event still goes at once. The moment counts
            # from this round's start: a round that took longer (a broker's confirms) has
            # let the next batch fill already, and waiting on top would only add latency.
            pause = LINGER_SECONDS - (time.monotonic() - started)
            return -pause if pause > 0 else None
        return IDLE_SECONDS

    async def _log_round(self, source: str) -> int:
        """One batch of the log past the place, sent and settled; how many messages were read
        (0 when none, or when the destination failed)."""
        if self._parked_count >= MAX_PARKED:
            self.conditions.holding(f"{self._parked_count} messages are parked; holding the place")
            return 0
        cursor = self.event_cursor if source == EVENT else self.finding_cursor
        if source == EVENT:

            def read(conn: Any) -> tuple[list[Message], int]:
                return logs.read_events(conn, self.destination, after=cursor, limit=BATCH)
        else:
            read = lambda conn: logs.read_findings(conn, after=cursor, limit=BATCH)  # noqa: E731
        messages, head = await self._db(read)
        if not messages:
            if head > cursor:
                self._set_cursor(source, head)
            return 0
        blocked = self._blocked
        sending = [m for m in messages if m.order_key not in blocked]
        sent = await self.transport.send(sending) if sending else []
        outcome_of = {m.id: o for m, o in zip(sending, sent, strict=True)}
        round_ = settle_log(
            messages,
            [outcome_of.get(m.id) for m in messages],
            blocked=blocked,
            cursor=cursor,
            head=head,
            complete=len(messages) < BATCH,
        )
        now = datetime.now(UTC)
        change = store.Save()
        self.attempts.record(sending, sent, now)
        for message, refusals, outcome in round_.park:
            wait = timedelta(0)
            if outcome is not None:
                retry_after = outcome.retry_after
                wait = timedelta(
                    seconds=schedule.delay(
                        self.destination.retry_seconds, 1, retry_after=retry_after
                    )
                )
            change.park.append(
                store.park_row(
                    self.name,
                    message,
                    attempts=refusals,
                    next_attempt_at=now + wait,
                    error=outcome.error if outcome else None,
                    now=now,
                )
            )
            self._blocked.add(message.order_key)
        self._parked_count += len(change.park)
        self._settle_conditions(round_, now, change)
        self._set_cursor(source, round_.cursor)
        if change.park or change.state:
            await self.flush(force=True, change=change)
        return len(messages) if round_.failure is None and round_.gone is None else 0

    async def _parked_round(self, now: datetime) -> bool:
        recheck = time.monotonic() - self._parked_checked >= PARKED_RECHECK_SECONDS
        due = self._parked_due is not None and self._parked_due <= now
        if not (recheck or due):
            return False
        heads, count = await self._db(lambda conn: store.parked_heads(conn, self.name))
        self._parked_checked = time.monotonic()
        self._parked_count = count
        self._blocked = {head.order_key for head in heads}
        ready = [head.order_key for head in heads if head.next_attempt_at <= now]
        later = [head.next_attempt_at for head in heads if head.next_attempt_at > now]
        self._parked_due = min(later) if later else None
        if not ready:
            return False
        runs = await self._db(
            lambda conn: store.parked_runs(conn, self.name, ready, limit=PARKED_BATCH)
        )
        change = store.Save()
        sendable = []
        for row, message in runs:
            if message is None:  # its event is no longer stored: nothing can be sent
                change.update.append(
                    {
                        "id": row.id,
                        "queued_at": row.queued_at,
                        "state": store.DEAD,
                        "last_error": _GONE_ROW,
                    }
                )
                self.attempts.dead_lettered(row.message_id, None, now, error=_GONE_ROW)
            else:
                sendable.append((row, message))
        messages = [message for _, message in sendable]
        sent = await self.transport.send(messages) if messages else []
        self.attempts.record(messages, sent, now)
        rows = {row.id: row for row, _ in sendable}
        round_ = settle_parked([(row.id, m) for row, m in sendable], sent)
        change.delete = [(row_id, rows[row_id].queued_at) for row_id, _, _ in round_.delivered]
        for row_id, message, outcome in round_.refused:
            refusals = rows[row_id].attempts + 1
            if schedule.spent(self.destination.retry_seconds, refusals):
                change.update.append(
                    {
                        "id": row_id,
                        "queued_at": rows[row_id].queued_at,
                        "state": store.DEAD,
                        "attempts": refusals,
                        "last_error": outcome.error,
                    }
                )
                self.attempts.dead_lettered(message.id, outcome, now, error=outcome.error)
                log.warning(
                    "destination %s: %s dead-lettered after %d refusals: %s",
                    self.name,
                    message.id,
                    refusals,
                    outcome.error,
                )
            else:
                wait = schedule.delay(
                    self.destination.retry_seconds, refusals, retry_after=outcome.retry_after
                )
                change.update.append(
                    {
                        "id": row_id,
                        "queued_at": rows[row_id].queued_at,
                        "attempts": refusals,
                        "next_attempt_at": now + timedelta(seconds=wait),
                        "last_error": outcome.error,
                    }
                )
        if self.on_delivered and round_.delivered:
            self.on_delivered(self.name, [(m, o) for _, m, o in round_.delivered], now)
        self._settle_conditions(
            LogRound(
                cursor=0,
                delivered=[(m, o) for _, m, o in round_.delivered],
                failure=round_.failure,
                gone=round_.gone,
            ),
            now,
            change,
            live=False,
        )
        await self.flush(force=True, change=change)
        self._parked_checked = 0.0  # look again: heads moved
        return bool(round_.delivered) and round_.failure is None

    # -- outcomes ------------------------------------------------------------------------------

    def _settle_conditions(
        self, round_: LogRound, now: datetime, change: store.Save, *, live: bool = True
    ) -> None:
        if live and self.on_delivered and round_.delivered:
            self.on_delivered(self.name, round_.delivered, now)
        if round_.delivered:
            # A round that also failed leaves the destination failing.
            failed = round_.failure is not None or round_.gone is not None
            change.state.update(self.conditions.delivered(now, clear=not failed))
        if round_.park:
            refused = [outcome for _, _, outcome in round_.park if outcome is not None]
            if refused and refused[0].error:
                change.state.update(self.conditions.refused(refused[0].error, now))
        if round_.gone is not None:
            message, outcome = round_.gone
            change.state.update(self.conditions.gone(message.id, outcome, now))
        elif round_.failure is not None:
            change.state.update(self.conditions.failed(round_.failure, now))

    # -- saving --------------------------------------------------------------------------------

    def _set_cursor(self, source: str, value: int) -> None:
        if source == EVENT and value != self.event_cursor:
            self.event_cursor, self._dirty = value, True
        elif source == FINDING and value != self.finding_cursor:
            self.finding_cursor, self._dirty = value, True

    async def flush(self, *, force: bool, change: store.Save | None = None) -> None:
        """Save the place (and ``change``): at once when ``force``d, else when due."""
        due = time.monotonic() - self._last_flush >= FLUSH_SECONDS
        if not (force or (due and (self._dirty or self.attempts.rows))):
            return
        if not self.owning:
            return
        change = change or store.Save()
        change.state = {**self.conditions.unsaved(), **change.state}
        change.event_cursor, change.finding_cursor = self.event_cursor, self.finding_cursor
        change.attempts = self.attempts.take()
        prune = time.monotonic() - self._last_prune >= PRUNE_SECONDS
        self._saving = time.monotonic()

        def write(conn: Any) -> bool:
            kept = store.save(conn, self.name, owner=self.owner, change=change)
            if kept and prune:
                store.prune_attempts(conn, self.name)
            return kept

        kept = await self._db(write, commit=True)
        self._last_flush = time.monotonic()
        if prune:
            self._last_prune = self._last_flush
        self._dirty = False
        if not kept:
            self.lost()

    async def _db(self, work: Callable[[Any], T], *, commit: bool = False) -> T:
        def run() -> T:
            try:
                with self.engine.begin() if commit else self.engine.connect() as conn:
                    return work(conn)
            except DBAPIError as exc:
                raise StoreUnavailable(
                    f"the store did not answer: {type(exc.orig).__name__}"
                ) from exc

        if self._inline_reads and not commit:
            return run()
        return await asyncio.to_thread(run)


_GONE_ROW = "its event or finding change is no longer stored"

"""Every destination of one replica: their loops, their leases, and waking them up.

:class:`Forwarder` starts one :class:`~receiver.forward.delivery.DestinationLoop` per configured
destination and one task that takes and renews leases every ``RENEW_SECONDS``; a loop sends only
while its lease lasts. Several replicas on one PostgreSQL (or ``serve --workers N``) each run a
forwarder; each destination is sent to by one of them at a time (receiver.forward.store).

The intake wakes the loops after each committed batch (:meth:`Forwarder.wake`: setting an
``asyncio.Event``, nothing more), so a callback is on its way within milliseconds; without a
wake-up (another replica stored it) a loop looks every ``IDLE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from receiver.config import DestinationSettings
from receiver.forward import admin, store
from receiver.forward.delivery import DestinationLoop
from receiver.forward.kinds import open_transport
from receiver.forward.messages import Message
from receiver.forward.transport import Outcome, Transport
from receiver.store.writer import dispose_when_idle

log = logging.getLogger("receiver.forward")

LEASE_SECONDS = 10.0
RENEW_SECONDS = 2.0
STOP_SECONDS = 5.0
MEASURE_SECONDS = 5.0


def replica_id() -> str:
    """Who holds a lease: host, process and a random part (a restarted process is new)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Forwarder:
    def __init__(
        self,
        destinations: tuple[DestinationSettings, ...],
        *,
        engine: Engine,
        metrics: Any = None,
        public_url: str | None = None,
        transports: dict[str, Transport] | None = None,
        owner: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
        owns_engine: bool = False,
        own_process: bool = False,
    ) -> None:
        """``own_process``: this forwarder runs in a process of its own (receiver.forward.child),
        so its loops may read SQLite on the event loop (receiver.forward.delivery)."""
        self.engine = engine
        self.owns_engine = owns_engine
        self.owner = owner or replica_id()
        self.lease_seconds = lease_seconds
        self.metrics = metrics
        self.closing = asyncio.Event()
        self.loops: dict[str, DestinationLoop] = {}
        for destination in destinations:
            transport = (transports or {}).get(destination.name) or _transport(
                destination, public_url
            )
            self.loops[destination.name] = DestinationLoop(
                destination,
                engine=engine,
                transport=transport,
                owner=self.owner,
                on_delivered=self._delivered,
                on_outcome=self._outcome,
                own_process=own_process,
            )
        self._tasks: list[asyncio.Task[None]] = []
        self._renewed = asyncio.Event()

    async def start(self) -> None:
        """Before the server takes requests: a new destination's place is set at the logs' end
        now, so the callbacks that follow are all handed to it (if the store does not answer,
        the lease keeper sets it as soon as it does)."""
        if not self.loops:
            return
        try:
            await self._claim()
        except DBAPIError as exc:
            log.warning(
                "forwarding: the store did not answer at start (%s)", type(exc.orig).__name__
            )
        self._tasks.append(asyncio.create_task(self._keep_leases(), name="forward-leases"))
        if self.metrics is not None:
            self._tasks.append(asyncio.create_task(self._measure(), name="forward-measure"))
        for name, loop in self.loops.items():
            task = asyncio.create_task(loop.run(self.closing), name=f"forward-{name}")
            self._tasks.append(task)

    def wake(self) -> None:
        """New events are committed (called on the event loop after each batch)."""
        for loop in self.loops.values():
            loop.wake.set()

    def places(self) -> dict[str, tuple[int, int]]:
        """The places of the destinations this replica sends to, as it knows them (ahead of
        what is saved, by up to FLUSH_SECONDS)."""
        return {
            name: (loop.event_cursor, loop.finding_cursor)
            for name, loop in self.loops.items()
            if loop.owning
        }

    def poke(self, name: str) -> None:
        """Look at ``name``'s parked messages now (a resend queued some)."""
        loop = self.loops.get(name)
        if loop is not None:
            loop.recheck_parked()
            loop.wake.set()

    async def refresh(self) -> None:
        """Read the destinations' conditions again now (after an enable or disable here)."""
        with contextlib.suppress(Exception):
            await self._claim()

    async def stop(self) -> None:
        """Stop sending, save each place, and let go of the leases for another replica."""
        if not self._tasks:
            if self.owns_engine:
                self.engine.dispose()
            return
        self.closing.set()
        for loop in self.loops.values():
            loop.wake.set()
        _done, pending = await asyncio.wait(self._tasks, timeout=STOP_SECONDS)
        for task in pending:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for loop in self.loops.values():
            with contextlib.suppress(Exception):
                await loop.flush(force=True)
            with contextlib.suppress(Exception):
                await loop.transport.close()
        names = [name for name, loop in self.loops.items() if loop.owning]
        if names:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._release, names)
        if self.owns_engine:
            await dispose_when_idle(self.engine)

    def _release(self, names: list[str]) -> None:
        with self.engine.begin() as conn:
            store.release(conn, names, owner=self.owner)

    async def _keep_leases(self) -> None:
        failing = False
        while not self.closing.is_set():
            try:
                await self._claim()
                if failing:
                    log.info("forwarding: the store answers again")
                failing = False
            except DBAPIError as exc:
                if not failing:
                    log.warning(
                        "forwarding: cannot renew leases (%s); sending stops when they run out",
                        type(exc.orig).__name__,
                    )
                failing = True
            except Exception:
                log.exception("forwarding: renewing leases failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), timeout=RENEW_SECONDS)

    async def _claim(self) -> None:
        started = time.monotonic()
        names = list(self.loops)

        def work() -> list[store.StateRow]:
            with self.engine.begin() as conn:
                store.ensure(conn, names, now=datetime.now(UTC))
                return store.claim(conn, names, owner=self.owner, lease_seconds=self.lease_seconds)

        rows = await asyncio.to_thread(work)
        # The lease runs from the moment it was asked for; keep a second's margin.
        valid_until = started + self.lease_seconds - 1.0
        mine = {row.name: row for row in rows}
        for name, loop in self.loops.items():
            row = mine.get(name)
            if row is None:
                loop.lost()
            elif not self.closing.is_set():
                loop.granted(row, valid_until=valid_until, read_at=started)
        if self.metrics is not None:
            self.metrics.forward_owned(mine.keys(), self.loops.keys())

    async def _measure(self) -> None:
        """Every ``MEASURE_SECONDS``, the lag and state of the destinations this process sends
        to, for /metrics (the others are reported by their sender)."""
        while not self.closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), timeout=MEASURE_SECONDS)
            mine = [loop.destination for loop in self.loops.values() if loop.owning]
            if not mine or self.closing.is_set():
                continue

            def work(mine: list[DestinationSettings] = mine) -> list[dict[str, Any]]:
                now = datetime.now(UTC)
                with self.engine.connect() as conn:
                    rows = store.states(conn, [d.name for d in mine])
                    return [
                        admin.describe(conn, d, rows[d.name], now=now)
                        for d in mine
                        if d.name in rows
                    ]

            try:
                views = await asyncio.to_thread(work)
            except DBAPIError:
                continue  # the lease keeper says so in the log
            for view in views:
                self.metrics.forward_condition(view["name"], view)

    def _delivered(
        self, name: str, delivered: list[tuple[Message, Outcome]], now: datetime
    ) -> None:
        if self.metrics is not None:
            acked = now.timestamp()
            self.metrics.forward_latency(name, [acked - m.stored_at for m, _ in delivered])

    def _outcome(self, name: str, kind: str, count: int) -> None:
        if self.metrics is not None:
            self.metrics.forward_attempts(name, kind, count)


def _transport(destination: DestinationSettings, public_url: str | None) -> Transport:
    transport = open_transport(destination)
    if public_url is not None and hasattr(transport, "public_url"):
        transport.public_url = public_url
    return transport

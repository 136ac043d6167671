"""The durable write path: engines, the batch write, and the group-commit writer.

A delivery is acknowledged only after the transaction holding it has committed. To avoid paying
one commit (one fsync on SQLite with ``synchronous=FULL``) per request, concurrent deliveries are
gathered by ``GroupCommitWriter`` and written by ``Store.write_batch`` in one transaction: while
one batch commits, the next one fills up, so batches grow with load and shrink to one when idle.
The rows themselves are written by ``receiver.store.write`` (duplicates are decided there, by the
database's unique key).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from receiver.errors import StoreUnavailable
from receiver.store.driver import (
    PG_CONNECT_ARGS,
    RowRefused,
    Store,
    _sqlite_pragmas,
    _sqlite_uri,
    sqlite_path,
)
from receiver.store.models import Delivery, Event
from receiver.store.process import ChildStore
from receiver.store.write import (
    Fields,
    IncomingDelivery,
    WriteOutcome,
    dedup_key_for,
    delivery_of,
    fields_of,
)

__all__ = [
    "DELIVERIES",
    "EVENTS",
    "PG_CONNECT_ARGS",
    "ChildStore",
    "GroupCommitWriter",
    "IncomingDelivery",
    "ProcessCommitWriter",
    "RowRefused",
    "Store",
    "WriteOutcome",
    "create_engine_for",
    "dedup_key_for",
    "open_writer",
    "sqlite_path",
]

log = logging.getLogger("receiver.store")

DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
EVENTS = Event.__table__  # type: ignore[attr-defined]


def create_engine_for(url: str, *, pool_size: int = 5) -> Engine:
    """An engine for reads and migrations; SQLite connections get WAL and synchronous=FULL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(parsed)
        options: dict[str, Any] = {}
        if path is not None and os.path.exists(path):
            # The database exists: if its file vanishes later, a new connection must fail rather
            # than create an empty database in its place (which the writer would then find).
            options["creator"] = lambda: sqlite3.connect(
                _sqlite_uri(path), uri=True, check_same_thread=False, timeout=30
            )
        engine = sa.create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_pre_ping=True,
            json_serializer=_json_text,
            json_deserializer=orjson.loads,
            **options,
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=10,
        connect_args=PG_CONNECT_ARGS,
        # orjson: a 10,000-event job view parses 20,000 JSON values.
        json_serializer=_json_text,
        json_deserializer=orjson.loads,
    )


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits and the like: the standard library takes them
        return json.dumps(value, ensure_ascii=False)


def open_writer(
    url: str,
    *,
    writer: str = "process",
    max_batch: int = 512,
    max_pending: int = 20000,
    timeout: float = 10.0,
) -> GroupCommitWriter:
    """The group-commit writer for the store at ``url``: with ``writer`` "process" the driver
    runs in a child process (receiver.store.process), with "thread" on a thread here."""
    store = Store(url)  # refuses what cannot work (an in-memory SQLite) either way
    if writer == "thread":
        return GroupCommitWriter(
            store, max_batch=max_batch, max_pending=max_pending, timeout=timeout
        )
    return ProcessCommitWriter(
        ChildStore(store.target), max_batch=max_batch, max_pending=max_pending, timeout=timeout
    )


# (delivery, its rows, its answer, the loop time by which it must be committed); for the writer
# process (delivery, rows) are (None, the request's Fields): the child builds the rest.
Entry = tuple[Any, Any, "asyncio.Future[WriteOutcome]", float]
# Work for the writer thread other than deliveries: a call, and where its result goes.
_Call = tuple[Callable[[], Any], "asyncio.Future[Any]"]
_STOP = object()


class GroupCommitWriter:
    """Gathers concurrent deliveries into batches and commits each batch on one thread.

    The writer thread drives itself: it takes whatever is queued (up to ``max_batch``), commits
    it, hands the outcomes to the event loop and at once takes the next batch, which filled up
    while it committed. Going back to the loop between batches would leave the thread idle for
    as long as the loop is busy answering; here it only waits when nothing is queued. The
    thread also runs ``ping`` and ``close``: the store's connection is only ever used by it.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 512,
        max_pending: int = 20000,
        timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.timeout = timeout
        self._queue: queue.SimpleQueue[Entry | _Call | object] = queue.SimpleQueue()
        # Every delivery not yet answered, in arrival order (so also in deadline order).
        self._waiting: collections.deque[Entry] = collections.deque()
        self._unanswered = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._maintenance = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-checkpoint")
        self._closing = False
        self.last_error: str | None = None
        self.batches = 0
        self.batch_sizes: list[int] = []
        # Called on the event loop after each committed batch (metrics).
        self.on_batch: Callable[[Sequence[WriteOutcome | StoreUnavailable]], None] | None = None
        # SQLite checkpoints from the watchdog (the writer process runs its own).
        self.checkpoints_here = True

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        self._thread = threading.Thread(target=self._thread_main, name="store-writer", daemon=True)
        self._thread.start()
        self._watchdog = asyncio.create_task(self._watch(), name="group-commit-watchdog")

    async def stop(self) -> None:
        """Commit what is queued, close the store's connection, then stop."""
        if self._closing:
            return
        self._closing = True
        if self._thread is not None and self._stopped is not None:
            self._queue.put(_STOP)
            await self._stopped
            self._thread.join()
        await self._stop_watchdog()

    async def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        self._maintenance.shutdown(wait=True)

    async def ping(self) -> None:
        """Raises StoreUnavailable unless the store answers (on the writer's own thread)."""
        try:
            await asyncio.wait_for(self._ping_future(), timeout=self.timeout)
        except TimeoutError:
            # A bare TimeoutError would reach the routes as an unexpected error (a 500).
            raise StoreUnavailable(
                f"the store did not answer within {self.timeout:g} seconds"
            ) from None

    def _ping_future(self) -> asyncio.Future[Any]:
        return self._call(self.store.ping)

    def _call(self, work: Callable[[], Any]) -> asyncio.Future[Any]:
        if self._closing or self._loop is None:
            raise StoreUnavailable("the receiver is shutting down")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put((work, future))
        return future

    def _enqueue(self, entry: Entry) -> None:
        self._queue.put(entry)

    async def write_fields(self, fields: Fields) -> WriteOutcome:
        """Decode and store one verified request (receiver.intake.receive): the decoding happens
        here,
        on the event loop; the outcome says why the body did not decode, if it did not."""
        item = delivery_of(fields)
        outcome = await self.write(item)
        return outcome if item.error is None else replace(outcome, error=item.error)

    async def write(self, item: IncomingDelivery) -> WriteOutcome:
        self._admit()
        return await self._submit(item, self.store.prepare(item))

    def _admit(self) -> None:
        """Refuse at once (503) what cannot be queued, before any work is spent on it."""
        if self._closing or self._loop is None:
            raise StoreUnavailable("the receiver is shutting down")
        if self._unanswered >= self.max_pending:
            raise StoreUnavailable("the store is not keeping up; too many deliveries waiting")

    async def _submit(self, item: IncomingDelivery | None, payload: Any) -> WriteOutcome:
        """Queue one delivery (admitted already) for the next batch; wait for its outcome."""
        assert self._loop is not None
        loop = self._loop
        future: asyncio.Future[WriteOutcome] = loop.create_future()
        entry = (item, payload, future, loop.time() + self.timeout)
        self._unanswered += 1
        self._waiting.append(entry)
        self._enqueue(entry)
        try:
            return await future
        finally:
            self._unanswered -= 1

    # --- on the writer thread ---------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            # On this thread: a StoreProcess child is tied to the thread that started it.
            self.store.start()
        except StoreUnavailable as exc:  # the first write tries again, and answers 503 if not
            log.error("store unavailable at start: %s", exc.message)
            self.last_error = exc.message
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            if _is_call(first):
                self._run_call(first)  # type: ignore[arg-type]
                continue
            batch: list[Entry] = [first]  # type: ignore[list-item]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                    break
                if _is_call(more):
                    self._run_call(more)  # type: ignore[arg-type]
                    continue
                batch.append(more)  # type: ignore[arg-type]
            self._write(batch)
        try:
            self.store.close()
        finally:
            self._to_loop(_resolve, self._stopped, None)

    def _write(self, batch: list[Entry]) -> None:
        items = [entry[0] for entry in batch]
        rows = [entry[1] for entry in batch]
        try:
            outcomes: list[WriteOutcome | StoreUnavailable] | StoreUnavailable
            outcomes = self.store.write_batch(items, rows)
        except StoreUnavailable as exc:
            outcomes = exc
        except Exception as exc:  # never let the writer die
            log.exception("unexpected error while writing a batch")
            outcomes = StoreUnavailable(f"store error: {type(exc).__name__}")
        self._to_loop(self._answer, batch, outcomes)

    def _run_call(self, call: _Call) -> None:
        work, future = call
        try:
            result = work()
        except BaseException as exc:  # handed to whoever awaits it
            self._to_loop(_fail, future, exc)
        else:
            self._to_loop(_resolve, future, result)

    def _to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(callback, *args)

    # --- on the event loop --------------------------------------------------------------------

    def _answer(
        self, batch: list[Entry], outcomes: list[WriteOutcome | StoreUnavailable] | StoreUnavailable
    ) -> None:
        if isinstance(outcomes, StoreUnavailable):
            self._failed(outcomes, batch)
            return
        self.last_error = None
        self.batches += 1
        self.batch_sizes.append(len(batch))
        if len(self.batch_sizes) > 10000:
            del self.batch_sizes[:5000]
        if self.on_batch is not None:
            self.on_batch(outcomes)
        for (_, _, future, _), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, StoreUnavailable):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _failed(self, exc: StoreUnavailable, batch: list[Entry]) -> None:
        if self.last_error != exc.message:
            log.error("store unavailable: %s", exc.message)
        self.last_error = exc.message
        for _, _, future, _ in batch:
            if not future.done():
                future.set_exception(StoreUnavailable(exc.message))

    async def _watch(self) -> None:
        """Answer 503 for deliveries not committed in time (one timer for all, not one each).
        A delivery that commits after its 503 is stored; the sender's retry gets "duplicate".
        Also starts the SQLite checkpoint about once a second, on a thread of its own."""
        loop = asyncio.get_running_loop()
        step = min(0.2, self.timeout / 4)
        checkpoint: asyncio.Future[None] | None = None
        next_checkpoint = loop.time() + 1.0
        waiting = self._waiting
        while True:
            await asyncio.sleep(step)
            now = loop.time()
            if (
                self.checkpoints_here
                and now >= next_checkpoint
                and (checkpoint is None or checkpoint.done())
            ):
                if checkpoint is not None and checkpoint.exception() is not None:
                    log.debug("checkpoint failed: %r", checkpoint.exception())
                checkpoint = loop.run_in_executor(self._maintenance, self.store.checkpoint)
                next_checkpoint = now + 1.0
            while waiting and waiting[0][2].done():
                waiting.popleft()
            for _, _, future, deadline in waiting:
                if deadline > now:
                    break  # the rest arrived later: their deadlines are later too
                if not future.done():
                    future.set_exception(
                        StoreUnavailable(
                            f"the store did not commit within {self.timeout:g} seconds"
                        )
                    )


def _is_entry(work: object) -> bool:
    return isinstance(work, tuple) and len(work) == 4


def _is_call(entry: object) -> bool:
    return isinstance(entry, tuple) and len(entry) == 2


def _resolve(future: asyncio.Future[Any] | None, result: Any) -> None:
    if future is not None and not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


# Body bytes per batch sent to the writer process, at most (the first delivery always goes):
# with max_body_bytes at its 16 MiB ceiling, 512 bodies would not fit one message's framing.
MAX_BATCH_BYTES = 64 * 1024 * 1024

# A request to the child other than a batch: its message, and where the answer goes.
_Request = tuple[tuple[str, ...], "asyncio.Future[Any]"]


class ProcessCommitWriter(GroupCommitWriter):
    """Group commit with the store in a child process (receiver.store.process), driven from
    the event loop itself: one task sends whatever is queued (up to ``max_batch``) as one batch,
    awaits the child's answer, hands out the outcomes and at once sends the next batch, which
    filled up meanwhile. No thread, so no lock is handed back and forth per batch; while the
    child commits, the loop answers requests. Deadlines, 503s and metrics are the thread
    writer's (GroupCommitWriter)."""

    def __init__(self, store: ChildStore, **options: Any) -> None:
        """``options``: GroupCommitWriter's (max_batch, max_pending, timeout)."""
        super().__init__(store, **options)  # type: ignore[arg-type]
        self.child = store
        self.checkpoints_here = False
        self._pending: collections.deque[Entry | _Request | object] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._pump_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._pump_task = asyncio.create_task(self._pump(), name="store-writer")
        self._watchdog = asyncio.create_task(self._watch(), name="group-commit-watchdog")

    async def stop(self) -> None:
        """Commit what is queued, close the child, then stop."""
        if self._closing:
            return
        self._closing = True
        if self._pump_task is not None:
            self._push(_STOP)
            await self._pump_task
        await self._stop_watchdog()

    def _ping_future(self) -> asyncio.Future[Any]:
        if self._closing or self._loop is None:
            raise StoreUnavailable("the receiver is shutting down")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._push((("ping",), future))
        return future

    def _push(self, work: Entry | _Request | object) -> None:
        self._pending.append(work)
        assert self._wake is not None
        self._wake.set()

    def _enqueue(self, entry: Entry) -> None:
        self._push(entry)

    async def write(self, item: IncomingDelivery) -> WriteOutcome:
        """As the thread writer's: the child decodes the body again, from the same bytes."""
        return await self.write_fields(fields_of(item))

    async def write_fields(self, fields: Fields) -> WriteOutcome:
        """Store one verified request (receiver.intake.receive). It travels as it came: the child
        decodes
        the body and builds the rows (receiver.store.write.delivery_of), so the event loop,
        which every request waits for, does neither."""
        self._admit()
        return await self._submit(None, fields)

    async def _pump(self) -> None:
        assert self._wake is not None
        pending, wake, child = self._pending, self._wake, self.child
        try:
            await child.start()
        except StoreUnavailable as exc:  # the first write tries again, and answers 503 if not
            log.error("store unavailable at start: %s", exc.message)
            self.last_error = exc.message
        except Exception as exc:  # say so, and let the first write try again
            log.exception("the store's writer process could not start")
            self.last_error = f"store error: {type(exc).__name__}"
        while True:
            if not pending:
                wake.clear()
                await wake.wait()
                continue
            first = pending.popleft()
            if first is _STOP:
                break
            if _is_call(first):
                await self._request(first)  # type: ignore[arg-type]
                continue
            batch: list[Entry] = [first]  # type: ignore[list-item]
            size = len(first[1][1])  # type: ignore[index]
            while pending and len(batch) < self.max_batch and _is_entry(pending[0]):
                size += len(pending[0][1][1])  # type: ignore[index]
                if size > MAX_BATCH_BYTES:
                    break  # one message stays well inside the socket framing and memory
                batch.append(pending.popleft())  # type: ignore[arg-type]
            outcomes: list[WriteOutcome | StoreUnavailable] | StoreUnavailable
            try:
                outcomes = await child.write_batch([entry[1] for entry in batch])
            except StoreUnavailable as exc:
                outcomes = exc
            except Exception as exc:  # never let the writer die
                log.exception("unexpected error while writing a batch")
                outcomes = StoreUnavailable(f"store error: {type(exc).__name__}")
            try:
                self._answer(batch, outcomes)
            except Exception as exc:  # a malformed answer: that batch is a 503, the pump goes on
                log.exception("could not hand out a batch's outcomes")
                self._failed(StoreUnavailable(f"store error: {type(exc).__name__}"), batch)
        await child.close()

    async def _request(self, request: _Request) -> None:
        message, future = request
        try:
            result = await self.child.request(message)
        except StoreUnavailable as exc:
            _fail(future, exc)
        except Exception as exc:  # never let the writer die
            log.exception("unexpected error while asking the store's writer process")
            _fail(future, StoreUnavailable(f"store error: {type(exc).__name__}"))
        else:
            _resolve(future, result)

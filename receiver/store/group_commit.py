"""Group commit: concurrent deliveries gathered into batches, one transaction each.

A delivery is acknowledged only after the transaction holding it has committed. To avoid paying
one commit (one fsync on SQLite with ``synchronous=FULL``) per request, concurrent deliveries are
gathered by :class:`GroupCommitWriter` and written by ``Store.write_batch`` in one transaction:
while one batch commits, the next one fills up, so batches grow with load and shrink to one when
idle. This module owns the queue, the batching, the writer thread, the deadlines (the watchdog)
and the answers handed back to the event loop; receiver.store.process's ProcessCommitWriter
keeps all of that but the thread, and commits in a child process instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from receiver.errors import StoreUnavailable
from receiver.store.driver import Store
from receiver.store.incoming import Fields, IncomingDelivery, WriteOutcome, delivery_of

log = logging.getLogger("receiver.store")


# (delivery, its rows, its answer, the loop time by which it must be committed); for the writer
# process (delivery, rows) are (None, the request's Fields): the child builds the rest.
Entry = tuple[Any, Any, "asyncio.Future[WriteOutcome]", float]
# Work for the writer thread other than deliveries: a call, and where its result goes.
_Call = tuple[Callable[[], Any], "asyncio.Future[Any]"]
# Queued last by ``stop``: commit what came before it, then end.
STOP = object()


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
            self._queue.put(STOP)
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
        here, on the event loop; the outcome says why the body did not decode, if it did not."""
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
            if first is STOP:
                break
            if is_call(first):
                self._run_call(first)  # type: ignore[arg-type]
                continue
            batch: list[Entry] = [first]  # type: ignore[list-item]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is STOP:
                    stopping = True
                    break
                if is_call(more):
                    self._run_call(more)  # type: ignore[arg-type]
                    continue
                batch.append(more)  # type: ignore[arg-type]
            self._write(batch)
        try:
            self.store.close()
        finally:
            self._to_loop(resolve, self._stopped, None)

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
            self._to_loop(fail, future, exc)
        else:
            self._to_loop(resolve, future, result)

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


def is_call(entry: object) -> bool:
    """Queued work other than a delivery (an Entry has four items, a call or request two)."""
    return isinstance(entry, tuple) and len(entry) == 2


def resolve(future: asyncio.Future[Any] | None, result: Any) -> None:
    if future is not None and not future.done():
        future.set_result(result)


def fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)

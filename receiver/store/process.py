"""The store's writer in a process of its own: the event loop's side of it.

With the writer on a thread, the event loop and the database driver share one interpreter lock:
sqlite3 and psycopg let go of it around every step of a statement and must take it back after,
each batch is handed between threads, and the loop waits while the writer builds parameters.
On the ingest bench that sharing cost about as much CPU as the writes themselves. Here the driver
(:class:`receiver.store.driver.Store`, with every rule of the write path: duplicates, ids,
outages, the SQLite file checks) runs in a child process (receiver.store.child), and the event
loop talks to it over a socket pair with no thread in between: one message per batch each way,
the rows already built at intake. The loop does not wait meanwhile; it answers requests.
:class:`ChildStore` talks to the child; :class:`ProcessCommitWriter` is the group-commit writer
(receiver.store.group_commit) that hands it one batch at a time.

Lifetime: the child is started by :meth:`ChildStore.start` and started again on the next request
after it dies (the batch that was on its way gets StoreUnavailable: a 503, and the sender's
retry is stored once, as the database decides duplicates). It ignores SIGINT and SIGTERM (the
server drains and then closes it), ends when the socket closes, and is killed by the kernel when
the thread that started it ends, however that happens (kill -9 of the server included), so it
never outlives the server. Killing it mid-commit loses nothing acknowledged: nothing in an
unfinished transaction was acknowledged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from receiver.errors import StoreUnavailable
from receiver.store.group_commit import STOP, Entry, GroupCommitWriter, fail, is_call, resolve
from receiver.store.incoming import Fields, IncomingDelivery, WriteOutcome, fields_of

if TYPE_CHECKING:
    from receiver.store.driver import Target

log = logging.getLogger("receiver.store")

CHILD_MODULE = "receiver.store.child"
# How long the child may take to start, and to answer one request (the driver's own time-outs,
# 30 s, come first: past this the child is taken for hung and killed).
START_SECONDS = 60.0
ANSWER_SECONDS = 120.0
# At most one start per this long: a child that ends at once is not started again and again
# for every batch (the batches meanwhile are answered 503).
RESTART_SECONDS = 1.0
# The framing of multiprocessing.connection.Connection, which the child reads and writes with.
_LENGTH = struct.Struct("!i")


class ChildStore:
    """:class:`receiver.store.driver.Store` in a child process, asked from the event loop.

    One request at a time: the caller (:class:`ProcessCommitWriter`) awaits each answer before
    it asks again."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.starts = 0
        # Past this a child that has not answered is taken for hung, killed and replaced.
        self.answer_seconds = ANSWER_SECONDS
        self.module = CHILD_MODULE
        self._started_at: float | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _alive(self) -> bool:
        """A child to ask: started, and not known to have ended (a child that ended while idle is
        replaced before the next batch, instead of costing that batch a 503)."""
        return (
            self._writer is not None and self._process is not None and self._process.poll() is None
        )

    async def start(self) -> None:
        """Start the child and wait until it answers "ready" (or raise StoreUnavailable)."""
        if self._alive():
            return
        self._discard()
        now = time.monotonic()
        if self._started_at is not None and now - self._started_at < RESTART_SECONDS:
            raise StoreUnavailable(
                "the store's writer process ended just after it started; "
                f"it is started again within {RESTART_SECONDS:g} s"
            )
        self._started_at = now
        ours, theirs = socket.socketpair()
        try:
            # A plain interpreter, not multiprocessing's spawn: no resource-tracker process and
            # nothing of this process's __main__ imported again. The target (a PostgreSQL URL may
            # hold a password) goes over the socket, never on the command line.
            command = [sys.executable, "-m", self.module, str(theirs.fileno()), str(os.getpid())]
            process = subprocess.Popen(
                command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True
            )
        except OSError as exc:
            ours.close()
            raise StoreUnavailable(f"the store's writer process cannot start: {exc}") from None
        finally:
            theirs.close()
        self._process = process
        self.starts += 1
        try:
            self._reader, self._writer = await asyncio.open_connection(sock=ours)
        except OSError as exc:
            ours.close()
            self._discard()
            raise StoreUnavailable(f"the store's writer process cannot be reached: {exc}") from None
        await self.request(self.target, timeout=START_SECONDS)  # answered "ready"
        if self.starts > 1:
            log.warning("store writer process started again (pid %d)", process.pid)

    def _discard(self, *, grace: float = 0.0) -> None:
        """Forget the child: give it ``grace`` seconds to end by itself, then kill it."""
        if self._writer is not None:
            self._writer.close()
            self._writer = self._reader = None
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace)
            if process.poll() is None:
                process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)

    async def request(self, message: Any, *, timeout: float | None = None) -> Any:
        """Send ``message``, return the child's answer; StoreUnavailable for an "unavailable"
        answer, a child that ended, or one that did not answer within ``timeout``."""
        if not self._alive():
            await self.start()
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        timeout = self.answer_seconds if timeout is None else timeout
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            writer.write(_LENGTH.pack(len(data)))
            writer.write(data)
            async with asyncio.timeout(timeout):
                await writer.drain()
                (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
                # S301: the other end is our own child, over a socket pair nobody else holds.
                kind, value = pickle.loads(await reader.readexactly(length))  # noqa: S301
        except TimeoutError:
            self._discard()
            raise StoreUnavailable(
                f"the store's writer process did not answer within {timeout:g} s; it was stopped"
            ) from None
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            process = self._process
            self._discard(grace=0.2)  # it closed its end: it is on its way out
            code = None if process is None else process.returncode
            raise StoreUnavailable(
                f"the store's writer process ended (exit code {code}): {type(exc).__name__}"
            ) from None
        if kind == "unavailable":
            raise StoreUnavailable(value)
        return value

    async def write_batch(self, batch: Sequence[Fields]) -> list[WriteOutcome | StoreUnavailable]:
        """As Store.write_batch, for verified requests not yet decoded: the child decodes them
        and builds their rows (receiver.store.incoming.delivery_of)."""
        answers = await self.request(("write", list(batch)))
        return [
            WriteOutcome(*answer) if isinstance(answer, tuple) else StoreUnavailable(answer)
            for answer in answers
        ]

    async def ping(self) -> None:
        await self.request(("ping",))

    async def close(self) -> None:
        """Ask the child to close its connections and end; stop it if it does not."""
        if self._alive():
            with contextlib.suppress(StoreUnavailable):
                await self.request(("close",), timeout=30)
        self._discard(grace=5)


# Body bytes per batch sent to the writer process, at most (the first delivery always goes):
# with max_body_bytes at its 16 MiB ceiling, 512 bodies would not fit one message's framing.
MAX_BATCH_BYTES = 64 * 1024 * 1024

# A request to the child other than a batch: its message, and where the answer goes.
_Request = tuple[tuple[str, ...], "asyncio.Future[Any]"]


class ProcessCommitWriter(GroupCommitWriter):
    """Group commit with the store in a child process (:class:`ChildStore`), driven from
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
            self._push(STOP)
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
        decodes the body and builds the rows (receiver.store.incoming.delivery_of), so the event
        loop, which every request waits for, does neither."""
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
            if first is STOP:
                break
            if is_call(first):
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
            fail(future, exc)
        except Exception as exc:  # never let the writer die
            log.exception("unexpected error while asking the store's writer process")
            fail(future, StoreUnavailable(f"store error: {type(exc).__name__}"))
        else:
            resolve(future, result)


def _is_entry(work: object) -> bool:
    return isinstance(work, tuple) and len(work) == 4

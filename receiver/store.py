"""The durable write path: engines, the batch write, and the group-commit writer.

A delivery is acknowledged only after the transaction holding it has committed. To avoid paying
one commit (one fsync on SQLite with ``synchronous=FULL``) per request, concurrent deliveries are
gathered by ``GroupCommitWriter`` and written by ``Store.write_batch`` in one transaction: while
one batch commits, the next one fills up, so batches grow with load and shrink to one when idle.
The rows themselves are written by ``receiver.store_write`` (duplicates are decided there, by the
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
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from receiver.errors import StoreUnavailable
from receiver.models import Delivery, Event
from receiver.store_write import (
    IncomingDelivery,
    Rows,
    WriteOutcome,
    dedup_key_for,
    prepare,
    write_postgres,
    write_sqlite,
)

__all__ = [
    "DELIVERIES",
    "EVENTS",
    "GroupCommitWriter",
    "IncomingDelivery",
    "Store",
    "WriteOutcome",
    "create_engine_for",
    "dedup_key_for",
    "sqlite_path",
]

log = logging.getLogger("receiver.store")

DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
EVENTS = Event.__table__  # type: ignore[attr-defined]
T = TypeVar("T")
PG_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 5,
    "options": "-c statement_timeout=30000",
    # A dead link (no RST) must not hang the writer for the kernel's TCP timeout.
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}


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


def sqlite_path(url: str | URL) -> str | None:
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:"):
        return None
    return os.path.abspath(database)


def _sqlite_uri(path: str) -> str:
    """An existing database, opened read-write, never created (``?``, ``#``, ``%`` escaped)."""
    return f"file:{quote(path)}?mode=rw"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers work beside the writer; synchronous=FULL fsyncs the WAL at every commit,
    # so an acknowledged delivery survives a power loss, not only a process crash.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Store:
    """Owns the writer's own driver connection (sqlite3 or psycopg); ``write_batch`` and ``ping``
    run on one dedicated thread only. Reads go through SQLAlchemy engines elsewhere."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self._sqlite_path = sqlite_path(parsed)
        if self.dialect == "sqlite" and self._sqlite_path is None:
            raise StoreUnavailable("an in-memory SQLite database cannot be shared; use a file")
        self._conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self._conn: Any = None
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None

    def close(self) -> None:
        self._drop_connection()
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None

    def _connect(self) -> Any:
        if self._sqlite_path is not None:
            # mode=rw: never create a fresh empty file where the database vanished. Autocommit
            # mode (isolation_level=None): this class issues BEGIN IMMEDIATE / COMMIT itself.
            conn = sqlite3.connect(
                _sqlite_uri(self._sqlite_path),
                uri=True,
                check_same_thread=False,
                timeout=30,
                isolation_level=None,
            )
            _sqlite_pragmas(conn, None)
            # Checkpoints run on their own thread (checkpoint()), not inside a commit that
            # deliveries wait for; this high mark is only a backstop if that thread falls behind.
            conn.execute("PRAGMA wal_autocheckpoint=10000")
            return conn
        return psycopg.connect(self._conninfo, autocommit=False, **PG_CONNECT_ARGS)

    def checkpoint(self) -> None:
        """SQLite: copy the WAL back into the database without blocking the writer (PASSIVE).
        Runs on a thread of its own, with a connection of its own."""
        if self._sqlite_path is None:
            return
        try:
            if self._checkpoint_conn is None:
                self._checkpoint_conn = sqlite3.connect(
                    _sqlite_uri(self._sqlite_path),
                    uri=True,
                    check_same_thread=False,
                    timeout=1,
                    isolation_level=None,
                )
            self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.debug("checkpoint skipped: %s", exc)
            if self._checkpoint_conn is not None:
                self._checkpoint_conn.close()
            self._checkpoint_conn = None

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # the connection is being thrown away
                log.debug("closing a broken writer connection failed", exc_info=True)
        self._conn = None
        self._inode = None

    def _file_identity(self) -> tuple[int, int]:
        assert self._sqlite_path is not None
        try:
            st = os.stat(self._sqlite_path)
        except FileNotFoundError:
            raise StoreUnavailable(f"database file {self._sqlite_path} has vanished") from None
        except OSError as exc:
            raise StoreUnavailable(f"database file {self._sqlite_path}: {exc.strerror}") from None
        if not st.st_mode & 0o222:
            raise StoreUnavailable(f"database file {self._sqlite_path} is read-only")
        # access() also sees what the mode bits do not: an immutable file (chattr +i, even for
        # root) or a read-only mount. Without it a SELECT-only ping passes while writes fail.
        for path in (self._sqlite_path, self._sqlite_path + "-wal"):
            if not os.access(path, os.W_OK) and os.path.exists(path):
                raise StoreUnavailable(f"database file {path} is not writable")
        return (st.st_dev, st.st_ino)

    def _connection(self) -> Any:
        if self._sqlite_path is not None:
            identity = self._file_identity()
            if self._conn is not None and identity != self._inode:
                # The file was replaced (restored from a backup, moved): write to the new one.
                self._drop_connection()
            self._inode = identity
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _in_transaction(self, work: Callable[[Any], T]) -> T:
        """Run ``work(cursor)`` in one transaction. Connection-level failures become
        StoreUnavailable (and a fresh connection next time); a refused row raises RowRefused."""
        try:
            conn = self._connection()
            sqlite = self._sqlite_path is not None
            try:
                if sqlite:
                    conn.execute("BEGIN IMMEDIATE")
                cur = conn.cursor()
                result = work(cur)
                if sqlite:
                    conn.execute("COMMIT")
                else:
                    conn.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK") if sqlite else conn.rollback()
                raise
            if sqlite and self._file_identity() != self._inode:
                # Committed into a file that is no longer the database: not durable.
                raise StoreUnavailable(f"database file {self._sqlite_path} changed during commit")
            return result
        except StoreUnavailable:
            self._drop_connection()
            raise
        except _REFUSED as exc:
            raise RowRefused(_brief(exc)) from exc
        except (sqlite3.Error, psycopg.Error) as exc:
            self._drop_connection()
            raise StoreUnavailable(_brief(exc)) from exc

    def ping(self) -> None:
        self._in_transaction(lambda cur: cur.execute("SELECT 1"))

    def prepare(self, item: IncomingDelivery) -> Rows:
        """The rows of one delivery for this store's driver (receiver.store_write.prepare)."""
        return prepare(item, sqlite=self._sqlite_path is not None)

    def write_batch(
        self, items: Sequence[IncomingDelivery], rows: Sequence[Rows] | None = None
    ) -> list[WriteOutcome | StoreUnavailable]:
        """Store ``items`` in one transaction; outcomes in the same order.

        Raises StoreUnavailable when the store cannot be reached. If the store refuses the batch
        for another reason (which should not happen; input is validated before it gets here),
        each item is retried alone so that one bad row cannot take its neighbours down with it:
        an item the store refuses on its own gets a StoreUnavailable in place of its outcome.
        """
        write = write_sqlite if self._sqlite_path is not None else write_postgres
        try:
            return list(self._in_transaction(lambda cur: write(cur, items, rows)))
        except RowRefused as exc:
            if len(items) == 1:
                log.error("store refused a delivery: %s", exc.message)
                return [StoreUnavailable("the store refused this delivery")]
            log.warning("batch of %d refused (%s); retrying one by one", len(items), exc.message)
        outcomes: list[WriteOutcome | StoreUnavailable] = []
        for index, item in enumerate(items):
            outcomes.extend(self.write_batch([item], None if rows is None else [rows[index]]))
        return outcomes


class RowRefused(StoreUnavailable):
    """The store refused a row (a constraint, a value it cannot hold), not the connection."""


# Errors about the data, not the connection: retried item by item (see Store.write_batch).
_REFUSED = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    psycopg.IntegrityError,
    psycopg.DataError,
    psycopg.ProgrammingError,
)


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# (delivery, its rows, its answer, the loop time by which it must be committed)
Entry = tuple[IncomingDelivery, Rows, "asyncio.Future[WriteOutcome]", float]
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
        self, store: Store, *, max_batch: int = 512, max_pending: int = 20000, timeout: float = 10.0
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
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        self._maintenance.shutdown(wait=True)

    async def ping(self) -> None:
        """Raises StoreUnavailable unless the store answers (on the writer's own thread)."""
        try:
            await asyncio.wait_for(self._call(self.store.ping), timeout=self.timeout)
        except TimeoutError:
            # A bare TimeoutError would reach the routes as an unexpected error (a 500).
            raise StoreUnavailable(
                f"the store did not answer within {self.timeout:g} seconds"
            ) from None

    def _call(self, work: Callable[[], Any]) -> asyncio.Future[Any]:
        if self._closing or self._loop is None:
            raise StoreUnavailable("the receiver is shutting down")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put((work, future))
        return future

    async def write(self, item: IncomingDelivery) -> WriteOutcome:
        if self._closing or self._loop is None:
            raise StoreUnavailable("the receiver is shutting down")
        if self._unanswered >= self.max_pending:
            raise StoreUnavailable("the store is not keeping up; too many deliveries waiting")
        loop = self._loop
        future: asyncio.Future[WriteOutcome] = loop.create_future()
        entry = (item, self.store.prepare(item), future, loop.time() + self.timeout)
        self._unanswered += 1
        self._waiting.append(entry)
        self._queue.put(entry)
        try:
            return await future
        finally:
            self._unanswered -= 1

    # --- on the writer thread ---------------------------------------------------------------

    def _thread_main(self) -> None:
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
            if now >= next_checkpoint and (checkpoint is None or checkpoint.done()):
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


def _is_call(entry: object) -> bool:
    return isinstance(entry, tuple) and len(entry) == 2


def _resolve(future: asyncio.Future[Any] | None, result: Any) -> None:
    if future is not None and not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)

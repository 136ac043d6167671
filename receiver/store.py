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
import contextlib
import json
import logging
import os
import sqlite3
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
    WriteOutcome,
    dedup_key_for,
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

    def write_batch(
        self, items: Sequence[IncomingDelivery]
    ) -> list[WriteOutcome | StoreUnavailable]:
        """Store ``items`` in one transaction; outcomes in the same order.

        Raises StoreUnavailable when the store cannot be reached. If the store refuses the batch
        for another reason (which should not happen; input is validated before it gets here),
        each item is retried alone so that one bad row cannot take its neighbours down with it:
        an item the store refuses on its own gets a StoreUnavailable in place of its outcome.
        """
        write = write_sqlite if self._sqlite_path is not None else write_postgres
        try:
            return list(self._in_transaction(lambda cur: write(cur, items)))
        except RowRefused as exc:
            if len(items) == 1:
                log.error("store refused a delivery: %s", exc.message)
                return [StoreUnavailable("the store refused this delivery")]
            log.warning("batch of %d refused (%s); retrying one by one", len(items), exc.message)
        outcomes: list[WriteOutcome | StoreUnavailable] = []
        for item in items:
            outcomes.extend(self.write_batch([item]))
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


Entry = tuple[IncomingDelivery, "asyncio.Future[WriteOutcome]", float]


class GroupCommitWriter:
    """Gathers concurrent deliveries into batches and commits each batch on one thread."""

    def __init__(
        self, store: Store, *, max_batch: int = 512, max_pending: int = 20000, timeout: float = 10.0
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.timeout = timeout
        # (delivery, its answer, the loop time by which it must be committed)
        self._pending: list[Entry] = []
        self._inflight: list[Entry] = []
        self._watchdog: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._maintenance = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-checkpoint")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.last_error: str | None = None
        self.batches = 0
        self.batch_sizes: list[int] = []
        # Called on the event loop after each committed batch (metrics).
        self.on_batch: Callable[[Sequence[WriteOutcome | StoreUnavailable]], None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit-writer")
        self._watchdog = asyncio.create_task(self._watch(), name="group-commit-watchdog")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        self._maintenance.shutdown(wait=True)
        await asyncio.get_running_loop().run_in_executor(self._executor, self.store.close)
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        """Raises StoreUnavailable unless the store answers (on the writer's own thread)."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.run_in_executor(self._executor, self.store.ping), timeout=self.timeout
            )
        except TimeoutError:
            # A bare TimeoutError would reach the routes as an unexpected error (a 500).
            raise StoreUnavailable(
                f"the store did not answer within {self.timeout:g} seconds"
            ) from None

    async def write(self, item: IncomingDelivery) -> WriteOutcome:
        if self._closing:
            raise StoreUnavailable("the receiver is shutting down")
        if len(self._pending) >= self.max_pending:
            raise StoreUnavailable("the store is not keeping up; too many deliveries waiting")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[WriteOutcome] = loop.create_future()
        self._pending.append((item, future, loop.time() + self.timeout))
        self._wake.set()
        return await future

    async def _watch(self) -> None:
        """Answer 503 for deliveries not committed in time (one timer for all, not one each).
        A delivery that commits after its 503 is stored; the sender's retry gets "duplicate"."""
        loop = asyncio.get_running_loop()
        step = min(0.2, self.timeout / 4)
        checkpoint: asyncio.Future[None] | None = None
        next_checkpoint = loop.time() + 1.0
        while True:
            await asyncio.sleep(step)
            now = loop.time()
            if now >= next_checkpoint and (checkpoint is None or checkpoint.done()):
                if checkpoint is not None and checkpoint.exception() is not None:
                    log.debug("checkpoint failed: %r", checkpoint.exception())
                checkpoint = loop.run_in_executor(self._maintenance, self.store.checkpoint)
                next_checkpoint = now + 1.0
            for entries in (self._pending, self._inflight):
                for _, future, deadline in entries:
                    if deadline <= now and not future.done():
                        future.set_exception(
                            StoreUnavailable(
                                f"the store did not commit within {self.timeout:g} seconds"
                            )
                        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._inflight = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                items = [entry[0] for entry in batch]
                try:
                    outcomes = await loop.run_in_executor(
                        self._executor, self.store.write_batch, items
                    )
                except StoreUnavailable as exc:
                    self._failed(exc, batch)
                    continue
                except Exception as exc:  # never let the writer die
                    log.exception("unexpected error while writing a batch")
                    self._failed(StoreUnavailable(f"store error: {type(exc).__name__}"), batch)
                    continue
                self.last_error = None
                self.batches += 1
                self.batch_sizes.append(len(batch))
                if len(self.batch_sizes) > 10000:
                    del self.batch_sizes[:5000]
                if self.on_batch is not None:
                    self.on_batch(outcomes)
                for (_, future, _), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, StoreUnavailable):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
            self._inflight = []
            if self._closing:
                return

    def _failed(self, exc: StoreUnavailable, batch: list[Entry]) -> None:
        if self.last_error != exc.message:
            log.error("store unavailable: %s", exc.message)
        self.last_error = exc.message
        for _, future, _ in batch:
            if not future.done():
                future.set_exception(StoreUnavailable(exc.message))

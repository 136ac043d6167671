"""The durable write path: engines, the batch write, and the group-commit writer.

A delivery is acknowledged only after the transaction holding it has committed. To avoid paying
one commit (one fsync on SQLite with ``synchronous=FULL``) per request, concurrent deliveries are
gathered by ``GroupCommitWriter`` and written by ``Store.write_batch`` in one transaction: while
one batch commits, the next one fills up, so batches grow with load and shrink to one when idle.

Duplicates are decided by the database: ``deliveries.dedup_key`` is unique, rows go in with
``INSERT ... ON CONFLICT DO NOTHING RETURNING``, and a key that did not come back belongs to a row
that another transaction (another batch, another replica) committed first.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, Engine, make_url

from receiver.errors import StoreUnavailable
from receiver.events import Event as DecodedEvent
from receiver.models import Delivery, DeliveryStatus, Event

log = logging.getLogger("receiver.store")

# Any fixed 64-bit number; see Store._write. (migrations/env.py and crosscheck_run use others.)
COMMIT_ORDER_LOCK = 0x6D73_7276_6964_7331
DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
EVENTS = Event.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class IncomingDelivery:
    """A verified delivery, ready to store. ``event`` is None when the body did not decode."""

    endpoint: str
    body: bytes
    received_at: datetime
    signed_at: datetime | None
    key_index: int | None
    time_unit: str | None
    headers: dict[str, str]
    query: list[tuple[str, str]]
    remote_addr: str | None
    event: DecodedEvent | None
    error: str | None = None
    dedup_key: str = field(default="")

    def __post_init__(self) -> None:
        if not self.dedup_key:
            object.__setattr__(self, "dedup_key", dedup_key_for(self))


def dedup_key_for(item: IncomingDelivery) -> str:
    """Same endpoint, same signing time, same body: the same delivery.

    Without a signing time (auth_type NONE) nothing tells a retry from a new event with the same
    content (an RTMP state can repeat), so such deliveries get a unique key and are all kept.
    """
    if item.signed_at is None:
        return "u:" + uuid.uuid4().hex
    digest = hashlib.sha256()
    digest.update(item.endpoint.encode())
    digest.update(b"\n%d\n" % round(item.signed_at.timestamp() * 1000))
    digest.update(item.body)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    result: str  # "stored" | "duplicate"
    status: str  # status of the original delivery: "stored" | "undecodable"
    delivery_id: int
    event_id: int | None


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
        connect_args={
            "connect_timeout": 5,
            "options": "-c statement_timeout=30000",
            # A dead link (no RST) must not hang the writer for the kernel's TCP timeout.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": 15000,
        },
    )


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
    """Owns the writer's connection. ``write_batch`` runs on one dedicated thread only."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        self._sqlite_path = sqlite_path(url)
        self._engine = self._writer_engine()
        self._conn: Connection | None = None
        self._inode: tuple[int, int] | None = None
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite_dialect.insert
        self._insert_deliveries = (
            insert(DELIVERIES)
            .on_conflict_do_nothing(index_elements=["dedup_key"])
            .returning(DELIVERIES.c.id, DELIVERIES.c.dedup_key)
        )

    def _writer_engine(self) -> Engine:
        if self._sqlite_path is None:
            return create_engine_for(self.url, pool_size=1)
        path = self._sqlite_path

        def connect() -> sqlite3.Connection:
            # mode=rw: never create a fresh empty file where the database vanished.
            return sqlite3.connect(_sqlite_uri(path), uri=True, check_same_thread=False, timeout=30)

        engine = sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.StaticPool)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def close(self) -> None:
        self._drop_connection()
        self._engine.dispose()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
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

    def _connection(self) -> Connection:
        if self._sqlite_path is not None:
            identity = self._file_identity()
            if self._conn is not None and identity != self._inode:
                # The file was replaced (restored from a backup, moved): write to the new one.
                self._drop_connection()
            self._inode = identity
        if self._conn is None:
            self._conn = self._engine.connect()
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        try:
            conn = self._connection()
            with conn.begin():
                yield conn
            if self._sqlite_path is not None and self._file_identity() != self._inode:
                # Committed into a file that is no longer the database: not durable.
                raise StoreUnavailable(f"database file {self._sqlite_path} changed during commit")
        except StoreUnavailable:
            self._drop_connection()
            raise
        except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError) as exc:
            self._drop_connection()
            raise StoreUnavailable(_brief(exc)) from exc

    def ping(self) -> None:
        with self._transaction() as conn:
            conn.execute(sa.text("SELECT 1"))

    def write_batch(
        self, items: Sequence[IncomingDelivery]
    ) -> list[WriteOutcome | StoreUnavailable]:
        """Store ``items`` in one transaction; outcomes in the same order.

        Raises StoreUnavailable when the store cannot be reached. If the batch fails for another
        reason (which should not happen; input is validated before it gets here), each item is
        retried alone so that one bad row cannot take its neighbours down with it: an item the
        store refuses on its own gets a StoreUnavailable in place of its outcome.
        """
        try:
            with self._transaction() as conn:
                return list(self._write(conn, items))
        except sa.exc.DBAPIError as exc:
            if len(items) == 1:
                log.error("store refused a delivery: %s", _brief(exc))
                return [StoreUnavailable("the store refused this delivery")]
            log.warning("batch of %d failed (%s); retrying one by one", len(items), _brief(exc))
        outcomes: list[WriteOutcome | StoreUnavailable] = []
        for item in items:
            outcomes.extend(self.write_batch([item]))
        return outcomes

    def _write(self, conn: Connection, items: Sequence[IncomingDelivery]) -> list[WriteOutcome]:
        if self.dialect == "postgresql":
            # Ids in commit order: replicas take turns (the lock lasts until this transaction
            # commits), so every id a reader can see is below every id still uncommitted, and
            # keyset pages (receiver.queries) never skip an event that commits late.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": COMMIT_ORDER_LOCK})
            items = [_pg_safe(item) for item in items]
        first: dict[str, int] = {}
        for index, item in enumerate(items):
            first.setdefault(item.dedup_key, index)
        originals = [items[i] for i in sorted(first.values())]
        # Inserted in key order: two writers (replicas) inserting overlapping keys then wait for
        # each other in one direction only, instead of deadlocking (PostgreSQL aborts one of them).
        rows = [_delivery_row(item) for item in sorted(originals, key=lambda i: i.dedup_key)]
        inserted: dict[str, int] = {
            key: delivery_id
            for delivery_id, key in conn.execute(self._insert_deliveries, rows).all()
        }
        event_ids: dict[str, int | None] = {}
        event_rows = []
        for item in originals:
            delivery_id = inserted.get(item.dedup_key)
            if delivery_id is not None and item.event is not None:
                event_rows.append(_event_row(item, delivery_id))
        if event_rows:
            by_delivery = {
                delivery_id: event_id
                for event_id, delivery_id in conn.execute(
                    sa.insert(EVENTS).returning(EVENTS.c.id, EVENTS.c.delivery_id), event_rows
                ).all()
            }
            for key, delivery_id in inserted.items():
                event_ids[key] = by_delivery.get(delivery_id)
        existing = self._existing(conn, [k for k in first if k not in inserted])
        outcomes: list[WriteOutcome] = []
        receipts: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            key = item.dedup_key
            if first[key] == index and key in inserted:
                status = DeliveryStatus.STORED if item.event else DeliveryStatus.UNDECODABLE
                outcomes.append(WriteOutcome("stored", status, inserted[key], event_ids.get(key)))
                continue
            if key in inserted:
                status = DeliveryStatus.STORED if items[first[key]].event else "undecodable"
                original = WriteOutcome("duplicate", status, inserted[key], event_ids.get(key))
            else:
                original = existing[key]
            outcomes.append(original)
            receipts.append(_receipt_row(item, original.delivery_id))
        if receipts:
            conn.execute(sa.insert(DELIVERIES), receipts)
        return outcomes

    def _existing(self, conn: Connection, keys: list[str]) -> dict[str, WriteOutcome]:
        if not keys:
            return {}
        query = (
            sa.select(DELIVERIES.c.dedup_key, DELIVERIES.c.id, DELIVERIES.c.status, EVENTS.c.id)
            .select_from(DELIVERIES.outerjoin(EVENTS, EVENTS.c.delivery_id == DELIVERIES.c.id))
            .where(DELIVERIES.c.dedup_key.in_(keys))
        )
        found = {
            key: WriteOutcome("duplicate", status, delivery_id, event_id)
            for key, delivery_id, status, event_id in conn.execute(query).all()
        }
        missing = [key for key in keys if key not in found]
        if missing:
            # Cannot happen while the unique constraint holds: a conflicting row is committed.
            raise StoreUnavailable(f"{len(missing)} conflicting deliveries could not be read back")
        return found


def _delivery_row(item: IncomingDelivery) -> dict[str, Any]:
    return {
        "endpoint": item.endpoint,
        "status": DeliveryStatus.STORED if item.event is not None else DeliveryStatus.UNDECODABLE,
        "dedup_key": item.dedup_key,
        "duplicate_of": None,
        "received_at": item.received_at,
        "signed_at": item.signed_at,
        "key_index": item.key_index,
        "time_unit": item.time_unit,
        "body": item.body,
        "body_sha256": hashlib.sha256(item.body).hexdigest(),
        "body_size": len(item.body),
        "headers": item.headers,
        "query": [list(pair) for pair in item.query],
        # From X-Forwarded-For when a trusted proxy sets it: any length, the column holds 64.
        "remote_addr": item.remote_addr[:64] if item.remote_addr else item.remote_addr,
        "error": item.error[:500] if item.error else None,
    }


def _receipt_row(item: IncomingDelivery, original_id: int) -> dict[str, Any]:
    row = _delivery_row(item)
    row.update(status=DeliveryStatus.DUPLICATE, dedup_key=None, duplicate_of=original_id, body=None)
    return row


def _event_row(item: IncomingDelivery, delivery_id: int) -> dict[str, Any]:
    event = item.event
    assert event is not None
    return {
        "delivery_id": delivery_id,
        "endpoint": item.endpoint,
        "event_type": event.event_type,
        "room_id": event.room_id,
        "job_id": event.job_id,
        "received_at": item.received_at,
        "signed_at": item.signed_at,
        "message": event.message,
        "message_encoding": event.message_encoding,
        "extra": event.extra,
    }


def _no_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nul(v) for v in value]
    return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def _pg_safe(item: IncomingDelivery) -> IncomingDelivery:
    """PostgreSQL text and JSONB cannot hold U+0000; the raw body (bytea) keeps the exact bytes.

    The decoded values are searched, not the body's bytes: JSON can spell U+0000 without the
    bytes ``\\u0000`` (an escaped backslash and an escaped "u" inside the message string)."""
    event = item.event
    values: list[Any] = [item.query, item.headers, item.error]
    if event is not None:
        values += [event.event_type, event.room_id, event.job_id, event.message, event.extra]
    if not _has_nul(values):
        return item
    if event is not None:
        event = replace(
            event,
            event_type=_no_nul(event.event_type),
            room_id=_no_nul(event.room_id),
            job_id=_no_nul(event.job_id),
            message=_no_nul(event.message),
            extra=_no_nul(event.extra),
        )
    return replace(
        item,
        event=event,
        query=_no_nul(item.query),
        headers=_no_nul(item.headers),
        error=_no_nul(item.error),
        dedup_key=item.dedup_key,
    )


def _brief(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()
    return f"{type(original).__name__}: {text[0] if text else ''}"[:300]


class GroupCommitWriter:
    """Gathers concurrent deliveries into batches and commits each batch on one thread."""

    def __init__(
        self, store: Store, *, max_batch: int = 512, max_pending: int = 20000, timeout: float = 10.0
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.timeout = timeout
        self._pending: list[tuple[IncomingDelivery, asyncio.Future[WriteOutcome]]] = []
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.batches = 0
        self.batch_sizes: list[int] = []
        # Called on the event loop after each committed batch (metrics).
        self.on_batch: Callable[[Sequence[WriteOutcome | StoreUnavailable]], None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit-writer")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
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
        self._pending.append((item, future))
        self._wake.set()
        timer = loop.call_later(self.timeout, _expire, future, self.timeout)
        try:
            return await future
        finally:
            timer.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                items = [item for item, _ in batch]
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
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, StoreUnavailable):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
            if self._closing:
                return

    def _failed(
        self, exc: StoreUnavailable, batch: list[tuple[IncomingDelivery, asyncio.Future[Any]]]
    ) -> None:
        if self.last_error != exc.message:
            log.error("store unavailable: %s", exc.message)
        self.last_error = exc.message
        self.last_error_at = time.time()
        for _, future in batch:
            if not future.done():
                future.set_exception(StoreUnavailable(exc.message))


def _expire(future: asyncio.Future[WriteOutcome], timeout: float) -> None:
    if not future.done():
        future.set_exception(
            StoreUnavailable(f"the store did not commit within {timeout:g} seconds")
        )

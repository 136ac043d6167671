"""The writer's own database connection: one batch in one transaction, through the driver.

:class:`Store` holds a sqlite3 or psycopg connection of its own (never SQLAlchemy's pool) and
is used by one thread only: the group-commit writer's (receiver.store.group_commit), or the main
thread of the store's writer process (receiver.store.child). It turns what the driver raises into
StoreUnavailable (the connection, the file) or RowRefused (one row), and checks on SQLite that
the database file it commits into is still the database.

This module imports no SQLAlchemy and, for SQLite, no psycopg: the writer process that runs it
stays small.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from receiver.errors import StoreUnavailable
from receiver.store.incoming import IncomingDelivery, WriteOutcome
from receiver.store.rows import Rows, prepare
from receiver.store.write import write_postgres, write_sqlite

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

log = logging.getLogger("receiver.store")

T = TypeVar("T")

Target = tuple[str, str | None, str]
"""(dialect, the SQLite file's absolute path or None, the libpq conninfo for PostgreSQL)."""

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


def sqlite_path(url: str | URL) -> str | None:
    """The absolute path of a SQLite URL's file; None for another database or an in-memory one."""
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:"):
        return None
    return os.path.abspath(database)


def target_of(url: str) -> Target:
    """What :class:`Store` connects to, read from a SQLAlchemy URL (the writer process is handed
    the target itself, so it never imports SQLAlchemy)."""
    parsed = _parse(url)
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    return parsed.get_backend_name(), sqlite_path(parsed), conninfo


def _parse(url: str | URL) -> URL:
    from sqlalchemy.engine import make_url  # here only: see the module's docstring

    return make_url(url) if isinstance(url, str) else url


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

    def __init__(self, url: str, target: Target | None = None) -> None:
        self.url = url
        self.target = target or target_of(url)
        self.dialect, self._sqlite_path, self._conninfo = self.target
        if self.dialect == "sqlite" and self._sqlite_path is None:
            raise StoreUnavailable("an in-memory SQLite database cannot be shared; use a file")
        # psycopg only when the store is PostgreSQL: the SQLite writer process stays small.
        self._errors, self._refused = _driver_errors(self._sqlite_path is None)
        self._conn: Any = None
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None

    def start(self) -> None:
        """Nothing to start: the connection opens on first use (StoreProcess starts a child)."""

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
        import psycopg

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
        except self._refused as exc:
            raise RowRefused(_brief(exc)) from exc
        except self._errors as exc:
            self._drop_connection()
            raise StoreUnavailable(_brief(exc)) from exc

    def ping(self) -> None:
        self._in_transaction(lambda cur: cur.execute("SELECT 1"))

    def prepare(self, item: IncomingDelivery) -> Rows:
        """The rows of one delivery for this store's driver (receiver.store.rows.prepare)."""
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


def _driver_errors(
    postgres: bool,
) -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """(the driver's errors, those of them about the data rather than the connection: retried
    item by item, see Store.write_batch)."""
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    refused: tuple[type[Exception], ...] = (
        sqlite3.IntegrityError,
        sqlite3.DataError,
        sqlite3.InterfaceError,
    )
    if postgres:
        import psycopg

        errors += (psycopg.Error,)
        refused += (psycopg.IntegrityError, psycopg.DataError, psycopg.ProgrammingError)
    return errors, refused


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]

"""Opening the store: an engine to read it with, and the writer that commits deliveries.

:func:`create_engine_for` gives the SQLAlchemy engine for reads and migrations (SQLite with WAL
and ``synchronous=FULL``, orjson for JSON columns). :func:`open_writer` gives the group-commit
writer (receiver.store.group_commit) that every delivery is acknowledged through: by default
with the database driver in a child process (receiver.store.process), or on a thread.
The rows themselves are built by ``receiver.store.rows`` and written by ``receiver.store.write``
(duplicates are decided there, by the database's unique key).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from receiver.store.driver import PG_CONNECT_ARGS, Store, _sqlite_pragmas, _sqlite_uri, sqlite_path
from receiver.store.group_commit import GroupCommitWriter
from receiver.store.models import Delivery, Event
from receiver.store.process import ChildStore, ProcessCommitWriter

DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
EVENTS = Event.__table__  # type: ignore[attr-defined]


def create_engine_for(url: str, *, pool_size: int = 5, create: bool = True) -> Engine:
    """An engine for reads and migrations; SQLite connections get WAL and synchronous=FULL.
    ``create`` False: a SQLite file that does not exist is an error on connect, never created
    (for what only reads, so that asking a wrong path leaves nothing behind)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(parsed)
        options: dict[str, Any] = {}
        if path is not None and (not create or os.path.exists(path)):
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


async def dispose_when_idle(engine: Engine, *, timeout: float = 10.0) -> None:
    """Dispose of ``engine`` once no connection is checked out of its pool (for at most
    ``timeout`` seconds). A task cancelled while its thread still reads (``asyncio.to_thread``
    goes on after the cancel) returns its connection later; disposing before that would leave
    the connection to a pool nobody closes, open until the garbage collector finds it."""
    checkedout = getattr(engine.pool, "checkedout", None)
    deadline = time.monotonic() + timeout
    while checkedout is not None and checkedout() > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    engine.dispose()


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
    runs in a child process (receiver.store.process), with "thread" on a thread of this one."""
    store = Store(url)  # refuses what cannot work (an in-memory SQLite) either way
    if writer == "thread":
        return GroupCommitWriter(
            store, max_batch=max_batch, max_pending=max_pending, timeout=timeout
        )
    return ProcessCommitWriter(
        ChildStore(store.target), max_batch=max_batch, max_pending=max_pending, timeout=timeout
    )

"""The store's writer process itself: ``python -m receiver.store.child FD PARENT_PID``.

receiver.store.process starts it and is its only client. Over the socket ``FD`` it first gets
the store's target (never on the command line: a PostgreSQL URL may hold a password), answers
"ready", then takes one request at a time: ``("write", rows)``, ``("ping",)``, ``("close",)``.
Each answer is ``("ok", value)`` or ``("unavailable", message)``. SQLite is checkpointed here,
on a thread of its own, about once a second.

It imports the driver and the write path only (no SQLAlchemy; no psycopg for SQLite).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from receiver.errors import StoreUnavailable
from receiver.store.incoming import Fields, delivery_of

if TYPE_CHECKING:
    from receiver.store.driver import Store

log = logging.getLogger("receiver.store")

_PR_SET_PDEATHSIG = 1
CHECKPOINT_SECONDS = 1.0


def die_with_parent_thread() -> None:
    """SIGKILL when the thread that started this process ends (Linux: PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _child_main(conn: Connection, parent_pid: int) -> None:
    die_with_parent_thread()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        return
    from receiver.store.driver import Store

    try:
        store = Store("", conn.recv())
    except StoreUnavailable as exc:
        conn.send(("unavailable", exc.message))
        return
    stop = threading.Event()
    checkpointer = threading.Thread(
        target=_checkpoints, args=(store, stop), name="store-checkpoint", daemon=True
    )
    checkpointer.start()
    conn.send(("ok", "ready"))
    closing = False
    try:
        while not closing:
            try:
                message = conn.recv()
                closing = message[0] == "close"
                if not closing:
                    conn.send(_answer(store, message))
            except (EOFError, OSError):  # the server is gone: nobody waits for an answer
                break
    finally:
        stop.set()
        checkpointer.join(timeout=5)
        store.close()
    if closing:
        with contextlib.suppress(OSError):
            conn.send(("ok", None))


def _answer(store: Store, message: tuple[Any, ...]) -> tuple[str, Any]:
    kind = message[0]
    try:
        if kind == "write":
            return "ok", _write(store, message[1])
        if kind == "ping":
            store.ping()
            return "ok", None
        return "unavailable", f"unknown request {kind!r}"
    except StoreUnavailable as exc:
        return "unavailable", exc.message
    except Exception as exc:  # never let the writer die on one batch
        log.exception("unexpected error in the store's writer process")
        return "unavailable", f"store error: {type(exc).__name__}"


def _write(store: Store, batch: list[Fields]) -> list[tuple[Any, ...] | str]:
    items = [delivery_of(fields) for fields in batch]
    outcomes = store.write_batch(items, [store.prepare(item) for item in items])
    return [
        outcome.message
        if isinstance(outcome, StoreUnavailable)
        else (outcome.result, outcome.status, outcome.delivery_id, outcome.event_id, item.error)
        for item, outcome in zip(items, outcomes, strict=True)
    ]


def _checkpoints(store: Any, stop: threading.Event) -> None:
    while not stop.wait(CHECKPOINT_SECONDS):
        store.checkpoint()


def main(argv: Sequence[str]) -> None:
    """``python -m receiver.store.child FD PARENT_PID``: what ChildStore.start runs."""
    # First of all: the parent drains and then closes this process, so a Ctrl-C or a SIGTERM
    # sent to the whole process group must not end it while deliveries are still to commit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd, parent_pid = int(argv[0]), int(argv[1])
    _child_main(Connection(fd), parent_pid)


if __name__ == "__main__":
    main(sys.argv[1:])

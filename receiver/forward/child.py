"""The forwarder's own process: ``python -m receiver.forward.child FD PARENT_PID``.

receiver.forward.process starts it and is its only peer, over the socket ``FD`` (length-prefixed
pickles, receiver.forward.frames). It first gets what it needs to run (the database URL and the
destinations, secrets included: never on the command line), runs a
:class:`~receiver.forward.forwarder.Forwarder` on an event loop of its own, and answers "ready"
once each destination's place is set. Then it takes ``("wake",)`` (events were committed),
``("poke", name)``, ``("refresh",)`` and ``("stop",)``, and sends the parent, twice a second,
its status: the places it holds, the outcomes and latencies for ``/metrics``, each destination's
condition. Its log records go to the parent too, which writes them as its own.

It ignores SIGINT and SIGTERM (the server stops it once it has drained, so that it saves its
places and lets go of its leases) and is killed by the kernel when the thread that started it
ends, however that happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from receiver.forward.frames import read_frame, write_frame

STATUS_SECONDS = 0.5
# Below the server, like the prune: when the cores are busy the intake gets them first, and the
# lag takes up what the forwarder could not send yet (bench/forward.py: at full load the lag
# still stays flat).
NICENESS = 10
log = logging.getLogger("receiver.forward")


class Relay:
    """What the forwarder reports to ``Metrics``, gathered here and sent with the status."""

    def __init__(self) -> None:
        self.attempts: dict[tuple[str, str], int] = {}
        self.latency: dict[str, list[float]] = {}
        self.owned: tuple[list[str], list[str]] = ([], [])
        self.conditions: dict[str, dict[str, Any]] = {}

    def forward_attempts(self, destination: str, outcome: str, count: int) -> None:
        key = (destination, outcome)
        self.attempts[key] = self.attempts.get(key, 0) + count

    def forward_latency(self, destination: str, seconds: Sequence[float]) -> None:
        self.latency.setdefault(destination, []).extend(seconds)

    def forward_owned(self, owned: Iterable[str], every: Iterable[str]) -> None:
        self.owned = (list(owned), list(every))

    def forward_condition(self, destination: str, view: Mapping[str, Any]) -> None:
        self.conditions[destination] = dict(view)

    def take(self) -> dict[str, Any]:
        taken = {
            "attempts": self.attempts,
            "latency": self.latency,
            "owned": self.owned,
            "conditions": self.conditions,
        }
        self.attempts, self.latency, self.conditions = {}, {}, {}
        return taken


class ToParent(logging.Handler):
    """Each record, formatted here, written by the parent under the same logger's name."""

    def __init__(self, send: Any) -> None:
        super().__init__()
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.send(("log", record.name, record.levelno, text))
        except Exception:  # a log line must never stop the forwarder
            self.handleError(record)


async def run(sock: socket.socket) -> None:
    from receiver.forward.forwarder import Forwarder
    from receiver.store.writer import create_engine_for

    reader, writer = await asyncio.open_connection(sock=sock)
    setup = await read_frame(reader)

    def send(message: Any) -> None:
        if not writer.is_closing():
            write_frame(writer, message)

    root = logging.getLogger()
    root.handlers[:] = [ToParent(send)]
    root.setLevel(setup["log_level"])
    for name in ("httpx2", "httpcore2", "aiohttp", "aio_pika", "aiormq", "nats"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    relay = Relay()
    engine = create_engine_for(setup["database_url"], pool_size=2)
    forwarder = Forwarder(
        setup["destinations"],
        engine=engine,
        metrics=relay,
        public_url=setup.get("public_url"),
        owner=setup.get("owner"),
        own_process=True,
    )
    await forwarder.start()
    send(("ready",))

    async def report() -> None:
        while True:
            await asyncio.sleep(STATUS_SECONDS)
            send(("status", {"places": forwarder.places(), **relay.take()}))
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    reporter = asyncio.create_task(report())
    try:
        while True:
            try:
                message = await read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break  # the server is gone
            kind = message[0]
            if kind == "wake":
                forwarder.wake()
            elif kind == "poke":
                forwarder.poke(message[1])
            elif kind == "refresh":
                await forwarder.refresh()
            elif kind == "stop":
                break
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        await forwarder.stop()
        engine.dispose()
        send(("status", {"places": forwarder.places(), **relay.take()}))
        send(("stopped",))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


def main(argv: Sequence[str]) -> None:
    """What receiver.forward.process starts."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from receiver.store.child import die_with_parent_thread

    die_with_parent_thread()
    fd, parent_pid = int(argv[0]), int(argv[1])
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        return
    os.nice(NICENESS)
    asyncio.run(run(socket.socket(fileno=fd)))


if __name__ == "__main__":
    main(sys.argv[1:])

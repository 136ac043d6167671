"""The forwarder in a process of its own (``forwarder = "process"``, the default): the server's
side of it.

Forwarding reads every stored event back, builds its message and hands it to a client library;
at full load that is tens of microseconds of Python per event. On the server's event loop (or a
thread of it) that work would take turns with the intake for the interpreter lock, so the intake
would pay for every destination. In a child process (receiver.forward.child) it runs on another
core, and the server only tells it that events were committed (one small write per committed
batch) and takes its status (places, metrics, conditions, log lines) twice a second.

:class:`ForwarderProcess` has the surface the app uses of a
:class:`~receiver.forward.forwarder.Forwarder`: ``start``, ``wake``, ``poke``, ``refresh``,
``places``, ``stop``. The child is started again, at most once a second, if it ends; it
never outlives the server (receiver.forward.child).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from receiver.config import Settings
from receiver.forward.forwarder import replica_id
from receiver.forward.frames import read_frame, write_frame

if TYPE_CHECKING:
    from receiver.metrics import Metrics

log = logging.getLogger("receiver.forward")

CHILD_MODULE = "receiver.forward.child"
START_SECONDS = 60.0
STOP_SECONDS = 15.0
RESTART_SECONDS = 1.0
WAKE_SECONDS = 0.01


class ForwarderProcess:
    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        # One identity for the leases across restarts of the child: a restarted child takes
        # its own leases back at once instead of waiting for them to run out.
        self.owner = replica_id()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._places: dict[str, tuple[int, int]] = {}
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self.starts = 0
        self._woken = 0.0
        self._wake_later: asyncio.TimerHandle | None = None

    # -- the surface of Forwarder -------------------------------------------------------------

    async def start(self) -> None:
        """Start the child and wait until each destination's place is set (it answers
        "ready"), so the callbacks that follow are all handed on."""
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="forwarder-process")

    def wake(self) -> None:
        """Events were committed. Under load the child reads in batches every LINGER_SECONDS
        anyway, so wake-ups are sent at most every WAKE_SECONDS, the last one never lost."""
        now = time.monotonic()
        if now - self._woken >= WAKE_SECONDS:
            self._woken = now
            self._send(("wake",))
        elif self._wake_later is None:
            loop = asyncio.get_running_loop()
            self._wake_later = loop.call_later(WAKE_SECONDS, self._wake_now)

    def _wake_now(self) -> None:
        self._wake_later = None
        self._woken = time.monotonic()
        self._send(("wake",))

    def poke(self, name: str) -> None:
        self._send(("poke", name))

    async def refresh(self) -> None:
        self._send(("refresh",))

    def places(self) -> dict[str, tuple[int, int]]:
        return dict(self._places)

    async def stop(self) -> None:
        """Ask the child to save its places and let go of its leases; kill it if it does not
        end within STOP_SECONDS."""
        self._stopping = True
        if self._wake_later is not None:
            self._wake_later.cancel()
        if self._supervisor is not None:
            self._send(("stop",))
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._supervisor), STOP_SECONDS)
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._discard()

    # -- the child ----------------------------------------------------------------------------

    async def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            command = [sys.executable, "-m", CHILD_MODULE, str(theirs.fileno()), str(os.getpid())]
            self._process = subprocess.Popen(
                command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True
            )
        finally:
            theirs.close()
        self.starts += 1
        self._reader, self._writer = await asyncio.open_connection(sock=ours)
        write_frame(
            self._writer,
            {
                "database_url": self.settings.database_url,
                "destinations": self.settings.destinations,
                "log_level": self.settings.log_level,
                "public_url": self.settings.public_url,
                "owner": self.owner,
            },
        )
        async with asyncio.timeout(START_SECONDS):
            while True:
                message = await read_frame(self._reader)
                if message[0] == "ready":
                    break
                self._take(message)

    async def _supervise(self) -> None:
        """Read what the child sends; start it again if it ends while the server runs."""
        while True:
            try:
                assert self._reader is not None
                while True:
                    message = await read_frame(self._reader)
                    if message[0] == "stopped":
                        return
                    self._take(message)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                pass
            if self._stopping:
                return
            code = self._discard()
            log.warning(
                "the forwarder process ended (exit code %s); starting it again in %g s",
                code,
                RESTART_SECONDS,
            )
            await asyncio.sleep(RESTART_SECONDS)
            try:
                await self._spawn()
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                log.warning("the forwarder process did not start: %s", type(exc).__name__)

    def _take(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "log":
            _name, level, text = message[1:]
            logging.getLogger(_name).log(level, "%s", text)
        elif kind == "status":
            status = message[1]
            self._places = status["places"]
            if self.metrics is not None:
                _apply(self.metrics, status)

    def _send(self, message: tuple[Any, ...]) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):
                write_frame(writer, message)

    def _discard(self) -> int | None:
        if self._writer is not None:
            self._writer.close()
            self._writer = self._reader = None
        process, self._process = self._process, None
        if process is None:
            return None
        deadline = time.monotonic() + 5
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        return process.returncode


def _apply(metrics: Metrics, status: dict[str, Any]) -> None:
    for (destination, outcome), count in status["attempts"].items():
        metrics.forward_attempts(destination, outcome, count)
    for destination, values in status["latency"].items():
        metrics.forward_latency(destination, values)
    owned, every = status["owned"]
    if every:
        metrics.forward_owned(owned, every)
    for destination, view in status["conditions"].items():
        metrics.forward_condition(destination, view)

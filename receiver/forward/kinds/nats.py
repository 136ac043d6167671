"""``kind = "nats"``: a JetStream publish to ``<topic>.<type>`` with ``Nats-Msg-Id: <id>``,
counted as delivered once the stream acknowledged it.

JetStream drops a message whose ``Nats-Msg-Id`` it has seen within the stream's duplicate window
(NATS docs, "JetStream: Message Deduplication"), so a re-send after a crash is stored once. A
batch goes out as one run of ``HPUB`` commands, each with a reply subject of ours, through
nats-py's connection, and the acknowledgements are gathered by one subscription to those
subjects: one connection keeps their order. This is what nats-py's ``publish_async`` sends for
each message, without its per-message task, future, random token and acknowledgement object,
where py-spy found more than half the forwarder's CPU (bench/forward.py at full load: 42 -> 21
us a request).
No stream capturing the subject (``no responders``), a time-out, a lost or refused connection
is a failing destination; a message larger than the server takes is refused.

Subjects are tokens separated by dots; a character a subject cannot hold (space, ``*``, ``>``)
in an event type the receiver stored becomes ``_``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import Sequence
from typing import Any

import nats
import orjson
from nats.errors import ConnectionClosedError
from nats.errors import Error as NatsError
from nats.js.errors import NoStreamResponseError

from receiver.config import DestinationSettings
from receiver.forward.messages import Message
from receiver.forward.transport import DELIVERED, FAILED, REFUSED, Outcome, Transport, scrub, short

_NOT_IN_SUBJECT = re.compile(r"[^A-Za-z0-9_.:-]")
# The status a server answers a request with when nothing subscribes to its subject (a
# JetStream publish: no stream captures it).
NO_RESPONDERS = "503"


def subject(topic: str, message_type: str) -> str:
    return f"{topic}.{_NOT_IN_SUBJECT.sub('_', message_type)}"


class NatsTransport(Transport):
    def __init__(self, destination: DestinationSettings) -> None:
        self.destination = destination
        self._nc: Any = None
        # This connection's reply subjects: "<inbox>.<token>", one token a message.
        self._inbox = ""
        self._tokens = itertools.count(1)
        self._waiting: dict[str, tuple[_Batch, int]] = {}

    async def _connect(self) -> Any:
        if self._nc is None or self._nc.is_closed:
            timeout = self.destination.timeout_seconds
            # nats-py can keep trying a refused server past connect_timeout: bounded here.
            nc = await asyncio.wait_for(
                nats.connect(
                    self.destination.url,
                    connect_timeout=timeout,
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    error_cb=_quiet,
                    disconnected_cb=self._lost,
                    closed_cb=self._lost,
                ),
                timeout,
            )
            self._inbox = nc.new_inbox() + "."
            await nc.subscribe(self._inbox + "*", cb=self._answered)
            self._nc = nc
        return self._nc

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        await self._lost()
        if nc is not None and not nc.is_closed:
            # On a broken connection close() can wait for a flush that never comes.
            with contextlib.suppress(NatsError, OSError, TimeoutError):
                await asyncio.wait_for(nc.close(), self.destination.timeout_seconds)

    async def _answered(self, msg: Any) -> None:
        waiter = self._waiting.pop(msg.subject[len(self._inbox) :], None)
        if waiter is not None:  # None: a late answer to a batch given up on
            batch, index = waiter
            batch.answer(index, msg)

    async def _lost(self) -> None:
        """The connection is gone: no answer still awaited will come on it."""
        waiting, self._waiting = self._waiting, {}
        for batch, _index in waiting.values():
            batch.done.set()

    async def send(self, messages: Sequence[Message]) -> list[Outcome | None]:
        started = time.monotonic()
        batch = _Batch(len(messages))
        try:
            nc = await self._connect()
            if not nc.is_connected:
                raise ConnectionClosedError
            commands = self._publishes(messages, batch, nc.max_payload)
            if commands:
                await nc._send_command(commands)
                await nc._flush_pending()
        except (TimeoutError, NatsError, OSError) as exc:
            await self.close()
            error = self._error(exc)
            return [Outcome(FAILED, time.monotonic() - started, error=error)] * len(messages)
        if batch.left:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.done.wait(), self.destination.timeout_seconds)
        latency = time.monotonic() - started
        outcomes: list[Outcome | None] = [self._outcome(a, latency) for a in batch.answers]
        if batch.left:  # unanswered: the connection broke or the server is stuck
            await self.close()  # which forgets the tokens still awaited
        return outcomes

    def _publishes(self, messages: Sequence[Message], batch: _Batch, max_payload: int) -> bytes:
        """The batch as one run of HPUB commands (what nats-py's JetStream ``publish_async``
        sends for each message, with a reply subject of ours to match the acknowledgement),
        each message's token registered. A body larger than the server takes is refused."""
        pieces: list[bytes] = []
        topic = self.destination.topic
        for index, message in enumerate(messages):
            if len(message.body) > max_payload:
                error = f"{len(message.body)} bytes, more than the server takes ({max_payload})"
                batch.answer(index, Outcome(REFUSED, 0.0, error=error))
                continue
            token = str(next(self._tokens))
            self._waiting[token] = (batch, index)
            header = b"NATS/1.0\r\nNats-Msg-Id: " + message.id.encode() + b"\r\n\r\n"
            size = len(header) + len(message.body)
            line = f"HPUB {subject(topic, message.type)} {self._inbox}{token} {len(header)} {size}"
            pieces += (line.encode(), b"\r\n", header, message.body, b"\r\n")
        return b"".join(pieces)

    def _outcome(self, answer: Any, latency: float) -> Outcome:
        if answer is None:
            error = f"no acknowledgement within {self.destination.timeout_seconds:g} s"
            if self._nc is None or not self._nc.is_connected:
                error = "the connection was lost before the acknowledgement"
            return Outcome(FAILED, latency, error=error)
        if isinstance(answer, Outcome):
            return answer
        if answer.headers and answer.headers.get("Status") == NO_RESPONDERS:
            return Outcome(FAILED, latency, error=self._error(NoStreamResponseError()))
        try:
            ack = orjson.loads(answer.data)
        except orjson.JSONDecodeError:
            return Outcome(
                FAILED,
                latency,
                error=short(f"not a JetStream acknowledgement: {answer.data[:100]!r}"),
            )
        problem = ack.get("error")
        if problem is not None:
            text = (
                f"JetStream refused it: {problem.get('description')} (code {problem.get('code')})"
            )
            return Outcome(FAILED, latency, error=short(text))
        duplicate = " duplicate" if ack.get("duplicate") else ""
        return Outcome(
            DELIVERED, latency, response=f"{ack.get('stream')}:{ack.get('seq')}{duplicate}"
        )

    def _error(self, exc: BaseException) -> str:
        if isinstance(exc, NoStreamResponseError):
            return short(
                f"no JetStream stream captures {self.destination.topic}.> (no responders): "
                "add one, e.g. nats stream add --subjects '" + self.destination.topic + ".>'"
            )
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.destination.timeout_seconds:g} s (or refused)"
        return scrub(short(exc), self.destination.url)


class _Batch:
    """The answers to one ``send``, in its messages' order: a nats-py ``Msg`` (the server's
    acknowledgement, or its "no responders" status), an ``Outcome`` decided before sending, or
    None while none came."""

    def __init__(self, size: int) -> None:
        self.answers: list[Any] = [None] * size
        self.left = size
        self.done = asyncio.Event()
        if not size:
            self.done.set()

    def answer(self, index: int, answer: Any) -> None:
        if self.answers[index] is None:
            self.answers[index] = answer
            self.left -= 1
            if not self.left:
                self.done.set()


async def _quiet(exc: Exception) -> None:
    """nats-py reports connection errors here as well as raising them; they are outcomes."""

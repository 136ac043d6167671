"""``kind = "nats"``: a JetStream publish to ``<topic>.<type>`` with ``Nats-Msg-Id: <id>``,
counted as delivered once the stream acknowledged it.

JetStream drops a message whose ``Nats-Msg-Id`` it has seen within the stream's duplicate window
(NATS docs, "JetStream: Message Deduplication"), so a re-send after a crash is stored once. A
batch is published without waiting between messages (nats-py's ``publish_async``) and the
acknowledgements gathered: one connection keeps their order. No stream capturing the subject
(``no responders``), a time-out or a refused connection is a failing destination; a message
larger than the server takes is refused.

Subjects are tokens separated by dots; a character a subject cannot hold (space, ``*``, ``>``)
in an event type the receiver stored becomes ``_``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Sequence
from typing import Any

import nats
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from nats.js.errors import NoStreamResponseError

from receiver.config import DestinationSettings
from receiver.forward.messages import Message
from receiver.forward.transport import DELIVERED, FAILED, REFUSED, Outcome, Transport, scrub, short

_NOT_IN_SUBJECT = re.compile(r"[^A-Za-z0-9_.:-]")


def subject(topic: str, message_type: str) -> str:
    return f"{topic}.{_NOT_IN_SUBJECT.sub('_', message_type)}"


class NatsTransport(Transport):
    def __init__(self, destination: DestinationSettings) -> None:
        self.destination = destination
        self._nc: Any = None
        self._js: Any = None

    async def _connect(self) -> Any:
        if self._nc is None or self._nc.is_closed:
            timeout = self.destination.timeout_seconds
            # nats-py can keep trying a refused server past connect_timeout: bounded here.
            self._nc = await asyncio.wait_for(
                nats.connect(
                    self.destination.url,
                    connect_timeout=timeout,
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    error_cb=_quiet,
                    disconnected_cb=_none,
                    closed_cb=_none,
                ),
                timeout,
            )
            self._js = self._nc.jetstream(timeout=timeout)
        return self._js

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            # On a broken connection close() can wait for a flush that never comes.
            with contextlib.suppress(NatsError, OSError, TimeoutError):
                await asyncio.wait_for(nc.close(), self.destination.timeout_seconds)

    async def send(self, messages: Sequence[Message]) -> list[Outcome | None]:
        started = time.monotonic()
        try:
            js = await self._connect()
            futures = []
            for message in messages:
                futures.append(
                    await js.publish_async(
                        subject(self.destination.topic, message.type),
                        message.body,
                        headers={"Nats-Msg-Id": message.id},
                    )
                )
        except (TimeoutError, NatsError, OSError) as exc:
            await self.close()
            error = self._error(exc)
            return [Outcome(FAILED, time.monotonic() - started, error=error)] * len(messages)
        _done, pending = await asyncio.wait(futures, timeout=self.destination.timeout_seconds)
        latency = time.monotonic() - started
        outcomes: list[Outcome | None] = []
        for future in futures:
            if future in pending:
                future.cancel()
                error = f"no acknowledgement within {self.destination.timeout_seconds:g} s"
                outcomes.append(Outcome(FAILED, latency, error=error))
                continue
            problem = future.exception()
            if problem is None:
                ack = future.result()
                answer = f"{ack.stream}:{ack.seq}{' duplicate' if ack.duplicate else ''}"
                outcomes.append(Outcome(DELIVERED, latency, response=answer))
            elif isinstance(problem, MaxPayloadError):
                outcomes.append(Outcome(REFUSED, latency, error=self._error(problem)))
            else:
                outcomes.append(Outcome(FAILED, latency, error=self._error(problem)))
        if pending:
            await self.close()
        return outcomes

    def _error(self, exc: BaseException) -> str:
        if isinstance(exc, NoStreamResponseError):
            return short(
                f"no JetStream stream captures {self.destination.topic}.> (no responders): "
                "add one, e.g. nats stream add --subjects '" + self.destination.topic + ".>'"
            )
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.destination.timeout_seconds:g} s (or refused)"
        return scrub(short(exc), self.destination.url)


async def _quiet(exc: Exception) -> None:
    """nats-py reports connection errors here as well as raising them; they are outcomes."""


async def _none() -> None:
    return None

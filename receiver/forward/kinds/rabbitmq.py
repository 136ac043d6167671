"""``kind = "rabbitmq"``: a publish to the topic exchange ``<topic>`` (declared durable) with
routing key ``<type>``, ``message_id`` = the message id, persistent, with publisher confirms.

A message counts as delivered once the broker confirmed it (RabbitMQ docs, "Consumer
Acknowledgements and Publisher Confirms"). It is published ``mandatory``: a message no queue is
bound for comes back to us instead of being dropped, and is refused (the rest flows), so a
missing binding is a visible dead letter rather than a silent loss. A batch is published on one
channel without waiting between messages, which keeps their order, and the confirms gathered.
A refused connection, a time-out or a negative confirm is a failing destination.

aio-pika connects and declares the exchange; the messages go through its underlying aiormq
channel directly, which costs the forwarder a third of what aio-pika's message and exchange
objects do per message (bench/forward.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika.exceptions import AMQPError
from pamqp.commands import Basic

from receiver.config import DestinationSettings
from receiver.forward.messages import Message
from receiver.forward.transport import DELIVERED, FAILED, REFUSED, Outcome, Transport, scrub, short


class RabbitTransport(Transport):
    def __init__(self, destination: DestinationSettings) -> None:
        self.destination = destination
        self._connection: Any = None
        self._channel: Any = None

    async def _open(self) -> Any:
        if self._connection is None or self._connection.is_closed or self._channel is None:
            await self.close()
            timeout = self.destination.timeout_seconds
            self._connection = await aio_pika.connect(self.destination.url, timeout=timeout)
            channel = await self._connection.channel(publisher_confirms=True)
            await channel.declare_exchange(
                self.destination.topic, aio_pika.ExchangeType.TOPIC, durable=True, timeout=timeout
            )
            self._channel = await channel.get_underlay_channel()
        return self._channel

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(AMQPError, OSError, TimeoutError, RuntimeError):
                await asyncio.wait_for(connection.close(), self.destination.timeout_seconds)

    async def send(self, messages: Sequence[Message]) -> list[Outcome | None]:
        started = time.monotonic()
        try:
            channel = await self._open()
        except (AMQPError, OSError, TimeoutError, RuntimeError) as exc:
            await self.close()
            error = scrub(short(exc), self.destination.url)
            return [Outcome(FAILED, time.monotonic() - started, error=error)] * len(messages)
        exchange = self.destination.topic
        publishes = [
            asyncio.ensure_future(
                channel.basic_publish(
                    message.body,
                    exchange=exchange,
                    routing_key=message.type,
                    properties=Basic.Properties(
                        message_id=message.id,
                        message_type=message.type,
                        content_type="application/json",
                        delivery_mode=2,  # persistent
                    ),
                    mandatory=True,
                    wait=False,
                )
            )
            for message in messages
        ]
        _done, pending = await asyncio.wait(publishes, timeout=self.destination.timeout_seconds)
        latency = time.monotonic() - started
        outcomes: list[Outcome | None] = []
        broken = bool(pending)
        for message, publish in zip(messages, publishes, strict=True):
            if publish in pending:
                publish.cancel()
                error = f"no confirm within {self.destination.timeout_seconds:g} s"
                outcomes.append(Outcome(FAILED, latency, error=error))
                continue
            problem = publish.exception()
            result = None if problem is not None else publish.result()
            if isinstance(result, Basic.Ack):
                outcomes.append(Outcome(DELIVERED, latency, response="confirmed"))
            elif problem is not None:
                broken = True
                outcomes.append(
                    Outcome(FAILED, latency, error=scrub(short(problem), self.destination.url))
                )
            else:  # the broker returned it: no queue is bound for this routing key
                error = (
                    f"unroutable: no queue is bound to exchange {exchange} for routing key "
                    f"{message.type}"
                )
                outcomes.append(Outcome(REFUSED, latency, error=short(error)))
        if broken:
            await self.close()
        return outcomes

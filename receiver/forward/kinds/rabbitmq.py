"""``kind = "rabbitmq"``: a publish to the topic exchange ``<topic>`` (declared durable) with
routing key ``<type>``, ``message_id`` = the message id, persistent, with publisher confirms.

A message counts as delivered once the broker confirmed it (RabbitMQ docs, "Consumer
Acknowledgements and Publisher Confirms"). It is published ``mandatory``: a message no queue is
bound for comes back to us instead of being dropped, and is refused (the rest flows), so a
missing binding is a visible dead letter rather than a silent loss. A batch is published on one
channel without waiting between messages, which keeps their order, and the confirms gathered.
A refused connection, a time-out or a negative confirm is a failing destination.
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
        self._exchange: Any = None

    async def _open(self) -> Any:
        if self._connection is None or self._connection.is_closed or self._exchange is None:
            await self.close()
            timeout = self.destination.timeout_seconds
            self._connection = await aio_pika.connect(self.destination.url, timeout=timeout)
            channel = await self._connection.channel(publisher_confirms=True)
            self._exchange = await channel.declare_exchange(
                self.destination.topic, aio_pika.ExchangeType.TOPIC, durable=True, timeout=timeout
            )
        return self._exchange

    async def close(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(AMQPError, OSError, asyncio.TimeoutError, RuntimeError):
                await asyncio.wait_for(connection.close(), self.destination.timeout_seconds)

    async def send(self, messages: Sequence[Message]) -> list[Outcome | None]:
        started = time.monotonic()
        timeout = self.destination.timeout_seconds
        try:
            exchange = await self._open()
        except (TimeoutError, AMQPError, OSError, RuntimeError) as exc:
            await self.close()
            error = scrub(short(exc), self.destination.url)
            return [Outcome(FAILED, time.monotonic() - started, error=error)] * len(messages)
        publishes = [
            asyncio.ensure_future(
                exchange.publish(
                    aio_pika.Message(
                        message.body,
                        message_id=message.id,
                        type=message.type,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=message.type,
                    mandatory=True,
                    timeout=timeout,
                )
            )
            for message in messages
        ]
        results = await asyncio.gather(*publishes, return_exceptions=True)
        latency = time.monotonic() - started
        outcomes: list[Outcome | None] = []
        broken = False
        for message, result in zip(messages, results, strict=True):
            if isinstance(result, Basic.Ack):
                outcomes.append(Outcome(DELIVERED, latency, response="confirmed"))
            elif isinstance(result, BaseException):
                broken = True
                error = scrub(short(result), self.destination.url)
                outcomes.append(Outcome(FAILED, latency, error=error))
            else:  # the broker returned it: no queue is bound for this routing key
                error = (
                    f"unroutable: no queue is bound to exchange {self.destination.topic} for "
                    f"routing key {message.type}"
                )
                outcomes.append(Outcome(REFUSED, latency, error=short(error)))
        if broken:
            await self.close()
        return outcomes

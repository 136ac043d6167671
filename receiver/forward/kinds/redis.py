"""``kind = "redis"``: ``XADD <topic> * id <id> type <type> payload <body>`` (Redis Streams).

A batch goes as one pipeline (commands in order on one connection, without a transaction), so a
stream receives one job's messages in the order they were stored; Redis answers each command,
and an entry id back is its acknowledgement. Any error (a refused connection, a time-out, a
``WRONGTYPE`` or ``OOM`` answer) is a failing destination: its place is kept and it is tried
again on the schedule. Redis keeps no message ids of its own: consumers deduplicate on the
``id`` field, which is the same on every re-send.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from receiver.config import DestinationSettings
from receiver.forward.messages import Message
from receiver.forward.transport import DELIVERED, FAILED, Outcome, Transport, scrub, short


class RedisTransport(Transport):
    def __init__(self, destination: DestinationSettings) -> None:
        self.destination = destination
        self._client: aioredis.Redis | None = None

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            timeout = self.destination.timeout_seconds
            self._client = aioredis.from_url(
                self.destination.url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry_on_timeout=False,
                health_check_interval=30,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def send(self, messages: Sequence[Message]) -> list[Outcome | None]:
        started = time.monotonic()
        try:
            pipe = self._redis().pipeline(transaction=False)
            for message in messages:
                fields: Any = {"id": message.id, "type": message.type, "payload": message.body}
                pipe.xadd(self.destination.topic, fields)
            results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            await self.close()  # a connection in an unknown state is not reused
            error = scrub(short(exc), self.destination.url)
            return [Outcome(FAILED, time.monotonic() - started, error=error)] * len(messages)
        latency = time.monotonic() - started
        outcomes: list[Outcome | None] = []
        for result in results:
            if isinstance(result, Exception):
                error = scrub(short(result), self.destination.url)
                outcomes.append(Outcome(FAILED, latency, error=error))
            else:
                outcomes.append(Outcome(DELIVERED, latency, response=_text(result)))
        return outcomes


def _text(value: object) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)

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

# For each (id, type, payload) of ARGV, in order: the XADD PRODUCT.md names. Answers the last
# entry id. A failing XADD ends the script with its error (the ones before it stay added).
XADD_ALL = """
local last = false
for i = 1, #ARGV, 3 do
  last = redis.call('XADD', KEYS[1], '*',
    'id', ARGV[i], 'type', ARGV[i + 1], 'payload', ARGV[i + 2])
end
return last
"""


class RedisTransport(Transport):
    def __init__(self, destination: DestinationSettings) -> None:
        self.destination = destination
        self._client: aioredis.Redis | None = None
        self._script: Any = None

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
        self._script = None
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def send(self, messages: Sequence[Message]) -> list[Outcome | None]:
        started = time.monotonic()
        args: list[Any] = []
        for message in messages:
            args += (message.id, message.type, message.body)
        try:
            client = self._redis()
            if self._script is None:
                self._script = client.register_script(XADD_ALL)
            last = await self._script(keys=[self.destination.topic], args=args)
        except (RedisError, OSError) as exc:
            await self.close()  # a connection in an unknown state is not reused
            error = scrub(short(exc), self.destination.url)
            return [Outcome(FAILED, time.monotonic() - started, error=error)] * len(messages)
        latency = time.monotonic() - started
        return [Outcome(DELIVERED, latency, response=_text(last))] * len(messages)


def _text(value: object) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)

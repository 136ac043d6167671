"""The one small interface every kind of destination implements, and what an attempt comes to.

A :class:`Transport` is handed a batch of messages in log order and answers one :class:`Outcome`
per message (None for one it did not try). It never raises for a destination's trouble: a
refused connection, a time-out or an error answer is an outcome. What an outcome means
(PRODUCT.md, "Forwarding: failures"):

- ``delivered``: the destination acknowledged it (a 2xx; a broker's acknowledgement).
- ``failed``: the destination is failing (5xx, 408/425/429, a time-out, a refused connection, a
  broker error): it is retried on the schedule, its place kept, until it succeeds.
- ``refused``: the destination refused this message (any other 4xx; a broker returning it as
  unroutable): retried on the schedule, then dead-lettered; the rest flows.
- ``gone``: 410 Gone: the destination is disabled, keeping its place.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from receiver.forward.messages import Message

DELIVERED = "delivered"
FAILED = "failed"
REFUSED = "refused"
GONE = "gone"
# Logged, not sent by a transport: a refused message whose refusals used up the schedule.
DEAD_LETTERED = "dead_lettered"
OUTCOMES = (DELIVERED, FAILED, REFUSED, GONE, DEAD_LETTERED)

RESPONSE_PREFIX = 200
ERROR_LENGTH = 300


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str
    latency: float
    status: int | None = None
    error: str | None = None
    # Seconds the destination asked us to wait (Retry-After).
    retry_after: float | None = None
    # The start of the destination's answer, for the attempts log.
    response: str | None = None

    @property
    def delivered(self) -> bool:
        return self.kind == DELIVERED


class Transport(abc.ABC):
    """One destination's connection. ``send`` may be called again after any outcome; a
    transport reconnects by itself."""

    # True: each message is its own attempt (an HTTP request), logged one by one. False: a
    # batch is one attempt (pipelined to a broker), logged as one row, failures one by one.
    per_message_attempts: bool = False

    @abc.abstractmethod
    async def send(self, messages: Sequence[Message]) -> list[Outcome | None]:
        """One outcome per message, in order (None: not tried)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Let go of connections; the transport may be used again after."""


def short(error: BaseException | str) -> str:
    """An error as one line for people, without a traceback."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}".rstrip(": ")
    text = " ".join(text.split())
    return text[:ERROR_LENGTH]


def scrub(text: str, url: str) -> str:
    """``text`` (an error a client library wrote) without the URL's password, should the
    library have quoted it."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    if password:
        for form in {password, unquote(password)}:
            text = text.replace(form, "****")
    return text

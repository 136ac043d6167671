"""``kind = "http"``: a POST per message, signed as the Standard Webhooks specification says.

Headers (https://www.standardwebhooks.com/, "Signature scheme"): ``webhook-id`` (the message id,
the same on every attempt), ``webhook-timestamp`` (this attempt's time, seconds) and
``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, one per secret,
space-separated, so a consumer holding either secret verifies during a rotation. The signature is
computed by PyPI's ``standardwebhooks`` (the specification's reference implementation).

Messages of one order key (one job) go one after another; different jobs go concurrently, at
most ``max_in_flight`` at a time. A job's run stops at its first message that is not delivered.
Redirects are not followed (a 3xx is a failing destination: its place is kept).

With ``format`` other than ``standard`` the destination is a chat service's incoming webhook:
findings go as a short text (receiver.forward.chat), unsigned; the service's own answer decides
whether it took the message (some answer 200 with an error code in the body).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import aiohttp
from standardwebhooks.webhooks import Webhook

from receiver import __version__
from receiver.config import DestinationSettings
from receiver.config.destinations import masked_url
from receiver.forward import chat
from receiver.forward.messages import Message
from receiver.forward.schedule import retry_after_seconds
from receiver.forward.transport import (
    DELIVERED,
    FAILED,
    GONE,
    REFUSED,
    RESPONSE_PREFIX,
    Outcome,
    Transport,
    scrub,
    short,
)

USER_AGENT = f"metastudio-receiver/{__version__}"
# Retried as a failing destination (PRODUCT.md): 408 Request Timeout, 425 Too Early, 429 Too
# Many Requests; every 5xx.
RETRYABLE = frozenset({408, 425, 429})
# The start of an answer is kept for the attempts log; the rest is not read.
READ_AT_MOST = 4096


class HttpTransport(Transport):
    per_message_attempts = True

    def __init__(self, destination: DestinationSettings, *, public_url: str | None = None) -> None:
        self.destination = destination
        # Chat messages link to the console's job page under it (PRODUCT.md: public_url).
        self.public_url = public_url
        self._signers = [Webhook(secret) for secret in destination.secrets]
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            limit = self.destination.max_in_flight
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
                timeout=aiohttp.ClientTimeout(total=self.destination.timeout_seconds),
                headers={"user-agent": USER_AGENT},
                cookie_jar=aiohttp.DummyCookieJar(),  # a destination's cookies are not kept
                auto_decompress=False,  # only the answer's first bytes are read, for the log
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def send(self, messages: Sequence[Message]) -> list[Outcome | None]:
        outcomes: list[Outcome | None] = [None] * len(messages)
        lanes: dict[str, list[int]] = {}
        for index, message in enumerate(messages):
            lanes.setdefault(message.order_key, []).append(index)
        gate = asyncio.Semaphore(self.destination.max_in_flight)

        async def lane(indexes: list[int]) -> None:
            for index in indexes:
                async with gate:
                    outcome = await self._post(messages[index])
                outcomes[index] = outcome
                if not outcome.delivered:
                    return

        await asyncio.gather(*(lane(indexes) for indexes in lanes.values()))
        return outcomes

    def headers_for(self, message: Message, *, now: datetime | None = None) -> dict[str, str]:
        """The Standard Webhooks headers of one attempt at ``message``."""
        when = now or datetime.now(UTC)
        signatures = " ".join(
            signer.sign(msg_id=message.id, timestamp=when, data=message.body)
            for signer in self._signers
        )
        return {
            "content-type": "application/json",
            "webhook-id": message.id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": signatures,
        }

    async def _post(self, message: Message) -> Outcome:
        if self.destination.chat:
            body = chat.render(self.destination.format, message, public_url=self.public_url)
            headers = {"content-type": "application/json"}
        else:
            body, headers = message.body, self.headers_for(message)
        started = time.monotonic()
        try:
            async with self._http().post(
                self.destination.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                answer = await _prefix(response)
                status = response.status
                location = response.headers.get("location")
                retry_after_header = response.headers.get("retry-after")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Outcome(FAILED, time.monotonic() - started, error=self._error(exc))
        latency = time.monotonic() - started
        text = answer.decode("utf-8", "replace")[:RESPONSE_PREFIX]
        kind, error = _judge(status, location)
        if kind == DELIVERED and self.destination.chat:
            # Some chat services answer 200 with an error code in the body.
            kind, error = chat.judge(self.destination.format, answer)
        retry_after = None
        if kind != DELIVERED:
            retry_after = retry_after_seconds(retry_after_header)
        return Outcome(kind, latency, status, error, retry_after, text)

    def _error(self, exc: BaseException) -> str:
        """One line for the attempts log and ``last_error``, without the destination's
        credentials: a client's error may quote the URL (a chat webhook's token in its path,
        a token in its query)."""
        if isinstance(exc, TimeoutError):
            what = f"no answer within {self.destination.timeout_seconds:g} s"
            return short(f"{type(exc).__name__}: {what}")
        text = scrub(short(exc), self.destination.url)
        for secret in self.destination.credentials():
            if secret:
                text = text.replace(secret, "****")
        return short(text)


def _judge(status: int, location: str | None) -> tuple[str, str | None]:
    if 200 <= status < 300:
        return DELIVERED, None
    if status == 410:
        return GONE, "410 Gone: the destination asked not to be sent anything more"
    if status >= 500 or status in RETRYABLE:
        return FAILED, f"HTTP {status}"
    if 300 <= status < 400:
        where = masked_url(location) if location else "-"
        return FAILED, f"HTTP {status}: redirects are not followed (Location: {where})"
    if 400 <= status < 500:
        return REFUSED, f"HTTP {status}: the destination refused the message"
    return FAILED, f"HTTP {status}: not a final answer"


async def _prefix(response: aiohttp.ClientResponse) -> bytes:
    """The answer's first READ_AT_MOST bytes (a connection whose answer was not read to its
    end is closed by aiohttp, not reused)."""
    got = b""
    while len(got) < READ_AT_MOST:
        chunk = await response.content.read(READ_AT_MOST - len(got))
        if not chunk:
            break
        got += chunk
    return got

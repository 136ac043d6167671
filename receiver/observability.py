"""Request ids and structured logs.

Every HTTP request gets an id (the caller's ``X-Request-Id`` when it is short and plain, else a
new one), returned in the ``X-Request-Id`` answer header and attached to every log line written
while the request is handled.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from random import getrandbits as _random_bits
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_PLAIN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id_for(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-Id when it is short and plain enough to echo and log, else a new
    one. ``headers``: the ASGI scope's raw list (the first X-Request-Id counts)."""
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _PLAIN.match(text):
                return text
            break
    # Unique, not secret: the Mersenne Twister (seeded from the OS at start) costs no system
    # call, where os.urandom makes one per request.
    return f"{_random_bits(96):024x}"


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_for(scope["headers"])
        # Also in the scope: a 500 is answered outside this middleware (by Starlette's
        # ServerErrorMiddleware), after this context is gone; see api.on_unexpected.
        scope["request_id"] = rid
        token = request_id.set(rid)
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


# Strings no log line may show (destination credentials, registered by receiver.web.app);
# the formatter of setup_logging replaces each with ****.
_REDACTED: set[str] = set()


def redact(values: Iterable[str]) -> None:
    """Never show these in a log line, whoever writes it (a client library quoting a URL)."""
    _REDACTED.update(value for value in values if len(value) >= 6)


class RedactingFormatter(logging.Formatter):
    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        for secret in _REDACTED:
            if secret in text:
                text = text.replace(secret, "****")
        return text


def setup_logging(*, log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    inner: logging.Formatter = JsonFormatter()
    if log_format != "json":
        inner = logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    handler.setFormatter(RedactingFormatter(inner))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries that log each request with its URL: a destination's URL may carry its
    # credential (a chat webhook's token, a broker's password). Their warnings still show.
    for name in ("httpx2", "httpcore2", "aiohttp", "aio_pika", "aiormq", "nats"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))

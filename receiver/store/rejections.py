"""The log of refused callbacks: bounded in rows, in bytes and in rate.

When a user's signatures fail, this is where they learn why (``GET /v1/rejections``). It must not
become a way to fill the disk: every column is bounded (``models.Rejection``), the table is pruned
to ``rejections_max_rows`` (oldest first), and at most ``rejections_per_second`` (with a burst)
are written; the ones over the rate are counted, and the next row written says how many were
left out (``suppressed_before``). Rows are written in the background, a batch at a time, so a
refusal never waits for the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from receiver.errors import (
    BodyTooLarge,
    DecodeError,
    ReceiverError,
    SignatureExpired,
    SignatureMalformed,
    SignatureMismatch,
    SignatureMissing,
    UnknownEndpoint,
)
from receiver.store.models import Rejection
from receiver.store.views import masked_body_text

log = logging.getLogger("receiver.rejections")
REJECTIONS = Rejection.__table__  # type: ignore[attr-defined]
PREFIX_BYTES = 48

_REASONS: list[tuple[type[ReceiverError], str]] = [
    (SignatureMissing, "signature_missing"),
    (SignatureMalformed, "signature_malformed"),
    (SignatureMismatch, "signature_mismatch"),
    (SignatureExpired, "signature_expired"),
    (UnknownEndpoint, "unknown_endpoint"),
    (BodyTooLarge, "body_too_large"),
    (DecodeError, "undecodable"),
]


_INT32_MAX = 2**31 - 1


def _text(value: str | None, limit: int) -> str:
    """Bounded, and without U+0000 (which PostgreSQL text cannot hold)."""
    return (value or "")[:limit].replace("\x00", "\ufffd")


def reason_for(exc: ReceiverError) -> str:
    return next((reason for kind, reason in _REASONS if isinstance(exc, kind)), "refused")


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float = 0.0

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class RejectionLog:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        max_rows: int = 10000,
        per_second: float = 20.0,
        burst: int = 100,
        flush_seconds: float = 0.5,
        on_suppressed: Callable[[], None] | None = None,
    ) -> None:
        self.on_suppressed = on_suppressed
        self.engine = engine
        self.max_rows = max_rows
        self.flush_seconds = flush_seconds
        self._bucket = TokenBucket(rate=per_second, burst=burst, tokens=burst, stamp=time.time())
        self._queue: deque[dict[str, Any]] = deque(maxlen=max(burst * 2, 100))
        self._suppressed = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._closing = False
        self.suppressed_total = 0
        self.written_total = 0

    def record(
        self,
        *,
        exc: ReceiverError,
        endpoint: str | None,
        remote_addr: str | None,
        body: bytes,
        body_size: int | None = None,
        now: float,
    ) -> str:
        """Queue one refusal (or count it, over the rate). Returns the reason."""
        reason = reason_for(exc)
        if not self._bucket.take(now):
            self._suppressed += 1
            self.suppressed_total += 1
            if self.on_suppressed is not None:
                self.on_suppressed()
            return reason
        skew = getattr(exc, "skew_seconds", None)
        size = len(body) if body_size is None else body_size
        self._queue.append(
            {
                "received_at": datetime.fromtimestamp(now, UTC),
                "endpoint": _text(endpoint, 64) or None,
                "reason": reason,
                "error_code": exc.code,
                "detail": _text(exc.message, 300),
                "remote_addr": _text(remote_addr, 64) or None,
                "clock_skew_seconds": skew,
                "body_size": min(size, _INT32_MAX),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_prefix": _text(masked_body_text(body[:PREFIX_BYTES]), 64),
                "suppressed_before": min(self._suppressed, _INT32_MAX),
            }
        )
        self._suppressed = 0
        self._wake.set()
        return reason

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rejection-log")

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()
            if not self._closing:
                await asyncio.sleep(self.flush_seconds)
        await self.flush()

    async def flush(self) -> None:
        """Write what is queued. Flushes take turns: when this returns, every refusal recorded
        before the call is written (or its write failed), including one a background flush
        was still writing."""
        async with self._flushing:
            rows = list(self._queue)
            self._queue.clear()
            if not rows:
                return
            try:
                await asyncio.to_thread(self._write, rows)
                self.written_total += len(rows)
            except Exception as exc:  # the log is best effort; the refusal was answered already
                log.warning("could not write %d rejection rows: %s", len(rows), type(exc).__name__)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(REJECTIONS), rows)
            newest = conn.execute(sa.select(sa.func.max(REJECTIONS.c.id))).scalar_one()
            if newest is not None and newest > self.max_rows:
                conn.execute(sa.delete(REJECTIONS).where(REJECTIONS.c.id <= newest - self.max_rows))

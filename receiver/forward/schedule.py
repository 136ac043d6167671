"""When to try again: the destination's ``retry_seconds`` with jitter, or what it asked for.

Svix and Standard Webhooks' reference schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h,
24 h, each with jitter so that many receivers that failed together do not come back together.
After the last step, the last step repeats (a failing destination is tried until it succeeds,
or until ``disable_after_hours``). ``Retry-After`` (RFC 9110, section 10.2.3: seconds, or an
HTTP date) replaces the step when the destination sends it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# A destination may not park us for longer than a day with one Retry-After.
MAX_RETRY_AFTER = 86400.0
JITTER = 0.2


def delay(
    schedule: Sequence[float],
    failures: int,
    *,
    retry_after: float | None = None,
    rand: random.Random | None = None,
) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1 for the first): the step of
    the schedule (its last one repeating) within ±20 %, or ``retry_after`` as the destination
    asked (at most a day)."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
    step = schedule[min(max(failures, 1), len(schedule)) - 1]
    spread = (rand or random).uniform(1 - JITTER, 1 + JITTER)
    return step * spread


def spent(schedule: Sequence[float], refusals: int) -> bool:
    """Whether a message refused ``refusals`` times has had its attempts: the first one and one
    after each step of the schedule."""
    return refusals > len(schedule)


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now, or None when absent or not understood."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(float(int(text[:9])), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)

"""Planning a replay: what a run would send (:class:`Plan`, ``--dry-run``) and at what pace.

The pace is parsed here (:func:`parse_pace`: ``original``, a rate, or as fast as possible), and
:func:`gaps` turns ``original`` into the wait before each record -- the original gaps, capped
and sped up -- which both the estimate of a plan and the run itself
(:func:`receiver.tools.replay.replay`) follow. Nothing here sends anything.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from receiver.tools.replay_records import ReplayRecord, resume_point
from receiver.tools.sender import retarget

if TYPE_CHECKING:
    from receiver.tools.replay import ReplayTarget

MAX_GAP_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What a replay would send (``--dry-run``)."""

    total: int
    by_endpoint: dict[str, int]
    by_event_type: dict[str, int]
    first_event_id: int | None
    last_event_id: int | None
    first_at: datetime | None
    last_at: datetime | None
    target: str | None
    """Where the requests would go (the registered URL, moved to ``to`` if given)."""
    skipped: int = 0
    """Records left out by ``start_after``."""
    estimated_seconds: float | None = None
    """The least time the run takes at the given pace (None: as fast as the target answers)."""

    @property
    def span_seconds(self) -> float | None:
        if self.first_at is None or self.last_at is None:
            return None
        return (self.last_at - self.first_at).total_seconds()

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "skipped": self.skipped,
            "by_endpoint": self.by_endpoint,
            "by_event_type": self.by_event_type,
            "first_event_id": self.first_event_id,
            "last_event_id": self.last_event_id,
            "first_at": _iso(self.first_at),
            "last_at": _iso(self.last_at),
            "span_seconds": self.span_seconds,
            "target": self.target,
            "estimated_seconds": self.estimated_seconds,
        }

    def lines(self) -> list[str]:
        out = [
            f"would replay {self.total} event(s)" + (f" to {self.target}" if self.target else "")
        ]
        if self.skipped:
            out.append(f"  skipped (up to --resume-after): {self.skipped}")
        if self.total:
            out.append(
                f"  event ids {self.first_event_id} .. {self.last_event_id}; originally "
                f"{_iso(self.first_at) or '?'} .. {_iso(self.last_at) or '?'}"
                + (f" ({self.span_seconds:.1f} s)" if self.span_seconds is not None else "")
            )
        if self.estimated_seconds is not None:
            out.append(f"  at this pace: at least {self.estimated_seconds:.1f} s")
        for title, counts in (("endpoint", self.by_endpoint), ("event type", self.by_event_type)):
            for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
                out.append(f"  {title} {name}: {count}")
        return out


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


# -- planning ----------------------------------------------------------------------------------


def plan(
    records: Iterable[ReplayRecord],
    target: ReplayTarget | None = None,
    *,
    start_after: int | None = None,
    pace: str | float | None = None,
    speed: float = 1.0,
    max_gap: float = MAX_GAP_SECONDS,
) -> Plan:
    """How many events a replay would send, where from, and over what original time span."""
    every = list(records)
    skip = resume_point(every, start_after)
    chosen = every[skip:]
    moments = [record.when for record in chosen if record.when is not None]
    where = None
    if target is not None:
        where = retarget(target.registered_url.partition("#")[0], target.to)
    return Plan(
        total=len(chosen),
        by_endpoint=dict(Counter(record.endpoint for record in chosen)),
        by_event_type=dict(Counter(record.event_type for record in chosen)),
        first_event_id=chosen[0].event_id if chosen else None,
        last_event_id=chosen[-1].event_id if chosen else None,
        first_at=min(moments) if moments else None,
        last_at=max(moments) if moments else None,
        target=where,
        skipped=skip,
        estimated_seconds=_estimate(chosen, pace, speed=speed, max_gap=max_gap),
    )


def _estimate(
    records: Sequence[ReplayRecord], pace: str | float | None, *, speed: float, max_gap: float
) -> float | None:
    if pace is None:
        return None
    if pace == "original":
        return sum(gaps(records, max_gap=max_gap, speed=speed))
    return max(len(records) - 1, 0) / float(pace)


def gaps(records: Sequence[ReplayRecord], *, max_gap: float, speed: float) -> list[float]:
    """Seconds to wait before each record to keep the original pace (0 before the first)."""
    gaps = [0.0]
    for before, after in itertools.pairwise(records):
        if before.when is None or after.when is None:
            gaps.append(0.0)
            continue
        gap = (after.when - before.when).total_seconds()
        gaps.append(min(max(gap, 0.0), max_gap) / speed)
    return gaps


def parse_pace(text: str | None) -> str | float | None:
    """``original``, ``N/s`` or ``N`` (events per second), ``max`` / None (as fast as possible)."""
    if text is None or text.strip().lower() in ("", "max", "none", "fast"):
        return None
    value = text.strip().lower()
    if value == "original":
        return "original"
    number = value.removesuffix("/s")
    try:
        rate = float(number)
    except ValueError:
        raise ValueError(
            f"pace must be 'original', a rate like '50/s', or 'max'; not {text!r}"
        ) from None
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"pace must be a positive rate, not {text!r}")
    return rate

"""The stream rules, pure: a job's RTMP health, an event applied to it, and the findings that
open or resolve at a given moment.

- ``stream_down``: the latest RTMP state is DISCONNECTED or RECONNECTING and the stream has been
  down (since the first of those without a CONNECTED or END between) for at least
  ``stream_down_seconds``. Resolved by CONNECTED or END. A CONNECTING in between does not open
  it (the latest state is not down) but does not resolve it either.
- ``stream_flapping``: at least ``count`` RECONNECTING events within the last ``window``
  seconds (received times; an event exactly ``window`` seconds old still counts). Resolved once
  the window holds fewer, or the stream ENDs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from receiver.config.rules import RulesSettings
from receiver.crosscheck.rules import Draft

# A job's findings are the job's: the endpoint (in their data) is not part of their identity.

STREAM_DOWN = "stream_down"
STREAM_FLAPPING = "stream_flapping"
KINDS = (STREAM_DOWN, STREAM_FLAPPING)
DOWN = frozenset({"DISCONNECTED", "RECONNECTING"})
UP = frozenset({"CONNECTED", "END"})


@dataclass(frozen=True)
class RtmpEvent:
    id: int
    job_key: str
    job_id: str
    room_id: str | None
    endpoint: str
    state: str
    received_at: datetime


@dataclass(frozen=True)
class Health:
    """A job's stream, as stored in ``stream_health``."""

    job_key: str
    job_id: str
    room_id: str | None
    endpoint: str | None
    state: str
    state_at: datetime
    last_event_id: int
    down_since: datetime | None = None
    down_event_id: int | None = None
    reconnects: tuple[float, ...] = field(default_factory=tuple)
    down_open: bool = False
    flapping_open: bool = False


def apply(health: Health | None, event: RtmpEvent, rules: RulesSettings) -> Health:
    """``health`` after ``event`` (events of a job are applied in the order they were stored)."""
    if health is None:
        health = Health(
            job_key=event.job_key,
            job_id=event.job_id,
            room_id=event.room_id,
            endpoint=event.endpoint,
            state=event.state,
            state_at=event.received_at,
            last_event_id=event.id,
        )
    down_since, down_event = health.down_since, health.down_event_id
    if event.state in DOWN and down_since is None:
        down_since, down_event = event.received_at, event.id
    elif event.state in UP:
        down_since, down_event = None, None
    reconnects = health.reconnects
    if event.state == "RECONNECTING" and rules.flapping_count:
        reconnects = (*reconnects, event.received_at.timestamp())
        reconnects = reconnects[-rules.flapping_count * 4 :]  # bounded: enough to count
    return replace(
        health,
        room_id=event.room_id or health.room_id,
        endpoint=event.endpoint,
        state=event.state,
        state_at=event.received_at,
        last_event_id=event.id,
        down_since=down_since,
        down_event_id=down_event,
        reconnects=reconnects,
    )


@dataclass
class Verdict:
    health: Health
    open: list[Draft] = field(default_factory=list)
    resolve: list[Draft] = field(default_factory=list)


def judge(health: Health, now: datetime, rules: RulesSettings) -> Verdict:
    """What opens and what resolves for this job at ``now``; ``health`` with its open flags
    set accordingly."""
    verdict = Verdict(health)
    down_open, flapping_open = health.down_open, health.flapping_open
    threshold = rules.stream_down_seconds
    if health.down_since is None or health.state == "END":
        if down_open:
            verdict.resolve.append(down_draft(health, threshold))
            down_open = False
    elif (
        threshold > 0
        and not down_open
        and health.state in DOWN
        and now - health.down_since >= timedelta(seconds=threshold)
    ):
        verdict.open.append(down_draft(health, threshold))
        down_open = True
    window = rules.flapping_window_seconds
    recent = tuple(t for t in health.reconnects if t >= now.timestamp() - window)
    if rules.flapping_count and len(recent) >= rules.flapping_count and health.state != "END":
        if not flapping_open:
            verdict.open.append(flapping_draft(health, len(recent), rules))
            flapping_open = True
    elif flapping_open:
        verdict.resolve.append(flapping_draft(health, len(recent), rules))
        flapping_open = False
    verdict.health = replace(
        health, reconnects=recent, down_open=down_open, flapping_open=flapping_open
    )
    return verdict


def down_draft(health: Health, threshold: float) -> Draft:
    since = health.down_since.isoformat().replace("+00:00", "Z") if health.down_since else None
    data: dict[str, Any] = {
        "state": health.state,
        "down_since": since,
        "threshold_s": threshold,
        "endpoint": health.endpoint,
    }
    return Draft(
        kind=STREAM_DOWN,
        room_id=health.room_id,
        job_id=health.job_id,
        event_id=health.down_event_id,
        detail=(
            f"the RTMP stream of job {health.job_id} is {health.state} since {since} "
            f"(down for more than {threshold:g} s, no CONNECTED or END since)"
        ),
        data=data,
    )


def flapping_draft(health: Health, count: int, rules: RulesSettings) -> Draft:
    window = rules.flapping_window_seconds
    return Draft(
        kind=STREAM_FLAPPING,
        room_id=health.room_id,
        job_id=health.job_id,
        event_id=health.last_event_id,
        detail=(
            f"the RTMP stream of job {health.job_id} reconnected {count} times within "
            f"{window:g} s (the rule: {rules.flapping_count})"
        ),
        data={
            "reconnects": count,
            "window_s": window,
            "threshold": rules.flapping_count,
            "endpoint": health.endpoint,
        },
    )

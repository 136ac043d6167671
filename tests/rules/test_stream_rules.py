"""The stream rules, pure (receiver.rules.stream): when stream_down and stream_flapping open and
resolve, at exact times, the window's edge included; and the [rules] settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from receiver.config import settings_from_mapping
from receiver.config.rules import RulesSettings, flapping
from receiver.errors import ConfigError
from receiver.rules.stream import STREAM_DOWN, STREAM_FLAPPING, Health, RtmpEvent, apply, judge

T0 = datetime(2026, 12, 6, 8, 0, 0, tzinfo=UTC)
RULES = RulesSettings(stream_down_seconds=30, flapping_count=3, flapping_window_seconds=60)


def event(n: int, state: str, at: float) -> RtmpEvent:
    return RtmpEvent(
        id=n,
        job_key="job1",
        job_id="job1",
        room_id="room1",
        endpoint="shop-a",
        state=state,
        received_at=T0 + timedelta(seconds=at),
    )


def run(states: list[tuple[str, float]], rules: RulesSettings = RULES) -> Health:
    health = None
    for n, (state, at) in enumerate(states, 1):
        health = apply(health, event(n, state, at), rules)
    assert health is not None
    return health


def kinds(drafts: list[object]) -> list[str]:
    return [d.kind for d in drafts]  # type: ignore[attr-defined]


def test_down_opens_at_the_threshold_and_resolves_on_connected() -> None:
    health = run([("CONNECTED", 0), ("DISCONNECTED", 10), ("RECONNECTING", 20)])
    assert health.down_since == T0 + timedelta(seconds=10)  # since the first of the two
    early = judge(health, T0 + timedelta(seconds=39.9), RULES)
    assert early.open == [] and not early.health.down_open
    due = judge(health, T0 + timedelta(seconds=40), RULES)
    assert kinds(due.open) == [STREAM_DOWN] and due.health.down_open
    assert "DISCONNECTED" not in due.open[0].detail and "RECONNECTING" in due.open[0].detail
    assert due.open[0].event_id == 2  # the event that took it down
    again = judge(due.health, T0 + timedelta(seconds=50), RULES)
    assert again.open == []  # opened once
    back = apply(due.health, event(4, "CONNECTED", 55), RULES)
    resolved = judge(back, T0 + timedelta(seconds=55), RULES)
    assert kinds(resolved.resolve) == [STREAM_DOWN] and not resolved.health.down_open
    assert resolved.resolve[0].fingerprint == due.open[0].fingerprint


def test_end_resolves_and_connecting_pauses() -> None:
    health = run([("DISCONNECTED", 0), ("CONNECTING", 5)])
    assert judge(health, T0 + timedelta(seconds=100), RULES).open == []  # latest is not down
    health = apply(health, event(3, "DISCONNECTED", 6), RULES)
    opened = judge(health, T0 + timedelta(seconds=31), RULES)  # down since 0, not since 6
    assert kinds(opened.open) == [STREAM_DOWN]
    ended = apply(opened.health, event(4, "END", 40), RULES)
    assert kinds(judge(ended, T0 + timedelta(seconds=40), RULES).resolve) == [STREAM_DOWN]


def test_flapping_counts_within_the_window_edge_included() -> None:
    health = run([("RECONNECTING", 0), ("CONNECTED", 1), ("RECONNECTING", 30), ("CONNECTED", 31)])
    # Two reconnects: not yet. A third exactly 60 s after the first: the first still counts.
    health = apply(health, event(5, "RECONNECTING", 60), RULES)
    at_edge = judge(health, T0 + timedelta(seconds=60), RULES)
    assert STREAM_FLAPPING in kinds(at_edge.open)
    assert "3 times within 60 s" in at_edge.open[-1].detail
    # A moment later the first falls out of the window: two left, resolved.
    later = judge(at_edge.health, T0 + timedelta(seconds=60.001), RULES)
    assert kinds(later.resolve) == [STREAM_FLAPPING] and not later.health.flapping_open


def test_flapping_one_short_of_the_window_does_not_open() -> None:
    health = run([("RECONNECTING", 0), ("RECONNECTING", 30), ("RECONNECTING", 60.001)])
    assert STREAM_FLAPPING not in kinds(judge(health, T0 + timedelta(seconds=60.001), RULES).open)


def test_rules_off() -> None:
    off = RulesSettings(stream_down_seconds=0, flapping_count=0, flapping_window_seconds=0)
    health = run([("DISCONNECTED", 0)] + [("RECONNECTING", i) for i in range(1, 9)], off)
    verdict = judge(health, T0 + timedelta(hours=1), off)
    assert verdict.open == [] and not off.active


def test_settings() -> None:
    settings = settings_from_mapping(
        {
            "rules": {"stream_down_seconds": 5, "stream_flapping": "4/90s"},
            "public_url": "https://h.example.com/",
        },
        environ={},
    )
    assert settings.rules == RulesSettings(5, 4, 90)
    assert settings.public_url == "https://h.example.com"
    assert settings_from_mapping({}, environ={}).rules == RulesSettings(30, 5, 600)
    assert flapping("off") == (0, 0.0) and flapping("2/1h") == (2, 3600.0)
    for bad, message in [
        ({"rules": {"stream_flapping": "five"}}, "rules.stream_flapping: must be COUNT/WINDOW"),
        ({"rules": {"stream_flapping": "1/10m"}}, "rules.stream_flapping: at least 2"),
        ({"rules": {"stream_down_seconds": -1}}, "rules.stream_down_seconds: must be between"),
        ({"rules": {"oops": 1}}, "rules.oops: unknown key"),
        ({"public_url": "ftp://x"}, "public_url: must be an absolute http(s) URL"),
    ]:
        with pytest.raises(
            ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")
        ):
            settings_from_mapping(bad, environ={})

"""The ``[rules]`` table: stream health from the callbacks themselves (receiver.rules), and the
top-level ``public_url`` chat alerts link to.

``stream_down_seconds`` (default 30; 0 turns the rule off): a job whose latest RTMP state has
been DISCONNECTED or RECONNECTING this long. ``stream_flapping`` (default ``"5/10m"``; ``"off"``):
this many RECONNECTING events of one job within the window (``s``, ``m`` or ``h``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from receiver.config.values import http_url, no_unknown_keys, number
from receiver.errors import ConfigError

_FLAPPING = re.compile(r"^\s*(\d{1,4})\s*/\s*(\d+(?:\.\d+)?)\s*([smh])\s*$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class RulesSettings:
    stream_down_seconds: float = 30.0
    # At least this many reconnects within flapping_window_seconds; 0: the rule is off.
    flapping_count: int = 5
    flapping_window_seconds: float = 600.0

    @property
    def active(self) -> bool:
        return self.stream_down_seconds > 0 or self.flapping_count > 0


_RULE_KEYS = {"stream_down_seconds", "stream_flapping"}


def rules_from(raw: object) -> RulesSettings:
    if not isinstance(raw, Mapping):
        raise ConfigError("rules: must be a table ([rules])")
    no_unknown_keys(raw, _RULE_KEYS, prefix="rules.")
    down = number(raw, "stream_down_seconds", 30.0, low=0, high=86400, prefix="rules.")
    count, window = flapping(raw.get("stream_flapping", "5/10m"))
    return RulesSettings(
        stream_down_seconds=down, flapping_count=count, flapping_window_seconds=window
    )


def flapping(value: object) -> tuple[int, float]:
    """``"5/10m"`` -> (5, 600.0); ``"off"`` -> (0, 0.0)."""
    if value == "off":
        return 0, 0.0
    match = _FLAPPING.match(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(
            'rules.stream_flapping: must be COUNT/WINDOW like "5/10m" (s, m or h), or "off"'
        )
    count, window = int(match[1]), float(match[2]) * _UNITS[match[3]]
    if count < 2 or not 0 < window <= 86400:
        raise ConfigError(
            "rules.stream_flapping: at least 2 reconnects, within a window of at most 24h"
        )
    return count, window


def public_url_from(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError("public_url: must be the URL people reach this receiver at")
    http_url(value, "public_url", what="an absolute http(s) URL, e.g. https://hooks.example.com")
    return value.rstrip("/")

"""Readers of one value of the config: each takes a TOML table and a key, checks the value's
type and range (and, for secrets, the environment variable it names), and raises one
``ConfigError`` whose message starts with the key (``prefix`` + key, e.g.
``endpoints[0].tolerance_seconds: must be a number``). The tables themselves (which keys they
allow, what a value means) are in ``endpoints``, ``metastudio`` and ``settings``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import SplitResult, urlsplit

from receiver.errors import ConfigError
from receiver.protocol.signing import SignedUri, TimeUnit


def no_unknown_keys(raw: Mapping[str, Any], allowed: set[str], *, prefix: str) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}: unknown key (allowed: {', '.join(sorted(allowed))})")


def secret_list(
    raw: Mapping[str, Any], key: str, env_key: str, environ: Mapping[str, str], *, prefix: str
) -> tuple[str, ...]:
    """``key`` (a list in the file) or ``env_key`` (the name of a comma-separated variable)."""
    values: list[str] = []
    if key in raw:
        listed = raw[key]
        if not isinstance(listed, list) or not all(isinstance(v, str) and v for v in listed):
            raise ConfigError(f"{prefix}{key}: must be a list of non-empty strings")
        values.extend(listed)
    if env_key in raw:
        variable = raw[env_key]
        if not isinstance(variable, str) or not variable:
            raise ConfigError(f"{prefix}{env_key}: must be the name of an environment variable")
        if key in raw:
            raise ConfigError(f"{prefix}{env_key}: give {key} or {env_key}, not both")
        text = environ.get(variable)
        if text is None:
            raise ConfigError(f"{prefix}{env_key}: environment variable {variable} is not set")
        values.extend(part.strip() for part in text.split(",") if part.strip())
        if not values:
            raise ConfigError(f"{prefix}{env_key}: environment variable {variable} is empty")
    return tuple(values)


def required_str(raw: Mapping[str, Any], key: str, prefix: str = "") -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{prefix}{key}: required, a non-empty string")
    return value


def optional_str(raw: Mapping[str, Any], key: str, default: str, prefix: str = "") -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{prefix}{key}: must be a non-empty string")
    return value


def number(
    raw: Mapping[str, Any], key: str, default: float, *, low: float, high: float, prefix: str = ""
) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{prefix}{key}: must be a number")
    if not low <= value <= high:
        raise ConfigError(f"{prefix}{key}: must be between {low:g} and {high:g}, not {value}")
    return float(value)


def whole_number(raw: Mapping[str, Any], key: str, default: int, *, low: int, high: int) -> int:
    # Bounds printed as they are (not :g), so 16777216 does not read 1.67772e+07.
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: must be a whole number")
    if not low <= value <= high:
        raise ConfigError(f"{key}: must be between {low} and {high}, not {value}")
    return value


_E = TypeVar("_E", SignedUri, TimeUnit)


def choice(raw: Mapping[str, Any], key: str, kind: type[_E], default: _E, prefix: str) -> _E:
    value = raw.get(key, default.value)
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise ConfigError(f"{prefix}{key}: must be one of {allowed}, not {value!r}") from None


def http_url(url: str, key: str, *, what: str) -> SplitResult:
    """``url`` split, once it is a valid absolute http(s) URL; else ``{key}: must be {what}``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a non-numeric or out-of-range port raises here
    except ValueError as exc:
        raise ConfigError(f"{key}: {url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: must be {what}, not {url!r}")
    return parts


def retention(raw: Mapping[str, Any], prefix: str = "") -> float | None:
    """``retention_days``: how long deliveries and events are kept (None: for ever)."""
    if "retention_days" not in raw:
        return None
    return number(raw, "retention_days", 0, low=1 / 24, high=36500, prefix=prefix)

"""The ``[[destinations]]`` tables: where stored events (and findings) are handed on.

Owns ``DestinationSettings`` (its name, kind, URL, secrets, filters and retry schedule), the keys a
destination table allows, and the checks made at start (PRODUCT.md, "Forwarding"): a known kind,
a URL of that kind, the signing secrets of an ``http`` destination present in the environment and
well-formed, names unique, filters naming configured endpoints. Credentials (signing secrets, a
password in a broker URL) are kept out of ``repr`` and shown only masked (:func:`masked_url`).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import SplitResult, parse_qsl, urlsplit

from receiver.config.values import no_unknown_keys, number, optional_str, required_str
from receiver.errors import ConfigError

DESTINATION_NAME = re.compile(r"^[a-z0-9-]{1,40}$")
KINDS = ("http", "redis", "nats", "rabbitmq")
FORMATS = ("standard", "slack", "feishu", "dingtalk", "wecom")
# The URL schemes each kind takes (redis-py, nats-py and aio-pika read these).
SCHEMES = {
    "http": ("http", "https"),
    "redis": ("redis", "rediss"),
    "nats": ("nats", "tls"),
    "rabbitmq": ("amqp", "amqps"),
}
# Svix's schedule (and PRODUCT.md's default): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
DEFAULT_RETRY_SECONDS = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)
SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix the specification gives, not a secret
# Standard Webhooks: a secret is 24 to 64 random bytes, base64 after the prefix.
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
# A topic becomes a Redis key, a NATS subject prefix or a RabbitMQ exchange name.
_TOPIC = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


@dataclass(frozen=True, slots=True)
class DestinationSettings:
    name: str
    kind: str
    # May hold a password (redis://:pw@host, amqp://user:pw@host): not in repr; masked_url().
    url: str = field(repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)
    topic: str = "metastudio"
    # None: every event type / every endpoint.
    event_types: frozenset[str] | None = None
    endpoints: frozenset[str] | None = None
    findings: bool = False
    format: str = "standard"
    retry_seconds: tuple[float, ...] = DEFAULT_RETRY_SECONDS
    # 0: never disabled for failing.
    disable_after_hours: float = 72.0
    # At most this many messages of different jobs in flight at once (http); one job's go one
    # at a time, in order.
    max_in_flight: int = 16
    # One attempt (an HTTP request, a broker's acknowledgement of a batch) may take this long.
    timeout_seconds: float = 10.0

    @property
    def chat(self) -> bool:
        """A chat service's incoming webhook: findings only, as a short text (PRODUCT.md)."""
        return self.format != "standard"

    @property
    def takes_events(self) -> bool:
        return not self.chat

    @property
    def takes_findings(self) -> bool:
        return self.findings or self.chat

    def wants(self, *, endpoint: str, event_type: str) -> bool:
        """Whether an event of this endpoint and type is handed to this destination."""
        if not self.takes_events:
            return False
        if self.endpoints is not None and endpoint not in self.endpoints:
            return False
        return self.event_types is None or event_type in self.event_types

    def masked_url(self) -> str:
        return masked_url(self.url)

    def credentials(self) -> list[str]:
        """Every part of this destination that is a secret, for the logs to hide: its signing
        secrets, the URL's password and query values, and a chat webhook's path (its token)."""
        found = list(self.secrets)
        parts = urlsplit(self.url)
        if parts.password:
            found.append(parts.password)
        found += [value for _, value in parse_qsl(parts.query)]
        if self.chat:
            found += [segment for segment in parts.path.split("/") if len(segment) >= 8]
        return found


def masked_url(url: str) -> str:
    """``url`` with its password (and a user that may be a token) shown as ``****``, and no query
    (a query may carry a token). Chat webhooks carry their credential in the path or query
    (``/services/T/B/XXXX``, ``?access_token=``): only scheme, host and a hint of the path stay."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "****"
    if ":" in host:
        host = f"[{host}]"
    auth = ""
    if parts.username or parts.password:
        auth = "****@" if parts.password is None else f"{parts.username or ''}:****@"
    path = parts.path
    if len(path) > 12:
        path = path[:12] + "****"
    query = "?****" if parts.query else ""
    return f"{parts.scheme}://{auth}{host}{port}{path}{query}"


_DESTINATION_KEYS = {
    "name",
    "kind",
    "url",
    "url_env",
    "secrets_env",
    "topic",
    "event_types",
    "endpoints",
    "findings",
    "format",
    "retry_seconds",
    "disable_after_hours",
    "max_in_flight",
    "timeout_seconds",
}


def destinations_from(
    raw: object, environ: Mapping[str, str], *, endpoint_names: Sequence[str]
) -> tuple[DestinationSettings, ...]:
    """The ``destinations`` array of tables (``[[destinations]]``), each checked, names unique."""
    if not isinstance(raw, list):
        raise ConfigError("destinations: must be an array of tables ([[destinations]])")
    found = tuple(
        _destination(table, environ, endpoint_names, prefix=f"destinations[{index}].")
        for index, table in enumerate(raw)
    )
    seen: set[str] = set()
    for index, destination in enumerate(found):
        if destination.name in seen:
            raise ConfigError(f"destinations[{index}].name: {destination.name!r} is used twice")
        seen.add(destination.name)
    return found


def _destination(
    raw: object, environ: Mapping[str, str], endpoint_names: Sequence[str], *, prefix: str
) -> DestinationSettings:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.')}: must be a table")
    no_unknown_keys(raw, _DESTINATION_KEYS, prefix=prefix)
    name = required_str(raw, "name", prefix)
    if not DESTINATION_NAME.match(name):
        raise ConfigError(f"{prefix}name: {name!r} must be 1-40 of a-z, 0-9 and '-'")
    kind = required_str(raw, "kind", prefix)
    if kind not in KINDS:
        raise ConfigError(f"{prefix}kind: must be one of {', '.join(KINDS)}, not {kind!r}")
    url = _url(raw, environ, kind, prefix)
    format_ = optional_str(raw, "format", "standard", prefix)
    if format_ not in FORMATS:
        raise ConfigError(f"{prefix}format: must be one of {', '.join(FORMATS)}, not {format_!r}")
    if format_ != "standard" and kind != "http":
        raise ConfigError(f"{prefix}format: {format_} is for http destinations only")
    secrets = _secrets(raw, environ, kind, format_, prefix)
    topic = optional_str(raw, "topic", "metastudio", prefix)
    if not _TOPIC.match(topic):
        raise ConfigError(f"{prefix}topic: {topic[:60]!r} must be 1-200 letters, digits or _ . : -")
    return DestinationSettings(
        name=name,
        kind=kind,
        url=url,
        secrets=secrets,
        topic=topic,
        event_types=_names(raw, "event_types", prefix),
        endpoints=_endpoints(raw, endpoint_names, prefix),
        findings=_flag(raw, "findings", prefix),
        format=format_,
        retry_seconds=_schedule(raw, prefix),
        disable_after_hours=number(
            raw, "disable_after_hours", 72.0, low=0, high=24 * 365, prefix=prefix
        ),
        max_in_flight=_whole(raw, "max_in_flight", 16, low=1, high=256, prefix=prefix),
        timeout_seconds=number(raw, "timeout_seconds", 10.0, low=0.1, high=300, prefix=prefix),
    )


def _url(raw: Mapping[str, object], environ: Mapping[str, str], kind: str, prefix: str) -> str:
    """``url`` in the file, or ``url_env`` naming the variable that holds it (a broker URL with
    a password, a chat webhook whose URL is its credential)."""
    if "url" in raw and "url_env" in raw:
        raise ConfigError(f"{prefix}url_env: give url or url_env, not both")
    key = "url_env" if "url_env" in raw else "url"
    if key == "url_env":
        variable = required_str(raw, "url_env", prefix)
        url = environ.get(variable, "")
        if not url:
            raise ConfigError(f"{prefix}url_env: environment variable {variable} is not set")
    else:
        url = required_str(raw, "url", prefix)
    schemes = SCHEMES[kind]
    try:
        parts: SplitResult = urlsplit(url)
        parts.port  # noqa: B018 - a non-numeric or out-of-range port raises here
    except ValueError as exc:
        raise ConfigError(
            f"{prefix}{key}: {masked_url(url)!r} is not a valid URL ({exc})"
        ) from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(
            f"{prefix}{key}: a {kind} destination needs a {' or '.join(s + '://' for s in schemes)}"
            f" URL with a host, not {masked_url(url)!r}"
        )
    return url


def _secrets(
    raw: Mapping[str, object], environ: Mapping[str, str], kind: str, format_: str, prefix: str
) -> tuple[str, ...]:
    """Standard Webhooks secrets (``whsec_`` + base64), from the variable ``secrets_env`` names:
    required for a signed http destination, refused elsewhere (nothing else is signed)."""
    signed = kind == "http" and format_ == "standard"
    if "secrets_env" not in raw:
        if signed:
            raise ConfigError(
                f"{prefix}secrets_env: required for an http destination: the name of an "
                "environment variable holding its whsec_... signing secrets, comma-separated"
            )
        return ()
    if not signed:
        what = f"format {format_}" if kind == "http" else f"kind {kind}"
        raise ConfigError(f"{prefix}secrets_env: a destination of {what} is not signed")
    variable = required_str(raw, "secrets_env", prefix)
    text = environ.get(variable)
    if text is None:
        raise ConfigError(f"{prefix}secrets_env: environment variable {variable} is not set")
    secrets = tuple(part.strip() for part in text.split(",") if part.strip())
    if not secrets:
        raise ConfigError(f"{prefix}secrets_env: environment variable {variable} is empty")
    for index, secret in enumerate(secrets):
        problem = _secret_problem(secret)
        if problem:
            raise ConfigError(
                f"{prefix}secrets_env: secret {index + 1} of {variable} {problem} "
                f"(Standard Webhooks: {SECRET_PREFIX} + base64 of {MIN_SECRET_BYTES}-"
                f"{MAX_SECRET_BYTES} random bytes)"
            )
    return secrets


def _secret_problem(secret: str) -> str | None:
    if not secret.startswith(SECRET_PREFIX):
        return f"does not start with {SECRET_PREFIX}"
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return "is not base64 after its prefix"
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        return f"holds {len(key)} bytes"
    return None


def _names(raw: Mapping[str, object], key: str, prefix: str) -> frozenset[str] | None:
    if key not in raw:
        return None
    value = raw[key]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and 0 < len(v) <= 128 for v in value)
    ):
        raise ConfigError(f"{prefix}{key}: must be a non-empty list of names (leave it out: all)")
    return frozenset(value)


def _endpoints(
    raw: Mapping[str, object], endpoint_names: Sequence[str], prefix: str
) -> frozenset[str] | None:
    names = _names(raw, "endpoints", prefix)
    for name in sorted(names or ()):
        if name not in endpoint_names:
            raise ConfigError(f"{prefix}endpoints: {name!r} is not the name of an [[endpoints]]")
    return names


def _whole(
    raw: Mapping[str, object], key: str, default: int, *, low: int, high: int, prefix: str
) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{prefix}{key}: must be a whole number from {low} to {high}")
    return value


def _flag(raw: Mapping[str, object], key: str, prefix: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{prefix}{key}: must be true or false")
    return value


def _schedule(raw: Mapping[str, object], prefix: str) -> tuple[float, ...]:
    value = raw.get("retry_seconds", list(DEFAULT_RETRY_SECONDS))
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= 50
        or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 7 * 86400
            for v in value
        )
    ):
        raise ConfigError(
            f"{prefix}retry_seconds: must be a list of 1 to 50 delays, each above 0 and at most "
            "604800 seconds"
        )
    return tuple(float(v) for v in value)

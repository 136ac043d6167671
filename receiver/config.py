"""Settings: built from a TOML file plus an injected environment mapping, checked once at start.

Nothing here runs at import time and nothing reads ``os.environ`` directly: callers pass the
environment in (``load_settings(path=..., environ=os.environ)``), so tests build settings from plain
dicts. Every problem becomes one ``ConfigError`` whose message starts with the key it is about,
e.g. ``endpoints[0].auth_type: MEITUAN_DEFAULT is not supported ...``.

Secrets (endpoint keys, API tokens, AK/SK) may come from the environment (``keys_env``,
``api_tokens_env``, ``ak_env``/``sk_env``); they are never printed: ``__repr__`` masks them.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, urlsplit

from receiver.errors import ConfigError
from receiver.protocol.signing import AuthType, SignedUri, TimeUnit, VerifyPolicy

DEFAULT_DATABASE_URL = "sqlite:///receiver.db"
ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Table 10 of the MetaStudio document: "key: String, ... at most 32 characters".
MAX_KEY_LENGTH = 32


@dataclass(frozen=True, slots=True)
class EndpointSettings:
    name: str
    # Not in repr: for auth_type NONE its query string is the credential.
    registered_url: str = field(repr=False)
    auth_type: AuthType
    keys: tuple[str, ...] = field(default=(), repr=False)
    tolerance_seconds: float = 300.0
    signed_uri: SignedUri = SignedUri.HOST_PATH_QUERY
    time_unit: TimeUnit = TimeUnit.AUTO
    allow_unauthenticated: bool = False
    # Built once (every callback needs it): see policy().
    _policy: VerifyPolicy | None = field(default=None, init=False, repr=False, compare=False)
    _credentials: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        policy = VerifyPolicy(
            auth_type=self.auth_type,
            registered_url=self.registered_url,
            keys=self.keys,
            tolerance_seconds=self.tolerance_seconds,
            signed_uri=self.signed_uri,
            time_unit=self.time_unit,
            allow_unauthenticated=self.allow_unauthenticated,
        )
        object.__setattr__(self, "_policy", policy)
        names = {"hwSecret"}
        if self.auth_type is AuthType.NONE:
            query = urlsplit(self.registered_url).query
            # Decoded, as the request's query is when it is compared and stored.
            names.update(name for name, _ in parse_qsl(query, keep_blank_values=True))
        object.__setattr__(self, "_credentials", frozenset(names))

    def policy(self) -> VerifyPolicy:
        assert self._policy is not None
        return self._policy

    def credential_params(self) -> frozenset[str]:
        """Query parameter names that are credentials for this endpoint (never stored or logged)."""
        return self._credentials


@dataclass(frozen=True, slots=True)
class MetaStudioSettings:
    endpoint: str
    project_id: str
    ak_env: str = "HUAWEICLOUD_SDK_AK"
    sk_env: str = "HUAWEICLOUD_SDK_SK"
    token_env: str | None = None
    crosscheck_interval_seconds: float = 60.0
    # Events up to this long outside a job's start/end time are not flagged (clocks differ).
    window_skew_seconds: float = 120.0
    # How long a stream/job state disagreement may last before it becomes a finding.
    grace_seconds: float = 300.0
    # Different bodies under one signature first seen further apart than this are a reused
    # signature (closer together they are taken for MetaStudio's own callbacks of one second).
    reuse_spread_seconds: float = 10.0
    # Answers of the job query API are reused for this long (a burst of callbacks is one call).
    cache_seconds: float = 10.0
    timeout_seconds: float = 10.0
    # Resolved from the environment at load time (never from the file).
    ak: str | None = field(default=None, repr=False)
    sk: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)


STORE_WRITERS = ("process", "thread")


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    max_body_bytes: int = 65536
    endpoints: tuple[EndpointSettings, ...] = ()
    metastudio: MetaStudioSettings | None = None
    log_format: str = "text"
    log_level: str = "INFO"
    # Group commit: at most this many deliveries share one transaction.
    store_batch_max: int = 512
    # A delivery not committed within this many seconds is answered 503 (it may still land;
    # the sender's retry is then answered "duplicate").
    store_timeout_seconds: float = 10.0
    # Deliveries waiting for the writer beyond this are refused with 503 at once.
    store_max_pending: int = 20000
    # Where the store's writer runs: "process" (a child process, so the database driver never
    # waits for the event loop's interpreter lock: receiver.store.process) or "thread".
    store_writer: str = "process"
    # A request's line and headers must arrive within this many seconds, and then its body
    # within as many again; a client slower than that is answered 408 and cut off, so a
    # byte-a-second sender cannot hold a connection.
    client_timeout_seconds: float = 10.0
    # ``serve`` worker processes on one port (more than one needs PostgreSQL: receiver.web.serving).
    workers: int = 1

    def endpoint(self, name: str) -> EndpointSettings | None:
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint
        return None


_TOP_KEYS = {
    "database_url",
    "api_tokens",
    "api_tokens_env",
    "max_body_bytes",
    "endpoints",
    "metastudio",
    "log_format",
    "log_level",
    "store_batch_max",
    "store_timeout_seconds",
    "store_max_pending",
    "store_writer",
    "client_timeout_seconds",
    "workers",
}
_ENDPOINT_KEYS = {
    "name",
    "registered_url",
    "auth_type",
    "keys",
    "keys_env",
    "tolerance_seconds",
    "signed_uri",
    "time_unit",
    "allow_unauthenticated",
}
_METASTUDIO_KEYS = {
    "endpoint",
    "project_id",
    "ak_env",
    "sk_env",
    "token_env",
    "crosscheck_interval_seconds",
    "window_skew_seconds",
    "grace_seconds",
    "reuse_spread_seconds",
    "cache_seconds",
    "timeout_seconds",
}


def load_settings(*, path: str | Path | None, environ: Mapping[str, str]) -> Settings:
    """Settings from ``path`` (or env ``RECEIVER_CONFIG``; none at all gives the defaults)."""
    chosen = path if path is not None else environ.get("RECEIVER_CONFIG") or None
    data: dict[str, Any] = {}
    if chosen is not None:
        try:
            with open(chosen, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config: file {str(chosen)!r} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config: cannot read {str(chosen)!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {str(chosen)!r} is not valid TOML: {exc}") from None
    return settings_from_mapping(data, environ=environ)


def settings_from_mapping(data: Mapping[str, Any], *, environ: Mapping[str, str]) -> Settings:
    _no_unknown_keys(data, _TOP_KEYS, prefix="")
    database_url = environ.get("RECEIVER_DATABASE_URL") or _opt_str(
        data, "database_url", DEFAULT_DATABASE_URL
    )
    database_url = _check_database_url(database_url)
    api_tokens = _secrets(data, "api_tokens", "api_tokens_env", environ, prefix="")
    endpoints_raw = data.get("endpoints", [])
    if not isinstance(endpoints_raw, list):
        raise ConfigError("endpoints: must be an array of tables ([[endpoints]])")
    endpoints = tuple(
        _endpoint(raw, environ, prefix=f"endpoints[{index}].")
        for index, raw in enumerate(endpoints_raw)
    )
    seen: set[str] = set()
    for index, endpoint in enumerate(endpoints):
        if endpoint.name in seen:
            raise ConfigError(f"endpoints[{index}].name: {endpoint.name!r} is used twice")
        seen.add(endpoint.name)
    metastudio_raw = data.get("metastudio")
    metastudio = None if metastudio_raw is None else _metastudio(metastudio_raw, environ)
    log_format = _opt_str(data, "log_format", "text")
    if log_format not in ("text", "json"):
        raise ConfigError(f"log_format: must be 'text' or 'json', not {log_format!r}")
    log_level = _opt_str(data, "log_level", "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level: must be DEBUG, INFO, WARNING or ERROR, not {log_level!r}")
    store_writer = _opt_str(data, "store_writer", "process")
    if store_writer not in STORE_WRITERS:
        raise ConfigError(f"store_writer: must be 'process' or 'thread', not {store_writer!r}")
    return Settings(
        database_url=database_url,
        api_tokens=api_tokens,
        max_body_bytes=_int(data, "max_body_bytes", 65536, low=256, high=16 * 1024 * 1024),
        endpoints=endpoints,
        metastudio=metastudio,
        log_format=log_format,
        log_level=log_level,
        store_batch_max=_int(data, "store_batch_max", 512, low=1, high=5000),
        store_timeout_seconds=_number(data, "store_timeout_seconds", 10.0, low=0.1, high=600),
        store_max_pending=_int(data, "store_max_pending", 20000, low=1, high=1_000_000),
        store_writer=store_writer,
        client_timeout_seconds=_number(data, "client_timeout_seconds", 10.0, low=0.5, high=300),
        workers=_int(data, "workers", 1, low=1, high=64),
    )


def _endpoint(raw: object, environ: Mapping[str, str], *, prefix: str) -> EndpointSettings:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.')}: must be a table")
    _no_unknown_keys(raw, _ENDPOINT_KEYS, prefix=prefix)
    name = _req_str(raw, "name", prefix)
    if not ENDPOINT_NAME.match(name):
        raise ConfigError(
            f"{prefix}name: {name!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "(it is a path segment of /callbacks/{name})"
        )
    registered_url = _req_str(raw, "registered_url", prefix)
    parts = _split_url(registered_url, f"{prefix}registered_url")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{prefix}registered_url: must be the absolute http(s) URL registered as "
            f"live_event_type_callback_url, not {registered_url!r}"
        )
    auth_text = _opt_str(raw, "auth_type", "MSS_A", prefix).upper()
    if auth_text == "MEITUAN_DEFAULT":
        raise ConfigError(
            f"{prefix}auth_type: MEITUAN_DEFAULT is not supported: MetaStudio uses it only for "
            "Meituan's own platform and nothing public describes it; use MSS_A, MSS_A_HEAD or NONE"
        )
    try:
        auth_type = AuthType(auth_text)
    except ValueError:
        raise ConfigError(
            f"{prefix}auth_type: must be NONE, MSS_A or MSS_A_HEAD, not {auth_text!r}"
        ) from None
    keys = _secrets(raw, "keys", "keys_env", environ, prefix=prefix)
    for index, key in enumerate(keys):
        if len(key) > MAX_KEY_LENGTH:
            raise ConfigError(
                f"{prefix}keys[{index}]: MetaStudio keys are at most {MAX_KEY_LENGTH} characters "
                f"(this one has {len(key)})"
            )
    allow_unauthenticated = raw.get("allow_unauthenticated", False)
    if not isinstance(allow_unauthenticated, bool):
        raise ConfigError(f"{prefix}allow_unauthenticated: must be true or false")
    if auth_type is AuthType.NONE:
        if keys:
            raise ConfigError(
                f"{prefix}keys: auth_type NONE uses the registered URL's own query as the "
                "credential; remove keys or use MSS_A / MSS_A_HEAD"
            )
        if not parts.query and not allow_unauthenticated:
            raise ConfigError(
                f"{prefix}registered_url: auth_type NONE needs a credential in the URL's query "
                "string (e.g. ?token=...); set allow_unauthenticated = true to accept anyone"
            )
    elif not keys:
        raise ConfigError(f"{prefix}keys: {auth_type.value} needs at least one key (or keys_env)")
    signed_uri = _choice(raw, "signed_uri", SignedUri, SignedUri.HOST_PATH_QUERY, prefix)
    time_unit = _choice(raw, "time_unit", TimeUnit, TimeUnit.AUTO, prefix)
    return EndpointSettings(
        name=name,
        registered_url=registered_url,
        auth_type=auth_type,
        keys=keys,
        tolerance_seconds=_number(
            raw, "tolerance_seconds", 300.0, low=1, high=86400, prefix=prefix
        ),
        signed_uri=signed_uri,
        time_unit=time_unit,
        allow_unauthenticated=allow_unauthenticated,
    )


def _metastudio(raw: object, environ: Mapping[str, str]) -> MetaStudioSettings:
    prefix = "metastudio."
    if not isinstance(raw, Mapping):
        raise ConfigError("metastudio: must be a table")
    _no_unknown_keys(raw, _METASTUDIO_KEYS, prefix=prefix)
    endpoint = _req_str(raw, "endpoint", prefix)
    parts = _split_url(endpoint, "metastudio.endpoint")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"metastudio.endpoint: must be an http(s) URL, not {endpoint!r}")
    token_env = raw.get("token_env")
    if token_env is not None and not isinstance(token_env, str):
        raise ConfigError("metastudio.token_env: must be the name of an environment variable")
    ak_env = _opt_str(raw, "ak_env", "HUAWEICLOUD_SDK_AK", prefix)
    sk_env = _opt_str(raw, "sk_env", "HUAWEICLOUD_SDK_SK", prefix)
    ak = sk = token = None
    if token_env is not None:
        token = environ.get(token_env) or None
        if token is None:
            raise ConfigError(f"metastudio.token_env: environment variable {token_env} is not set")
    else:
        ak, sk = environ.get(ak_env) or None, environ.get(sk_env) or None
        for key, variable, value in (("ak_env", ak_env, ak), ("sk_env", sk_env, sk)):
            if value is None:
                raise ConfigError(
                    f"metastudio.{key}: environment variable {variable} is not set "
                    "(AK/SK come from the environment, never from the file)"
                )
    return MetaStudioSettings(
        endpoint=endpoint.rstrip("/"),
        project_id=_req_str(raw, "project_id", prefix),
        ak_env=ak_env,
        sk_env=sk_env,
        token_env=token_env,
        ak=ak,
        sk=sk,
        token=token,
        crosscheck_interval_seconds=_number(
            raw, "crosscheck_interval_seconds", 60.0, low=0, high=86400, prefix=prefix
        ),
        window_skew_seconds=_number(
            raw, "window_skew_seconds", 120.0, low=0, high=86400, prefix=prefix
        ),
        grace_seconds=_number(raw, "grace_seconds", 300.0, low=0, high=86400, prefix=prefix),
        reuse_spread_seconds=_number(
            raw, "reuse_spread_seconds", 10.0, low=0, high=3600, prefix=prefix
        ),
        cache_seconds=_number(raw, "cache_seconds", 10.0, low=0, high=3600, prefix=prefix),
        timeout_seconds=_number(raw, "timeout_seconds", 10.0, low=0.1, high=300, prefix=prefix),
    )


def _split_url(url: str, key: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a non-numeric or out-of-range port raises here
    except ValueError as exc:
        raise ConfigError(f"{key}: {url!r} is not a valid URL ({exc})") from None
    return parts


def _check_database_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        # One driver for PostgreSQL: psycopg 3 (see pyproject.toml).
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///") or url.startswith("postgresql+psycopg://"):
        return url
    raise ConfigError(
        "database_url: must be sqlite:///PATH or postgresql+psycopg://USER@HOST/DB, "
        f"not {url.split('://', 1)[0]!r}://..."
    )


def _no_unknown_keys(raw: Mapping[str, Any], allowed: set[str], *, prefix: str) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _secrets(
    raw: Mapping[str, Any], key: str, env_key: str, environ: Mapping[str, str], *, prefix: str
) -> tuple[str, ...]:
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


def _req_str(raw: Mapping[str, Any], key: str, prefix: str = "") -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{prefix}{key}: required, a non-empty string")
    return value


def _opt_str(raw: Mapping[str, Any], key: str, default: str, prefix: str = "") -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{prefix}{key}: must be a non-empty string")
    return value


def _number(
    raw: Mapping[str, Any], key: str, default: float, *, low: float, high: float, prefix: str = ""
) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{prefix}{key}: must be a number")
    if not low <= value <= high:
        raise ConfigError(f"{prefix}{key}: must be between {low:g} and {high:g}, not {value}")
    return float(value)


def _int(raw: Mapping[str, Any], key: str, default: int, *, low: int, high: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: must be a whole number")
    if not low <= value <= high:
        raise ConfigError(f"{key}: must be between {low} and {high}, not {value}")
    return value


_E = TypeVar("_E", SignedUri, TimeUnit)


def _choice(raw: Mapping[str, Any], key: str, kind: type[_E], default: _E, prefix: str) -> _E:
    value = raw.get(key, default.value)
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise ConfigError(f"{prefix}{key}: must be one of {allowed}, not {value!r}") from None

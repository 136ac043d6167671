"""The top-level ``Settings`` and how they are loaded: the TOML file (``load_settings``) or a
mapping (``settings_from_mapping``), with the environment injected by the caller.

Owns the top-level keys (database, API tokens, limits, logging, the store's writer, workers),
the defaults when no file is given, and ``RECEIVER_CONFIG`` / ``RECEIVER_DATABASE_URL``; the
``[[endpoints]]``, ``[[destinations]]`` and ``[metastudio]`` tables are read by their own modules,
``secrets_file`` by ``secrets_file`` (its variables join the environment before anything reads
it), and every unset variable is reported at once by ``environment``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from receiver.config.destinations import DestinationSettings, destinations_from
from receiver.config.endpoints import EndpointSettings, endpoints_from
from receiver.config.environment import check_environment
from receiver.config.metastudio import MetaStudioSettings, metastudio_from
from receiver.config.rules import RulesSettings, public_url_from, rules_from
from receiver.config.secrets_file import with_secrets
from receiver.config.values import (
    no_unknown_keys,
    number,
    optional_str,
    retention,
    secret_list,
    whole_number,
)
from receiver.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///receiver.db"
STORE_WRITERS = ("process", "thread")
FORWARDERS = ("process", "server")


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    max_body_bytes: int = 65536
    endpoints: tuple[EndpointSettings, ...] = ()
    # Where stored events (and findings) are handed on (receiver.forward).
    destinations: tuple[DestinationSettings, ...] = ()
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
    # Where forwarding runs: "process" (a child process, so it never takes turns with the intake
    # for the interpreter lock: receiver.forward.process) or "server" (the server's event loop).
    forwarder: str = "process"
    # Stream health from the callbacks themselves (receiver.rules).
    rules: RulesSettings = field(default_factory=RulesSettings)
    # Where people reach this receiver (chat alerts link to its console under it).
    public_url: str | None = None
    # Deliveries and events older than this are pruned (None: kept for ever), archived first
    # to archive_dir when it is set (receiver.store.retention).
    retention_days: float | None = None
    archive_dir: str | None = None
    prune_interval_seconds: float = 3600.0

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
    "destinations",
    "metastudio",
    "log_format",
    "log_level",
    "store_batch_max",
    "store_timeout_seconds",
    "store_max_pending",
    "store_writer",
    "client_timeout_seconds",
    "workers",
    "secrets_file",
    "forwarder",
    "rules",
    "public_url",
    "retention_days",
    "archive_dir",
    "prune_interval_seconds",
}


def load_settings(*, path: str | Path | None, environ: Mapping[str, str]) -> Settings:
    """Settings from ``path`` (or env ``RECEIVER_CONFIG``; none at all gives the defaults). A
    relative ``secrets_file`` is found beside the file."""
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
    base_dir = None if chosen is None else Path(chosen).parent
    return settings_from_mapping(data, environ=environ, base_dir=base_dir)


def settings_from_mapping(
    data: Mapping[str, Any], *, environ: Mapping[str, str], base_dir: Path | None = None
) -> Settings:
    """Settings from a parsed config; a relative ``secrets_file`` is taken from ``base_dir``
    (default: the working directory)."""
    no_unknown_keys(data, _TOP_KEYS, prefix="")
    environ, secrets_file = with_secrets(data, environ, base_dir=base_dir)
    check_environment(data, environ, secrets_file=secrets_file)
    database_url = environ.get("RECEIVER_DATABASE_URL") or optional_str(
        data, "database_url", DEFAULT_DATABASE_URL
    )
    database_url = _check_database_url(database_url)
    api_tokens = secret_list(data, "api_tokens", "api_tokens_env", environ, prefix="")
    endpoints = endpoints_from(data.get("endpoints", []), environ)
    destinations = destinations_from(
        data.get("destinations", []),
        environ,
        endpoint_names=[endpoint.name for endpoint in endpoints],
    )
    metastudio_raw = data.get("metastudio")
    metastudio = None if metastudio_raw is None else metastudio_from(metastudio_raw, environ)
    log_format = optional_str(data, "log_format", "text")
    if log_format not in ("text", "json"):
        raise ConfigError(f"log_format: must be 'text' or 'json', not {log_format!r}")
    log_level = optional_str(data, "log_level", "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level: must be DEBUG, INFO, WARNING or ERROR, not {log_level!r}")
    store_writer = optional_str(data, "store_writer", "process")
    if store_writer not in STORE_WRITERS:
        raise ConfigError(f"store_writer: must be 'process' or 'thread', not {store_writer!r}")
    forwarder = optional_str(data, "forwarder", "process")
    if forwarder not in FORWARDERS:
        raise ConfigError(f"forwarder: must be 'process' or 'server', not {forwarder!r}")
    rules_raw = data.get("rules")
    return Settings(
        rules=RulesSettings() if rules_raw is None else rules_from(rules_raw),
        public_url=public_url_from(data.get("public_url")),
        retention_days=retention(data),
        archive_dir=_archive_dir(data, base_dir),
        prune_interval_seconds=number(
            data, "prune_interval_seconds", 3600.0, low=1, high=7 * 86400
        ),
        forwarder=forwarder,
        database_url=database_url,
        api_tokens=api_tokens,
        max_body_bytes=whole_number(data, "max_body_bytes", 65536, low=256, high=16 * 1024 * 1024),
        endpoints=endpoints,
        destinations=destinations,
        metastudio=metastudio,
        log_format=log_format,
        log_level=log_level,
        store_batch_max=whole_number(data, "store_batch_max", 512, low=1, high=5000),
        store_timeout_seconds=number(data, "store_timeout_seconds", 10.0, low=0.1, high=600),
        store_max_pending=whole_number(data, "store_max_pending", 20000, low=1, high=1_000_000),
        store_writer=store_writer,
        client_timeout_seconds=number(data, "client_timeout_seconds", 10.0, low=0.5, high=300),
        workers=whole_number(data, "workers", 1, low=1, high=64),
    )


def _archive_dir(data: Mapping[str, Any], base_dir: Path | None) -> str | None:
    """``archive_dir``, relative to the config file's folder when it is relative."""
    value = data.get("archive_dir")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError("archive_dir: must be the path of a folder")
    path = Path(value)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return str(path)


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

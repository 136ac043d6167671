"""Settings: built from a TOML file plus an injected environment mapping, checked once at start.

Nothing here runs at import time and nothing reads ``os.environ`` directly: callers pass the
environment in (``load_settings(path=..., environ=os.environ)``), so tests build settings from plain
dicts. Every problem becomes one ``ConfigError`` whose message starts with the key it is about,
e.g. ``endpoints[0].auth_type: MEITUAN_DEFAULT is not supported ...``.

Secrets (endpoint keys, API tokens, AK/SK) may come from the environment (``keys_env``,
``api_tokens_env``, ``ak_env``/``sk_env``), or from the ``secrets_file`` the config names, which
fills in those variables; they are never printed: ``__repr__`` masks them.

``settings`` (the top-level ``Settings``, ``load_settings``, ``settings_from_mapping``),
``endpoints`` (the ``[[endpoints]]`` tables), ``destinations`` (the ``[[destinations]]`` tables),
``metastudio`` (the ``[metastudio]`` table and its credentials), ``secrets_file`` (the file of
NAME=VALUE lines), ``environment`` (every unset variable in one message) and ``values`` (readers
of one value, each error naming its key). The names below are the ones the rest of receiver
imports, from ``receiver.config``.
"""

from __future__ import annotations

from receiver.config.destinations import DestinationSettings
from receiver.config.endpoints import ENDPOINT_NAME, MAX_KEY_LENGTH, EndpointSettings
from receiver.config.metastudio import MetaStudioSettings
from receiver.config.settings import (
    DEFAULT_DATABASE_URL,
    STORE_WRITERS,
    Settings,
    load_settings,
    settings_from_mapping,
)

__all__ = [
    "DEFAULT_DATABASE_URL",
    "ENDPOINT_NAME",
    "MAX_KEY_LENGTH",
    "STORE_WRITERS",
    "DestinationSettings",
    "EndpointSettings",
    "MetaStudioSettings",
    "Settings",
    "load_settings",
    "settings_from_mapping",
]

"""The ``[[endpoints]]`` tables: one ``EndpointSettings`` per callback URL MetaStudio is given.

Owns what an endpoint is (its name, the URL registered as live_event_type_callback_url, its
auth_type and keys, and the ``VerifyPolicy`` built once from them), the keys an endpoint table
allows, and the checks that tie them together (MSS_A needs keys, NONE needs a credential in the
URL's query, names are unique).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from receiver.config.values import (
    choice,
    http_url,
    no_unknown_keys,
    number,
    optional_str,
    required_str,
    retention,
    secret_list,
)
from receiver.errors import ConfigError
from receiver.protocol.signing import AuthType, SignedUri, TimeUnit, VerifyPolicy

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
    # Overrides the top-level retention_days for this endpoint's deliveries and events.
    retention_days: float | None = None
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
    "retention_days",
}


def endpoints_from(raw: object, environ: Mapping[str, str]) -> tuple[EndpointSettings, ...]:
    """The ``endpoints`` array of tables (``[[endpoints]]``), each checked, names unique."""
    if not isinstance(raw, list):
        raise ConfigError("endpoints: must be an array of tables ([[endpoints]])")
    endpoints = tuple(
        _endpoint(table, environ, prefix=f"endpoints[{index}].") for index, table in enumerate(raw)
    )
    seen: set[str] = set()
    for index, endpoint in enumerate(endpoints):
        if endpoint.name in seen:
            raise ConfigError(f"endpoints[{index}].name: {endpoint.name!r} is used twice")
        seen.add(endpoint.name)
    return endpoints


def _endpoint(raw: object, environ: Mapping[str, str], *, prefix: str) -> EndpointSettings:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.')}: must be a table")
    no_unknown_keys(raw, _ENDPOINT_KEYS, prefix=prefix)
    name = required_str(raw, "name", prefix)
    if not ENDPOINT_NAME.match(name):
        raise ConfigError(
            f"{prefix}name: {name!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "(it is a path segment of /callbacks/{name})"
        )
    registered_url = required_str(raw, "registered_url", prefix)
    parts = http_url(
        registered_url,
        f"{prefix}registered_url",
        what="the absolute http(s) URL registered as live_event_type_callback_url",
    )
    auth_text = optional_str(raw, "auth_type", "MSS_A", prefix).upper()
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
    keys = secret_list(raw, "keys", "keys_env", environ, prefix=prefix)
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
    signed_uri = choice(raw, "signed_uri", SignedUri, SignedUri.HOST_PATH_QUERY, prefix)
    time_unit = choice(raw, "time_unit", TimeUnit, TimeUnit.AUTO, prefix)
    return EndpointSettings(
        name=name,
        registered_url=registered_url,
        auth_type=auth_type,
        keys=keys,
        tolerance_seconds=number(raw, "tolerance_seconds", 300.0, low=1, high=86400, prefix=prefix),
        signed_uri=signed_uri,
        time_unit=time_unit,
        allow_unauthenticated=allow_unauthenticated,
        retention_days=retention(raw, prefix),
    )

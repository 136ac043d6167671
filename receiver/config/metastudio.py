"""The ``[metastudio]`` table: where and how the cross-check asks MetaStudio's job query API.

Owns ``MetaStudioSettings`` (the API's endpoint and project, the cross-check's timing and
tolerances) and the resolution of its credentials, which come from the environment only: an
IAM token (``token_env``) or AK/SK (``ak_env``/``sk_env``), never from the file, never in repr.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from receiver.config.values import http_url, no_unknown_keys, number, optional_str, required_str
from receiver.errors import ConfigError


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


def metastudio_from(raw: object, environ: Mapping[str, str]) -> MetaStudioSettings:
    """The ``[metastudio]`` table, its credentials read from ``environ``."""
    prefix = "metastudio."
    if not isinstance(raw, Mapping):
        raise ConfigError("metastudio: must be a table")
    no_unknown_keys(raw, _METASTUDIO_KEYS, prefix=prefix)
    endpoint = required_str(raw, "endpoint", prefix)
    http_url(endpoint, "metastudio.endpoint", what="an http(s) URL")
    token_env = raw.get("token_env")
    if token_env is not None and not isinstance(token_env, str):
        raise ConfigError("metastudio.token_env: must be the name of an environment variable")
    ak_env = optional_str(raw, "ak_env", "HUAWEICLOUD_SDK_AK", prefix)
    sk_env = optional_str(raw, "sk_env", "HUAWEICLOUD_SDK_SK", prefix)
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
        project_id=required_str(raw, "project_id", prefix),
        ak_env=ak_env,
        sk_env=sk_env,
        token_env=token_env,
        ak=ak,
        sk=sk,
        token=token,
        crosscheck_interval_seconds=number(
            raw, "crosscheck_interval_seconds", 60.0, low=0, high=86400, prefix=prefix
        ),
        window_skew_seconds=number(
            raw, "window_skew_seconds", 120.0, low=0, high=86400, prefix=prefix
        ),
        grace_seconds=number(raw, "grace_seconds", 300.0, low=0, high=86400, prefix=prefix),
        reuse_spread_seconds=number(
            raw, "reuse_spread_seconds", 10.0, low=0, high=3600, prefix=prefix
        ),
        cache_seconds=number(raw, "cache_seconds", 10.0, low=0, high=3600, prefix=prefix),
        timeout_seconds=number(raw, "timeout_seconds", 10.0, low=0.1, high=300, prefix=prefix),
    )

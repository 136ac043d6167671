"""Callback signatures: the string MetaStudio signs, signing it, and verifying a request.

Pure: no web, no database, no clock (``now`` is passed in). What Huawei documents and what it
leaves open is in ``docs/signing-notes.md``; every open question is a ``VerifyPolicy`` field.

    hwSecret = hex(hmac_sha256(key, canonical_uri(registered_url) + hwTime))

The string is always built from the URL the user *registered*, never from the request's own
scheme, host or port, which differ behind a proxy (signing-notes.md, "Consequences").
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from urllib.parse import SplitResult, parse_qsl, urlsplit

from receiver.errors import (
    ConfigError,
    SignatureExpired,
    SignatureMalformed,
    SignatureMismatch,
    SignatureMissing,
)


class AuthType(StrEnum):
    NONE = "NONE"
    MSS_A = "MSS_A"
    MSS_A_HEAD = "MSS_A_HEAD"


class SignedUri(StrEnum):
    HOST_PATH_QUERY = "host_path_query"
    FULL_URL = "full_url"
    PATH_QUERY = "path_query"


class TimeUnit(StrEnum):
    SECONDS = "seconds"
    MILLISECONDS = "milliseconds"
    AUTO = "auto"


SECRET_PARAM = "hwSecret"  # noqa: S105 -- a parameter name, not a password
TIME_PARAM = "hwTime"
SECRET_HEADER = "x-hw-mss-secret"  # noqa: S105 -- a header name
TIME_HEADER = "x-hw-mss-time"

_HEX = frozenset("0123456789abcdefABCDEF")
_SECRET_LENGTH = 64  # hex of a SHA-256 digest
_MAX_TIME_DIGITS = 16
# 8 hex digits for seconds today, 11 for milliseconds: 10**11 s is the year 5138, 10**11 ms is 1973.
_MILLISECONDS_FROM = 10**11
_MAX_QUERY_FIELDS = 256  # bounds the work one hostile query string can cause
_MAX_NAMES_SHOWN = 5


@dataclass(frozen=True, slots=True)
class VerifyPolicy:
    auth_type: AuthType
    registered_url: str
    keys: tuple[str, ...] = ()
    tolerance_seconds: float = 300.0
    signed_uri: SignedUri = SignedUri.HOST_PATH_QUERY
    time_unit: TimeUnit = TimeUnit.AUTO
    allow_unauthenticated: bool = False


@dataclass(frozen=True, slots=True)
class Verified:
    key_index: int | None
    signed_at: datetime | None
    time_unit: TimeUnit | None
    skew_seconds: float | None
    # The request's query, decoded, when verifying it had to read it (so callers need not again).
    query: tuple[tuple[str, str], ...] | None = field(default=None, compare=False)


def _split(registered_url: str) -> SplitResult:
    try:
        return urlsplit(registered_url)
    except ValueError as exc:
        raise ConfigError(f"registered_url cannot be parsed as a URL: {exc}") from None


def _sorted_query(query: str) -> str:
    # Sorted by name as in Huawei's worked example; pieces stay percent-encoded as registered.
    pieces = sorted((p for p in query.split("&") if p), key=lambda p: (p.partition("=")[0], p))
    return "?" + "&".join(pieces) if pieces else ""


@functools.lru_cache(maxsize=1024)
def canonical_uri(registered_url: str, form: SignedUri) -> str:
    """The "URI(live_event_callback_url)" part of the signed string, in the chosen form.

    Cached: an endpoint's registered URL is fixed, and this runs for every callback."""
    parts = _split(registered_url)
    if form == SignedUri.FULL_URL:
        return registered_url.partition("#")[0]
    if form == SignedUri.PATH_QUERY:
        return parts.path + _sorted_query(parts.query)
    if form == SignedUri.HOST_PATH_QUERY:
        host = parts.netloc.rpartition("@")[2]  # userinfo never travels in the signed string
        return host + parts.path + _sorted_query(parts.query)
    raise ValueError(f"unknown signed_uri form {form!r}")


def signed_string(*, registered_url: str, hw_time: str, form: SignedUri) -> str:
    return canonical_uri(registered_url, form) + hw_time


def sign(*, key: str, registered_url: str, hw_time: str, form: SignedUri) -> str:
    message = signed_string(registered_url=registered_url, hw_time=hw_time, form=form)
    return hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def format_hw_time(when: float, unit: TimeUnit) -> str:
    """Unix seconds -> hwTime: lower-case hex of whole seconds or whole milliseconds."""
    if not math.isfinite(when) or when < 0:
        raise ValueError("hwTime needs a finite, non-negative Unix time")
    if unit == TimeUnit.SECONDS:
        return format(int(when), "x")
    if unit == TimeUnit.MILLISECONDS:
        return format(round(when * 1000), "x")
    raise ValueError("hwTime is formatted in seconds or milliseconds, not auto")


def parse_hw_time(text: str, unit: TimeUnit) -> tuple[float, TimeUnit]:
    """hwTime -> (Unix seconds, the unit it was read in); AUTO decides by magnitude."""
    if not 1 <= len(text) <= _MAX_TIME_DIGITS or not _HEX.issuperset(text):
        raise SignatureMalformed(f"signing time must be 1 to {_MAX_TIME_DIGITS} hex digits")
    value = int(text, 16)
    if unit == TimeUnit.AUTO:
        unit = TimeUnit.MILLISECONDS if value >= _MILLISECONDS_FROM else TimeUnit.SECONDS
    if unit == TimeUnit.MILLISECONDS:
        return value / 1000, TimeUnit.MILLISECONDS
    return float(value), TimeUnit.SECONDS


def _decode_query(query_string: str) -> list[tuple[str, str]]:
    if "%" not in query_string and "+" not in query_string:
        # Nothing to unquote (a MetaStudio URL: hex and names): what parse_qsl gives, in a
        # quarter of its time. tests/protocol/test_signing.py holds the two to the same answers.
        if query_string.count("&") >= _MAX_QUERY_FIELDS:
            raise SignatureMalformed(
                "query string is not percent-encoded UTF-8 or has too many parameters"
            )
        return [field.partition("=")[::2] for field in query_string.split("&") if field]
    try:
        return parse_qsl(
            query_string,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_QUERY_FIELDS,
        )
    except ValueError:  # includes UnicodeDecodeError
        raise SignatureMalformed(
            "query string is not percent-encoded UTF-8 or has too many parameters"
        ) from None


@functools.lru_cache(maxsize=1024)
def _registered_pairs(registered_url: str) -> tuple[tuple[str, str], ...]:
    try:
        return tuple(
            parse_qsl(_split(registered_url).query, keep_blank_values=True, errors="strict")
        )
    except ValueError:
        raise ConfigError("registered_url has a query string that is not UTF-8") from None


def strip_signature_params(query_string: str) -> list[tuple[str, str]]:
    """The request's decoded query parameters, in order, without hwSecret and hwTime."""
    return [p for p in _decode_query(query_string) if p[0] not in (SECRET_PARAM, TIME_PARAM)]


def _describe(names: Iterable[str]) -> str:
    # Names only, never values; repr() keeps newlines out of log lines.
    shown = sorted(set(names))
    text = ", ".join(repr(name[:40]) for name in shown[:_MAX_NAMES_SHOWN])
    more = len(shown) - _MAX_NAMES_SHOWN
    return text + (f" and {more} more" if more > 0 else "")


def _single_param(pairs: list[tuple[str, str]], name: str) -> str:
    values = [value for key, value in pairs if key == name]
    if not values:
        raise SignatureMissing(f"{name} is missing from the query string")
    if len(values) > 1:
        raise SignatureMalformed(f"{name} appears {len(values)} times in the query string")
    return values[0]


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        raise SignatureMissing(f"header {name} is missing")
    return value


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )


def _check_query(
    received: Sequence[tuple[str, str]], registered: Sequence[tuple[str, str]]
) -> None:
    if sorted(received) == sorted(registered):  # the common case, without Counter's cost
        return
    got, want = Counter(received), Counter(registered)
    if got != want:
        differing = ((got - want) + (want - got)).keys()
        raise SignatureMismatch(
            "query parameters differ from the registered URL: "
            + _describe(name for name, _ in differing)
        )


@functools.lru_cache(maxsize=256)
def _expected_signatures(
    keys: tuple[str, ...], registered_url: str, form: SignedUri, hw_time: str
) -> tuple[bytes, ...]:
    """Every key's signature for this hwTime, as ASCII bytes.

    Cached: MetaStudio signs every callback of one second (or millisecond) alike, so a busy
    endpoint verifies the same few hwTime values again and again. The cache holds only what
    the keys produce, which the process can compute anyway; each request's signature is still
    compared with every key's, in constant time."""
    return tuple(
        sign(key=key, registered_url=registered_url, hw_time=hw_time, form=form).encode("ascii")
        for key in keys
    )


def _match_key(policy: VerifyPolicy, secret: str, hw_time: str) -> int:
    # The format was checked: 64 hex characters, so ASCII.
    given = secret.lower().encode("ascii")
    match: int | None = None
    expected = _expected_signatures(policy.keys, policy.registered_url, policy.signed_uri, hw_time)
    # Every key is tried, each in constant time, so timing does not tell which one matched.
    for index, signature in enumerate(expected):
        if hmac.compare_digest(signature, given) and match is None:
            match = index
    if match is None:
        raise SignatureMismatch(
            f"no configured key produces this signature (signed_uri={policy.signed_uri})"
        )
    return match


def _verify_url_credential(policy: VerifyPolicy, query_string: str) -> list[tuple[str, str]] | None:
    # NONE: "the URL contains authentication" -- the registered query is the credential.
    wanted = _registered_pairs(policy.registered_url)
    if not wanted:
        if policy.allow_unauthenticated:
            return None
        raise SignatureMissing(
            "registered_url carries no credential and unauthenticated callbacks are not allowed"
        )
    got = _decode_query(query_string)
    missing: list[str] = []
    wrong: list[str] = []
    for name in sorted({name for name, _ in wanted}):
        expected = [value for key, value in wanted if key == name]
        received = [value for key, value in got if key == name]
        if not received:
            missing.append(name)
            continue
        ok = len(received) == len(expected)
        for value in expected:  # a list, not a generator: every comparison runs
            ok &= any([_equal(candidate, value) for candidate in received])
        if not ok:
            wrong.append(name)
    if missing:
        raise SignatureMissing("credential parameters missing: " + _describe(missing))
    if wrong:
        raise SignatureMismatch("credential parameters do not match: " + _describe(wrong))
    return got


def _utc(seconds: float) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise SignatureMalformed("signing time is out of range") from None


def verify(
    *, policy: VerifyPolicy, query_string: str, headers: Mapping[str, str], now: float
) -> Verified:
    """Check one request's credential; raise a SignatureError subclass or say what verified it.

    Order: format, then the query against the registered one, then the keys, then the window.
    """
    if policy.auth_type == AuthType.NONE:
        got = _verify_url_credential(policy, query_string)
        return Verified(
            key_index=None,
            signed_at=None,
            time_unit=None,
            skew_seconds=None,
            query=None if got is None else tuple(got),
        )
    pairs = _decode_query(query_string)
    rest = [p for p in pairs if p[0] not in (SECRET_PARAM, TIME_PARAM)]
    if policy.auth_type == AuthType.MSS_A:
        secret = _single_param(pairs, SECRET_PARAM)
        hw_time = _single_param(pairs, TIME_PARAM)
    elif policy.auth_type == AuthType.MSS_A_HEAD:
        secret = _header(headers, SECRET_HEADER)
        hw_time = _header(headers, TIME_HEADER)
    else:
        raise ConfigError(f"auth_type {policy.auth_type!r} cannot be verified")
    if len(secret) != _SECRET_LENGTH or not _HEX.issuperset(secret):
        raise SignatureMalformed(f"signature must be {_SECRET_LENGTH} hex characters")
    signed_seconds, unit = parse_hw_time(hw_time, policy.time_unit)
    _check_query(rest, _registered_pairs(policy.registered_url))
    # hwTime is appended exactly as received (signing-notes.md), not re-formatted.
    key_index = _match_key(policy, secret, hw_time)
    skew = now - signed_seconds
    if not abs(skew) <= policy.tolerance_seconds:  # written so that NaN is outside too
        direction = "in the past" if skew > 0 else "in the future"
        raise SignatureExpired(
            f"signing time is {abs(skew):.0f} seconds {direction}; "
            f"tolerance is {policy.tolerance_seconds:g} seconds",
            skew_seconds=skew,
        )
    return Verified(
        key_index=key_index,
        signed_at=_utc(signed_seconds),
        time_unit=unit,
        skew_seconds=skew,
        query=tuple(pairs),
    )


def sign_request(
    *,
    registered_url: str,
    auth_type: AuthType,
    key: str,
    when: float,
    form: SignedUri = SignedUri.HOST_PATH_QUERY,
    unit: TimeUnit = TimeUnit.SECONDS,
) -> tuple[str, dict[str, str]]:
    """What MetaStudio sends for ``registered_url``: (URL to POST to, extra headers)."""
    if auth_type == AuthType.NONE:
        return registered_url, {}
    hw_time = format_hw_time(when, unit)
    secret = sign(key=key, registered_url=registered_url, hw_time=hw_time, form=form)
    if auth_type == AuthType.MSS_A_HEAD:
        return registered_url, {SECRET_HEADER: secret, TIME_HEADER: hw_time}
    if auth_type == AuthType.MSS_A:
        base = registered_url.partition("#")[0]
        separator = "" if base.endswith(("?", "&")) else "&" if "?" in base else "?"
        return f"{base}{separator}{SECRET_PARAM}={secret}&{TIME_PARAM}={hw_time}", {}
    raise ValueError(f"cannot sign for auth_type {auth_type!r}")


def mask_secret(value: str) -> str:
    """For logs: the last four characters of a long secret, never the whole of any."""
    if not value:
        return ""
    return "****" + value[-4:] if len(value) >= 12 else "****"


_SECRET_IN_TEXT = re.compile(r"(hwSecret=)[^&\s'\"]+")


def mask_secrets_in(text: str) -> str:
    """``text`` (an error message that may quote a signed URL) with hwSecret values masked."""
    return _SECRET_IN_TEXT.sub(r"\1****", text)

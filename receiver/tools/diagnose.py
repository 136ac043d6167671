"""Which signed-URI form, key and time unit produce a captured callback's signature, if any.

Pure: no web, no database, no clock (``now`` is passed in). The scheme itself is
``receiver.protocol.signing`` (``canonical_uri`` / ``signed_string`` / ``sign``); this module only
tries
every combination the scheme leaves open (signing-notes.md, "What is not documented") and the
registered-URL mistakes users commonly make, and says what it found.

The time unit does not change the signed string (``hwTime`` is appended as received), so a
signature matches or not whatever the unit; the unit decides *when* the request was signed. The
reading closest to ``now`` is the plausible one, and is what the report names.

Inputs that cannot be diagnosed raise the project's own errors, never a stray ``ValueError``:
``SignatureMissing`` / ``SignatureMalformed`` for the captured request, ``ConfigError`` for keys
and the registered URL.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote_plus, urlsplit, urlunsplit

from receiver.errors import ConfigError, ReceiverError, SignatureMalformed, SignatureMissing
from receiver.protocol.signing import (
    SECRET_HEADER,
    SECRET_PARAM,
    TIME_HEADER,
    TIME_PARAM,
    SignedUri,
    TimeUnit,
    mask_secret,
    parse_hw_time,
    sign,
    signed_string,
)

DEFAULT_TOLERANCE_SECONDS = 300.0  # the endpoint default (PRODUCT.md, tolerance_seconds)
MAX_KEY_LENGTH = 32  # Table 10: "key ... at most 32 characters"
_SECRET_LENGTH = 64
_HEX = frozenset("0123456789abcdefABCDEF")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_PLAUSIBLE_SECONDS = 366 * 86400  # a reading further than this from now is not a clock skew
_MAX_INPUT = 8192  # a captured URL or header longer than this is not a callback


@dataclass(frozen=True, slots=True)
class Capture:
    """The signature-relevant parts of one captured request."""

    url: str
    """As captured, fragment dropped."""
    secret: str
    """hwSecret / x-hw-mss-secret, lower-case hex."""
    hw_time: str
    """hwTime / x-hw-mss-time, exactly as sent."""
    carried_in: str
    """``"query"`` (MSS_A), ``"headers"`` (MSS_A_HEAD) or ``"arguments"`` (given separately)."""
    unsigned_url: str
    """The captured URL without hwSecret / hwTime, other parameters untouched."""
    notes: tuple[str, ...] = ()

    @property
    def auth_type(self) -> str:
        return "MSS_A_HEAD" if self.carried_in == "headers" else "MSS_A"


@dataclass(frozen=True, slots=True)
class TimeReading:
    unit: TimeUnit
    signed_at: datetime | None
    """None when the value is out of range in this unit."""
    skew_seconds: float | None
    """now - signing time: positive in the past, negative in the future."""

    def as_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit.value,
            "signed_at": _iso(self.signed_at),
            "skew_seconds": _round(self.skew_seconds),
            "direction": _direction(self.skew_seconds),
        }


@dataclass(frozen=True, slots=True)
class Attempt:
    form: SignedUri
    url: str
    url_change: str | None
    """None for the registered URL as given; otherwise what was changed (e.g. "https → http")."""
    signed_string: str


@dataclass(frozen=True, slots=True)
class Match:
    form: SignedUri
    key_index: int
    key_masked: str
    unit: TimeUnit
    signed_at: datetime | None
    skew_seconds: float | None
    registered_url: str
    url_change: str | None
    key_change: str | None
    signed_string: str

    @property
    def exact(self) -> bool:
        """Matched with the registered URL and key exactly as given."""
        return self.url_change is None and self.key_change is None

    def as_json(self) -> dict[str, Any]:
        return {
            "signed_uri": self.form.value,
            "key_index": self.key_index,
            "key": self.key_masked,
            "time_unit": self.unit.value,
            "signed_at": _iso(self.signed_at),
            "skew_seconds": _round(self.skew_seconds),
            "direction": _direction(self.skew_seconds),
            "registered_url": self.registered_url,
            "url_change": self.url_change,
            "key_change": self.key_change,
            "exact": self.exact,
            "signed_string": self.signed_string,
        }


@dataclass(frozen=True, slots=True)
class Diagnosis:
    capture: Capture
    registered_url: str
    registered_url_given: bool
    keys_masked: tuple[str, ...]
    readings: tuple[TimeReading, ...]
    likely: TimeReading
    """The plausible reading of hwTime: the one closest to now."""
    auto_unit: TimeUnit
    """What ``time_unit = "auto"`` decides for this hwTime."""
    matches: tuple[Match, ...]
    tried: tuple[Attempt, ...]
    hints: tuple[str, ...] = field(default=())

    @property
    def matched(self) -> bool:
        return bool(self.matches)

    def as_json(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "auth_type": self.capture.auth_type,
            "carried_in": self.capture.carried_in,
            "secret": mask_secret(self.capture.secret),
            "hw_time": self.capture.hw_time,
            "registered_url": self.registered_url,
            "registered_url_source": "given" if self.registered_url_given else "captured",
            "keys": list(self.keys_masked),
            "time": {
                **self.likely.as_json(),
                "auto_unit": self.auto_unit.value,
                "readings": [reading.as_json() for reading in self.readings],
            },
            "matches": [match.as_json() for match in self.matches],
            "tried": [
                {
                    "signed_uri": a.form.value,
                    "registered_url": a.url,
                    "url_change": a.url_change,
                    "signed_string": a.signed_string,
                }
                for a in self.tried
            ],
            "hints": list(self.capture.notes + self.hints),
        }

    def render(self) -> str:
        return "\n".join(_render(self)) + "\n"


# --- Reading the captured request ----------------------------------------------------------------


def header_lines(lines: Iterable[str]) -> dict[str, str]:
    """``["x-hw-mss-time: 66df9308", ...]`` -> a dict with lower-case names."""
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or any(c.isspace() for c in name):
            raise SignatureMalformed(
                f"header {_short(line)!r} is not of the form 'Name: value' "
                "(e.g. 'x-hw-mss-secret: 5e7f...')"
            )
        headers[name] = value.strip()
    return headers


def parse_capture(
    *,
    url: str,
    headers: Mapping[str, str] | None = None,
    secret: str | None = None,
    hw_time: str | None = None,
) -> Capture:
    """The signature and signing time of a captured request, from its URL (MSS_A), its headers
    (MSS_A_HEAD) or given separately; raises SignatureMissing / SignatureMalformed."""
    url = _text("the captured URL", url).strip()
    if not url:
        raise SignatureMalformed("the captured URL is empty")
    parts = _split("the captured URL", url)
    pieces = [piece for piece in parts.query.split("&") if piece]
    kept: list[str] = []
    from_query: dict[str, list[str]] = {SECRET_PARAM: [], TIME_PARAM: []}
    for piece in pieces:
        name, _, value = piece.partition("=")
        decoded = unquote_plus(name)
        if decoded in from_query:
            from_query[decoded].append(unquote_plus(value))
        else:
            kept.append(piece)
    for name, values in from_query.items():
        if len(values) > 1:
            raise SignatureMalformed(f"{name} appears {len(values)} times in the captured URL")
    unsigned = urlunsplit(parts._replace(query="&".join(kept), fragment=""))
    lowered = {
        _text("a header name", k).strip().lower(): _text(f"header {k}", v).strip()
        for k, v in (headers or {}).items()
    }
    notes: list[str] = []
    sources: list[tuple[str, str | None, str | None]] = [
        ("arguments", secret, hw_time),
        ("headers", lowered.get(SECRET_HEADER), lowered.get(TIME_HEADER)),
        ("query", _first(from_query[SECRET_PARAM]), _first(from_query[TIME_PARAM])),
    ]
    present = [(where, s, t) for where, s, t in sources if s is not None or t is not None]
    if not present:
        raise SignatureMissing(
            f"no signature found: the URL has no {SECRET_PARAM}/{TIME_PARAM} and no "
            f"{SECRET_HEADER} / {TIME_HEADER} header was given (pass the headers, or the "
            "secret and time separately)"
        )
    carried_in, found_secret, found_time = present[0]
    if len(present) > 1:
        notes.append(
            f"the signature is given in more than one place ({', '.join(p[0] for p in present)}); "
            f"diagnosed the one from the {carried_in}"
        )
    if found_secret is None:
        raise SignatureMissing(f"the signing time is given but not the signature ({carried_in})")
    if found_time is None:
        raise SignatureMissing(f"the signature is given but not the signing time ({carried_in})")
    found_secret = _text("the signature", found_secret).strip()
    found_time = _text("the signing time", found_time).strip()
    if len(found_secret) != _SECRET_LENGTH or not _HEX.issuperset(found_secret):
        what = (
            "characters that are not hex"
            if not _HEX.issuperset(found_secret)
            else f"{len(found_secret)} characters"
        )
        raise SignatureMalformed(
            f"the signature must be {_SECRET_LENGTH} hex characters (an HMAC-SHA256), "
            f"this one has {what}"
        )
    try:
        parse_hw_time(found_time, TimeUnit.AUTO)
    except SignatureMalformed as exc:
        raise SignatureMalformed(
            f"the signing time {_short(found_time)!r} is not usable: {exc.message} "
            "(e.g. 66df9308 for 2024-09-10T00:30:00Z)"
        ) from None
    return Capture(
        url=urlunsplit(parts._replace(fragment="")),
        secret=found_secret.lower(),
        hw_time=found_time,
        carried_in=carried_in,
        unsigned_url=unsigned,
        notes=tuple(notes),
    )


# --- The diagnosis -------------------------------------------------------------------------------


def diagnose(
    *,
    capture: Capture,
    keys: Sequence[str],
    now: float,
    registered_url: str | None = None,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> Diagnosis:
    """Try every signed_uri form x key (x URL and key variants) against ``capture``."""
    if not keys:
        raise ConfigError("keys: give at least one key to try")
    checked_keys = []
    for index, key in enumerate(keys):
        key = _text(f"keys[{index}]", key, ConfigError)
        if not key:
            raise ConfigError(f"keys[{index}]: empty")
        checked_keys.append(key)
    given = registered_url is not None
    if registered_url is None:
        registered_url = capture.unsigned_url
    registered_url = _text("registered_url", registered_url, ConfigError).strip()
    registered_parts = _split("registered_url", registered_url, error=ConfigError)
    if registered_parts.scheme not in ("http", "https") or not registered_parts.netloc:
        if given:
            raise ConfigError(
                f"registered_url: must be an absolute http(s) URL, not {_short(registered_url)!r}"
            )
        raise SignatureMalformed(
            "the captured URL has no http(s) scheme and host: give the registered URL "
            "(the job's live_event_type_callback_url) too"
        )

    readings = tuple(_reading(capture.hw_time, unit, now) for unit in _UNITS)
    auto_unit = parse_hw_time(capture.hw_time, TimeUnit.AUTO)[1]
    likely = min(
        readings,
        key=lambda r: (
            abs(r.skew_seconds) if r.skew_seconds is not None else float("inf"),
            r.unit != auto_unit,
        ),
    )

    bases = [("", registered_url)]
    captured_plain = capture.unsigned_url
    if given and _absolute(captured_plain) and captured_plain != registered_url:
        bases.append(("the URL as captured", captured_plain))
    tried, matches = _search(capture, checked_keys, bases, likely)
    diagnosis = Diagnosis(
        capture=capture,
        registered_url=registered_url,
        registered_url_given=given,
        keys_masked=tuple(mask_secret(k.strip()) for k in checked_keys),
        readings=readings,
        likely=likely,
        auto_unit=auto_unit,
        matches=tuple(matches),
        tried=tuple(tried),
    )
    return replace(diagnosis, hints=tuple(_hints(diagnosis, checked_keys, tolerance_seconds)))


def _search(
    capture: Capture, keys: Sequence[str], bases: Sequence[tuple[str, str]], likely: TimeReading
) -> tuple[list[Attempt], list[Match]]:
    """Every form x URL variant x key variant; matches with the URL and key as given first."""
    tried: list[Attempt] = []
    matches: list[Match] = []
    seen: set[tuple[SignedUri, int, str]] = set()
    for base_label, base in bases:
        for change, variant in url_variants(base):
            label = ", ".join(p for p in (base_label, change) if p) or None
            for form in SignedUri:
                text = signed_string(registered_url=variant, hw_time=capture.hw_time, form=form)
                if not any(a.form == form and a.signed_string == text for a in tried):
                    tried.append(Attempt(form, variant, label, text))
                for index, key in enumerate(keys):
                    for key_change, candidate in _key_variants(key):
                        if (form, index, text) in seen:
                            continue
                        expected = sign(
                            key=candidate,
                            registered_url=variant,
                            hw_time=capture.hw_time,
                            form=form,
                        )
                        if not hmac.compare_digest(expected, capture.secret):
                            continue
                        seen.add((form, index, text))
                        matches.append(
                            Match(
                                form=form,
                                key_index=index,
                                key_masked=mask_secret(key.strip()),
                                unit=likely.unit,
                                signed_at=likely.signed_at,
                                skew_seconds=likely.skew_seconds,
                                registered_url=variant,
                                url_change=label,
                                key_change=key_change,
                                signed_string=text,
                            )
                        )
    matches.sort(key=lambda m: (not m.exact, m.url_change is not None, m.key_change is not None))
    return tried, matches


def diagnose_request(
    *,
    url: str,
    keys: Sequence[str],
    now: float,
    headers: Mapping[str, str] | None = None,
    secret: str | None = None,
    hw_time: str | None = None,
    registered_url: str | None = None,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> Diagnosis:
    """``parse_capture`` then ``diagnose``: the whole command as one call."""
    capture = parse_capture(url=url, headers=headers, secret=secret, hw_time=hw_time)
    return diagnose(
        capture=capture,
        keys=keys,
        now=now,
        registered_url=registered_url,
        tolerance_seconds=tolerance_seconds,
    )


_UNITS = (TimeUnit.SECONDS, TimeUnit.MILLISECONDS)


def _reading(hw_time: str, unit: TimeUnit, now: float) -> TimeReading:
    seconds, _ = parse_hw_time(hw_time, unit)
    try:
        signed_at = datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return TimeReading(unit, None, None)
    return TimeReading(unit, signed_at, now - seconds)


# --- Variants of the registered URL and of the keys ----------------------------------------------


def url_variants(url: str) -> list[tuple[str | None, str]]:
    """``url`` first (change None), then what users commonly get wrong about it: the other
    scheme, the default port written or left out, a trailing slash, the query in another order.
    Each variant is (what was changed, URL); no URL appears twice."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [(None, url)]
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host, port = _host_port(hostport)
    schemes = [parts.scheme]
    if parts.scheme in _DEFAULT_PORTS:
        schemes.append("https" if parts.scheme == "http" else "http")
    pieces = [p for p in parts.query.split("&") if p]
    queries = [parts.query]
    ordered = "&".join(sorted(pieces, key=lambda p: (p.partition("=")[0], p)))
    if ordered != parts.query and len(pieces) > 1:
        queries.append(ordered)
    path_options = [parts.path]
    path_options.append(parts.path[:-1] if parts.path.endswith("/") else parts.path + "/")

    found: list[tuple[str | None, str]] = []
    urls: set[str] = set()
    for scheme in schemes:
        for toggle_port in (False, True):
            for path in path_options:
                for query in queries:
                    changes: list[str] = []
                    if scheme != parts.scheme:
                        changes.append(f"{parts.scheme} → {scheme}")
                    new_port = port
                    if toggle_port:
                        if port is not None:
                            new_port = None
                            changes.append(f"without port {port}")
                        elif scheme in _DEFAULT_PORTS:
                            new_port = _DEFAULT_PORTS[scheme]
                            changes.append(f"with port {new_port}")
                        else:
                            continue
                    if path != parts.path:
                        changes.append(
                            "without the trailing slash"
                            if parts.path.endswith("/")
                            else "with a trailing slash"
                        )
                    if query != parts.query:
                        changes.append("query parameters sorted")
                    netloc = (userinfo + at if at else "") + host
                    if new_port is not None:
                        netloc += ":" + new_port
                    candidate = urlunsplit((scheme, netloc, path, query, ""))
                    if not changes:
                        candidate = url.partition("#")[0]
                    if candidate in urls:
                        continue
                    urls.add(candidate)
                    found.append((", ".join(changes) or None, candidate))
    found.sort(key=lambda item: item[0] is not None)
    return found


def _host_port(hostport: str) -> tuple[str, str | None]:
    if hostport.endswith("]"):  # [IPv6] without a port
        return hostport, None
    host, sep, port = hostport.rpartition(":")
    if sep and port.isascii() and port.isdigit():
        return host, port
    return hostport, None


def _key_variants(key: str) -> list[tuple[str | None, str]]:
    variants: list[tuple[str | None, str]] = [(None, key)]
    stripped = key.strip()
    if stripped and stripped != key:
        variants.append(("without surrounding whitespace", stripped))
    if len(stripped) > MAX_KEY_LENGTH:
        variants.append(
            (f"cut to MetaStudio's {MAX_KEY_LENGTH} characters", stripped[:MAX_KEY_LENGTH])
        )
    return variants


# --- Hints ---------------------------------------------------------------------------------------


def _hints(d: Diagnosis, keys: Sequence[str], tolerance: float) -> list[str]:
    hints: list[str] = []
    if d.matched:
        best = d.matches[0]
        if best.url_change is not None:
            hints.append(
                f"the signature matches only with the registered URL changed ({best.url_change}): "
                f'MetaStudio signed "{best.registered_url}"; set registered_url to exactly that '
                "(the job's live_event_type_callback_url)"
            )
        if best.key_change is not None:
            hints.append(f"key #{best.key_index} matches only {best.key_change}: fix the key")
        if best.form != SignedUri.HOST_PATH_QUERY:
            hints.append(f'set signed_uri = "{best.form.value}" on the endpoint')
        return hints + _time_hints(d, tolerance)

    hints.append(
        f"no key ({', '.join(d.keys_masked)}) produces this signature in any signed_uri form, "
        "nor with the usual registered-URL mistakes: most likely the key differs from the "
        "job's live_event_callback_config.key (Table 10); after a key rotation give the "
        "previous key too"
    )
    for index, key in enumerate(keys):
        if len(key.strip()) > MAX_KEY_LENGTH:
            hints.append(
                f"key #{index} has {len(key.strip())} characters; MetaStudio keys have at most "
                f"{MAX_KEY_LENGTH}"
            )
    hints.extend(_url_differences(d))
    if "%" in d.registered_url or "+" in d.registered_url:
        hints.append(
            "the registered URL is percent-encoded: the signed string keeps the encoding exactly "
            "as registered, so %2F vs / or + vs %20 changes the signature"
        )
    hints.extend(_time_hints(d, tolerance))
    skew = d.likely.skew_seconds
    if skew is None or abs(skew) > _PLAUSIBLE_SECONDS:
        hints.append(
            "neither the seconds nor the milliseconds reading of hwTime is within a year of now: "
            "is hwTime the value that was sent, unchanged?"
        )
    return hints


def _time_hints(d: Diagnosis, tolerance: float) -> list[str]:
    hints: list[str] = []
    likely = d.likely
    skew = likely.skew_seconds
    if skew is not None and abs(skew) > tolerance:
        when = "ago" if skew > 0 else "in the future"
        hints.append(
            f"the request was signed {_duration(abs(skew))} {when}: outside the default "
            f"tolerance of {tolerance:g} s, a receiver answers 401 (expired) even when the "
            "signature matches (a replayed capture, or a clock that is off)"
        )
    if likely.unit != d.auto_unit:
        hints.append(
            f'hwTime reads as {likely.unit.value} but time_unit = "auto" would read it as '
            f'{d.auto_unit.value}: set time_unit = "{likely.unit.value}" on the endpoint'
        )
    digits = len(d.capture.hw_time)
    if digits not in (8, 11):
        hints.append(
            f"hwTime has {digits} hex digits; Unix seconds today have 8 and milliseconds 11"
        )
    return hints


def _url_differences(d: Diagnosis) -> list[str]:
    if not d.registered_url_given:
        return [
            "the registered URL was taken from the captured URL; behind a proxy or load "
            "balancer the scheme, host or port the receiver sees differ from what was "
            "registered: give the job's exact live_event_type_callback_url as the registered URL"
        ]
    captured = d.capture.unsigned_url
    if not _absolute(captured):
        return []
    a, b = urlsplit(captured), urlsplit(d.registered_url)
    hints: list[str] = []
    if (a.scheme, a.netloc) != (b.scheme, b.netloc):
        hints.append(
            f"the request arrived as {a.scheme}://{a.netloc} but {b.scheme}://{b.netloc} is "
            "registered: expected behind a proxy; what is signed is the registered URL"
        )
    if a.path != b.path:
        hints.append(
            f"the captured path {a.path!r} differs from the registered {b.path!r}: "
            "a proxy may rewrite paths, or the registered URL is not this endpoint's"
        )
    got = Counter(_pairs(a.query))
    want = Counter(_pairs(b.query))
    if got != want:
        names = sorted({name for name, _ in ((got - want) + (want - got))})
        hints.append(
            "the captured query parameters differ from the registered URL's ("
            + ", ".join(repr(n[:40]) for n in names[:5])
            + "): a receiver refuses such a request even with the right key"
        )
    return hints


def _pairs(query: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(query, keep_blank_values=True)
    except ValueError:
        return [(query, "")]


# --- Rendering -----------------------------------------------------------------------------------


def _render(d: Diagnosis) -> list[str]:
    c = d.capture
    where = {
        "query": f"in the query string ({SECRET_PARAM}, {TIME_PARAM})",
        "headers": f"in headers ({SECRET_HEADER}, {TIME_HEADER})",
        "arguments": "given separately",
    }[c.carried_in]
    source = "given" if d.registered_url_given else "taken from the captured URL"
    lines = [
        f"signature:      {mask_secret(c.secret)} {where}: auth_type {c.auth_type}",
        f"registered URL: {d.registered_url} ({source})",
        f"signing time:   {c.hw_time} = {_when(d.likely, d.likely.unit)}",
    ]
    for reading in d.readings:
        if reading.unit != d.likely.unit:
            lines.append(f"                (or {_when(reading, reading.unit)})")
    lines.append(f"keys tried:     {', '.join(d.keys_masked)}")
    lines.append("")
    if d.matched:
        for match in d.matches:
            lines.append(
                f"MATCH: signed_uri={match.form.value}  key #{match.key_index} "
                f"({match.key_masked})  time_unit={match.unit.value}"
            )
            if match.url_change:
                lines.append(f"  registered URL changed: {match.url_change}")
                lines.append(f"  URL that was signed:    {match.registered_url}")
            if match.key_change:
                lines.append(f"  key changed: {match.key_change}")
            lines.append(f"  signed string: {match.signed_string}")
            lines.append(f"  signed at:     {_when(d.likely)}")
        best = d.matches[0]
        lines += [
            "",
            "endpoint settings that verify it:",
            f'  registered_url = "{best.registered_url}"',
            f'  auth_type = "{c.auth_type}"',
            f'  signed_uri = "{best.form.value}"',
            f'  time_unit = "{_config_unit(d)}"',
        ]
    else:
        lines.append("NO MATCH. Signed strings tried (registered URL as given):")
        for attempt in d.tried:
            if attempt.url_change is None:
                lines.append(f"  {attempt.form.value:<16} {attempt.signed_string}")
        variants = {a.url for a in d.tried if a.url_change is not None}
        changes = sorted(
            {part for a in d.tried if a.url_change for part in a.url_change.split(", ")}
        )
        if variants:
            lines.append(
                f"  and {len(variants)} variant(s) of the registered URL: "
                + "; ".join(changes)
                + (" (and their combinations)" if len(variants) > len(changes) else "")
            )
    notes = list(c.notes) + list(d.hints)
    if notes:
        lines += ["", "notes:" if d.matched else "likely causes:"]
        lines += [f"  - {note}" for note in notes]
    return lines


def _config_unit(d: Diagnosis) -> str:
    return "auto" if d.likely.unit == d.auto_unit else d.likely.unit.value


def _when(reading: TimeReading, unit: TimeUnit | None = None) -> str:
    label = f" as {unit.value}" if unit is not None else ""
    if reading.signed_at is None or reading.skew_seconds is None:
        return f"out of range{label}"
    skew = abs(reading.skew_seconds)
    direction = "ago" if reading.skew_seconds >= 0 else "in the future"
    longer = f" ({_duration(skew)})" if skew >= 60 else ""
    return f"{_iso(reading.signed_at)}{label}, {skew:.0f} s {direction}{longer}"


def _duration(seconds: float) -> str:
    for size, unit in ((86400 * 365, "years"), (86400, "days"), (3600, "hours"), (60, "minutes")):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} seconds"


def _direction(skew: float | None) -> str | None:
    if skew is None:
        return None
    return "past" if skew >= 0 else "future"


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    text = value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- Input checks --------------------------------------------------------------------------------


def _text(what: str, value: object, error: type[ReceiverError] = SignatureMalformed) -> str:
    if not isinstance(value, str):
        raise error(f"{what} must be text, not {type(value).__name__}")
    if len(value) > _MAX_INPUT:
        raise error(f"{what} is longer than {_MAX_INPUT} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{what} is not valid UTF-8 text") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value if c != "\t"):
        raise error(f"{what} contains control characters")
    return value


def _split(what: str, url: str, *, error: type[ReceiverError] = SignatureMalformed) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise error(f"{what} cannot be parsed as a URL: {exc}") from None


def _absolute(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _first(values: list[str]) -> str | None:
    return values[0] if values else None


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."

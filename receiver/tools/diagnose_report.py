"""What a ``Diagnosis`` means for the user: the hints (likely causes, settings to change) and the
text report, with the time and value formatting its JSON form shares.

Everything here reads a finished ``Diagnosis`` (``receiver.tools.diagnose``), found by trying
signed_uri forms, keys and registered-URL variants; nothing here tries a signature.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from receiver.config import MAX_KEY_LENGTH
from receiver.protocol.signing import (
    SECRET_HEADER,
    SECRET_PARAM,
    TIME_HEADER,
    TIME_PARAM,
    SignedUri,
    TimeUnit,
    mask_secret,
)
from receiver.tools.diagnose_capture import is_absolute

if TYPE_CHECKING:
    from receiver.tools.diagnose import Diagnosis, TimeReading

_PLAUSIBLE_SECONDS = 366 * 86400  # a reading further than this from now is not a clock skew


# --- Hints ---------------------------------------------------------------------------------------


def diagnosis_hints(d: Diagnosis, keys: Sequence[str], tolerance: float) -> list[str]:
    """What to change when it matched, the likely causes when it did not."""
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
    if not is_absolute(captured):
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


def report_lines(d: Diagnosis) -> list[str]:
    """``Diagnosis.render``: the text report, a line each."""
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
    return f"{iso(reading.signed_at)}{label}, {skew:.0f} s {direction}{longer}"


def _duration(seconds: float) -> str:
    for size, unit in ((86400 * 365, "years"), (86400, "days"), (3600, "hours"), (60, "minutes")):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} seconds"


# --- Values of the JSON form -------------------------------------------------------------------


def skew_direction(skew: float | None) -> str | None:
    if skew is None:
        return None
    return "past" if skew >= 0 else "future"


def iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with ``Z``, milliseconds only when there are any."""
    if value is None:
        return None
    text = value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)

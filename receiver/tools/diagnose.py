"""Which signed-URI form, key and time unit produce a captured callback's signature, if any.

Pure: no web, no database, no clock (``now`` is passed in). The scheme itself is
``receiver.protocol.signing`` (``canonical_uri`` / ``signed_string`` / ``sign``); this module only
tries every combination the scheme leaves open (signing-notes.md, "What is not documented") and
the registered-URL mistakes users commonly make (``receiver.tools.diagnose_variants``) against a
captured request (``receiver.tools.diagnose_capture``), and says what it found
(``receiver.tools.diagnose_report``).

The time unit does not change the signed string (``hwTime`` is appended as received), so a
signature matches or not whatever the unit; the unit decides *when* the request was signed. The
reading closest to ``now`` is the plausible one, and is what the report names.

Inputs that cannot be diagnosed raise the project's own errors, never a stray ``ValueError``:
``SignatureMissing`` / ``SignatureMalformed`` for the captured request, ``ConfigError`` for keys
and the registered URL.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from receiver.errors import ConfigError, SignatureMalformed
from receiver.protocol.signing import (
    SignedUri,
    TimeUnit,
    mask_secret,
    parse_hw_time,
    sign,
    signed_string,
)
from receiver.tools.diagnose_capture import (
    Capture,
    checked_text,
    is_absolute,
    parse_capture,
    shortened,
    split_url,
)
from receiver.tools.diagnose_report import (
    diagnosis_hints,
    iso,
    report_lines,
    rounded,
    skew_direction,
)
from receiver.tools.diagnose_variants import key_variants, url_variants

DEFAULT_TOLERANCE_SECONDS = 300.0  # the endpoint default (PRODUCT.md, tolerance_seconds)


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
            "signed_at": iso(self.signed_at),
            "skew_seconds": rounded(self.skew_seconds),
            "direction": skew_direction(self.skew_seconds),
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
            "signed_at": iso(self.signed_at),
            "skew_seconds": rounded(self.skew_seconds),
            "direction": skew_direction(self.skew_seconds),
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
        return "\n".join(report_lines(self)) + "\n"


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
        key = checked_text(f"keys[{index}]", key, ConfigError)
        if not key:
            raise ConfigError(f"keys[{index}]: empty")
        checked_keys.append(key)
    given = registered_url is not None
    if registered_url is None:
        registered_url = capture.unsigned_url
    registered_url = checked_text("registered_url", registered_url, ConfigError).strip()
    registered_parts = split_url("registered_url", registered_url, error=ConfigError)
    if registered_parts.scheme not in ("http", "https") or not registered_parts.netloc:
        if given:
            raise ConfigError(
                "registered_url: must be an absolute http(s) URL, "
                f"not {shortened(registered_url)!r}"
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
    if given and is_absolute(captured_plain) and captured_plain != registered_url:
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
    return replace(
        diagnosis, hints=tuple(diagnosis_hints(diagnosis, checked_keys, tolerance_seconds))
    )


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
                    for key_change, candidate in key_variants(key):
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

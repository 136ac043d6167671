"""The captured callback request ``diagnose`` works on: its signature, signing time and URL.

``parse_capture`` finds hwSecret / hwTime in the query (MSS_A), in the x-hw-mss-* headers
(MSS_A_HEAD) or given separately, checks they have the shape MetaStudio sends, and keeps the URL
without them (what the signature can have covered). The input checks here (text, length, control
characters, a URL that parses) are shared with ``receiver.tools.diagnose`` for the keys and the
registered URL, so every unusable input raises the project's own errors, never a stray
``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote_plus, urlsplit, urlunsplit

from receiver.errors import ReceiverError, SignatureMalformed, SignatureMissing
from receiver.protocol.signing import (
    SECRET_HEADER,
    SECRET_PARAM,
    TIME_HEADER,
    TIME_PARAM,
    TimeUnit,
    parse_hw_time,
)

_SECRET_LENGTH = 64
_HEX = frozenset("0123456789abcdefABCDEF")
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


# --- Reading the captured request ----------------------------------------------------------------


def header_lines(lines: Iterable[str]) -> dict[str, str]:
    """``["x-hw-mss-time: 66df9308", ...]`` -> a dict with lower-case names."""
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or any(c.isspace() for c in name):
            raise SignatureMalformed(
                f"header {shortened(line)!r} is not of the form 'Name: value' "
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
    url = checked_text("the captured URL", url).strip()
    if not url:
        raise SignatureMalformed("the captured URL is empty")
    parts = split_url("the captured URL", url)
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
        checked_text("a header name", k).strip().lower(): checked_text(f"header {k}", v).strip()
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
    found_secret = checked_text("the signature", found_secret).strip()
    found_time = checked_text("the signing time", found_time).strip()
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
            f"the signing time {shortened(found_time)!r} is not usable: {exc.message} "
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


# --- Input checks --------------------------------------------------------------------------------


def checked_text(what: str, value: object, error: type[ReceiverError] = SignatureMalformed) -> str:
    """``value`` if it is text a captured request can hold; ``error`` naming ``what`` if not."""
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


def split_url(
    what: str, url: str, *, error: type[ReceiverError] = SignatureMalformed
) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise error(f"{what} cannot be parsed as a URL: {exc}") from None


def is_absolute(url: str) -> bool:
    """An http(s) URL with a host (a captured URL may be just the path the receiver saw)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _first(values: list[str]) -> str | None:
    return values[0] if values else None


def shortened(text: str) -> str:
    """``text`` cut to fit in an error message."""
    return text if len(text) <= 60 else text[:57] + "..."

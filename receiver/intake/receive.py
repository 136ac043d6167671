"""verify -> decode -> store: the one place the pieces meet for a callback.

The order matters: the signature is checked before anything of the body is parsed (it covers the
URL and the time, not the body: signing-notes.md), and a correctly signed body that does not
decode is still stored, as ``undecodable``, before it is refused, so nothing verified is lost.
The decoding itself happens where the rows are built (receiver.store.incoming.delivery_of): in the
store's writer process by default, off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import parse_qsl

from receiver.config import EndpointSettings
from receiver.errors import UndecodableStored
from receiver.protocol.signing import verify
from receiver.store.incoming import Fields, WriteOutcome

# Headers worth keeping with a delivery (what sent it, how, through which proxies). Credentials
# (x-hw-mss-secret, authorization, cookies) are never among them.
KEPT_HEADERS = (
    "content-type",
    "content-length",
    "content-encoding",
    "user-agent",
    "x-hw-mss-time",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
    "x-receiver-replay",
)
MAX_HEADER_VALUE = 512


class Writer(Protocol):
    async def write_fields(self, fields: Fields) -> WriteOutcome: ...


@dataclass(frozen=True, slots=True)
class Receipt:
    result: str  # "stored" | "duplicate"
    delivery_id: int
    event_id: int | None


async def receive(
    *,
    endpoint: EndpointSettings,
    body: bytes,
    query_string: str,
    headers: Mapping[str, str],
    remote_addr: str | None,
    now: float,
    writer: Writer,
    on_verified: Callable[[float], None] | None = None,
) -> Receipt:
    """Verify, decode and store one callback. Raises SignatureError, UndecodableStored or
    StoreUnavailable; returns only once the delivery is committed. The body is decoded by the
    writer, where it builds the rows (receiver.store.incoming.delivery_of): nothing is parsed
    before the signature has been checked."""
    verified = verify(policy=endpoint.policy(), query_string=query_string, headers=headers, now=now)
    if on_verified is not None and verified.skew_seconds is not None:
        on_verified(verified.skew_seconds)
    fields: Fields = (
        endpoint.name,
        body,
        datetime.fromtimestamp(now, UTC),
        verified.signed_at,
        verified.key_index,
        verified.time_unit.value if verified.time_unit else None,
        kept_headers(headers),
        kept_query(query_string, endpoint, decoded=verified.query),
        remote_addr,
    )
    outcome = await writer.write_fields(fields)
    if outcome.status != "stored":
        raise UndecodableStored(
            outcome.error or "the original of this duplicate delivery could not be decoded",
            delivery_id=outcome.delivery_id,
            duplicate=outcome.result == "duplicate",
        )
    return Receipt(outcome.result, outcome.delivery_id, outcome.event_id)


_KEPT = frozenset(KEPT_HEADERS)


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The KEPT_HEADERS present (one pass over the request's headers; the first of repeats)."""
    raw = getattr(headers, "raw", None)
    if raw is None:
        return {n: headers[n][:MAX_HEADER_VALUE] for n in KEPT_HEADERS if n in headers}
    kept: dict[str, str] = {}
    for name_bytes, value_bytes in raw:
        name = name_bytes.decode("latin-1").lower()
        if name in _KEPT and name not in kept:
            kept[name] = value_bytes.decode("latin-1")[:MAX_HEADER_VALUE]
    return kept


def kept_query(
    query_string: str,
    endpoint: EndpointSettings,
    *,
    decoded: Sequence[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """The request's query minus credentials (hwSecret; for NONE, the URL's own token).
    ``decoded``: the pairs verification already read, if it did."""
    if not query_string:
        return []
    hidden = endpoint.credential_params()
    pairs = decoded if decoded is not None else parse_qsl(query_string, keep_blank_values=True)
    return [(name, value[:MAX_HEADER_VALUE]) for name, value in pairs if name not in hidden][:64]

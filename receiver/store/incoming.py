"""A verified delivery on its way into the store, and the writer's answer for it.

``Fields`` is a verified request as intake hands it to the writer, not yet decoded;
``delivery_of`` decodes its body into an :class:`IncomingDelivery`, whose dedup key says which
deliveries are the same one; :class:`WriteOutcome` is what the store answers for each. These
travel between the event loop and the writer process, so this module imports no SQLAlchemy.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime

from receiver.errors import DecodeError
from receiver.protocol.events import Event as DecodedEvent
from receiver.protocol.events import decode


@dataclass(frozen=True, slots=True)
class IncomingDelivery:
    """A verified delivery, ready to store. ``event`` is None when the body did not decode."""

    endpoint: str
    body: bytes
    received_at: datetime
    signed_at: datetime | None
    key_index: int | None
    time_unit: str | None
    headers: dict[str, str]
    query: list[tuple[str, str]]
    remote_addr: str | None
    event: DecodedEvent | None
    error: str | None = None
    dedup_key: str = field(default="")
    body_sha256: str = field(default="")

    def __post_init__(self) -> None:
        if not self.body_sha256:
            object.__setattr__(self, "body_sha256", hashlib.sha256(self.body).hexdigest())
        if not self.dedup_key:
            object.__setattr__(self, "dedup_key", dedup_key_for(self))


def dedup_key_for(item: IncomingDelivery) -> str:
    """Same endpoint, same signing time, same body: the same delivery.

    Without a signing time (auth_type NONE) nothing tells a retry from a new event with the same
    content (an RTMP state can repeat), so such deliveries get a unique key and are all kept.
    """
    if item.signed_at is None:
        return "u:" + os.urandom(16).hex()
    stamp = round(item.signed_at.timestamp() * 1000)
    text = f"{item.endpoint}\n{stamp}\n{item.body_sha256 or hashlib.sha256(item.body).hexdigest()}"
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    result: str  # "stored" | "duplicate"
    status: str  # status of the original delivery: "stored" | "undecodable"
    delivery_id: int
    event_id: int | None
    error: str | None = None  # why this delivery's body did not decode (set by write_fields)


Fields = tuple[
    str,
    bytes,
    datetime,
    "datetime | None",
    "int | None",
    "str | None",
    dict[str, str],
    list[tuple[str, str]],
    "str | None",
]
"""A verified request as intake hands it to the writer, not yet decoded: endpoint, body,
received_at, signed_at, key_index, time_unit, kept headers, kept query, remote_addr."""


def fields_of(item: IncomingDelivery) -> Fields:
    """The request ``item`` was built from (delivery_of's argument)."""
    return (
        item.endpoint,
        item.body,
        item.received_at,
        item.signed_at,
        item.key_index,
        item.time_unit,
        item.headers,
        item.query,
        item.remote_addr,
    )


def delivery_of(fields: Fields) -> IncomingDelivery:
    """Decode a verified request's body and build the delivery to store. Run where the rows are
    built: on the event loop for the thread writer, in the writer process otherwise."""
    endpoint, body, received_at, signed_at, key_index, time_unit, headers, query, remote = fields
    try:
        event, error = decode(body), None
    except DecodeError as exc:
        event, error = None, exc.message
    return IncomingDelivery(
        endpoint=endpoint,
        body=body,
        received_at=received_at,
        signed_at=signed_at,
        key_index=key_index,
        time_unit=time_unit,
        headers=headers,
        query=query,
        remote_addr=remote,
        event=event,
        error=error,
    )

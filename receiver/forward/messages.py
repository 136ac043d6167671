"""A stored event, or a finding change, as the message every kind of destination is sent.

The body is Standard Webhooks' payload shape (PRODUCT.md, "Forwarding")::

    {"type": "metastudio.RTMP_STREAM_STATE_CHANGE", "timestamp": "2024-09-10T00:30:00Z",
     "data": <the event as GET /v1/events/{id} answers it: stream keys masked>}

It is built from the stored row alone, so every re-send of a message carries the same id
(``evt_<event id>``, ``fnd_<finding change id>``) and the same bytes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import orjson

from receiver.store.views import iso

EVENT = "event"
FINDING = "finding"
# Messages of one order key reach a destination in the order they were stored.
RESEND_PREFIX = "r:"


class Message(NamedTuple):
    """One message (a named tuple: the forwarder makes one per event at full load)."""

    id: str
    type: str
    body: bytes
    # One job's events go one after another; findings, one finding's changes.
    order_key: str
    source: str
    source_id: int
    # When the receiver stored it, in seconds since the epoch (the end-to-end latency is
    # measured from here).
    stored_at: float
    # The payload's data, for the chat formats (receiver.forward.chat): a finding's. An event's
    # is only in ``body`` (receiver.forward.event_rows builds it without Python objects).
    data: dict[str, Any] | None


def event_message_id(event_id: int) -> str:
    return f"evt_{event_id}"


def finding_message_id(change_id: int) -> str:
    return f"fnd_{change_id}"


def event_order_key(job_key: str | None, room_key: str | None) -> str:
    if job_key:
        return f"job:{job_key}"
    return f"room:{room_key}" if room_key else "none"


def finding_message(row: Any) -> Message:
    """``row``: a ``finding_changes`` row."""
    return _message(
        message_id=finding_message_id(row.id),
        type_=f"finding.{row.change}",
        stamp=row.at,
        data=dict(row.data),
        order_key=f"finding:{row.finding_id}",
        source=FINDING,
        source_id=row.id,
    )


def _message(
    *,
    message_id: str,
    type_: str,
    stamp: datetime,
    data: dict[str, Any],
    order_key: str,
    source: str,
    source_id: int,
) -> Message:
    body = orjson.dumps({"type": type_, "timestamp": iso(stamp), "data": data})
    return Message(
        id=message_id,
        type=type_,
        body=body,
        order_key=order_key,
        source=source,
        source_id=source_id,
        stored_at=stamp.timestamp(),
        data=data,
    )


def with_order_key(message: Message, order_key: str) -> Message:
    return message._replace(order_key=order_key)

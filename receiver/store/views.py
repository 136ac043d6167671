"""Stored rows as API answers: every field a client sees, with stream keys masked.

Stream keys are secrets (PRODUCT.md): masked in every answer, raw bodies included.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from receiver.protocol.events import mask_stream_key, masked_message


def _json_source(text: str) -> bytes:
    """A pattern for ``text`` as JSON source writes it: each character as itself or as a \\u
    escape behind any number of backslashes (JSON text inside a JSON string doubles them)."""
    parts = []
    for char in text:
        code = "".join(f"[{h}{h.upper()}]" for h in f"{ord(char):04x}")
        parts.append(f"(?:{re.escape(char)}|\\\\+u{code})")
    return "".join(parts).encode()


# A stream_key's name, quote and colon, in a body or in JSON text inside one of its strings.
_STREAM_KEY_TEXT = re.compile(
    _json_source("stream_key") + rb'\\*"(?:\s|\\+[nrt])*:(?:\s|\\+[nrt])*'
)
_SAFE_TAIL = re.compile(r"[A-Za-z0-9_-]{4}")


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def event_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "endpoint": row.endpoint,
        "event_type": row.event_type,
        "room_id": row.room_id,
        "job_id": row.job_id,
        "received_at": iso(row.received_at),
        "signed_at": iso(row.signed_at),
        "message": masked_message(row.event_type, row.message),
        "message_encoding": row.message_encoding,
        "extra": masked_message(row.event_type, row.extra),
        "delivery_id": row.delivery_id,
    }


def masked_body_text(body: bytes | None) -> str | None:
    """The raw body as text for people, with every stream_key value masked: at any depth of JSON
    inside JSON strings, whatever it escapes, up to the end when the body is cut short."""
    if body is None:
        return None
    out, done = bytearray(), 0
    for match in _STREAM_KEY_TEXT.finditer(body):
        if match.start() < done:
            continue
        start, end = _value_span(body, match.end())
        out += body[done:start] + _masked_raw(body[start:end])
        done = end
    return bytes(out + body[done:]).decode("utf-8", "replace")


def _value_span(body: bytes, at: int) -> tuple[int, int]:
    """Where the value starting at ``at`` is, without its quotes. A string opened by a quote after
    k backslashes (k = 0, 1, 3, ... for each level of JSON in a string) is closed by the first
    quote after a run of r backslashes with r % (2k + 2) == k; other runs escape the quote."""
    k = len(body[at:]) - len(body[at:].lstrip(b"\\"))
    if body[at + k : at + k + 1] != b'"':  # not a string: a number, true, ...
        end = at
        while end < len(body) and body[end : end + 1] not in b',}]" \t\r\n\\':
            end += 1
        return at, end
    start = at + k + 1
    for quote in re.finditer(rb'(\\*)"', body[start:]):
        run = len(quote.group(1))
        if run % (2 * k + 2) == k:
            return start, start + quote.end() - 1 - k
    return start, len(body)


def _masked_raw(raw: bytes) -> bytes:
    # The last characters are shown (as mask_stream_key does) only when they are plainly written.
    masked = mask_stream_key(raw.decode("utf-8", "replace")) or ""
    plain = b"\\" not in raw and _SAFE_TAIL.fullmatch(masked[4:])
    return masked.encode() if plain else b"****"


def delivery_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "endpoint": row.endpoint,
        "status": row.status,
        "received_at": iso(row.received_at),
        "signed_at": iso(row.signed_at),
        "key_index": row.key_index,
        "time_unit": row.time_unit,
        "body_size": row.body_size,
        "body_sha256": row.body_sha256,
        "body": masked_body_text(row.body),
        "headers": row.headers,
        "query": row.query,
        "remote_addr": row.remote_addr,
        "error": row.error,
        "duplicate_of": row.duplicate_of,
        "event_id": row.event_id,
    }


def rejection_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "received_at": iso(row.received_at),
        "endpoint": row.endpoint,
        "reason": row.reason,
        "error_code": row.error_code,
        "detail": row.detail,
        "remote_addr": row.remote_addr,
        "clock_skew_seconds": row.clock_skew_seconds,
        "body_size": row.body_size,
        "body_sha256": row.body_sha256,
        "body_prefix": row.body_prefix,
        # How many refusals over the log's rate limit were left out just before this one.
        "suppressed_before": row.suppressed_before,
    }


def finding_status(row: Any) -> str:
    """resolved (the condition cleared), muted, acknowledged, or open."""
    if row.resolved_at is not None:
        return "resolved"
    if row.acked_at is not None:
        return "muted" if row.ack_action == "mute" else "acknowledged"
    return "open"


def finding_json(row: Any) -> dict[str, Any]:
    ack = None
    if row.acked_at is not None:
        ack = {
            "action": row.ack_action,
            "by": row.acked_by,
            "at": iso(row.acked_at),
            "reason": row.ack_reason,
        }
    return {
        "id": row.id,
        "kind": row.kind,
        "status": finding_status(row),
        "room_id": row.room_id,
        "job_id": row.job_id,
        "endpoint": row.endpoint,
        "event_id": row.event_id,
        "detail": row.detail,
        "data": row.data,
        "first_seen_at": iso(row.first_seen_at),
        "last_seen_at": iso(row.last_seen_at),
        "resolved_at": iso(row.resolved_at),
        "occurrences": row.occurrences,
        "acknowledgement": ack,
    }


def snapshot_json(row: Any) -> dict[str, Any]:
    data = dict(row.data)
    config = data.get("live_event_callback_config")
    if isinstance(config, dict) and config.get("key"):
        # The callback key is the endpoint's signing secret: never shown.
        data["live_event_callback_config"] = {**config, "key": "****"}
    return {
        "job_id": row.job_id,
        "room_id": row.room_id,
        "state": row.state,
        "fetched_at": iso(row.fetched_at),
        "first_fetched_at": iso(row.first_fetched_at),
        "job": data,
    }


# -- queries -----------------------------------------------------------------------------------

"""Callback bodies to typed events: pure, no web, no DB.

MetaStudio posts ``{"event_type": ..., "message": "<JSON text>"}`` to a live job's
``live_event_type_callback_url`` (ListSmartLiveJobs, Table 10 ``LiveEventCallBackConfig``). The
document is vague (its REPLY_COMMAND_FINISH example is not even valid JSON, and the sequence
number is a string), so decoding is tolerant about shape: ``message`` may be JSON text or an
object, numbers may arrive as strings, unknown event types and fields are kept. It is strict where
stored data would be wrong or unusable: duplicate keys, integers beyond 64 bits, nesting that
``orjson.dumps`` could not write back, and documented fields of the wrong type are refused.

Every failure is a :class:`~receiver.errors.DecodeError`; :func:`decode` raises nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from receiver.errors import DecodeError


class EventType(StrEnum):
    """The documented values of ``callback_event_type`` (Table 10)."""

    SHOOT_SCRIPT_SWITCH = "SHOOT_SCRIPT_SWITCH"
    RTMP_STREAM_STATE_CHANGE = "RTMP_STREAM_STATE_CHANGE"
    REPLY_COMMAND_FINISH = "REPLY_COMMAND_FINISH"


class RtmpState(StrEnum):
    """The documented values of ``state`` in RTMP_STREAM_STATE_CHANGE (Table 10)."""

    CONNECTING = "CONNECTING"
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"
    RECONNECTING = "RECONNECTING"
    END = "END"


KNOWN_EVENT_TYPES: frozenset[str] = frozenset(t.value for t in EventType)

MAX_NAME_LENGTH = 128
"""Longest accepted event_type, id (room/job/reply) or state; MetaStudio ids are 32 hex chars."""

MAX_DEPTH = 64
"""Deepest accepted nesting of a JSON document. Events are flat; orjson.dumps fails past 254."""

MESSAGE_ENCODINGS = ("string", "object")

_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
_DECIMAL = re.compile(r"[+-]?[0-9]{1,32}")
_ASCII_SPACE = " \t\r\n"
_MASK = "****"
_STREAM_KEY = "stream_key"


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded callback."""

    event_type: str
    """As sent, known or not."""
    room_id: str | None
    job_id: str | None
    message: dict[str, Any]
    """Documented fields converted to their types; every other field kept as sent."""
    message_encoding: str
    """``"string"`` (JSON text inside JSON, as documented) or ``"object"``."""
    extra: dict[str, Any]
    """Top-level fields other than event_type and message, as sent."""

    @property
    def known(self) -> bool:
        return self.event_type in KNOWN_EVENT_TYPES


# --- JSON ----------------------------------------------------------------------------------------


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which duplicate wins (orjson and json keep the last, others the first),
    # so a duplicate makes the signed bytes mean two things: refuse it.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DecodeError(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _exact_int(text: str) -> int:
    # orjson turns integers beyond 64 bits into rounded floats (or refuses them): the data would
    # be wrong. 21 characters hold every 64-bit integer, and keep int() far from its digit limit.
    if len(text) > 21 or not _INT64_MIN <= int(text) <= _UINT64_MAX:
        raise DecodeError("integer does not fit in 64 bits")
    return int(text)


_STRICT = json.JSONDecoder(object_pairs_hook=_unique_pairs, parse_int=_exact_int)


def _check_depth(root: dict[str, Any], what: str) -> None:
    # Iterative, so a deep document cannot exhaust the Python stack here.
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(root, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise DecodeError(f"{what} nests deeper than {MAX_DEPTH} levels")
        children = container.values() if isinstance(container, dict) else container
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def _parse_object(data: bytes | str, what: str) -> dict[str, Any]:
    """Parse one JSON object document. orjson validates (UTF-8, surrogates, NaN, BOM); a second,
    stdlib pass, run only on what orjson accepted, finds duplicate keys and oversized integers."""
    try:
        text = data if isinstance(data, str) else str(data, "utf-8")
    except UnicodeDecodeError as exc:  # said plainly: orjson would blame "surrogates"
        raise DecodeError(f"{what} is not valid JSON: not UTF-8 ({exc})") from None
    except TypeError:
        raise DecodeError(f"{what} is not bytes but {type(data).__name__}") from None
    try:
        value = orjson.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise DecodeError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise DecodeError(f"{what} is not a JSON object")
    if text.count("{") + text.count("[") > MAX_DEPTH:  # fewer containers cannot nest deeper
        _check_depth(value, what)
    if orjson.dumps(value) == (data if isinstance(data, bytes) else text.encode()):
        # Compact JSON, as MetaStudio writes it, that reads back to the very same bytes has no
        # duplicate key (one would be missing from what orjson wrote) and no integer orjson
        # changed: the second pass has nothing to find. Anything else takes it.
        return value
    try:
        _STRICT.decode(text)
    except DecodeError as exc:
        raise DecodeError(f"{what} is not acceptable JSON: {exc.message}") from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise DecodeError(f"{what} is not valid JSON: {exc}") from None
    return value


# --- Field conversions (documented fields of known events) ---------------------------------------


def _bad(field: str, expected: str, value: object) -> DecodeError:
    # Only the type is named, never the value: it may be a secret (stream_key) and ends up in logs.
    return DecodeError(f"message.{field} must be {expected}, not {type(value).__name__}")


def _identifier(field: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _bad(field, "a string or an integer", value)
    if not value.strip():
        raise DecodeError(f"message.{field} is required")
    if len(value) > MAX_NAME_LENGTH:
        raise DecodeError(f"message.{field} is longer than {MAX_NAME_LENGTH} characters")
    return value


def _sequence_no(field: str, value: Any) -> int:
    number: int | None = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _DECIMAL.fullmatch(text := value.strip(_ASCII_SPACE)):
        number = int(text)
    if number is None:
        raise _bad(field, "an integer or a decimal string", value)
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise DecodeError(f"message.{field} does not fit in a signed 64-bit integer")
    return number


def _text(field: str, value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _bad(field, "a string or a number", value)
    return value


def _string(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(field, "a string", value)
    return value


def _state(field: str, value: Any) -> str:
    # Kept even outside RtmpState: vendors add states, and refusing would lose the event.
    state = _string(field, value).strip(_ASCII_SPACE).upper()
    if not state:
        raise DecodeError(f"message.{field} is required")
    if len(state) > MAX_NAME_LENGTH:
        raise DecodeError(f"message.{field} is longer than {MAX_NAME_LENGTH} characters")
    return state


_Convert = Callable[[str, Any], Any]
_IDS: tuple[tuple[str, _Convert, bool], ...] = (
    ("room_id", _identifier, True),
    ("job_id", _identifier, True),
)
# (field, conversion, required) per known type, from the examples in Table 10.
_FIELDS: dict[str, tuple[tuple[str, _Convert, bool], ...]] = {
    EventType.SHOOT_SCRIPT_SWITCH: (
        *_IDS,
        ("scene_script_name", _text, False),
        ("shoot_script_sequence_no", _sequence_no, False),
        ("shoot_script_title", _text, False),
    ),
    EventType.RTMP_STREAM_STATE_CHANGE: (
        *_IDS,
        ("state", _state, True),
        ("output_url", _string, False),
        (_STREAM_KEY, _string, False),
    ),
    EventType.REPLY_COMMAND_FINISH: (*_IDS, ("reply_id", _identifier, True)),
}


def _typed(event_type: str, message: dict[str, Any]) -> dict[str, Any]:
    typed = dict(message)  # same key order; absent optional fields stay absent, nulls stay null
    for field, convert, required in _FIELDS[event_type]:
        value = message.get(field)
        if value is None:
            if required:
                raise DecodeError(f"message.{field} is required for {event_type}")
            continue
        typed[field] = convert(field, value)
    return typed


def _loose_id(value: Any) -> str | None:
    """room_id / job_id of an unknown event: used when usable, otherwise left out (None)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip() and len(value) <= MAX_NAME_LENGTH:
        return value
    return None


# --- Public functions ----------------------------------------------------------------------------


def decode(body: bytes) -> Event:
    """Decode one callback body. Raises :class:`DecodeError`, and nothing else, for any bytes."""
    document = _parse_object(body, "body")
    event_type = document.get("event_type")
    if not isinstance(event_type, str) or not event_type.strip():
        raise DecodeError("event_type is required and must be a non-empty string")
    if len(event_type) > MAX_NAME_LENGTH:
        raise DecodeError(f"event_type is longer than {MAX_NAME_LENGTH} characters")
    if "message" not in document:
        raise DecodeError("message is required")
    raw = document["message"]
    if isinstance(raw, str):
        message, encoding = _parse_object(raw, "message"), "string"
    elif isinstance(raw, dict):
        message, encoding = raw, "object"
    else:
        raise DecodeError("message must be a JSON object or a string holding one")

    if event_type in KNOWN_EVENT_TYPES:
        message = _typed(event_type, message)
        room_id, job_id = message["room_id"], message["job_id"]
    else:
        room_id, job_id = _loose_id(message.get("room_id")), _loose_id(message.get("job_id"))
    extra = {k: v for k, v in document.items() if k not in ("event_type", "message")}
    return Event(event_type, room_id, job_id, message, encoding, extra)


def encode(
    event_type: str,
    message: Mapping[str, Any],
    *,
    message_as: str = "string",
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """Build a body the way MetaStudio does: compact UTF-8 JSON, ``message`` as JSON text
    (``message_as="object"`` puts the object itself). Nothing is validated, so tests can build
    bodies that :func:`decode` refuses."""
    if message_as not in MESSAGE_ENCODINGS:
        raise ValueError(f"message_as must be one of {MESSAGE_ENCODINGS}, not {message_as!r}")
    inner = dict(message)
    body: dict[str, Any] = {
        "event_type": event_type,
        "message": orjson.dumps(inner).decode("utf-8") if message_as == "string" else inner,
    }
    for key, value in (extra or {}).items():
        if key in body:
            raise ValueError(f"extra must not contain {key!r}")
        body[key] = value
    return orjson.dumps(body)


def mask_stream_key(value: str | None) -> str | None:
    """``"****"`` plus the last 4 characters when there are at least 8, else ``"****"``."""
    if value is None:
        return None
    return _MASK + value[-4:] if len(value) >= 8 else _MASK


def _masked_mapping(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (_mask_secret(v) if k == _STREAM_KEY else _masked(v)) for k, v in mapping.items()}


def _masked(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _masked_mapping(value)
    return [_masked(v) for v in value] if isinstance(value, list) else value


def _mask_secret(value: Any) -> Any:
    return mask_stream_key(value) if isinstance(value, str) or value is None else _MASK


def masked_message(event_type: str, message: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``message`` with every ``stream_key`` masked, at any depth. Stream keys are
    secrets in every API answer and log line (PRODUCT.md), whatever event carries them, so
    ``event_type`` does not narrow what is masked."""
    return _masked_mapping(message)

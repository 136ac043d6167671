"""receiver.protocol.events: MetaStudio callback bodies to typed events (Table 10 of
ListSmartLiveJobs)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.errors import DecodeError
from receiver.protocol.events import (
    KNOWN_EVENT_TYPES,
    MAX_DEPTH,
    MAX_NAME_LENGTH,
    Event,
    EventType,
    RtmpState,
    decode,
    encode,
    mask_stream_key,
    masked_message,
)

ROOM = "26f065244f754b3aa853b649a21aaf66"
JOB = "e87104f76d7546ce8a46ac6b04c49c3c"

# Copied byte for byte from Table 10 (LiveEventCallBackConfig, callback_event_type).
DOC_SHOOT_SCRIPT_SWITCH = rb"""{
  "event_type":  "SHOOT_SCRIPT_SWITCH",
  "message":"{\"room_id\":\"26f065244f754b3aa853b649a21aaf66\",\"job_id\":\"e87104f76d7546ce8a46ac6b04c49c3c\",\"scene_script_name\":\"Product 1\",\"shoot_script_sequence_no\":\"2\",\"shoot_script_title\":\"Paragraph 2\"}"
}"""  # noqa: E501
DOC_RTMP_STREAM_STATE_CHANGE = rb"""{
  "event_type":  "RTMP_STREAM_STATE_CHANGE",
  "message":"{\"room_id\":\"26f065244f754b3aa853b649a21aaf66\",\"job_id\":\"e87104f76d7546ce8a46ac6b04c49c3c\",\"output_url\":\"rtmp://xxx/xx/xx\",\"stream_key\":\"xxxxx\",\"state\":\"CONNECTED\"}"
}"""
# The document's own example: its reply_id value lacks the escaped closing quote.
DOC_REPLY_COMMAND_FINISH_AS_PRINTED = rb"""{
  "event_type":  "REPLY_COMMAND_FINISH",
  "message":"{\"room_id\":\"26f065244f754b3aa853b649a21aaf66\",\"job_id\":\"e87104f76d7546ce8a46ac6b04c49c3c\",\"reply_id\":\"e87104f76d7546ce8a46ac6b04c49c3c"}"
}"""
# The same example with the quote restored.
DOC_REPLY_COMMAND_FINISH = rb"""{
  "event_type":  "REPLY_COMMAND_FINISH",
  "message":"{\"room_id\":\"26f065244f754b3aa853b649a21aaf66\",\"job_id\":\"e87104f76d7546ce8a46ac6b04c49c3c\",\"reply_id\":\"e87104f76d7546ce8a46ac6b04c49c3c\"}"
}"""

MISSING = object()
BASE: dict[str, dict[str, Any]] = {
    "SHOOT_SCRIPT_SWITCH": {"room_id": ROOM, "job_id": JOB, "shoot_script_sequence_no": 1},
    "RTMP_STREAM_STATE_CHANGE": {"room_id": ROOM, "job_id": JOB, "state": "CONNECTED"},
    "REPLY_COMMAND_FINISH": {"room_id": ROOM, "job_id": JOB, "reply_id": "r-1"},
}


def body_for(event_type: str, **fields: Any) -> bytes:
    """A documented-shape body for a known type, with fields replaced (MISSING removes one)."""
    message = {**BASE[event_type], **fields}
    return encode(event_type, {k: v for k, v in message.items() if v is not MISSING})


def refused(body: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        decode(body)
    assert info.value.code == "RCV.BODY_UNDECODABLE"
    return info.value.message


# --- The documented examples ---------------------------------------------------------------------


def test_documented_shoot_script_switch() -> None:
    event = decode(DOC_SHOOT_SCRIPT_SWITCH)
    assert event == Event(
        event_type="SHOOT_SCRIPT_SWITCH",
        room_id=ROOM,
        job_id=JOB,
        message={
            "room_id": ROOM,
            "job_id": JOB,
            "scene_script_name": "Product 1",
            "shoot_script_sequence_no": 2,
            "shoot_script_title": "Paragraph 2",
        },
        message_encoding="string",
        extra={},
    )
    assert event.known


def test_documented_rtmp_stream_state_change() -> None:
    event = decode(DOC_RTMP_STREAM_STATE_CHANGE)
    assert (event.event_type, event.room_id, event.job_id) == (
        "RTMP_STREAM_STATE_CHANGE",
        ROOM,
        JOB,
    )
    assert event.message == {
        "room_id": ROOM,
        "job_id": JOB,
        "output_url": "rtmp://xxx/xx/xx",
        "stream_key": "xxxxx",
        "state": "CONNECTED",
    }
    assert event.message["state"] == RtmpState.CONNECTED
    assert event.message_encoding == "string"
    assert event.extra == {}


def test_documented_reply_command_finish_with_its_quote_restored() -> None:
    event = decode(DOC_REPLY_COMMAND_FINISH)
    assert (event.event_type, event.room_id, event.job_id) == ("REPLY_COMMAND_FINISH", ROOM, JOB)
    assert event.message == {"room_id": ROOM, "job_id": JOB, "reply_id": JOB}


def test_documented_reply_example_as_printed_is_not_json() -> None:
    assert refused(DOC_REPLY_COMMAND_FINISH_AS_PRINTED).startswith("body is not valid JSON: ")


def test_enums_and_known_types() -> None:
    assert {t.value for t in EventType} == {t.name for t in EventType} == KNOWN_EVENT_TYPES
    assert [s.value for s in RtmpState] == [
        "CONNECTING",
        "CONNECTED",
        "DISCONNECTED",
        "RECONNECTING",
        "END",
    ]
    assert "SHOOT_SCRIPT_SWITCH" in KNOWN_EVENT_TYPES
    assert "shoot_script_switch" not in KNOWN_EVENT_TYPES


# --- Shapes the vendor may send ------------------------------------------------------------------


@pytest.mark.parametrize("message_as", ["string", "object"])
def test_message_as_string_or_object_decodes_the_same(message_as: str) -> None:
    message = {"room_id": ROOM, "job_id": JOB, "shoot_script_sequence_no": "3"}
    event = decode(encode("SHOOT_SCRIPT_SWITCH", message, message_as=message_as))
    assert event.message_encoding == message_as
    assert event.message == {"room_id": ROOM, "job_id": JOB, "shoot_script_sequence_no": 3}


def test_numbers_as_strings_and_strings_as_numbers() -> None:
    event = decode(
        body_for(
            "SHOOT_SCRIPT_SWITCH",
            room_id=1234,
            job_id=5678,
            shoot_script_sequence_no="7",
            scene_script_name=12,
            shoot_script_title=1.5,
        )
    )
    assert (event.room_id, event.job_id) == ("1234", "5678")
    assert event.message == {
        "room_id": "1234",
        "job_id": "5678",
        "shoot_script_sequence_no": 7,
        "scene_script_name": "12",
        "shoot_script_title": "1.5",
    }


def test_unknown_type_is_kept_as_sent_with_its_fields() -> None:
    message = {
        "room_id": "r",
        "job_id": 42,
        "shoot_script_sequence_no": "not a number",
        "nested": {"a": [1, "2", None, True, 2.5]},
    }
    body = encode("NEW_VENDOR_EVENT", message, extra={"request_id": "abc"})
    event = decode(body)
    assert not event.known
    assert event.event_type == "NEW_VENDOR_EVENT"
    assert (event.room_id, event.job_id) == ("r", "42")
    assert event.message == message  # no conversion at all for unknown types
    assert event.extra == {"request_id": "abc"}


def test_unknown_type_needs_no_ids() -> None:
    event = decode(b'{"event_type":"PING","message":"{}"}')
    assert (event.room_id, event.job_id, event.message, event.known) == (None, None, {}, False)


def test_known_type_keeps_undocumented_fields_and_top_level_extra() -> None:
    body = orjson.dumps(
        {
            "event_type": "RTMP_STREAM_STATE_CHANGE",
            "message": orjson.dumps(
                {**BASE["RTMP_STREAM_STATE_CHANGE"], "bitrate": "3000"}
            ).decode(),
            "timestamp": 1732500000,
            "trace": {"id": [1, 2]},
        }
    )
    event = decode(body)
    assert event.message["bitrate"] == "3000"
    assert event.extra == {"timestamp": 1732500000, "trace": {"id": [1, 2]}}


def test_event_type_is_case_sensitive_and_kept_as_sent() -> None:
    event = decode(encode("shoot_script_switch", {"shoot_script_sequence_no": "x"}))
    assert event.event_type == "shoot_script_switch"
    assert not event.known
    assert event.message == {"shoot_script_sequence_no": "x"}


# --- Required fields -----------------------------------------------------------------------------

REQUIRED = [
    (event_type, field)
    for event_type, fields in {
        "SHOOT_SCRIPT_SWITCH": ["room_id", "job_id"],
        "RTMP_STREAM_STATE_CHANGE": ["room_id", "job_id", "state"],
        "REPLY_COMMAND_FINISH": ["room_id", "job_id", "reply_id"],
    }.items()
    for field in fields
]


@pytest.mark.parametrize(("event_type", "field"), REQUIRED)
@pytest.mark.parametrize(
    "value", [MISSING, None, "", "   "], ids=["absent", "null", "empty", "blank"]
)
def test_known_type_requires_field(event_type: str, field: str, value: object) -> None:
    message = refused(body_for(event_type, **{field: value}))
    assert f"message.{field} is required" in message


def test_every_known_type_has_its_required_fields_listed() -> None:
    assert {event_type for event_type, _ in REQUIRED} == KNOWN_EVENT_TYPES
    for event_type in KNOWN_EVENT_TYPES:  # and the base bodies used above are themselves valid
        assert decode(body_for(event_type)).known


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"message":"{}"}', "event_type is required"),
        (b'{"event_type":null,"message":"{}"}', "event_type is required"),
        (b'{"event_type":"","message":"{}"}', "event_type is required"),
        (b'{"event_type":"  ","message":"{}"}', "event_type is required"),
        (b'{"event_type":5,"message":"{}"}', "event_type is required"),
        (b'{"event_type":["X"],"message":"{}"}', "event_type is required"),
        (orjson.dumps({"event_type": "X" * 129, "message": "{}"}), "event_type is longer than"),
        (b'{"event_type":"X"}', "message is required"),
        (b'{"event_type":"X","message":null}', "message must be a JSON object"),
        (b'{"event_type":"X","message":5}', "message must be a JSON object"),
        (b'{"event_type":"X","message":[]}', "message must be a JSON object"),
        (b'{"event_type":"X","message":"null"}', "message is not a JSON object"),
        (b'{"event_type":"X","message":"[]"}', "message is not a JSON object"),
        (b'{"event_type":"X","message":"\\"{}\\""}', "message is not a JSON object"),
        (b'{"event_type":"X","message":""}', "message is not valid JSON"),
        (b'{"event_type":"X","message":"{oops"}', "message is not valid JSON"),
        (b"[]", "body is not a JSON object"),
        (b"nope", "body is not valid JSON: "),
        (b'{"event_type":"X\xff","message":{}}', "body is not valid JSON: not UTF-8"),
        (b'{"event_type":"X","message":{"a":1,"a":2}}', "duplicate key 'a'"),
        (b'{"event_type":"X","message":{"a":18446744073709551616}}', "does not fit in 64 bits"),
        (b'{"event_type":"X","message":' + b"[" * 65 + b"]" * 65 + b"}", "deeper than 64"),
    ],
)
def test_envelope_errors_say_what_is_wrong(body: bytes, expected: str) -> None:
    assert expected in refused(body)


def test_event_type_at_the_length_limit_is_accepted() -> None:
    assert decode(encode("X" * MAX_NAME_LENGTH, {})).event_type == "X" * MAX_NAME_LENGTH


# --- Conversions of documented fields ------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        (2, 2),
        ("2", 2),
        (" 2 ", 2),
        ("\t2\n", 2),
        ("-1", -1),
        ("+3", 3),
        ("007", 7),
        (0, 0),
        (2.0, 2),
        (-4.0, -4),
        (2**63 - 1, 2**63 - 1),
        (-(2**63), -(2**63)),
        ("9223372036854775807", 2**63 - 1),
        (None, None),
    ],
)
def test_sequence_no_accepted(sent: object, stored: int | None) -> None:
    event = decode(body_for("SHOOT_SCRIPT_SWITCH", shoot_script_sequence_no=sent))
    assert event.message["shoot_script_sequence_no"] == stored
    assert type(event.message["shoot_script_sequence_no"]) is type(stored)


def test_sequence_no_absent_stays_absent() -> None:
    event = decode(body_for("SHOOT_SCRIPT_SWITCH", shoot_script_sequence_no=MISSING))
    assert "shoot_script_sequence_no" not in event.message


@pytest.mark.parametrize(
    "sent",
    [
        "abc",
        "2.5",
        "",
        "   ",
        "1e3",
        "0x10",
        "2_000",
        "- 1",
        "\uff12",  # fullwidth 2: int() would take it, the vendor never sends it
        "\u0663",  # Arabic-Indic 3
        "5" * 5000,
        "9223372036854775808",
        2**63,
        2.5,
        1e300,
        True,
        False,
        [2],
        {"n": 2},
    ],
)
def test_sequence_no_refused(sent: object) -> None:
    message = refused(body_for("SHOOT_SCRIPT_SWITCH", shoot_script_sequence_no=sent))
    assert "message.shoot_script_sequence_no" in message


@pytest.mark.parametrize("field", ["scene_script_name", "shoot_script_title"])
@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("Product 1", "Product 1"),
        ("产品一", "产品一"),
        ("", ""),
        (5, "5"),
        (2.5, "2.5"),
        (None, None),
    ],
)
def test_script_text_accepted(field: str, sent: object, stored: str | None) -> None:
    assert decode(body_for("SHOOT_SCRIPT_SWITCH", **{field: sent})).message[field] == stored


@pytest.mark.parametrize("field", ["scene_script_name", "shoot_script_title"])
@pytest.mark.parametrize("sent", [True, [], ["a"], {}, {"a": 1}])
def test_script_text_refused(field: str, sent: object) -> None:
    assert f"message.{field} must be a string or a number" in refused(
        body_for("SHOOT_SCRIPT_SWITCH", **{field: sent})
    )


IDS_ACCEPTED = [
    ("abc", "abc"),
    (" padded ", " padded "),
    (123, "123"),
    (0, "0"),
    (-5, "-5"),
    (2**64 - 1, str(2**64 - 1)),
    ("a" * MAX_NAME_LENGTH, "a" * MAX_NAME_LENGTH),
]
IDS_REFUSED = [1.5, 1.0, True, False, [], ["a"], {}, {"id": "a"}, "a" * (MAX_NAME_LENGTH + 1)]


@pytest.mark.parametrize(("sent", "stored"), IDS_ACCEPTED)
@pytest.mark.parametrize("field", ["room_id", "job_id"])
def test_ids_accepted_for_every_event(field: str, sent: object, stored: str) -> None:
    known = decode(body_for("REPLY_COMMAND_FINISH", **{field: sent}))
    assert getattr(known, field) == known.message[field] == stored
    unknown = decode(encode("SOMETHING_NEW", {field: sent}))
    assert getattr(unknown, field) == stored
    assert unknown.message[field] == sent  # unknown types keep the message as sent


@pytest.mark.parametrize("sent", IDS_REFUSED)
@pytest.mark.parametrize("field", ["room_id", "job_id"])
def test_ids_of_wrong_type_refused_for_known_ignored_for_unknown(field: str, sent: object) -> None:
    assert f"message.{field}" in refused(body_for("SHOOT_SCRIPT_SWITCH", **{field: sent}))
    unknown = decode(encode("SOMETHING_NEW", {field: sent}))
    assert getattr(unknown, field) is None
    assert unknown.message[field] == sent


@pytest.mark.parametrize("sent", ["", "   ", None])
def test_blank_ids_of_unknown_types_are_none(sent: object) -> None:
    event = decode(encode("SOMETHING_NEW", {"room_id": sent, "job_id": sent}))
    assert (event.room_id, event.job_id) == (None, None)


@pytest.mark.parametrize(("sent", "stored"), [*IDS_ACCEPTED, (JOB, JOB)])
def test_reply_id_accepted(sent: object, stored: str) -> None:
    assert decode(body_for("REPLY_COMMAND_FINISH", reply_id=sent)).message["reply_id"] == stored


@pytest.mark.parametrize("sent", IDS_REFUSED)
def test_reply_id_refused(sent: object) -> None:
    assert "message.reply_id" in refused(body_for("REPLY_COMMAND_FINISH", reply_id=sent))


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("CONNECTED", "CONNECTED"),
        ("connected", "CONNECTED"),
        (" End ", "END"),
        ("reconnecting", "RECONNECTING"),
        ("PAUSED", "PAUSED"),  # not in RtmpState: vendors add states, the event is kept
    ],
)
def test_state_accepted(sent: str, stored: str) -> None:
    assert decode(body_for("RTMP_STREAM_STATE_CHANGE", state=sent)).message["state"] == stored


@pytest.mark.parametrize("sent", [1, True, [], {}, ["CONNECTED"], "X" * (MAX_NAME_LENGTH + 1)])
def test_state_refused(sent: object) -> None:
    assert "message.state" in refused(body_for("RTMP_STREAM_STATE_CHANGE", state=sent))


@pytest.mark.parametrize("field", ["output_url", "stream_key"])
@pytest.mark.parametrize("sent", ["rtmp://live.example.com/app", "", "xxxxx", None])
def test_rtmp_optional_strings_accepted(field: str, sent: str | None) -> None:
    assert decode(body_for("RTMP_STREAM_STATE_CHANGE", **{field: sent})).message[field] == sent


@pytest.mark.parametrize("field", ["output_url", "stream_key"])
@pytest.mark.parametrize("sent", [12345678, 1.5, True, [], {"k": "v"}])
def test_rtmp_optional_strings_refused(field: str, sent: object) -> None:
    assert f"message.{field} must be a string" in refused(
        body_for("RTMP_STREAM_STATE_CHANGE", **{field: sent})
    )


def test_refusal_never_echoes_a_stream_key() -> None:
    message = refused(body_for("RTMP_STREAM_STATE_CHANGE", stream_key=98765432123))
    assert "98765432123" not in message


def test_decoding_does_not_reorder_or_drop_fields() -> None:
    raw = {"zeta": 1, "room_id": ROOM, "alpha": 2, "job_id": JOB, "state": "end", "mid": None}
    event = decode(encode("RTMP_STREAM_STATE_CHANGE", raw))
    assert list(event.message) == list(raw)
    assert event.message == {**raw, "state": "END"}


# --- encode --------------------------------------------------------------------------------------


def test_encode_builds_the_documented_shape_compactly() -> None:
    body = encode("REPLY_COMMAND_FINISH", {"room_id": "r", "job_id": "j", "reply_id": "标识"})
    assert body == (
        b'{"event_type":"REPLY_COMMAND_FINISH",'
        b'"message":"{\\"room_id\\":\\"r\\",\\"job_id\\":\\"j\\",\\"reply_id\\":\\"'
        + "标识".encode()
        + b'\\"}"}'
    )


def test_encode_message_as_object_and_extra() -> None:
    body = encode("X", {"a": 1}, message_as="object", extra={"ts": 5})
    assert body == b'{"event_type":"X","message":{"a":1},"ts":5}'


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"message_as": "bytes"}, "message_as must be one of"),
        ({"extra": {"message": "x"}}, "extra must not contain 'message'"),
        ({"extra": {"event_type": "x"}}, "extra must not contain 'event_type'"),
    ],
)
def test_encode_refuses_bad_arguments(kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        encode("X", {}, **kwargs)


@pytest.mark.parametrize("body", [DOC_SHOOT_SCRIPT_SWITCH, DOC_RTMP_STREAM_STATE_CHANGE])
@pytest.mark.parametrize("message_as", ["string", "object"])
def test_encode_decode_round_trip(body: bytes, message_as: str) -> None:
    event = decode(body)
    again = decode(encode(event.event_type, event.message, message_as=message_as, extra={"x": 1}))
    assert again.message == event.message
    assert (again.event_type, again.room_id, again.job_id) == (
        event.event_type,
        event.room_id,
        event.job_id,
    )
    assert (again.message_encoding, again.extra) == (message_as, {"x": 1})


# --- Masking -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "masked"),
    [
        (None, None),
        ("", "****"),
        ("xxxxx", "****"),
        ("1234567", "****"),
        ("12345678", "****5678"),
        ("live-secret-key-abcd", "****abcd"),
    ],
)
def test_mask_stream_key(key: str | None, masked: str | None) -> None:
    assert mask_stream_key(key) == masked


def test_masked_message_masks_the_documented_rtmp_event_without_changing_it() -> None:
    event = decode(
        body_for("RTMP_STREAM_STATE_CHANGE", stream_key="sk-0123456789", output_url="rtmp://h/a")
    )
    masked = masked_message(event.event_type, event.message)
    assert masked == {**event.message, "stream_key": "****6789"}
    assert event.message["stream_key"] == "sk-0123456789"  # the original is untouched


def test_masked_message_masks_stream_key_in_any_event_and_at_any_depth() -> None:
    message: dict[str, Any] = {
        "stream_key": 12345678,
        "outputs": [{"stream_key": "abcdefgh-9999"}, {"stream_key": None}],
        "nested": {"deeper": {"stream_key": "short"}},
        "other": "kept",
    }
    assert masked_message("SOMETHING_NEW", message) == {
        "stream_key": "****",
        "outputs": [{"stream_key": "****9999"}, {"stream_key": None}],
        "nested": {"deeper": {"stream_key": "****"}},
        "other": "kept",
    }
    assert message["outputs"][0] == {"stream_key": "abcdefgh-9999"}


def test_masked_message_without_stream_key_is_an_equal_copy() -> None:
    message = {"room_id": ROOM, "job_id": JOB, "reply_id": "r"}
    masked = masked_message("REPLY_COMMAND_FINISH", message)
    assert masked == message
    assert masked is not message


# --- Garbage: DecodeError, every time, nothing else ----------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


VALID = b'{"event_type":"X","message":{}}'
GARBAGE: dict[str, bytes] = {
    "empty": b"",
    "whitespace": b" \n\t",
    "null": b"null",
    "true": b"true",
    "number": b"1",
    "string": b'"{}"',
    "array": b"[]",
    "array of object": b"[" + VALID + b"]",
    "open brace": b"{",
    "100000 open braces": b"{" * 100000,
    "100000 open brackets": b"[" * 100000,
    "close brace": b"}",
    "truncated": VALID[:-1],
    "trailing garbage": VALID + b"x",
    "two documents": VALID + VALID,
    "trailing NUL": VALID + b"\x00",
    "trailing comma": b'{"event_type":"X","message":{},}',
    "single quotes": b"{'event_type':'X','message':{}}",
    "comment": b'{"event_type":"X", /* c */ "message":{}}',
    "unquoted key": b'{event_type:"X","message":{}}',
    "raw control char": b'{"event_type":"X\x01","message":{}}',
    "invalid UTF-8": b'{"event_type":"X\xff","message":{}}',
    "invalid UTF-8 in message": b'{"event_type":"X","message":{"a":"\xc3\x28"}}',
    "overlong UTF-8": b'{"event_type":"\xc0\xaf","message":{}}',
    "UTF-8 encoded surrogate": b'{"event_type":"\xed\xa0\x80","message":{}}',
    "escaped lone surrogate": b'{"event_type":"\\ud800","message":{}}',
    "escaped lone surrogate in message": (
        b'{"event_type":"X","message":"{\\"a\\":\\"\\\\udc00\\"}"}'
    ),
    "Latin-1": '{"event_type":"é","message":{}}'.encode("latin-1"),
    "UTF-16": VALID.decode().encode("utf-16"),
    "UTF-8 BOM": b"\xef\xbb\xbf" + VALID,
    "BOM inside message text": orjson.dumps({"event_type": "X", "message": "\ufeff{}"}),
    "NaN": b'{"event_type":"X","message":{"a":NaN}}',
    "Infinity": b'{"event_type":"X","message":{"a":Infinity}}',
    "-Infinity in message text": b'{"event_type":"X","message":"{\\"a\\":-Infinity}"}',
    "huge float": b'{"event_type":"X","message":{"a":1e400}}',
    "huge integer": b'{"event_type":"X","message":{"a":' + b"9" * 400 + b"}}",
    "integer just past 64 bits": b'{"event_type":"X","message":{"a":18446744073709551616}}',
    "integer just below int64": b'{"event_type":"X","message":{"a":-9223372036854775809}}',
    "huge integer in message text": orjson.dumps(
        {"event_type": "X", "message": '{"a":' + "1" * 5000 + "}"}
    ),
    "duplicate event_type, same value": b'{"event_type":"X","event_type":"X","message":{}}',
    "duplicate event_type": b'{"event_type":"SHOOT_SCRIPT_SWITCH","event_type":"X","message":{}}',
    "duplicate message": b'{"event_type":"X","message":{},"message":"{}"}',
    "duplicate key in message text": orjson.dumps(
        {"event_type": "X", "message": '{"room_id":"a","room_id":"b"}'}
    ),
    "duplicate key deep inside": b'{"event_type":"X","message":{"a":[{"b":1,"b":1}]}}',
    "message nested too deep": orjson.dumps({"event_type": "X", "message": nested(MAX_DEPTH)}),
    "message text nested too deep": orjson.dumps(
        {"event_type": "X", "message": orjson.dumps(nested(MAX_DEPTH + 1)).decode()}
    ),
    "message text nested 1000 deep": orjson.dumps(
        {"event_type": "X", "message": '{"a":' * 1000 + "{}" + "}" * 1000}
    ),
    "body nested past orjson's limit": b'{"event_type":"X","message":'
    + b'{"a":' * 2000
    + b"{}"
    + b"}" * 2001,
    "list nested too deep": b'{"event_type":"X","message":{"a":' + b"[" * 200 + b"]" * 200 + b"}}",
    "no event_type": b'{"message":{}}',
    "no message": b'{"event_type":"X"}',
    "known type, empty message": b'{"event_type":"SHOOT_SCRIPT_SWITCH","message":"{}"}',
}


@pytest.mark.parametrize("body", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_is_a_decode_error(body: bytes) -> None:
    message = refused(body)
    assert message  # a reason, never an empty error


def test_nesting_up_to_the_limit_is_accepted() -> None:
    # The garbage cases above are refused for their depth, not for their shape.
    inner = orjson.dumps(nested(MAX_DEPTH)).decode()
    event = decode(orjson.dumps({"event_type": "X", "message": inner}))
    assert "a" in event.message


def test_integers_at_the_64_bit_edges_are_exact() -> None:
    event = decode(
        b'{"event_type":"X","message":{"u":18446744073709551615,"i":-9223372036854775808}}'
    )
    assert event.message == {"u": 2**64 - 1, "i": -(2**63)}


def test_non_ascii_and_escapes_survive() -> None:
    message = {"title": '段落 2 \u2028 \U0001f600 \\ "q" \n'}
    assert decode(encode("X", message)).message == message


# --- Properties ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["2", " 3 ", "-1", "2.5", "", "CONNECTED", "connected"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "room_id",
        "job_id",
        "state",
        "reply_id",
        "stream_key",
        "output_url",
        "scene_script_name",
        "shoot_script_sequence_no",
        "shoot_script_title",
    ]
) | st.text(max_size=8)
messages = st.dictionaries(field_names, json_values, max_size=8)
event_types = st.sampled_from(sorted(KNOWN_EVENT_TYPES)) | st.text(max_size=10)


def decode_or_refuse(body: bytes) -> Event | None:
    try:
        return decode(body)
    except DecodeError as exc:
        assert exc.message
        return None


def assert_round_trips(event: Event) -> None:
    again = decode(
        encode(
            event.event_type, event.message, message_as=event.message_encoding, extra=event.extra
        )
    )
    assert again == event


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_decode_error(body: bytes) -> None:
    event = decode_or_refuse(body)
    if event is not None:
        assert_round_trips(event)


@settings(max_examples=300)
@given(json_values)
def test_arbitrary_json_decodes_or_raises_decode_error(value: Any) -> None:
    event = decode_or_refuse(json.dumps(value).encode())
    if event is not None:  # only an object naming its event_type can be an event
        assert isinstance(value, dict)
        assert value["event_type"] == event.event_type
    wrapped = decode_or_refuse(json.dumps({"event_type": "X", "message": value}).encode())
    if wrapped is not None:  # only an object, or the JSON text of one, is a message
        assert wrapped.message == (json.loads(value) if isinstance(value, str) else value)
        assert isinstance(wrapped.message, dict)
        assert_round_trips(wrapped)


@settings(max_examples=400)
@given(
    event_types,
    messages,
    st.sampled_from(["string", "object"]),
    st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in ("event_type", "message")),
        json_values,
        max_size=3,
    ),
)
def test_plausible_bodies_decode_or_raise_and_round_trip(
    event_type: str, message: dict[str, Any], message_as: str, extra: dict[str, Any]
) -> None:
    sent = json.dumps(message) if message_as == "string" else message
    event = decode_or_refuse(
        json.dumps({"event_type": event_type, "message": sent, **extra}).encode()
    )
    if event is not None:
        assert event.event_type == event_type
        assert event.extra == extra
        assert event.message_encoding == message_as
        assert event.known == (event_type in KNOWN_EVENT_TYPES)
        if not event.known:
            assert event.message == message
        assert_round_trips(event)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=4), st.integers(min_value=0), st.booleans())
def test_corrupted_documented_bodies_decode_or_raise(chunk: bytes, at: int, replace: bool) -> None:
    for original in (
        DOC_SHOOT_SCRIPT_SWITCH,
        DOC_RTMP_STREAM_STATE_CHANGE,
        DOC_REPLY_COMMAND_FINISH,
    ):
        i = at % len(original)
        body = original[:i] + chunk + original[i + (len(chunk) if replace else 0) :]
        event = decode_or_refuse(body)
        if event is not None:
            assert_round_trips(event)


ids = st.text(min_size=1, max_size=MAX_NAME_LENGTH).filter(str.strip) | st.integers(
    min_value=0, max_value=2**64 - 1
)
valid_messages = st.one_of(
    st.fixed_dictionaries(
        {"room_id": ids, "job_id": ids},
        optional={
            "shoot_script_sequence_no": st.integers(-(2**63), 2**63 - 1)
            | st.integers(-(10**6), 10**6).map(str),
            "scene_script_name": st.text() | st.integers(-(2**63), 2**63 - 1),
            "shoot_script_title": st.text() | st.none(),
        },
    ).map(lambda m: ("SHOOT_SCRIPT_SWITCH", m)),
    st.fixed_dictionaries(
        {
            "room_id": ids,
            "job_id": ids,
            "state": st.sampled_from([s.value for s in RtmpState]) | st.sampled_from(["end", "X"]),
        },
        optional={"stream_key": st.text() | st.none(), "output_url": st.text()},
    ).map(lambda m: ("RTMP_STREAM_STATE_CHANGE", m)),
    st.fixed_dictionaries({"room_id": ids, "job_id": ids, "reply_id": ids}).map(
        lambda m: ("REPLY_COMMAND_FINISH", m)
    ),
)


@settings(max_examples=300)
@given(valid_messages, st.sampled_from(["string", "object"]))
def test_encode_of_valid_messages_round_trips(
    typed_message: tuple[str, dict[str, Any]], message_as: str
) -> None:
    event_type, message = typed_message
    event = decode(encode(event_type, message, message_as=message_as))
    assert event.known
    assert event.room_id == str(message["room_id"])
    assert event.job_id == str(message["job_id"])
    assert event.message.keys() == message.keys()
    if "shoot_script_sequence_no" in message:
        assert event.message["shoot_script_sequence_no"] == int(message["shoot_script_sequence_no"])
    if "state" in message:
        assert event.message["state"] == message["state"].upper()
    if "reply_id" in message:
        assert event.message["reply_id"] == str(message["reply_id"])
    assert_round_trips(event)


# --- The round-trip gate of _parse_object: compact JSON skips the second pass only when safe ---

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(message=st.dictionaries(st.text(max_size=4), _json_values, max_size=5))
def test_compact_bodies_decode_as_the_strict_reading_says(message: dict[str, Any]) -> None:
    """Whatever the fast path takes, the strict reading agrees with: the same value, or a
    refusal for integers that do not fit 64 bits (which the strict pass alone finds)."""
    body = json.dumps(
        {"event_type": "X", "message": message}, separators=(",", ":"), ensure_ascii=False
    ).encode()
    fits = all(-(2**63) <= v <= 2**64 - 1 for v in _ints(message))
    if fits:
        assert decode(body).message == json.loads(body)["message"]
    else:
        with pytest.raises(DecodeError):
            decode(body)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    message=st.dictionaries(st.text(min_size=1, max_size=4), st.integers(0, 9), min_size=1),
    data=st.data(),
)
def test_a_repeated_key_in_compact_text_is_always_refused(
    message: dict[str, int], data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(sorted(message)))
    inner = orjson.dumps(message).decode()
    repeated = inner[:-1] + "," + orjson.dumps(key).decode() + ":0}"
    for body in (
        orjson.dumps({"event_type": "X", "message": repeated}),
        b'{"event_type":"X","message":' + repeated.encode() + b"}",
    ):
        with pytest.raises(DecodeError, match="duplicate key"):
            decode(body)


def _ints(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, dict):
        return [i for v in value.values() for i in _ints(v)]
    if isinstance(value, list):
        return [i for v in value for i in _ints(v)]
    return []

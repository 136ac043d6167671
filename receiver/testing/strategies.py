"""Hypothesis strategies for what a callback sender can put on the wire: bodies, query strings,
header fields.

Shared by the project's property tests and ``bench/fuzz.py``, and usable in a receiver user's own
tests. Needs ``hypothesis`` (a test dependency, not a runtime one): import this module only from
tests.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from hypothesis import strategies as st

from receiver.protocol.events import KNOWN_EVENT_TYPES
from receiver.protocol.signing import SECRET_HEADER, TIME_HEADER

KNOWN_TYPES = sorted(KNOWN_EVENT_TYPES)
no_surrogates = st.characters(exclude_categories=["Cs"])

# --- Bodies --------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
# What every store keeps as given: 64-bit integers, no lone surrogates.
storable_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(no_surrogates, max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(no_surrogates, max_size=8), inner, max_size=4),
    ),
    max_leaves=16,
)
# MetaStudio's own spellings of one id (32 hex digits in callbacks, dashed in its job query API,
# receiver.protocol.ids), in either case, beside any other text and numbers.
metastudio_ids = st.uuids().flatmap(
    lambda u: st.sampled_from([u.hex, str(u), u.hex.upper(), str(u).upper()])
)
valid_ids = st.one_of(
    metastudio_ids,
    st.text(no_surrogates, min_size=1, max_size=40).filter(lambda t: t.strip(" \t\r\n")),
    st.integers(min_value=0, max_value=2**63 - 1),
)


def loose_ids(ids: st.SearchStrategy[Any] = valid_ids) -> st.SearchStrategy[Any]:
    """``ids``, plus what an id field should not hold."""
    return st.one_of(ids, st.text(max_size=40), st.sampled_from(["", " ", "x" * 129]), json_values)


def dumps(value: Any, ascii_only: bool) -> bytes:
    # surrogatepass: lone surrogates become bytes that are not UTF-8, as a broken sender's would.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def valid_event_bodies(draw: st.DrawFn, ids: st.SearchStrategy[Any] = valid_ids) -> bytes:
    """Bodies that decode: every documented field of the right type, unknown fields around."""
    event_type = draw(st.sampled_from([*KNOWN_TYPES, "CUSTOM_EVENT"]))
    message: dict[str, Any] = {"room_id": draw(ids), "job_id": draw(ids)}
    if event_type == "SHOOT_SCRIPT_SWITCH":
        number = st.integers(min_value=-(2**63), max_value=2**63 - 1)
        message["shoot_script_sequence_no"] = draw(number | number.map(str))
        message["shoot_script_title"] = draw(st.text(no_surrogates, max_size=30))
    elif event_type == "RTMP_STREAM_STATE_CHANGE":
        states = ["CONNECTING", "CONNECTED", "DISCONNECTED", "RECONNECTING", "END", "paused"]
        message["state"] = draw(st.sampled_from(states))
        message["stream_key"] = draw(st.text(no_surrogates, max_size=30))
    elif event_type == "REPLY_COMMAND_FINISH":
        message["reply_id"] = draw(ids)
    for key, value in draw(
        st.dictionaries(st.text(no_surrogates, max_size=8), storable_values, max_size=3)
    ).items():
        message.setdefault(key, value)
    inner: Any = message
    if draw(st.booleans()):
        inner = json.dumps(message, ensure_ascii=draw(st.booleans()))
    document: dict[str, Any] = {"event_type": event_type, "message": inner}
    for key, value in draw(
        st.dictionaries(st.text(no_surrogates, max_size=8), storable_values, max_size=2)
    ).items():
        document.setdefault(key, value)
    return json.dumps(document, ensure_ascii=draw(st.booleans())).encode("utf-8")


@st.composite
def event_bodies(draw: st.DrawFn, ids: st.SearchStrategy[Any] | None = None) -> bytes:
    """Bodies shaped like MetaStudio's, right or subtly wrong."""
    any_ids = ids if ids is not None else loose_ids()
    event_type = draw(st.one_of(st.sampled_from(KNOWN_TYPES), st.text(max_size=140), json_values))
    message = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "room_id": any_ids,
                "job_id": any_ids,
                "state": st.one_of(
                    st.sampled_from(["CONNECTING", "connected", " END ", "NEW"]), json_values
                ),
                "shoot_script_sequence_no": st.one_of(
                    st.integers(min_value=-(2**65), max_value=2**65),
                    st.from_regex(r"\A[ +-]?[0-9]{1,40} ?\Z"),
                    json_values,
                ),
                "shoot_script_title": json_values,
                "reply_id": any_ids,
                "stream_key": json_values,
                "output_url": json_values,
            },
        )
        | st.dictionaries(st.text(max_size=10), json_values, max_size=5)
    )
    inner: Any = message
    how = draw(st.sampled_from(["string", "object", "other"]))
    if how == "string":
        inner = dumps(message, draw(st.booleans())).decode("utf-8", "surrogatepass")
    elif how == "other":
        inner = draw(json_values)
    document: dict[str, Any] = {"event_type": event_type, "message": inner}
    document.update(draw(st.dictionaries(st.text(max_size=10), json_values, max_size=3)))
    if draw(st.booleans()):
        document.pop(draw(st.sampled_from(["event_type", "message"])), None)
    return dumps(document, draw(st.booleans()))


@st.composite
def deep_bodies(draw: st.DrawFn, max_depth: int = 600) -> bytes:
    """JSON nested up to ``max_depth`` levels: in the body, inside the message string, or never
    closed."""
    depth = draw(st.integers(min_value=1, max_value=max_depth))
    kind = draw(st.sampled_from(["list", "object", "in-message-string", "unbalanced"]))
    if kind == "list":
        nested = b"[" * depth + b"]" * depth
    elif kind == "object":
        nested = b'{"a":' * depth + b"1" + b"}" * depth
    elif kind == "in-message-string":
        inner = '{"a":' * depth + "1" + "}" * depth
        return dumps({"event_type": "X", "message": inner}, True)
    else:
        nested = b"[" * depth
    return b'{"event_type":"X","message":{"deep":' + nested + b"}}"


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    """A body of the strategies above with a few bytes flipped, cut or inserted."""
    body = bytearray(draw(st.one_of(valid_event_bodies(), event_bodies())))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if not body:
            break
        index = draw(st.integers(min_value=0, max_value=len(body) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            body[index] ^= draw(st.integers(min_value=1, max_value=255))
        elif action == "cut":
            del body[index:]
        else:
            body[index:index] = draw(st.binary(min_size=1, max_size=4))
    return bytes(body)


# --- Query strings -------------------------------------------------------------------------------


query_names = st.one_of(
    st.sampled_from(["hwSecret", "hwTime", "hwsecret", "tenant", "a", "b", "v", "token", ""]),
    st.text(no_surrogates, max_size=12),
)


def query_values(values: Sequence[str] = ()) -> st.SearchStrategy[str]:
    """Parameter values: text, hex like a signature or time, and ``values`` (e.g. near-misses
    of a URL credential)."""
    return st.one_of(
        st.text(no_surrogates, max_size=20),
        st.text("0123456789abcdefABCDEF", min_size=1, max_size=70),
        st.sampled_from(["acme", "1", "2", "66df9308", "", *values]),
    )


def arbitrary_queries(values: Sequence[str] = ()) -> st.SearchStrategy[str]:
    """Query strings: empty, raw text percent-encoded loosely, or name=value pairs that use the
    signature's parameter names."""
    raw = st.text(no_surrogates, max_size=80).map(
        lambda text: quote(text, safe="=&%+;,/?:@!$'()*[]")
    )
    encoded = st.lists(st.tuples(query_names, query_values(values)), max_size=6).map(urlencode)
    return st.one_of(st.just(""), raw, encoded)


# --- Header fields -------------------------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
# Fields that frame the message: the HTTP client sets them, a generated one would garble it.
FRAMING = {"host", "content-length", "transfer-encoding", "connection", "expect", "te", "upgrade"}
header_names = st.one_of(
    st.sampled_from(
        [
            SECRET_HEADER,
            TIME_HEADER,
            "X-HW-MSS-Secret",
            "X-Hw-Mss-Time",
            "content-type",
            "Content-Encoding",
            "user-agent",
            "x-request-id",
            "X-Forwarded-For",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-real-ip",
            "forwarded",
            "authorization",
            "cookie",
            "x-receiver-replay",
            "accept-encoding",
        ]
    ),
    st.text(TOKEN_CHARS, min_size=1, max_size=24),
).filter(lambda name: name.lower() not in FRAMING)
# RFC 9110 field values: visible ASCII, obs-text (0x80-0xFF), and inner spaces and tabs.
VALUE_CHARS = "\t" + "".join(map(chr, range(0x20, 0x7F))) + "".join(map(chr, range(0x80, 0x100)))
header_values = st.one_of(
    st.text(VALUE_CHARS, max_size=80),
    st.text("0123456789abcdef", min_size=1, max_size=70),
    st.just("x" * 700),
).map(lambda text: text.strip(" \t").encode("latin-1"))
arbitrary_headers = st.lists(st.tuples(header_names, header_values), max_size=6)

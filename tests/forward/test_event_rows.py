"""The forwarder builds each event's message from the driver's raw row (its hot path,
receiver.forward.event_rows): the same JSON, field for field, as ``GET /v1/events/{id}``, on
both stores, whatever the event holds."""

from __future__ import annotations

import json
from typing import Any

from conftest import KEY, REGISTERED, endpoint_table
from forwarding_world import AUTH

from receiver.config import DestinationSettings
from receiver.forward import event_rows
from receiver.store.writer import create_engine_for
from receiver.testing import build_callback, deliver

ODD = 'quote " backslash \\ tab \t newline \n emoji \U0001f600 cjk 直播'


def bodies() -> list[tuple[str, dict[str, Any], str]]:
    return [
        (
            "SHOOT_SCRIPT_SWITCH",
            {
                "room_id": "r1",
                "job_id": "j1",
                "shoot_script_sequence_no": "2",
                "shoot_script_title": ODD,
            },
            "string",
        ),
        (
            "RTMP_STREAM_STATE_CHANGE",
            {
                "room_id": "r1",
                "job_id": "j1",
                "state": "CONNECTED",
                "stream_key": "live-key-secret-9876",
                "nested": {"stream_key": "deep-secret-5555"},
            },
            "object",
        ),
        ("ROOM_ONLY", {"room_id": "r1", "reply_id": "x"}, "string"),
        (
            "SOMETHING_NEW",
            {"room_id": ODD, "job_id": "j\u00e9", "anything": [1, 2.5, None, True]},
            "string",
        ),
        ("RTMP_STREAM_STATE_CHANGE", {"room_id": "r2", "job_id": "j2", "state": "END"}, "string"),
        # Stream keys in every shape: escaped characters, not a string, short, in a list, and
        # the words "stream_key" inside another value.
        (
            "RTMP_STREAM_STATE_CHANGE",
            {
                "room_id": "r3",
                "job_id": "j3",
                "state": "CONNECTING",
                "stream_key": 'quote"in-the-key-4321',
                "list": [{"stream_key": 12345678}, {"stream_key": "short"}],
                "title": '{"stream_key":"not-a-key-0000"}',
                "none": {"stream_key": None},
            },
            "string",
        ),
    ]


def test_the_message_is_the_apis_event(app_client: Any, migrated_url: str) -> None:
    client = app_client(endpoint_table())
    ids = []
    for event_type, message, encoding in bodies():
        callback = build_callback(
            event_type=event_type,
            message=message,
            registered_url=REGISTERED,
            key=KEY,
            message_as=encoding,
            extra_headers=None,
        )
        answer = deliver(callback, client=client)
        assert answer.stored, answer
        ids.append(answer.json["event_id"])
    everything = DestinationSettings(name="d", kind="redis", url="redis://h")
    engine = create_engine_for(migrated_url, pool_size=1)
    try:
        with engine.connect() as conn:
            read = event_rows.after(conn, everything, after=0, head=ids[-1], limit=100)
            by_id = event_rows.by_ids(conn, list(reversed(ids)))
            only_rtmp = event_rows.after(
                conn,
                DestinationSettings(
                    name="d",
                    kind="redis",
                    url="redis://h",
                    event_types=frozenset({"RTMP_STREAM_STATE_CHANGE"}),
                    endpoints=frozenset({"shop-a"}),
                ),
                after=0,
                head=ids[-1],
                limit=100,
            )
    finally:
        engine.dispose()
    assert [m.source_id for m in read] == ids
    assert [m.source_id for m in only_rtmp] == [ids[1], ids[4], ids[5]]
    for message in read:
        event = client.get(f"/v1/events/{message.source_id}", headers=AUTH).json()
        payload = json.loads(message.body)
        assert payload == {
            "type": f"metastudio.{event['event_type']}",
            "timestamp": event["received_at"],
            "data": event,
        }
        assert by_id[message.source_id].body == message.body  # the same bytes every time
        assert message.id == f"evt_{message.source_id}"
        assert message.type == payload["type"]
    text = b"".join(m.body for m in read)
    assert b"live-key-secret" not in text and b"deep-secret" not in text
    assert b"quote" not in read[5].body and b"12345678" not in read[5].body
    shapes = json.loads(read[5].body)["data"]["message"]
    assert (
        shapes["stream_key"] == "****4321" and shapes["title"] == '{"stream_key":"not-a-key-0000"}'
    )
    assert shapes["list"] == [{"stream_key": "****"}, {"stream_key": "****"}]
    assert json.loads(read[1].body)["data"]["message"]["nested"]["stream_key"] == "****5555"
    assert read[0].order_key == read[1].order_key == "job:j1"
    assert read[2].order_key == "room:r1"

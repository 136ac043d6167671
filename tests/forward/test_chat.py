"""Findings as chat messages (receiver.forward.chat), each in the shape its service documents,
and each service's way of saying it refused: checked here without the services (none is
reachable from this machine), then end to end against a local sink posing as one."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from forwarding_world import AUTH, destinations, send, wait_until

from receiver.crosscheck.rules import Draft
from receiver.crosscheck.run_store import upsert_findings
from receiver.forward.chat import judge, render
from receiver.forward.messages import Message
from receiver.forward.transport import DELIVERED, FAILED, REFUSED
from receiver.store.writer import create_engine_for
from receiver.testing import WebhookSink

FINDING_TIME = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
TEXT_OF = {
    "slack": lambda p: p["text"],
    "feishu": lambda p: p["content"]["text"],
    "dingtalk": lambda p: p["text"]["content"],
    "wecom": lambda p: p["text"]["content"],
}
FINDING = Message(
    id="fnd_7",
    type="finding.opened",
    body=b"{}",
    order_key="finding:3",
    source="finding",
    source_id=7,
    stored_at=0.0,
    data={
        "id": 3,
        "kind": "stream_down",
        "room_id": "room-9",
        "job_id": "job-9",
        "detail": "the RTMP stream of job job-9 is DISCONNECTED since 2026-12-06T08:00:00Z",
        "first_seen_at": "2026-12-06T08:00:31Z",
        "resolved_at": None,
    },
)


@pytest.mark.parametrize(
    ("fmt", "documented"),
    [
        # Slack, "Incoming webhooks" (docs.slack.dev): curl -X POST -H 'Content-type:
        # application/json' -d '{"text":"Hello, World!"}' https://hooks.slack.com/services/...
        ("slack", lambda text: {"text": text}),
        # Feishu, custom bot guide: {"msg_type": "text", "content": {"text": "..."}}
        ("feishu", lambda text: {"msg_type": "text", "content": {"text": text}}),
        # DingTalk, dingtalk.oapi.robot.send (custom robot): msgtype "text" (required),
        # text.content the message.
        ("dingtalk", lambda text: {"msgtype": "text", "text": {"content": text}}),
        # WeCom group robot: {"msgtype": "text", "text": {"content": "..."}}, content at most
        # 2048 bytes.
        ("wecom", lambda text: {"msgtype": "text", "text": {"content": text}}),
    ],
)
def test_each_format_is_its_services_shape(fmt: str, documented: Any) -> None:
    payload = json.loads(render(fmt, FINDING, public_url="https://hooks.example.com"))
    text = TEXT_OF[fmt](payload)
    assert payload == documented(text)
    assert text.splitlines() == [
        "[MetaStudio] stream_down opened",
        "room room-9, job job-9",
        "the RTMP stream of job job-9 is DISCONNECTED since 2026-12-06T08:00:00Z",
        "since 2026-12-06T08:00:31Z",
        "https://hooks.example.com/ui/jobs/job-9",
    ]


def test_a_long_alert_fits_wecoms_limit() -> None:
    long = FINDING._replace(data={**(FINDING.data or {}), "detail": "直播" * 2000})
    content = json.loads(render("wecom", long))["text"]["content"]
    assert len(content.encode()) <= 2048


@pytest.mark.parametrize(
    ("fmt", "answer", "kind", "error"),
    [
        ("slack", b"ok", DELIVERED, None),
        ("feishu", b'{"code":0,"msg":"success","data":{}}', DELIVERED, None),
        ("feishu", b'{"StatusCode":0,"StatusMessage":"success"}', DELIVERED, None),
        (
            "feishu",
            b'{"code":19001,"msg":"param invalid: incoming webhook access token invalid"}',
            REFUSED,
            "feishu error 19001",
        ),
        ("feishu", b'{"code":11232,"msg":"frequency limited"}', FAILED, "feishu error 11232"),
        ("dingtalk", b'{"errcode":0,"errmsg":"ok"}', DELIVERED, None),
        (
            "dingtalk",
            b'{"errcode":310000,"errmsg":"keywords not in content"}',
            REFUSED,
            "dingtalk error 310000",
        ),
        (
            "dingtalk",
            b'{"errcode":130101,"errmsg":"send too fast"}',
            FAILED,
            "dingtalk error 130101",
        ),
        ("wecom", b'{"errcode":0,"errmsg":"ok"}', DELIVERED, None),
        (
            "wecom",
            b'{"errcode":93000,"errmsg":"invalid webhook url"}',
            REFUSED,
            "wecom error 93000",
        ),
        (
            "wecom",
            b'{"errcode":45009,"errmsg":"api freq out of limit"}',
            FAILED,
            "wecom error 45009",
        ),
        (
            "wecom",
            b"<html>proxy error</html>",
            REFUSED,
            "wecom answered 2xx without its JSON result",
        ),
    ],
)
def test_what_a_2xx_answer_means(fmt: str, answer: bytes, kind: str, error: str | None) -> None:
    got_kind, got_error = judge(fmt, answer)
    assert got_kind == kind
    assert (got_error or "").startswith(error or "")


def test_a_chat_destination_refusing_is_a_visible_attempt_failure(
    forwarding_app: Any, migrated_url: str
) -> None:
    with WebhookSink() as chat:
        chat.answer(200, times=50, body=b'{"errcode":93000,"errmsg":"invalid webhook url"}')
        client = forwarding_app(
            {
                "name": "ops",
                "kind": "http",
                "url": chat.url,
                "format": "wecom",
                "retry_seconds": [0.1],
            },
            public_url="https://hooks.example.com",
        )
        send(client, "job-a", 1)  # events never go to a chat destination
        engine = create_engine_for(migrated_url, pool_size=1)
        try:
            with engine.begin() as conn:
                upsert_findings(
                    conn, [Draft("stream_down", "room-1", "job-a", "down")], FINDING_TIME
                )
        finally:
            engine.dispose()
        wait_until(
            lambda: destinations(client)["ops"]["dead_letters"] == 1, timeout=10, what="dead"
        )
        attempts = client.get("/v1/destinations/ops/attempts", headers=AUTH).json()["attempts"]
        assert attempts[0]["outcome"] == "dead_lettered"
        assert any(
            a["outcome"] == "refused" and "wecom error 93000" in a["error"] for a in attempts
        )
        received = chat.snapshot()
        assert received and all(b"stream_down" in r.body for r in received)
        assert "job-a" in json.loads(received[0].body)["text"]["content"]

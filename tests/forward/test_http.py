"""Forwarding to an ``http`` destination (a real HTTP server on loopback that fails on command),
on SQLite and PostgreSQL: what is sent, how it is signed, and what each failure does."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import time
from typing import Any

import pytest
from forwarding_world import (
    AUTH,
    OLD_SECRET,
    SECRET,
    destinations,
    first_seen_order,
    http_destination,
    send,
    wait_until,
)

from receiver.testing import WebhookSink, WebhookVerificationFailed, verify_webhook


def independent_verify(body: bytes, headers: dict[str, str], secret: str) -> bool:
    """The Standard Webhooks scheme, written out from the specification (not the project's or
    the signing library's code): HMAC-SHA256 over "id.timestamp.body", base64, "v1," prefix."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = headers["webhook-id"].encode() + b"." + headers["webhook-timestamp"].encode()
    mac = hmac.new(key, signed + b"." + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    return expected in headers["webhook-signature"].split(" ")


def test_every_event_is_posted_signed_with_each_secret(
    forwarding_app: Any, sink: WebhookSink
) -> None:
    client = forwarding_app(http_destination(sink.url))
    ids = [
        send(client, "job-a", n, event_type=t)
        for n, t in enumerate(
            ["SHOOT_SCRIPT_SWITCH", "RTMP_STREAM_STATE_CHANGE", "REPLY_COMMAND_FINISH"]
        )
    ]
    sink.wait_for(lambda s: len(s.delivered()) >= 3, timeout=10)
    got = sink.delivered()
    assert [r.message_id for r in got] == [f"evt_{i}" for i in ids]
    for received in got:
        headers = received.headers
        assert headers["content-type"] == "application/json"
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30
        # One signature per secret, each verifying on its own: a rotation in progress.
        assert len(headers["webhook-signature"].split(" ")) == 2
        assert independent_verify(received.body, headers, SECRET)
        assert independent_verify(received.body, headers, OLD_SECRET)
        assert verify_webhook(received.body, headers, [OLD_SECRET])["type"].startswith(
            "metastudio."
        )
    message = verify_webhook(got[1].body, got[1].headers, SECRET)
    event = client.get(f"/v1/events/{ids[1]}", headers=AUTH).json()
    assert message == {
        "type": "metastudio.RTMP_STREAM_STATE_CHANGE",
        "timestamp": event["received_at"],
        "data": event,
    }
    # The stream key is masked in the message as in the API.
    assert "secret-stream-key" not in got[1].body.decode()
    assert message["data"]["message"]["stream_key"] == "****0001"


def test_verify_webhook_refuses_what_it_should() -> None:
    body, now = b'{"type": "x"}', 1_700_000_000
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signature = base64.b64encode(
        hmac.new(key, b"evt_1.1700000000." + body, hashlib.sha256).digest()
    )
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(now),
        "webhook-signature": "v1," + signature.decode(),
    }
    assert verify_webhook(body, headers, SECRET, now=now) == {"type": "x"}
    for broken, why in [
        ({**headers, "webhook-id": "evt_2"}, "no signature"),
        ({**headers, "webhook-signature": "v1,AAAA"}, "no signature"),
        ({**headers, "webhook-timestamp": "12x"}, "whole seconds"),
        ({k: v for k, v in headers.items() if k != "webhook-id"}, "missing"),
    ]:
        with pytest.raises(WebhookVerificationFailed, match=why):
            verify_webhook(body, broken, SECRET, now=now)
    with pytest.raises(WebhookVerificationFailed, match="from now"):
        verify_webhook(body, headers, SECRET, now=now + 301)
    with pytest.raises(WebhookVerificationFailed, match="no signature"):
        verify_webhook(body + b" ", headers, SECRET, now=now)
    with pytest.raises(WebhookVerificationFailed, match="no signature"):
        verify_webhook(body, headers, OLD_SECRET, now=now)


def test_order_per_job_under_concurrency_and_failures(
    forwarding_app: Any, sink: WebhookSink
) -> None:
    """Six jobs interleaved, answers slow and sometimes 503: each job's events arrive in the
    order they were stored, every one of them, whatever the others do."""
    client = forwarding_app(http_destination(sink.url, max_in_flight=4, retry_seconds=[0.05]))
    rand = random.Random(7)
    stored: dict[str, list[int]] = {}
    for n in range(120):
        job = f"job-{rand.randrange(6)}"
        if n % 17 == 0:
            sink.answer(503, times=2)
        stored.setdefault(job, []).append(send(client, job, n))
    every = {i for ids in stored.values() for i in ids}
    sink.wait_for(lambda s: {int(i[4:]) for i in s.delivered_ids()} >= every, timeout=30)
    by_job: dict[str, list[str]] = {}
    for received in sink.delivered():
        job = received.body.split(b'"job_id":"')[1].split(b'"')[0].decode()
        by_job.setdefault(job, []).append(received.message_id)
    for job, ids in stored.items():
        assert first_seen_order(by_job[job]) == ids, job
    assert any(r.status == 503 for r in sink.snapshot())


def test_5xx_and_time_outs_keep_the_place_and_retry(forwarding_app: Any, sink: WebhookSink) -> None:
    client = forwarding_app(http_destination(sink.url, timeout_seconds=0.3, retry_seconds=[0.2]))
    sink.answer(500, times=2)
    first = send(client, "job-a", 1)
    wait_until(lambda: len(sink.snapshot()) >= 1, timeout=5, what="a first attempt")
    # The sink has answered; the forwarder records the outcome a moment later.
    wait_until(
        lambda: destinations(client)["app"]["state"] == "retrying", timeout=5, what="retrying"
    )
    view = destinations(client)["app"]
    assert view["state"] == "retrying" and "HTTP 500" in view["last_error"]
    sink.delay = 0.6  # longer than the time-out
    wait_until(
        lambda: "no answer within 0.3 s" in (destinations(client)["app"]["last_error"] or ""),
        timeout=10,
        what="a time-out recorded",
    )
    sink.delay = 0
    second = send(client, "job-a", 2)
    sink.wait_for(lambda s: s.delivered_ids()[-2:] == [f"evt_{first}", f"evt_{second}"], timeout=10)
    wait_until(
        lambda: destinations(client)["app"]["lag_events"] == 0, timeout=5, what="both recorded"
    )
    view = destinations(client)["app"]
    assert view["state"] == "active" and view["failures"] == 0 and view["last_delivered_at"]


def test_429_retry_after_is_honoured(forwarding_app: Any, sink: WebhookSink) -> None:
    client = forwarding_app(http_destination(sink.url, retry_seconds=[0.1]))
    sink.answer(429, headers={"retry-after": "2"})
    send(client, "job-a", 1)
    sink.wait_for(lambda s: len(s.delivered()) == 1, timeout=10)
    attempts = sink.snapshot()
    assert [r.status for r in attempts] == [429, 200]
    # The schedule says 0.1 s; the destination asked for 2.
    assert attempts[1].at - attempts[0].at >= 1.9


def test_connection_refused_then_back(forwarding_app: Any, sink: WebhookSink) -> None:
    client = forwarding_app(http_destination(sink.url, retry_seconds=[0.2]))
    sink.stop()
    ids = [send(client, "job-a", n) for n in range(5)]
    wait_until(
        lambda: destinations(client)["app"]["state"] == "retrying", timeout=5, what="retrying"
    )
    view = destinations(client)["app"]
    assert view["lag_events"] == 5 and "Cannot connect" in view["last_error"]
    sink.start()
    sink.wait_for(lambda s: s.delivered_ids() == [f"evt_{i}" for i in ids], timeout=10)


def test_a_poison_message_is_dead_lettered_and_the_rest_flows(
    forwarding_app: Any, sink: WebhookSink
) -> None:
    client = forwarding_app(http_destination(sink.url, retry_seconds=[0.1, 0.1]))
    # Down while the three are stored, so that the poison message is refused from its first
    # attempt on (its id is known only once it is stored, and the forwarder sends at once).
    sink.stop()
    poison = send(client, "job-a", 1)
    behind = send(client, "job-a", 2)  # same job: waits for the poison message's fate
    other = send(client, "job-b", 3)  # another job: flows at once
    sink.refuse(f"evt_{poison}", 422)
    sink.start()
    sink.wait_for(lambda s: f"evt_{other}" in s.delivered_ids(), timeout=10)
    sink.wait_for(lambda s: f"evt_{behind}" in s.delivered_ids(), timeout=10)
    refusals = [r for r in sink.snapshot() if r.message_id == f"evt_{poison}"]
    assert len(refusals) == 3  # the first attempt and one after each step of the schedule
    assert sink.delivered_ids().index(f"evt_{behind}") > sink.delivered_ids().index(f"evt_{other}")
    # The sink has answered; the forwarder records the outcome a moment later.
    wait_until(lambda: destinations(client)["app"]["parked"] == 0, timeout=5, what="unparked")
    view = destinations(client)["app"]
    assert view["dead_letters"] == 1 and view["parked"] == 0 and view["state"] == "active"
    dead = client.get("/v1/destinations/app/messages", headers=AUTH).json()["messages"]
    assert [(m["message_id"], m["attempts"]) for m in dead] == [(f"evt_{poison}", 3)]
    # Resent by hand once the consumer is fixed: the same id again.
    sink.accept(f"evt_{poison}")
    answer = client.post("/v1/destinations/app/resend", json={"dead_letters": True}, headers=AUTH)
    assert answer.json() == {"queued": 1, "skipped": 0}
    sink.wait_for(lambda s: f"evt_{poison}" in s.delivered_ids(), timeout=10)
    wait_until(lambda: destinations(client)["app"]["dead_letters"] == 0, timeout=5, what="resent")


def test_410_disables_keeping_the_place_until_enabled(
    forwarding_app: Any, sink: WebhookSink
) -> None:
    client = forwarding_app(http_destination(sink.url))
    sink.answer(410)
    first = send(client, "job-a", 1)
    wait_until(lambda: destinations(client)["app"]["state"] == "disabled", timeout=5, what="off")
    second = send(client, "job-a", 2)
    time.sleep(0.5)
    assert len(sink.snapshot()) == 1  # nothing more is sent while disabled
    view = destinations(client)["app"]
    assert "410" in view["disabled_reason"] and view["lag_events"] == 2
    answer = client.post("/v1/destinations/app/enable", headers=AUTH)
    assert answer.status_code == 200 and answer.json()["state"] == "active"
    sink.wait_for(lambda s: s.delivered_ids() == [f"evt_{first}", f"evt_{second}"], timeout=10)


def test_disable_after_hours_of_failure(forwarding_app: Any, sink: WebhookSink) -> None:
    client = forwarding_app(
        http_destination(sink.url, retry_seconds=[0.1], disable_after_hours=0.0003)
    )
    sink.stop()  # 0.0003 h is about a second
    send(client, "job-a", 1)
    wait_until(lambda: destinations(client)["app"]["state"] == "disabled", timeout=10, what="off")
    assert "no success for 0.0003 hours" in destinations(client)["app"]["disabled_reason"]


def test_redirects_are_not_followed(forwarding_app: Any, sink: WebhookSink) -> None:
    client = forwarding_app(http_destination(sink.url))
    sink.answer(302, headers={"location": "http://elsewhere.example/?token=abcdefgh"}, times=100)
    send(client, "job-a", 1)
    wait_until(
        lambda: destinations(client)["app"]["state"] == "retrying", timeout=5, what="retrying"
    )
    error = destinations(client)["app"]["last_error"]
    assert "redirects are not followed" in error and "abcdefgh" not in error
    assert all(r.path == "/hooks" for r in sink.snapshot())


def test_an_error_quoting_the_url_keeps_its_credentials_out() -> None:
    """A client library's error may quote the whole URL; what reaches the attempts log and
    ``last_error`` (an API answer) must not show a chat webhook's token or a query's."""
    import aiohttp

    from receiver.config import DestinationSettings
    from receiver.forward.kinds.http import HttpTransport

    url = "https://open.feishu.example/open-apis/bot/v2/hook/c0ffee-token-1234?sign=s3cr3t-sign"
    chat = HttpTransport(DestinationSettings(name="c", kind="http", url=url, format="feishu"))
    error = chat._error(aiohttp.ClientConnectionError(f"could not reach {url}"))
    assert "c0ffee-token-1234" not in error and "s3cr3t-sign" not in error
    assert error.startswith("ClientConnectionError: could not reach https://open.feishu.example")

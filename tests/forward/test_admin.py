"""What forwarding shows and lets a user change: /v1/destinations and its sub-routes, the
``destinations`` command, /metrics, and finding changes forwarded (findings = true), on both
stores. Credentials never appear in an answer, a command's output or a log line."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import endpoint_table, run_cli, write_config
from forwarding_world import AUTH, ENV, SECRET, destinations, http_destination, send, wait_until

from receiver.crosscheck.rules import Draft
from receiver.crosscheck.run_store import save_room, upsert_findings
from receiver.store.writer import create_engine_for
from receiver.testing import WebhookSink, verify_webhook


def test_the_overview_and_its_answers(forwarding_app: Any, sink: WebhookSink) -> None:
    client = forwarding_app(
        http_destination(sink.url, event_types=["SHOOT_SCRIPT_SWITCH"], endpoints=["shop-a"]),
        {"name": "cache", "kind": "redis", "url": "redis://:cache-password-9@127.0.0.1:1"},
    )
    assert client.get("/v1/destinations").status_code == 401
    send(client, "job-a", 1)
    sink.wait_for(lambda s: len(s.delivered()) == 1, timeout=10)
    wait_until(lambda: destinations(client)["app"]["last_delivered_at"], timeout=5, what="saved")
    views = destinations(client)
    app, cache = views["app"], views["cache"]
    assert app["state"] == "active" and app["lag_events"] == 0 and app["lag_seconds"] == 0
    assert app["filters"] == {
        "event_types": ["SHOOT_SCRIPT_SWITCH"],
        "endpoints": ["shop-a"],
        "findings": False,
        "events": True,
    }
    assert app["position"]["event_id"] >= 1 and app["dead_letters"] == 0
    # Nothing listens on port 1: the cache is retrying, its place kept, its password unseen.
    wait_until(
        lambda: destinations(client)["cache"]["state"] == "retrying", timeout=10, what="retrying"
    )
    cache = destinations(client)["cache"]
    assert cache["url"] == "redis://:****@127.0.0.1:1" and cache["lag_events"] == 1
    assert cache["lag_seconds"] > 0 and cache["retry_at"] and cache["failing_since"]
    text = client.get("/v1/destinations", headers=AUTH).text + client.get("/metrics").text
    assert "cache-password-9" not in text and SECRET not in text
    one = client.get("/v1/destinations/app", headers=AUTH).json()
    assert one["name"] == "app"
    assert client.get("/v1/destinations/nope", headers=AUTH).status_code == 404
    # The attempts log: newest first, with status and latency.
    page = client.get("/v1/destinations/app/attempts", headers=AUTH).json()
    attempt = page["attempts"][0]
    assert attempt["outcome"] == "delivered" and attempt["status_code"] == 200
    assert attempt["latency_ms"] > 0 and attempt["response"] == "ok"
    assert client.get("/v1/destinations/app/attempts?limit=0", headers=AUTH).status_code == 400
    assert client.get("/v1/destinations/app/messages?state=odd", headers=AUTH).status_code == 400


def test_metrics(forwarding_app: Any, sink: WebhookSink) -> None:
    client = forwarding_app(http_destination(sink.url))
    for n in range(3):
        send(client, "job-a", n)
    sink.wait_for(lambda s: len(s.delivered()) == 3, timeout=10)

    def metric(line_start: str) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return -1.0

    wait_until(
        lambda: (
            metric('receiver_forward_attempts_total{destination="app",outcome="delivered"}') == 3
        ),
        timeout=5,
        what="counted",
    )
    assert metric('receiver_forward_latency_seconds_count{destination="app"}') == 3
    assert metric('receiver_forward_sender{destination="app"}') == 1
    wait_until(
        lambda: metric('receiver_forward_state{destination="app",state="active"}') == 1,
        timeout=10,
        what="the state measured",
    )
    assert metric('receiver_forward_lag_events{destination="app"}') == 0


def test_resend_by_range_and_by_id_and_disable(forwarding_app: Any, sink: WebhookSink) -> None:
    client = forwarding_app(http_destination(sink.url))
    ids = [send(client, "job-a", n) for n in range(4)]
    sink.wait_for(lambda s: len(s.delivered()) == 4, timeout=10)
    answer = client.post(
        "/v1/destinations/app/resend",
        json={"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"},
        headers=AUTH,
    )
    assert answer.json() == {"queued": 4, "skipped": 0}
    sink.wait_for(lambda s: len(s.delivered()) == 8, timeout=10)
    assert sink.delivered_ids()[4:] == [f"evt_{i}" for i in ids]  # in order, the same ids
    answer = client.post(
        "/v1/destinations/app/resend", json={"event_ids": [ids[0], 999999]}, headers=AUTH
    )
    assert answer.json() == {"queued": 1, "skipped": 1}
    sink.wait_for(lambda s: len(s.delivered()) == 9, timeout=10)
    for bad in [{}, {"event_ids": "1"}, {"since": 5}, {"odd": 1}, {"dead_letters": "yes"}]:
        refused = client.post("/v1/destinations/app/resend", json=bad, headers=AUTH)
        assert refused.status_code == 400, bad
    answer = client.post(
        "/v1/destinations/app/disable", json={"reason": "consumer upgrade"}, headers=AUTH
    )
    assert answer.json()["state"] == "disabled"
    assert answer.json()["disabled_reason"].startswith("consumer upgrade (token ")
    count = len(sink.snapshot())
    send(client, "job-a", 9)
    wait_until(lambda: destinations(client)["app"]["lag_events"] >= 1, timeout=5, what="lag")
    assert len(sink.snapshot()) == count


def test_the_destinations_command(
    tmp_path: Path, migrated_url: str, sink: WebhookSink, forwarding_app: Any
) -> None:
    client = forwarding_app(http_destination(sink.url))
    ids = [send(client, "job-a", n) for n in range(2)]
    sink.wait_for(lambda s: len(s.delivered()) == 2, timeout=10)
    config = write_config(tmp_path / "r.toml", migrated_url, endpoint_table())
    config.write_text(
        config.read_text()
        + f'[[destinations]]\nname = "app"\nkind = "http"\nurl = "{sink.url}"\n'
        + 'secrets_env = "APP_SECRETS"\n'
    )

    def cli(*args: str) -> str:
        done = run_cli("destinations", *args, "--config", str(config), cwd=tmp_path, env=ENV)
        assert done.returncode == 0, done.stderr
        assert SECRET not in done.stdout + done.stderr
        return done.stdout

    listing = cli()
    assert listing.splitlines()[0].split()[:3] == ["NAME", "KIND", "STATE"]
    assert listing.splitlines()[1].split()[:3] == ["app", "http", "active"]
    assert "delivered" in cli("attempts", "app")
    assert cli("resend", "app", "--event-id", str(ids[1])).startswith("queued 1 message(s) for app")
    sink.wait_for(lambda s: len(s.delivered()) == 3, timeout=10)
    assert "disabled" in cli("disable", "app", "--reason", "maintenance")
    assert "disabled" in cli("list")
    assert "enabled" in cli("enable", "app")
    wrong = run_cli(
        "destinations", "attempts", "nope", "--config", str(config), cwd=tmp_path, env=ENV
    )
    assert wrong.returncode == 2 and "no destination named 'nope' (configured: app)" in wrong.stderr


def test_finding_changes_are_forwarded(
    forwarding_app: Any, sink: WebhookSink, migrated_url: str
) -> None:
    client = forwarding_app(http_destination(sink.url, findings=True, event_types=["NONE_OF_THEM"]))
    engine = create_engine_for(migrated_url, pool_size=1)
    now = datetime.now(UTC)
    draft = Draft(kind="job_failed", room_id="room-1", job_id="job-1", detail="FAILED: reason")
    try:
        with engine.begin() as conn:
            assert upsert_findings(conn, [draft], now) == 1
        sink.wait_for(lambda s: len(s.delivered()) == 1, timeout=10)
        finding_id = verify_webhook(sink.delivered()[0].body, sink.delivered()[0].headers, SECRET)[
            "data"
        ]["id"]
        answer = client.post(
            f"/v1/findings/{finding_id}/ack",
            json={"action": "ack", "reason": "known"},
            headers=AUTH,
        )
        assert answer.status_code == 200
        save_room(engine, room="room-1", jobs=None, drafts=[], resolvable=["job_failed"], now=now)
        sink.wait_for(lambda s: len(s.delivered()) == 3, timeout=10)
    finally:
        engine.dispose()
    messages = [verify_webhook(r.body, r.headers, SECRET) for r in sink.delivered()]
    assert [m["type"] for m in messages] == [
        "finding.opened",
        "finding.acknowledged",
        "finding.resolved",
    ]
    assert [m["data"]["status"] for m in messages] == ["open", "acknowledged", "resolved"]
    assert all(r.message_id.startswith("fnd_") for r in sink.delivered())
    assert messages[0]["data"]["detail"] == "FAILED: reason"


def test_no_credential_in_the_logs(forwarding_app: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = forwarding_app(
        {"name": "mq", "kind": "rabbitmq", "url": "amqp://guest:mq-password-77@127.0.0.1:1/"},
        {
            "name": "chat",
            "kind": "http",
            "url": "http://127.0.0.1:1/robot/send?access_token=tok-123456",
            "format": "dingtalk",
            "findings": True,
        },
    )
    send(client, "job-a", 1)
    wait_until(
        lambda: destinations(client)["mq"]["state"] == "retrying", timeout=10, what="retrying"
    )
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "failing" in logged
    assert "mq-password-77" not in logged and "tok-123456" not in logged

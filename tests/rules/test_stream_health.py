"""Stream health with real time, real ``serve`` processes and short thresholds, on both stores:
a drop opens ``stream_down`` within the threshold + 2 s and is forwarded (a webhook and a chat
message), a reconnect resolves it; a receiver restarted mid-drop still opens it; two replicas
open one finding; flapping opens."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import pytest
from conftest import REPORT
from forwarding_world import AUTH, ENV, SECRET, callback, http_destination, wait_until

from receiver.testing import WebhookSink, retarget, verify_webhook

pytestmark = pytest.mark.slow

THRESHOLD = 2.0


def post(base: str, job: str, state: str, n: int) -> float:
    """One RTMP callback; when it was answered (stored)."""
    signed = callback(job, n, event_type="RTMP_STREAM_STATE_CHANGE")
    body = signed.body.replace(b"CONNECTED", state.encode())
    answer = httpx.post(
        retarget(signed.url, base), content=body, headers=signed.headers, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return time.monotonic()


def findings(base: str, kind: str, status: str = "all") -> list[dict[str, Any]]:
    answer = httpx.get(f"{base}/v1/findings", params={"kind": kind, "status": status}, headers=AUTH)
    found: list[dict[str, Any]] = answer.json()["findings"]
    return found


def serve(factory: Callable[..., Any], url: str, *destinations: dict[str, Any], **more: Any) -> Any:
    return factory(
        url,
        api_tokens=["test-token"],
        public_url="https://hooks.example.com",
        rules={"stream_down_seconds": THRESHOLD, "stream_flapping": "3/30s"},
        destinations=list(destinations),
        **more,
    )


@pytest.fixture(autouse=True)
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def test_a_drop_opens_within_seconds_and_a_reconnect_resolves(
    db_url: str, server_factory: Callable[..., Any]
) -> None:
    with WebhookSink() as app, WebhookSink() as chat:
        server = serve(
            server_factory,
            db_url,
            http_destination(app.url, findings=True, event_types=["NONE"]),
            {"name": "chat", "kind": "http", "url": chat.url, "format": "slack"},
        )
        base = server.base_url
        post(base, "job-a", "CONNECTED", 1)
        dropped = post(base, "job-a", "DISCONNECTED", 2)
        wait_until(
            lambda: findings(base, "stream_down", "open"), timeout=THRESHOLD + 2, what="open"
        )
        opened_after = time.monotonic() - dropped
        assert opened_after >= THRESHOLD - 0.2
        (finding,) = findings(base, "stream_down", "open")
        assert finding["job_id"] == "job-a" and finding["data"]["state"] == "DISCONNECTED"
        post(base, "job-a", "RECONNECTING", 3)  # still down: nothing new
        back = post(base, "job-a", "CONNECTED", 4)
        wait_until(lambda: findings(base, "stream_down", "resolved"), timeout=3, what="resolved")
        resolved_after = time.monotonic() - back
        assert resolved_after < 3
        kind = "SQLite" if db_url.startswith("sqlite") else "PostgreSQL"
        REPORT.append(
            f"stream_down ({kind}): opened {opened_after:.2f} s after the drop (threshold "
            f"{THRESHOLD:g} s), resolved {resolved_after:.2f} s after CONNECTED"
        )
        assert len(findings(base, "stream_down")) == 1
        # Forwarded: finding.opened then finding.resolved, signed; and a chat alert.
        app.wait_for(lambda s: len(s.delivered()) >= 2, timeout=10)
        messages = [verify_webhook(r.body, r.headers, SECRET) for r in app.delivered()]
        assert [m["type"] for m in messages] == ["finding.opened", "finding.resolved"]
        assert messages[0]["data"]["kind"] == "stream_down"
        chat.wait_for(lambda s: len(s.delivered()) >= 2, timeout=10)
        alert = chat.delivered()[0]
        assert "webhook-signature" not in alert.headers  # the chat URL is its own credential
        text = httpx.Response(200, content=alert.body).json()["text"]
        assert text.startswith("[MetaStudio] stream_down opened")
        assert "job job-a" in text and "since 20" in text
        assert "https://hooks.example.com/ui/jobs/job-a" in text


def test_a_receiver_restarted_mid_drop_still_opens_it(
    db_url: str, server_factory: Callable[..., Any]
) -> None:
    server = serve(server_factory, db_url)
    dropped = post(server.base_url, "job-r", "DISCONNECTED", 1)
    time.sleep(0.5)
    server.stop()  # SIGTERM: drained, the rules' place saved and their lease let go
    assert findings_in_store(db_url) == 0
    server.start()
    wait_until(lambda: findings(server.base_url, "stream_down", "open"), timeout=10, what="open")
    assert time.monotonic() - dropped >= THRESHOLD - 0.2


def findings_in_store(url: str) -> int:
    import sqlalchemy as sa

    from receiver.store.writer import create_engine_for

    engine = create_engine_for(url, pool_size=1)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM findings")).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_two_replicas_open_one_finding(pg_url: str, server_factory: Callable[..., Any]) -> None:
    first = serve(server_factory, pg_url)
    second = serve(server_factory, pg_url)
    post(first.base_url, "job-2", "CONNECTED", 1)
    post(second.base_url, "job-2", "DISCONNECTED", 2)
    post(first.base_url, "job-3", "DISCONNECTED", 3)
    wait_until(
        lambda: len(findings(second.base_url, "stream_down", "open")) == 2, timeout=6, what="two"
    )
    time.sleep(2)  # a second look by either replica would show here
    for base in (first.base_url, second.base_url):
        found = findings(base, "stream_down")
        assert sorted(f["job_id"] for f in found) == ["job-2", "job-3"]
        assert all(f["occurrences"] == 1 for f in found)


def test_flapping_opens(db_url: str, server_factory: Callable[..., Any]) -> None:
    server = serve(server_factory, db_url)
    for n in range(3):
        post(server.base_url, "job-f", "RECONNECTING", 2 * n)
        post(server.base_url, "job-f", "CONNECTED", 2 * n + 1)
    wait_until(lambda: findings(server.base_url, "stream_flapping", "open"), timeout=3, what="open")
    (finding,) = findings(server.base_url, "stream_flapping")
    assert finding["data"]["reconnects"] == 3 and "3 times within 30 s" in finding["detail"]
    assert findings(server.base_url, "stream_down") == []  # it reconnected every time

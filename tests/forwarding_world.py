"""What the forwarding tests share: a receiver app on a migrated store with [[destinations]],
a webhook sink on loopback that fails on command, and signed callbacks of several jobs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx2 as httpx
import pytest
from conftest import KEY, REGISTERED, endpoint_table
from starlette.testclient import TestClient

from receiver.config import settings_from_mapping
from receiver.testing import WebhookSink, build_callback, deliver, new_secret
from receiver.web.app import create_app

AUTH = {"Authorization": "Bearer test-token"}
SECRET = new_secret()
OLD_SECRET = new_secret()
ENV = {"APP_SECRETS": f"{SECRET},{OLD_SECRET}"}


def http_destination(url: str, **overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": "app",
        "kind": "http",
        "url": url,
        "secrets_env": "APP_SECRETS",
        "retry_seconds": [0.2, 0.4],
        "timeout_seconds": 2,
    }
    table.update(overrides)
    return table


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with WebhookSink() as running:
        yield running


@pytest.fixture
def forwarding_app(migrated_url: str) -> Iterator[Callable[..., TestClient]]:
    """``forwarding_app(*destination_tables, **top_level)``: the receiver, started, forwarding."""
    clients: list[TestClient] = []

    def factory(*destinations: dict[str, Any], **top: Any) -> TestClient:
        data: dict[str, Any] = {
            "database_url": migrated_url,
            "endpoints": [endpoint_table()],
            "api_tokens": ["test-token"],
            "destinations": list(destinations),
            **top,
        }
        client = TestClient(create_app(settings_from_mapping(data, environ=ENV)))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


def callback(
    job: str, n: int, *, event_type: str = "SHOOT_SCRIPT_SWITCH", room: str = "room-1"
) -> Any:
    if event_type == "RTMP_STREAM_STATE_CHANGE":
        message: dict[str, Any] = {
            "room_id": room,
            "job_id": job,
            "state": "CONNECTED",
            "stream_key": f"secret-stream-key-{n:04d}",
        }
    elif event_type == "REPLY_COMMAND_FINISH":
        message = {"room_id": room, "job_id": job, "reply_id": f"r{n}"}
    else:
        message = {
            "room_id": room,
            "job_id": job,
            "shoot_script_sequence_no": n,
            "shoot_script_title": f"paragraph {n}",
        }
    return build_callback(
        event_type=event_type, message=message, registered_url=REGISTERED, key=KEY
    )


def send(client: TestClient | httpx.Client, job: str, n: int, **kwargs: Any) -> int:
    """Deliver one signed callback; its event id."""
    answer = deliver(callback(job, n, **kwargs), client=client)
    assert answer.stored, answer
    event_id = answer.json["event_id"]
    assert isinstance(event_id, int)
    return event_id


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


def destinations(client: TestClient | httpx.Client) -> dict[str, dict[str, Any]]:
    answer = client.get("/v1/destinations", headers=AUTH)
    assert answer.status_code == 200, answer.text
    return {d["name"]: d for d in answer.json()["destinations"]}


def first_seen_order(ids: Sequence[str]) -> list[int]:
    """Event ids (from evt_N) in the order each was first received."""
    seen: set[str] = set()
    order = []
    for message_id in ids:
        if message_id not in seen:
            seen.add(message_id)
            order.append(int(message_id.removeprefix("evt_")))
    return order

"""What the forwarding tests share: a receiver app on a migrated store with [[destinations]],
a webhook sink on loopback that fails on command, and signed callbacks of several jobs."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import aio_pika
import httpx2 as httpx
import nats
import pytest
import redis
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


# -- the brokers on this machine, read back with their own clients ---------------------------

REDIS_PORT, NATS_PORT, AMQP_PORT = 6379, 4222, 5672


REQUIRE_BROKERS = os.environ.get("RECEIVER_REQUIRE_BROKERS") == "1"


@pytest.fixture
def topic() -> str:
    """A stream key, subject prefix and exchange of this test's own, once the three brokers
    answer (skipped when one does not, unless RECEIVER_REQUIRE_BROKERS=1, as in CI)."""
    for name, port in (("Redis", REDIS_PORT), ("NATS", NATS_PORT), ("RabbitMQ", AMQP_PORT)):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError as exc:
            message = f"{name} does not answer on 127.0.0.1:{port}: {exc}"
            if REQUIRE_BROKERS:
                pytest.fail(f"{message} (RECEIVER_REQUIRE_BROKERS=1)")
            pytest.skip(message)
    return f"rcv-{uuid.uuid4().hex[:10]}"


def destination(kind: str, port: int, topic: str, **more: Any) -> dict[str, Any]:
    scheme = {"redis": "redis://", "nats": "nats://", "rabbitmq": "amqp://guest:guest@"}[kind]
    return {
        "name": kind,
        "kind": kind,
        "url": f"{scheme}127.0.0.1:{port}",
        "topic": topic,
        "retry_seconds": [0.2, 0.5],
        "timeout_seconds": 3,
        **more,
    }


def redis_entries(topic: str) -> list[dict[str, Any]]:
    client = redis.Redis(port=REDIS_PORT)
    try:
        entries = client.xrange(topic)
    finally:
        client.close()
    return [{k.decode(): v for k, v in fields.items()} for _, fields in entries]


async def _nats(work: Any) -> Any:
    nc = await nats.connect(f"nats://127.0.0.1:{NATS_PORT}")
    try:
        return await work(nc.jetstream())
    finally:
        await nc.close()


@pytest.fixture
def nats_stream(topic: str) -> Iterator[str]:
    name = topic.replace("-", "_").upper()

    async def add(js: Any) -> None:
        await js.add_stream(name=name, subjects=[f"{topic}.>"])

    async def delete(js: Any) -> None:
        await js.delete_stream(name)

    asyncio.run(_nats(add))
    yield name
    asyncio.run(_nats(delete))


def nats_messages(stream: str) -> list[tuple[str, dict[str, str], bytes]]:
    async def read(js: Any) -> list[tuple[str, dict[str, str], bytes]]:
        info = await js.stream_info(stream)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            found.append((msg.subject, dict(msg.headers or {}), msg.data))
        return found if info.state.messages else []

    result: list[tuple[str, dict[str, str], bytes]] = asyncio.run(_nats(read))
    return result


@pytest.fixture
def rabbit_queue(topic: str) -> Iterator[str]:
    """A queue bound to every routing key of the exchange ``topic`` (declared as the receiver
    declares it)."""

    async def setup() -> None:
        connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}")
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                topic, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(topic, durable=False, auto_delete=False)
            await queue.bind(exchange, routing_key="metastudio.#")

    async def teardown() -> None:
        connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}")
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(topic)
            await channel.exchange_delete(topic)

    asyncio.run(setup())
    yield topic
    asyncio.run(teardown())


def rabbit_messages(queue_name: str) -> list[Any]:
    async def drain() -> list[Any]:
        connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}")
        found = []
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(queue_name)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                found.append(message)
        return found

    result: list[Any] = asyncio.run(drain())
    return result

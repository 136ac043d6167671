"""Forwarding to the real Redis (Streams), NATS (JetStream) and RabbitMQ servers on this machine,
on SQLite and PostgreSQL: what each receives, in order per job; a broker cut off and back; NATS
dropping re-sends by Nats-Msg-Id; RabbitMQ returning what no queue takes.

The servers are required: .ci/run starts any that is not running (the env notes' commands).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import nats
import pytest
import redis
from forwarding_world import AUTH, destinations, first_seen_order, send, wait_until
from tcp_proxy import TcpProxy

REDIS_PORT, NATS_PORT, AMQP_PORT = 6379, 4222, 5672


@pytest.fixture
def topic() -> str:
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


# -- what each broker holds, read back with its own client -------------------------------------


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


# -- the tests ---------------------------------------------------------------------------------


def _interleaved(client: Any, count: int) -> dict[str, list[int]]:
    stored: dict[str, list[int]] = {}
    for n in range(count):
        job = f"job-{n % 3}"
        event_type = "RTMP_STREAM_STATE_CHANGE" if n % 4 == 0 else "SHOOT_SCRIPT_SWITCH"
        stored.setdefault(job, []).append(send(client, job, n, event_type=event_type))
    return stored


def _in_order(stored: dict[str, list[int]], received: list[tuple[str, bytes]]) -> None:
    """``received``: (message id, body) in the order the broker holds them."""
    by_job: dict[str, list[str]] = {}
    for message_id, body in received:
        data = json.loads(body)["data"]
        by_job.setdefault(data["job_id"], []).append(message_id)
    for job, ids in stored.items():
        assert first_seen_order(by_job[job]) == ids, job


def test_redis_streams(forwarding_app: Any, topic: str) -> None:
    client = forwarding_app(destination("redis", REDIS_PORT, topic))
    stored = _interleaved(client, 30)
    wait_until(lambda: len(redis_entries(topic)) >= 30, timeout=10, what="30 entries")
    entries = redis_entries(topic)
    assert set(entries[0]) == {"id", "type", "payload"}  # XADD <topic> * id <id> type <type> ...
    first = json.loads(entries[0]["payload"])
    assert entries[0]["type"].decode() == first["type"] == "metastudio.RTMP_STREAM_STATE_CHANGE"
    assert first["data"]["message"]["stream_key"].startswith("****")
    _in_order(stored, [(e["id"].decode(), e["payload"]) for e in entries])
    redis.Redis(port=REDIS_PORT).delete(topic)


def test_nats_jetstream(forwarding_app: Any, topic: str, nats_stream: str) -> None:
    client = forwarding_app(destination("nats", NATS_PORT, topic))
    stored = _interleaved(client, 30)
    wait_until(lambda: len(nats_messages(nats_stream)) >= 30, timeout=10, what="30 messages")
    held = nats_messages(nats_stream)
    subject, headers, _ = held[0]
    assert subject == f"{topic}.metastudio.RTMP_STREAM_STATE_CHANGE"
    assert headers["Nats-Msg-Id"] == f"evt_{stored['job-0'][0]}"
    _in_order(stored, [(h["Nats-Msg-Id"], b) for _, h, b in held])
    # Sent again (a resend, as after a crash): the stream drops what it has seen.
    answer = client.post(
        "/v1/destinations/nats/resend", json={"event_ids": stored["job-1"]}, headers=AUTH
    )
    assert answer.json()["queued"] == len(stored["job-1"])
    wait_until(lambda: destinations(client)["nats"]["parked"] == 0, timeout=10, what="resent")
    assert len(nats_messages(nats_stream)) == 30


def test_nats_without_a_stream_is_a_visible_failure(forwarding_app: Any, topic: str) -> None:
    client = forwarding_app(destination("nats", NATS_PORT, topic))
    send(client, "job-a", 1)
    wait_until(
        lambda: destinations(client)["nats"]["state"] == "retrying", timeout=10, what="retrying"
    )
    assert "no JetStream stream captures" in destinations(client)["nats"]["last_error"]


def test_rabbitmq_topic_exchange_with_confirms(
    forwarding_app: Any, topic: str, rabbit_queue: str
) -> None:
    client = forwarding_app(destination("rabbitmq", AMQP_PORT, topic))
    stored = _interleaved(client, 30)
    messages: list[Any] = []
    wait_until(
        lambda: len(messages.extend(rabbit_messages(rabbit_queue)) or messages) >= 30,
        timeout=10,
        what="30 messages",
    )
    first = messages[0]
    assert first.routing_key == first.type == "metastudio.RTMP_STREAM_STATE_CHANGE"
    assert first.message_id == f"evt_{stored['job-0'][0]}"
    assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert first.exchange == topic and first.content_type == "application/json"
    _in_order(stored, [(m.message_id, m.body) for m in messages])


def test_rabbitmq_returns_what_no_queue_takes(forwarding_app: Any, topic: str) -> None:
    """A binding missing for a type: its messages are refused, then dead-lettered, visibly;
    the types that are bound flow."""
    client = forwarding_app(destination("rabbitmq", AMQP_PORT, topic, retry_seconds=[0.1]))

    async def bind_rtmp_only() -> None:
        connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}")
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                topic, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(topic, auto_delete=False)
            await queue.bind(exchange, routing_key="metastudio.RTMP_STREAM_STATE_CHANGE")

    asyncio.run(bind_rtmp_only())
    try:
        lost = send(client, "job-a", 1)  # SHOOT_SCRIPT_SWITCH: unbound
        kept = send(client, "job-b", 2, event_type="RTMP_STREAM_STATE_CHANGE")
        wait_until(
            lambda: destinations(client)["rabbitmq"]["dead_letters"] == 1, timeout=10, what="dead"
        )
        got = rabbit_messages(topic)
        assert [m.message_id for m in got] == [f"evt_{kept}"]
        dead = client.get("/v1/destinations/rabbitmq/messages", headers=AUTH).json()["messages"]
        assert dead[0]["message_id"] == f"evt_{lost}" and "unroutable" in dead[0]["last_error"]
    finally:
        asyncio.run(_rabbit_cleanup(topic))


async def _rabbit_cleanup(topic: str) -> None:
    connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}")
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(topic)
        await channel.exchange_delete(topic)


@pytest.mark.parametrize("kind", ["redis", "nats", "rabbitmq"])
def test_a_broker_cut_off_then_back_loses_nothing(
    forwarding_app: Any, topic: str, kind: str, request: pytest.FixtureRequest
) -> None:
    port = {"redis": REDIS_PORT, "nats": NATS_PORT, "rabbitmq": AMQP_PORT}[kind]
    if kind == "nats":
        stream = request.getfixturevalue("nats_stream")
    if kind == "rabbitmq":
        queue = request.getfixturevalue("rabbit_queue")
    proxy = TcpProxy(port, low_port=True)
    proxy.start()
    try:
        client = forwarding_app(destination(kind, proxy.port, topic))
        before = [send(client, "job-a", n) for n in range(5)]
        proxy.stop()  # connections reset, new ones refused
        during = [send(client, "job-a", n) for n in range(5, 15)]
        wait_until(
            lambda: destinations(client)[kind]["state"] == "retrying", timeout=15, what="retrying"
        )
        assert destinations(client)[kind]["lag_events"] >= 10
        proxy.start()
        wait_until(
            lambda: destinations(client)[kind]["lag_events"] == 0, timeout=20, what="drained"
        )
        if kind == "redis":
            ids = [e["id"].decode() for e in redis_entries(topic)]
        elif kind == "nats":
            ids = [h["Nats-Msg-Id"] for _, h, _ in nats_messages(stream)]
        else:
            ids = [m.message_id for m in rabbit_messages(queue)]
        assert first_seen_order(ids) == before + during
    finally:
        proxy.stop()
        if kind == "redis":
            redis.Redis(port=REDIS_PORT).delete(topic)

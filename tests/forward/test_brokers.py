"""Forwarding to the real Redis (Streams), NATS (JetStream) and RabbitMQ servers on this machine,
on SQLite and PostgreSQL: what each receives, in order per job; a broker cut off and back; NATS
dropping re-sends by Nats-Msg-Id; RabbitMQ returning what no queue takes.

The servers are required: .ci/run starts any that is not running (the env notes' commands).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aio_pika
import pytest
import redis
from forwarding_world import (
    AMQP_PORT,
    AUTH,
    NATS_PORT,
    REDIS_PORT,
    destination,
    destinations,
    first_seen_order,
    nats_messages,
    rabbit_messages,
    redis_entries,
    send,
    wait_until,
)
from tcp_proxy import TcpProxy

from receiver.config import DestinationSettings
from receiver.forward.kinds.nats import NatsTransport
from receiver.forward.messages import EVENT, Message
from receiver.forward.transport import DELIVERED, REFUSED

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


def test_nats_batch_answers_each_message_on_its_own(topic: str, nats_stream: str) -> None:
    """One batch through the transport: each message gets its own acknowledgement; one larger
    than the server takes is refused without holding back the others; sent again, the stream
    says it dropped the duplicates."""

    def message(n: int, body: bytes) -> Message:
        return Message(
            f"evt_{n}", "metastudio.SHOOT_SCRIPT_SWITCH", body, "job:a", EVENT, n, 0.0, None
        )

    async def run() -> tuple[list[Any], list[Any], int]:
        url = f"nats://127.0.0.1:{NATS_PORT}"
        transport = NatsTransport(DestinationSettings(name="n", kind="nats", url=url, topic=topic))
        try:
            limit = (await transport._connect()).max_payload
            batch = [message(1, b"{}"), message(2, b"x" * (limit + 1)), message(3, b"[]")]
            first = await transport.send(batch)
            again = await transport.send([batch[0], batch[2]])
        finally:
            await transport.close()
        return first, again, limit

    first, again, limit = asyncio.run(run())
    assert [o.kind for o in first] == [DELIVERED, REFUSED, DELIVERED]
    assert first[0].response == f"{nats_stream}:1" and first[2].response == f"{nats_stream}:2"
    assert f"more than the server takes ({limit})" in first[1].error
    assert [o.response for o in again] == [
        f"{nats_stream}:1 duplicate",
        f"{nats_stream}:2 duplicate",
    ]
    assert [h["Nats-Msg-Id"] for _, h, _ in nats_messages(nats_stream)] == ["evt_1", "evt_3"]


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

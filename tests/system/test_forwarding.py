"""Forwarding, whole: real ``serve`` processes under load, every kind of destination.

- kill -9 of the receiver while it forwards: every stored event reaches every destination at
  least once, re-sends with the same id, each job's events first seen in the order stored;
- three replicas on one PostgreSQL: each message reaches each destination once (nothing fails);
- a destination down for OUTAGE_SECONDS under load: every callback is still answered ``stored``
  at once, nothing is lost, order is kept and the lag drains once it is back.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2 as httpx
import pytest
import redis
import sqlalchemy as sa
from forwarding_world import (
    AMQP_PORT,
    AUTH,
    ENV,
    NATS_PORT,
    REDIS_PORT,
    callback,
    destination,
    http_destination,
    nats_messages,
    rabbit_messages,
    redis_entries,
    wait_until,
)
from tcp_proxy import TcpProxy

from receiver.store.writer import EVENTS, create_engine_for
from receiver.testing import WebhookSink, retarget

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 60.0
JOBS = 12


class Load:
    """Senders posting signed callbacks of JOBS jobs to one or more receivers, until stopped."""

    def __init__(self, bases: list[str], *, rate: float, senders: int = 4) -> None:
        self.bases, self.rate, self.senders = bases, rate, senders
        self.answers: Counter[int | None] = Counter()
        self.slowest = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._n = 0

    def start(self) -> Load:
        for index in range(self.senders):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, index: int) -> None:
        rand = random.Random(index)
        pause = self.senders / self.rate
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                with self._lock:
                    self._n += 1
                    n = self._n
                signed = callback(f"job-{rand.randrange(JOBS)}", n)
                started = time.monotonic()
                try:
                    answer = client.post(
                        retarget(signed.url, rand.choice(self.bases)),
                        content=signed.body,
                        headers=dict(signed.headers),
                    )
                    status: int | None = answer.status_code
                except httpx.TransportError:
                    status = None
                with self._lock:
                    self.answers[status] += 1
                    if status == 200:
                        self.slowest = max(self.slowest, time.monotonic() - started)
                self._stop.wait(max(0.0, pause - (time.monotonic() - started)))


def forget(topic: str) -> None:
    client = redis.Redis(port=REDIS_PORT)
    client.delete(topic)
    client.close()


def stored_events(url: str) -> dict[int, str]:
    """event id -> job id, of every stored event."""
    engine = create_engine_for(url, pool_size=1)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(EVENTS.c.id, EVENTS.c.job_id))
            return {int(event_id): job for event_id, job in rows}
    finally:
        engine.dispose()


def check(received: list[tuple[str, bytes]], stored: dict[int, str], what: str) -> Counter[str]:
    """Every stored event arrived (at least once), each message is its event's (same id, same
    data), and each job's events were first seen in the order stored. Returns the counts."""
    counts = Counter(message_id for message_id, _ in received)
    missing = sorted(set(stored) - {int(m.removeprefix("evt_")) for m in counts})
    assert not missing, f"{what}: {len(missing)} events never arrived, e.g. {missing[:5]}"
    first_by_job: dict[str, list[int]] = {}
    seen: set[str] = set()
    for message_id, body in received:
        data = json.loads(body)["data"]
        assert message_id == f"evt_{data['id']}", what  # a re-send carries the same id
        if message_id not in seen:
            seen.add(message_id)
            first_by_job.setdefault(data["job_id"], []).append(data["id"])
    for job, ids in first_by_job.items():
        assert ids == sorted(ids), f"{what}: {job}'s events out of order"
    return counts


def drained(server: Any, names: list[str], timeout: float) -> None:
    def done() -> bool:
        answer = httpx.get(server.base_url + "/v1/destinations", headers=AUTH, timeout=10)
        views = {d["name"]: d for d in answer.json()["destinations"]}
        return all(views[n]["lag_events"] == 0 for n in names)

    try:
        wait_until(done, timeout=timeout, what=f"{names} drained")
    except AssertionError:
        answer = httpx.get(server.base_url + "/v1/destinations", headers=AUTH, timeout=10)
        print(json.dumps(answer.json(), indent=1))
        print(server.output()[-3000:])
        raise


def every_kind(sink: WebhookSink, topic: str) -> list[dict[str, Any]]:
    return [
        http_destination(sink.url, name="app", max_in_flight=8),
        destination("redis", REDIS_PORT, topic),
        destination("nats", NATS_PORT, topic),
        destination("rabbitmq", AMQP_PORT, topic),
    ]


def read_all(
    sink: WebhookSink, topic: str, stream: str, queue: str, rabbit: list[Any]
) -> dict[str, list[tuple[str, bytes]]]:
    rabbit.extend(rabbit_messages(queue))  # a queue is read once: keep what came
    return {
        "http": [(r.message_id, r.body) for r in sink.delivered()],
        "redis": [(e["id"].decode(), e["payload"]) for e in redis_entries(topic)],
        "nats": [(h["Nats-Msg-Id"], b) for _, h, b in nats_messages(stream)],
        "rabbitmq": [(m.message_id, m.body) for m in rabbit],
    }


def forwarder_niceness(server_pid: int) -> int:
    """The nice value of the server's forwarder process (receiver.forward.child)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    command = handle.read()
                with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                    fields = handle.read().rpartition(")")[2].split()
            except OSError:
                continue
            if b"receiver.forward.child" in command and int(fields[1]) == server_pid:
                return int(fields[16])  # stat(5) field 19, "nice"
        time.sleep(0.1)
    raise AssertionError("no forwarder process under the server")


def test_kill_9_while_forwarding_loses_nothing(
    db_url: str,
    server_factory: Callable[..., Any],
    sink: WebhookSink,
    topic: str,
    nats_stream: str,
    rabbit_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    server = server_factory(db_url, destinations=every_kind(sink, topic), api_tokens=["test-token"])
    # The forwarder works below the intake: when the cores are busy, the intake goes first.
    assert (
        forwarder_niceness(server.proc.pid) == os.getpriority(os.PRIO_PROCESS, server.proc.pid) + 10
    )
    sink.delay = 0.01
    for _round in range(3):
        load = Load([server.base_url], rate=300, senders=6).start()
        time.sleep(1.5 + random.random())
        server.kill()  # mid-send: batches in flight, places not saved
        load.stop()
        server.start()
    drained(server, ["app", "redis", "nats", "rabbitmq"], timeout=60)
    stored = stored_events(db_url)
    assert len(stored) > 300
    rabbit: list[Any] = []
    for kind, received in read_all(sink, topic, nats_stream, rabbit_queue, rabbit).items():
        counts = check(received, stored, kind)
        resent = sum(c - 1 for c in counts.values())
        print(f"{kind}: {len(stored)} events, {resent} received again after the kills")
    forget(topic)


@pytest.mark.postgres
def test_three_replicas_send_each_message_once(
    pg_url: str,
    server_factory: Callable[..., Any],
    sink: WebhookSink,
    topic: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    tables = [http_destination(sink.url), destination("redis", REDIS_PORT, topic)]
    with ThreadPoolExecutor(3) as pool:
        replicas = list(
            pool.map(
                lambda _: server_factory(pg_url, destinations=tables, api_tokens=["test-token"]),
                range(3),
            )
        )
    load = Load([r.base_url for r in replicas], rate=200, senders=6).start()
    time.sleep(8)
    load.stop()
    drained(replicas[0], ["app", "redis"], timeout=60)
    stored = stored_events(pg_url)
    http_counts = check([(r.message_id, r.body) for r in sink.delivered()], stored, "http")
    entries = redis_entries(topic)
    redis_counts = check([(e["id"].decode(), e["payload"]) for e in entries], stored, "redis")
    assert max(http_counts.values()) == 1 and max(redis_counts.values()) == 1
    assert len(http_counts) == len(redis_counts) == len(stored) > 500
    senders = {
        d["sender"]
        for r in replicas
        for d in httpx.get(r.base_url + "/v1/destinations", headers=AUTH).json()["destinations"]
    }
    assert len(senders) <= 2  # one replica per destination (the same one, or two)
    forget(topic)


def test_a_destination_down_for_a_minute_under_load(
    db_url: str,
    server_factory: Callable[..., Any],
    sink: WebhookSink,
    topic: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    proxy = TcpProxy(REDIS_PORT, low_port=True)
    proxy.start()
    tables = [
        http_destination(sink.url, retry_seconds=[1, 2, 5]),
        destination("redis", proxy.port, topic, retry_seconds=[1, 2, 5]),
    ]
    server = server_factory(db_url, destinations=tables, api_tokens=["test-token"])
    load = Load([server.base_url], rate=60, senders=3).start()
    try:
        time.sleep(3)
        sink.stop()
        proxy.stop()
        down_at = time.monotonic()
        time.sleep(5)
        views = {
            d["name"]: d
            for d in httpx.get(server.base_url + "/v1/destinations", headers=AUTH).json()[
                "destinations"
            ]
        }
        assert views["app"]["state"] == views["redis"]["state"] == "retrying"
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        lag = httpx.get(server.base_url + "/v1/destinations/app", headers=AUTH).json()
        assert lag["lag_events"] > OUTAGE_SECONDS * 30 and lag["lag_seconds"] > OUTAGE_SECONDS - 10
        sink.start()
        proxy.start()
        time.sleep(3)
        load.stop()
        # The intake never waited for the destinations: every callback was stored, at once.
        assert set(load.answers) == {200}, load.answers
        assert load.slowest < 5.0
        drained(server, ["app", "redis"], timeout=60)
    finally:
        load.stop()
        proxy.stop()
    stored = stored_events(db_url)
    check([(r.message_id, r.body) for r in sink.delivered()], stored, "http")
    check([(e["id"].decode(), e["payload"]) for e in redis_entries(topic)], stored, "redis")
    forget(topic)

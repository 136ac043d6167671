"""Hostile input against a real ``serve`` process: each refused quickly, with the right status.

Oversized bodies (413), query floods and long URLs (401 / 414), header floods (431), clients that
dribble their request a byte a second (408, then cut off), bodies that are not UTF-8 or nest
without end (kept as ``undecodable`` when signed, 400). Nothing from an unverified request is
stored, and the server keeps storing good deliveries during and after each attack.

PRODUCT.md, "Callback intake": errors in MetaStudio's shape ``{"error_code", "error_msg"}``; no
500 for any input a client can send. The limits of the request head and the client time-out
are ``receiver.intake.limits`` (uvicorn alone has neither). Raw sockets send what httpx cannot.
Cases the app answers run on SQLite and PostgreSQL; cases the HTTP layer refuses before the app
sees anything run on SQLite only (the store is not involved, beyond showing nothing reached it).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from conftest import KEY, REGISTERED, ServerProcess

from receiver.protocol.signing import AuthType
from receiver.store.writer import DELIVERIES, create_engine_for
from receiver.testing import encode, sign_request

pytestmark = pytest.mark.slow

TOKEN = "hostile-token"
TIMEOUT = 1.5  # client_timeout_seconds of every server here
QUICK = 2.0  # a refusal comes within this (generous: CI machines are busy)
SLACK = 3.0  # a time-out fires within TIMEOUT + this
PATH = "/callbacks/shop-a"

Factory = Callable[..., ServerProcess]
Launch = Callable[..., tuple[ServerProcess, "Good"]]


def signed_target(extra_query: str = "") -> str:
    """Path and query of a correctly signed MSS_A callback (extra parameters appended)."""
    url, _ = sign_request(
        registered_url=REGISTERED, auth_type=AuthType.MSS_A, key=KEY, when=time.time()
    )
    return url.removeprefix("https://hooks.example.com") + extra_query


def good_body(n: int) -> bytes:
    return encode(
        "RTMP_STREAM_STATE_CHANGE",
        {"room_id": "room-1", "job_id": "job-1", "state": "CONNECTED", "n": n},
    )


def request_head(target: str, *headers: str, method: str = "POST") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "host: hooks.example.com", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        """The body, which must be MetaStudio's error shape."""
        assert self.headers.get("content-type") == "application/json", self.headers
        document: dict[str, Any] = json.loads(self.body)
        assert set(document) >= {"error_code", "error_msg"}, document
        assert document["error_code"].startswith("RCV.") and document["error_msg"]
        return document


class Raw:
    """One TCP connection, written and read byte by byte as a test needs."""

    def __init__(self, server: ServerProcess) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.buffer = b""
        self.closed = False
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """False once the server has closed or reset the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def _fill(self, timeout: float) -> bool:
        """Read what arrives within ``timeout``; False when nothing (or the connection ended)."""
        if self.closed:
            return False
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:  # reset
            self.closed = True
            return False
        if not chunk:
            self.closed = True
            return False
        self.buffer += chunk
        return True

    def answer(self, timeout: float = 10.0) -> Answer | None:
        """The next whole answer, or None if the connection ends (or stays silent) first."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or (not self._fill(left) and self.closed):
                return None
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            left = deadline - time.monotonic()
            if left <= 0 or (not self._fill(left) and self.closed):
                return None
            rest = self.buffer.partition(b"\r\n\r\n")[2]
        self.buffer = rest[length:]
        return Answer(int(status_line.split()[1]), headers, rest[:length])

    def wait_closed(self, timeout: float) -> bool:
        """True once the server closed the connection (what it sent meanwhile is kept)."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self._fill(max(0.01, deadline - time.monotonic()))
        return self.closed

    def dribble(self, data: bytes, interval: float = 1.0) -> tuple[Answer | None, int]:
        """Send ``data`` one byte per ``interval`` until the server answers or hangs up (which
        must happen within the time-out and some slack). Returns the answer (None if the
        connection just ended) and how many bytes were sent."""
        for sent, byte in enumerate(data):
            if self.elapsed() > TIMEOUT + SLACK:
                raise AssertionError(f"the server still takes a byte a second after {sent} s")
            if not self.send(bytes([byte])):
                return self.answer(timeout=1), sent
            if self._fill(interval) or self.closed:
                return self.answer(timeout=1), sent + 1
        raise AssertionError(f"the server took all {len(data)} bytes at one byte per {interval} s")


class Good:
    """Posts good, signed deliveries and checks each is stored promptly."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.client = httpx.Client(base_url=server.base_url, timeout=30)
        self.bodies: list[bytes] = []
        self.slowest = 0.0

    def post(self) -> None:
        body = good_body(len(self.bodies))
        started = time.monotonic()
        response = self.client.post(
            signed_target(), content=body, headers={"content-type": "application/json"}
        )
        elapsed = time.monotonic() - started
        assert response.status_code == 200, response.text
        assert response.json()["result"] == "stored"
        self.bodies.append(body)
        self.slowest = max(self.slowest, elapsed)

    def rejections(self) -> list[dict[str, Any]]:
        response = self.client.get(
            "/v1/rejections", headers={"authorization": f"Bearer {TOKEN}"}, params={"limit": 1000}
        )
        assert response.status_code == 200, response.text
        rows: list[dict[str, Any]] = response.json()["rejections"]
        return rows


def stored(url: str) -> list[tuple[str, bytes]]:
    """(status, body) of every delivery in the store, in order."""
    engine = create_engine_for(url, pool_size=1)
    try:
        with engine.connect() as conn:
            query = sa.select(DELIVERIES.c.status, DELIVERIES.c.body).order_by(DELIVERIES.c.id)
            return [(status, bytes(body)) for status, body in conn.execute(query)]
    finally:
        engine.dispose()


@pytest.fixture
def connections() -> Iterator[list[Raw]]:
    """Raw connections a test opens: all closed at its end."""
    opened: list[Raw] = []
    yield opened
    for raw in opened:
        raw.close()


@pytest.fixture
def launch(server_factory: Factory) -> Iterator[Callable[..., tuple[ServerProcess, Good]]]:
    """``launch(database_url, **top_level_keys)`` -> a started server and a Good sender."""
    goods: list[Good] = []

    def factory(url: str, **top: Any) -> tuple[ServerProcess, Good]:
        top = {"client_timeout_seconds": TIMEOUT, "api_tokens": [TOKEN], **top}
        server = server_factory(url, **top)
        goods.append(Good(server))
        return server, goods[-1]

    yield factory
    for good in goods:
        good.client.close()


def connect(server: ServerProcess, opened: list[Raw]) -> Raw:
    raw = Raw(server)
    opened.append(raw)
    return raw


# --- bodies the app refuses: 413, and 400 kept as undecodable -------------------------------


def test_oversized_bodies_are_refused_before_they_are_read(
    db_url: str, launch: Launch, connections: list[Raw]
) -> None:
    server, good = launch(db_url, max_body_bytes=4096)

    # Content-Length of a gigabyte: 413 after the first KiB, the rest never needed.
    raw = connect(server, connections)
    raw.send(request_head(signed_target(), "content-length: 1000000000") + b"x" * 1024)
    answer = raw.answer(timeout=QUICK)
    assert answer is not None and answer.status == 413, answer
    assert answer.error()["error_code"] == "RCV.BODY_TOO_LARGE"
    assert raw.elapsed() < QUICK
    # A client that goes on sending the body it announced is cut off within the time-out.
    while raw.send(b"x" * 1024) and not raw.wait_closed(0.2):
        assert raw.elapsed() < 2 * TIMEOUT + SLACK, "the server kept reading a refused body"
    good.post()

    # A client that sends the rest of its body after the 413, then idles, is not kept either.
    raw = connect(server, connections)
    raw.send(request_head(signed_target(), "content-length: 5000"))
    answer = raw.answer(timeout=QUICK)
    assert answer is not None and answer.status == 413, answer
    assert answer.error()["error_code"] == "RCV.BODY_TOO_LARGE"
    raw.send(b"w" * 5000)
    assert raw.wait_closed(TIMEOUT + SLACK)
    assert raw.buffer == b""
    good.post()

    # Chunked, with no length: refused as soon as the limit is passed, the stream unfinished.
    raw = connect(server, connections)
    raw.send(request_head(signed_target(), "transfer-encoding: chunked"))
    for _ in range(5):
        raw.send(b"400\r\n" + b"y" * 1024 + b"\r\n")  # 5 KiB of an endless body
    answer = raw.answer(timeout=QUICK)
    assert answer is not None and answer.status == 413, answer
    assert answer.error()["error_code"] == "RCV.BODY_TOO_LARGE"
    assert raw.elapsed() < QUICK
    good.post()

    # The same through an ordinary client, streaming a body it does not announce.
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"z" * 1024

    response = good.client.post(signed_target(), content=chunks())
    assert response.status_code == 413, response.text
    assert response.json()["error_code"] == "RCV.BODY_TOO_LARGE"
    good.post()

    assert stored(db_url) == [("stored", body) for body in good.bodies]
    reasons = [row["reason"] for row in good.rejections()]
    assert reasons.count("body_too_large") == 4, reasons


HOSTILE_BODIES = {
    "latin-1, not UTF-8": b'{"event_type": "RTMP_STREAM_STATE_CHANGE", "message": "caf\xe9"}',
    "invalid bytes": b'{"event_type": "X", "message": "{}", "x": "\xff\xfe\xc0\x80"}',
    "deep body": b'{"event_type": "X", "message": "{}", "x": ' + b"[" * 30000 + b"]" * 30000 + b"}",
    "deep message": json.dumps(
        {
            "event_type": "REPLY_COMMAND_FINISH",
            "message": '{"a": ' + "[" * 20000 + "]" * 20000 + "}",
        }
    ).encode(),
    "deep but valid JSON": b'{"event_type": "X", "message": {"a": '
    + b'{"a": ' * 500
    + b"1"
    + b"}" * 501
    + b"}",
}


def test_undecodable_bodies_are_kept_when_signed_and_refused(db_url: str, launch: Launch) -> None:
    _, good = launch(db_url)
    for name, body in HOSTILE_BODIES.items():
        # Unsigned: 401, and nothing of it is kept.
        started = time.monotonic()
        response = good.client.post(PATH, content=body)
        assert time.monotonic() - started < QUICK, name
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error_code"] == "RCV.SIGNATURE_MISSING"
        # Signed: 400, stored as undecodable (nothing verified is lost).
        started = time.monotonic()
        response = good.client.post(signed_target(), content=body)
        assert time.monotonic() - started < QUICK, name
        assert response.status_code == 400, (name, response.text)
        answer = response.json()
        assert answer["error_code"] == "RCV.BODY_UNDECODABLE", (name, answer)
        assert answer["error_msg"] and answer["result"] == "stored", (name, answer)
        good.post()
    expected: list[tuple[str, bytes]] = []
    for index, body in enumerate(HOSTILE_BODIES.values()):
        expected += [("undecodable", body), ("stored", good.bodies[index])]
    assert stored(db_url) == expected


# --- floods in the request head: 401 from the signature check, 400/414/431 from the HTTP layer --
# Refused before anything is stored, whatever the store: SQLite only.

HEAD_CODES = {400: "RCV.BAD_REQUEST", 414: "RCV.URI_TOO_LONG", 431: "RCV.HEADERS_TOO_LARGE"}


def test_floods_in_the_request_head(
    sqlite_url: str, launch: Launch, connections: list[Raw]
) -> None:
    server, good = launch(sqlite_url)
    body = good_body(0)
    length = f"content-length: {len(body)}"
    flood = "&".join(f"p{i}=1" for i in range(1000))  # 7 KiB: under the URL limit
    many = [f"x-flood-{i}: {i}" for i in range(5000)]
    big = "x-big: " + "v" * 1_000_000
    cases = [
        ("unsigned query flood", f"{PATH}?{flood}", [], 401),
        ("signed, then a query flood", signed_target("&" + flood), [], 401),
        ("600 hwSecret and hwTime", f"{PATH}?" + "&".join(["hwSecret=a&hwTime=1"] * 300), [], 401),
        ("raw bytes in the URL", signed_target("&x=\xff\xfe"), [], 400),
        ("a long URL", f"{PATH}?{'a' * 9000}", [], 414),
        ("a very long URL", signed_target("&x=" + "b" * 1_000_000), [], 414),
        ("5000 headers", signed_target(), many, 431),
        ("one 1 MB header", signed_target(), [big], 431),
    ]
    for name, target, headers, status in cases:
        raw = connect(server, connections)
        sent = raw.send(request_head(target, length, *headers) + body)
        answer = raw.answer(timeout=QUICK)
        assert raw.elapsed() < QUICK, name
        # A client still sending when the server hangs up may see a reset instead of the
        # answer; it sees it quickly all the same, and nothing is served.
        if answer is None and not sent and status != 401:
            continue
        assert answer is not None, name
        assert answer.status == status, (name, answer)
        code = answer.error()["error_code"]
        assert code.startswith("RCV.SIGNATURE_") if status == 401 else code == HEAD_CODES[status]
        if status != 401:  # refused by the HTTP layer: the connection ends
            assert answer.headers.get("connection") == "close"
            assert raw.wait_closed(QUICK + SLACK), name
        good.post()

    # The limit is 100 header fields: 100 pass, 101 do not.
    for count, status in [(100, 200), (101, 431)]:
        raw = connect(server, connections)
        headers = [f"x-h-{i}: {i}" for i in range(count - 1)]  # and host
        raw.send(request_head("/healthz", *headers, method="GET"))
        answer = raw.answer(timeout=QUICK)
        assert answer is not None and answer.status == status, (count, answer)

    # The query API refuses parameters it does not know, a flood of them included.
    started = time.monotonic()
    response = good.client.get(f"/v1/events?{flood}", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "RCV.BAD_PARAMETER"
    assert time.monotonic() - started < QUICK
    assert stored(sqlite_url) == [("stored", body) for body in good.bodies]


# --- slow clients: 408, cut off after the time-out --------------------------------------------


def test_byte_a_second_clients_are_cut_off(
    db_url: str, launch: Launch, connections: list[Raw]
) -> None:
    """One client dribbles its request line and headers, one its body (after a head sent at
    once), one connects and sends nothing: 408, 408 and a close without a word, each once the
    time-out has passed, while good deliveries are stored."""
    server, good = launch(db_url)
    body = good_body(99)
    head = request_head(signed_target(), f"content-length: {len(body)}")
    silent = connect(server, connections)
    slow_head = connect(server, connections)
    slow_body = connect(server, connections)
    slow_body.send(head)
    with ThreadPoolExecutor(2) as pool:
        head_run = pool.submit(slow_head.dribble, head + body)
        body_run = pool.submit(slow_body.dribble, body)
        good.post()
        runs = [(slow_head, head_run.result(), "headers"), (slow_body, body_run.result(), "body")]
    for raw, (answer, sent), part in runs:
        assert answer is not None and answer.status == 408, (part, answer)
        error = answer.error()
        assert error["error_code"] == "RCV.REQUEST_TIMEOUT", error
        assert part in error["error_msg"], error
        assert answer.headers.get("connection") == "close"
        assert TIMEOUT - 0.5 < raw.elapsed() < TIMEOUT + SLACK, part
        assert sent <= TIMEOUT + SLACK + 1, part
        assert raw.wait_closed(SLACK), part
    assert silent.wait_closed(SLACK)
    assert silent.buffer == b""
    assert silent.elapsed() < TIMEOUT + SLACK
    good.post()

    # Nothing of them is stored; the rejection log says what happened to the body.
    assert stored(db_url) == [("stored", body) for body in good.bodies]
    details = [row["detail"] for row in good.rejections()]
    assert any("did not arrive within" in detail for detail in details), details


def test_many_slow_clients_do_not_hold_up_good_deliveries(
    db_url: str, launch: Launch, connections: list[Raw]
) -> None:
    server, good = launch(db_url)
    good.post()  # warm
    body = good_body(999)
    heads = [request_head(signed_target(), f"content-length: {len(body)}") for _ in range(200)]
    slow = [connect(server, connections) for _ in range(200)]
    # Half dribble their head, half their body (after a head sent at once).
    plans = [head if i % 2 else body for i, head in enumerate(heads)]
    for i, raw in enumerate(slow):
        if i % 2 == 0:
            raw.send(heads[i])
        raw.sock.setblocking(False)
    stop = threading.Event()

    def dribble() -> None:
        position = 0
        while not stop.is_set() and position < len(body):
            for raw, plan in zip(slow, plans, strict=True):
                with contextlib.suppress(OSError):  # refused already
                    raw.sock.send(plan[position : position + 1])
            position += 1
            stop.wait(0.5)

    dribbler = threading.Thread(target=dribble, daemon=True)
    dribbler.start()
    try:
        started = time.monotonic()
        while time.monotonic() - started < TIMEOUT:
            good.post()
        assert good.slowest < QUICK, f"a good delivery took {good.slowest:.2f} s"
        for raw in slow:
            raw.sock.setblocking(True)
            remaining = started + TIMEOUT + 2 * SLACK - time.monotonic()
            assert raw.wait_closed(max(remaining, 0.1)), "a slow client still holds a connection"
            answer = raw.answer(timeout=0)
            assert answer is not None and answer.status == 408, answer
    finally:
        stop.set()
        dribbler.join(timeout=5)
    good.post()
    assert len(good.bodies) > 5
    assert stored(db_url) == [("stored", body) for body in good.bodies]

"""A webhook destination on loopback for tests: records what it is sent, and fails on command.

    sink = WebhookSink().start()          # sink.url for a [[destinations]] table
    sink.answer(503, times=3)             # the next 3 requests get 503
    sink.answer(429, headers={"retry-after": "1"})
    sink.refuse("evt_12", 400)            # this message is refused every time (a poison message)
    sink.delay = 2.0                      # every answer takes 2 s
    sink.stop()                           # connections refused until sink.start() again
    sink.wait_for(lambda s: len(s.delivered_ids()) >= 100, timeout=30)

It serves HTTP/1.1 with keep-alive on threads (http.server), so it answers several senders at
once; what it records is guarded by a lock.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    @property
    def message_id(self) -> str:
        return self.headers.get("webhook-id", "")


@dataclass
class _Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class WebhookSink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.received: list[Received] = []
        self.delay = 0.0
        self._lock = threading.Lock()
        self._queue: list[_Answer] = []
        self._refused: dict[str, _Answer] = {}
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hooks"

    def start(self) -> WebhookSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, Nagle's algorithm holds
                # the body until the sender's delayed ACK (40 ms per request on Linux).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with sink._lock:
                    sink._connections.add(self.connection)

            def finish(self) -> None:
                with sink._lock:
                    sink._connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:  # the sender went away mid-request: nothing arrived
                    self.close_connection = True
                    return
                answer = sink._answer_for(self.headers.get("webhook-id", ""))
                if sink.delay:
                    time.sleep(sink.delay)
                headers = {k.lower(): v for k, v in self.headers.items()}
                sink._record(Received(self.path, headers, body, time.time(), answer.status))
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                return None  # a sender that went away mid-request (killed): nothing to report

        server = Server((self.host, self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut the open connections: the destination is down (connections
        refused) until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def answer(
        self,
        status: int,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        with self._lock:
            self._queue.extend(_Answer(status, dict(headers or {}), body) for _ in range(times))

    def refuse(self, message_id: str, status: int = 400, body: bytes = b"refused") -> None:
        with self._lock:
            self._refused[message_id] = _Answer(status, {}, body)

    def accept(self, message_id: str) -> None:
        with self._lock:
            self._refused.pop(message_id, None)

    def _answer_for(self, message_id: str) -> _Answer:
        with self._lock:
            if message_id in self._refused:
                return self._refused[message_id]
            if self._queue:
                return self._queue.pop(0)
        return _Answer(200, {}, b"ok")

    def _record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def delivered(self) -> list[Received]:
        """What the sink answered with a 2xx, in arrival order."""
        return [r for r in self.snapshot() if 200 <= r.status < 300]

    def delivered_ids(self) -> list[str]:
        return [r.message_id for r in self.delivered()]

    def wait_for(self, condition: Callable[[WebhookSink], bool], *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self):
                return
            time.sleep(0.02)
        raise TimeoutError(f"the sink did not get what was expected within {timeout} s")

    def __enter__(self) -> WebhookSink:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""A response's head goes out in one write with its body (receiver.intake.limits.HeadWithBody):
half the system calls and client wake-ups per answer, nothing reordered, nothing held back.

First against a recording transport, then against the real server on loopback, where the
answer to a callback must arrive as one TCP segment's worth of bytes in one read."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from conftest import ServerProcess, endpoint_table, signed_path

from receiver.intake.limits import HeadWithBody
from receiver.testing import encode

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


def _run(steps: Callable[[HeadWithBody], None]) -> Recording:
    recording = Recording()

    async def main() -> None:
        transport = HeadWithBody(recording, asyncio.get_running_loop())  # type: ignore[arg-type]
        steps(transport)
        await asyncio.sleep(0)  # one turn of the loop: anything held goes out
        await asyncio.sleep(0)

    asyncio.run(main())
    return recording


def test_head_and_body_in_one_write() -> None:
    recording = _run(lambda t: (t.write(HEAD), t.write(b"{}")))
    assert recording.writes == [HEAD + b"{}"]


def test_a_head_alone_goes_out_at_the_end_of_the_turn() -> None:
    """A streamed answer (the event stream) or a HEAD: the head is not kept waiting."""
    recording = _run(lambda t: t.write(HEAD))
    assert recording.writes == [HEAD]


def test_close_sends_what_is_held_first() -> None:
    recording = _run(lambda t: (t.write(HEAD), t.close()))
    assert recording.writes == [HEAD] and recording.closed


def test_100_continue_and_later_chunks_are_not_held() -> None:
    def steps(t: HeadWithBody) -> None:
        t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        t.write(HEAD)
        t.write(b"{}")
        t.write(b"more")

    recording = _run(steps)
    assert recording.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", HEAD + b"{}", b"more"]


def test_other_calls_reach_the_real_transport() -> None:
    recording = Recording()
    loop = asyncio.new_event_loop()
    try:
        transport = HeadWithBody(recording, loop)  # type: ignore[arg-type]
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1)
        assert transport.is_closing() is False
    finally:
        loop.close()


def test_a_callback_answer_arrives_whole_in_one_read(
    server_factory: Callable[..., ServerProcess], migrated_url: str
) -> None:
    """On loopback one write is one segment: the first read holds head and body. Before
    HeadWithBody the head came alone and the body in a second segment."""
    server = server_factory(migrated_url, endpoint_table())
    body = encode("RTMP_STREAM_STATE_CHANGE", {"room_id": "r", "job_id": "j", "state": "END"})
    request = (
        f"POST {signed_path()} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.sendall(request)
            client.settimeout(10)
            first = client.recv(65536)
            # Whatever arrives in the next 200 ms would be a second segment of the same answer.
            client.settimeout(0.2)
            try:
                rest = client.recv(65536)
            except TimeoutError:
                rest = b""
        head, _, answer = first.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), first
        assert b'"result":' in answer, (first, rest)
        assert rest == b""

"""HTTP/1.1 limits the server holds a client to before (and while) the app sees its request.

uvicorn's httptools protocol bounds neither the size of a request's head nor the time a client
takes to send it: a client could send megabytes of headers, or one byte a second for ever, and
hold a connection slot all along (``timeout_keep_alive`` runs only between requests). This
protocol adds, per request:

- size: a request target of at most ``MAX_URL_BYTES`` (else 414, RFC 9110 section 15.5.15), at
  most ``MAX_HEADERS`` header fields and ``max_head_bytes`` of request line and headers (else
  431, RFC 6585 section 5);
- time: the request line and headers within ``client_timeout`` seconds of its first byte, then
  the body within as many again (else 408, RFC 9110 section 15.5.9); a connection that sends
  nothing at all within that time is closed without an answer.

Its answers are JSON in MetaStudio's error shape, with ``connection: close``. The connection
then lingers for a moment, reading and discarding what the client still sends, so the client
reads the answer rather than a reset (nginx's ``lingering_close`` does the same).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from receiver.intake.bodies import BODY_TIMED_OUT

log = logging.getLogger("receiver.http")

MAX_URL_BYTES = 8192
MAX_HEADERS = 100
DEFAULT_MAX_HEAD_BYTES = 65536
# After an answer from here, what the client still sends is read and dropped for this long.
LINGER_SECONDS = 2.0

BAD_REQUEST = "RCV.BAD_REQUEST"
REQUEST_TIMEOUT = "RCV.REQUEST_TIMEOUT"
URI_TOO_LONG = "RCV.URI_TOO_LONG"
HEADERS_TOO_LARGE = "RCV.HEADERS_TOO_LARGE"


class Refusal(Exception):
    """Raised from a parser callback to stop parsing; the protocol answers with it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def answer_bytes(status: int, code: str, message: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP/1.1 answer in MetaStudio's error shape that closes the connection."""
    body = orjson.dumps({"error_code": code, "error_msg": message})
    lines = [STATUS_LINE[status]]
    lines += [name + b": " + value + b"\r\n" for name, value in headers]
    lines += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
        b"\r\n",
        body,
    ]
    return b"".join(lines)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the size and time limits above.

    Use :func:`protocol_factory` to get one with the configured limits."""

    client_timeout: float = 10.0
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES

    def __init__(
        self,
        *args: Any,
        client_timeout: float | None = None,
        max_head_bytes: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if client_timeout is not None:
            self.client_timeout = client_timeout
        if max_head_bytes is not None:
            self.max_head_bytes = max_head_bytes
        # The time the current phase must end by (None: no phase running), and the one timer
        # that looks at it. Moving the deadline is an assignment: the timer, when it fires
        # early, sets itself again for the deadline of the moment (see _arm).
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._reading_head = True  # no request yet, or its line and headers not all here
        self._head_bytes = 0
        self._header_count = 0
        self._refusal: Refusal | None = None
        self._answered = False  # an answer from here was sent: input is dropped until close

    # --- timers -----------------------------------------------------------------------------

    def _arm(self) -> None:
        """The current phase must end within client_timeout from now. Called two or three times
        per request, so it schedules nothing when a timer is set already: scheduling and
        cancelling one per phase cost more than the rest of this class per request."""
        self._deadline = self.loop.time() + self.client_timeout
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def _disarm(self) -> None:
        self._deadline = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._deadline is None:
            return  # no phase running: the next _arm sets a timer again
        if self._deadline > self.loop.time():
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        self._deadline = None
        self._on_deadline()

    def _on_deadline(self) -> None:
        if self._answered or self.transport.is_closing():
            return
        seconds = f"{self.client_timeout:g}"
        cycle = self.cycle
        if self._reading_head:
            if cycle is not None and not cycle.response_complete:
                # An earlier request is still being answered; its answer comes first, and the
                # app's own time is bounded (store_timeout_seconds). Look again later.
                self._arm()
            elif self._head_bytes == 0:
                self.transport.close()  # nothing of a request arrived: hang up without a word
            else:
                message = f"the request line and headers did not arrive within {seconds} s"
                self._answer(408, REQUEST_TIMEOUT, message)
            return
        if cycle is not None:
            # If the app still waits for the body, to it the client has left; the scope says
            # why, so receiver.intake.bodies can report it.
            cycle.scope.setdefault("extensions", {})[BODY_TIMED_OUT] = {
                "seconds": self.client_timeout
            }
        self._answer(408, REQUEST_TIMEOUT, f"the request body did not arrive within {seconds} s")

    def _answer(self, status: int, code: str, message: str) -> None:
        """Send one answer, stop reading requests, and close after a short linger.

        The answer is for the request being read. When an earlier request's answer is still to
        come, or the app has answered this one already (say a 413 before the body was read),
        a second answer would garble the stream: the connection is just closed."""
        self._answered = True
        self._disarm()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.info("refused a request from %s: %d %s: %s", client, status, code, message)
        cycle = self.cycle
        if self._reading_head:
            interleaved = cycle is not None and not cycle.response_complete
        else:
            interleaved = cycle is None or cycle.response_started or bool(self.pipeline)
        if interleaved:
            self.transport.close()
            return
        if not self._reading_head:
            # This request's app waits for its body: from now on it is as if the client left.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.write(answer_bytes(status, code, message, self.server_state.default_headers))
        self.flow.resume_reading()  # keep reading (and dropping) so the client sees no reset
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the connection is the WebSocket protocol's from here on
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return
        if self._reading_head:
            if self._head_bytes == 0:
                self._arm()  # the first bytes of a request: its time starts now
            self._head_bytes += len(data)
        super().data_received(data)
        if self._answered or self.transport.is_closing():
            return
        if self._reading_head and self._head_bytes > self.max_head_bytes:
            self._answer(
                431,
                HEADERS_TOO_LARGE,
                f"the request line and headers are over {self.max_head_bytes} bytes",
            )

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this for anything the parser refuses, a Refusal from a callback included.
        refusal, self._refusal = self._refusal, None
        if refusal is None:
            refusal = Refusal(400, BAD_REQUEST, "the request is not valid HTTP/1.1")
        self._answer(refusal.status, refusal.code, refusal.message)

    # --- parser callbacks -------------------------------------------------------------------

    def _refuse(self, status: int, code: str, message: str) -> Refusal:
        self._refusal = Refusal(status, code, message)
        return self._refusal

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        if self._deadline is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_URL_BYTES:
            raise self._refuse(
                414, URI_TOO_LONG, f"the request target is longer than {MAX_URL_BYTES} bytes"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            raise self._refuse(
                431, HEADERS_TOO_LARGE, f"the request has more than {MAX_HEADERS} header fields"
            )
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        super().on_headers_complete()
        if self.cycle is not None:  # its task has not run yet: it writes through this from now
            self.cycle.transport = HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]
        self._arm()  # the body's own time starts now

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._reading_head = True
        self._head_bytes = 0
        if self.cycle is not None and self.cycle.response_complete:
            # Answered before its body ended (a 413, say): the body's bytes since have cancelled
            # uvicorn's keep-alive time-out, so the idle connection gets this one instead.
            self._arm()


class HeadWithBody:
    """A response's transport that sends its status line and headers in one write with the
    body that follows them.

    uvicorn writes the head of a response as soon as the app starts it, and the body when the
    app sends it: two system calls, and two wake-ups of the client, where one would do. Here the
    head waits for the next write in the same turn of the event loop (an app's body usually
    comes at once) and goes out with it; if nothing comes in that turn (a streamed answer, a
    HEAD), it goes out alone at the end of the turn. Anything else is the real transport's."""

    __slots__ = ("_head", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
            self._transport.write(data)
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 100 "):
            self._head = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def protocol_factory(
    *, client_timeout: float, max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES
) -> functools.partial[LimitedHttpToolsProtocol]:
    """The protocol with these limits, for uvicorn's ``http=``. A partial of the module's own
    class, so that it pickles: worker processes get it from the supervisor
    (receiver.web.serving)."""
    return functools.partial(
        LimitedHttpToolsProtocol, client_timeout=client_timeout, max_head_bytes=max_head_bytes
    )

"""``GET /v1/events/stream``: stored events as server-sent events, as they are committed.

Each message is one event as ``/v1/events`` shows it (stream keys masked), of the default SSE
type ``message`` (its ``event_type`` is in the data: vendors add event types, and a listener for
a type it does not know would miss them)::

    id: 1234
    data: {"id": 1234, "event_type": "RTMP_STREAM_STATE_CHANGE", "message": {...}, ...}

The ``id`` is the event's id. A client that reconnects with ``Last-Event-ID`` (browsers'
EventSource do it by themselves) gets every event after it, once: ids are handed out in commit
order (receiver.store.write), so reading past the last id seen skips nothing, on SQLite and on
several replicas sharing one PostgreSQL alike. Without ``Last-Event-ID`` the stream starts with
what commits next; ``?after=0`` replays from the first event. ``room_id`` and ``job_id`` narrow
it, in either spelling of an id (receiver.protocol.ids).

The stream polls the store every ``POLL_SECONDS`` (one indexed query, on the primary key), sends
a comment line every ``KEEPALIVE_SECONDS`` so proxies keep the connection, and ends when the
client goes, when the server shuts down, or after ``MAX_STREAM_SECONDS`` (the client then
reconnects where it was).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from receiver.errors import QueryError, StoreUnavailable
from receiver.store import queries
from receiver.web.api_v1 import authorize, known_params, read_store

if TYPE_CHECKING:
    from receiver.web.runtime import Runtime

log = logging.getLogger("receiver.live")

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
MAX_STREAM_SECONDS = 600.0
RETRY_MS = 1000
BATCH = 500
PARAMS = {"room_id", "job_id", "after"}


def _event_id(name: str, text: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise QueryError(f"{name}: must be an event id (a whole number)")
    return int(text)


def _start(request: Request, given: str | None) -> int | None:
    """Where to start: Last-Event-ID, else ?after, else None (from what commits next)."""
    after = None if given is None else _event_id("after", given)
    header = request.headers.get("last-event-id")
    if header is not None:  # browsers leave it out rather than send it empty
        return _event_id("Last-Event-ID", header)
    return after


async def stream_events(request: Request) -> Response:
    rt = authorize(request)
    p = known_params(request, PARAMS)
    room_id = queries.parse_text("room_id", p.get("room_id"))
    job_id = queries.parse_text("job_id", p.get("job_id"))
    after = _start(request, p.get("after"))
    if after is None:
        after = await read_store(rt, queries.last_event_id)
    stream = _messages(rt, request, after, room_id=room_id, job_id=job_id)
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def _messages(
    rt: Runtime, request: Request, after: int, *, room_id: str | None, job_id: str | None
) -> AsyncIterator[bytes]:
    yield f"retry: {RETRY_MS}\n\n".encode()
    started = last_sent = time.monotonic()
    closing = rt.closing
    failing = False
    while not closing.is_set() and time.monotonic() - started < MAX_STREAM_SECONDS:
        read = functools.partial(
            queries.events_after, after=after, room_id=room_id, job_id=job_id, limit=BATCH
        )
        try:
            events = await read_store(rt, read)
        except StoreUnavailable as exc:  # say so, and try again (the client keeps its id)
            if not failing:
                log.warning("event stream: %s; retrying", exc.message)
            failing = True
            events = []
            yield b": store unavailable, retrying\n\n"
        else:
            failing = False
        for event in events:
            after = event["id"]
            yield _message(event)
            last_sent = time.monotonic()
        if len(events) == BATCH:
            continue  # more are waiting
        if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
            yield b": keepalive\n\n"
            last_sent = time.monotonic()
        if await request.is_disconnected():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closing.wait(), timeout=POLL_SECONDS)


def _message(event: dict[str, Any]) -> bytes:
    # orjson escapes line breaks inside strings, so the data is one line, as SSE needs.
    return b"id: %d\ndata: %s\n\n" % (event["id"], orjson.dumps(event))

"""``/v1/destinations``: where stored events are handed on, how each destination is doing, its
attempts, and resending, enabling and disabling (receiver.forward.admin does the work).

Every replica answers from the store, so the answer is the same whichever one is sending. A
change made here (enable, disable, resend) also reaches this replica's sender at once; another
replica's sees it within a lease renewal (two seconds).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.config import DestinationSettings
from receiver.errors import QueryError
from receiver.forward import admin, store
from receiver.intake.bodies import read_body
from receiver.intake.responses import JSON
from receiver.store import queries
from receiver.web.api_v1 import authorize, known_params, read_store, write_store
from receiver.web.runtime import Runtime

BODY_LIMIT = 256 * 1024
MAX_EVENT_IDS = 10_000


def _destination(rt: Runtime, request: Request) -> DestinationSettings:
    return admin.find(rt.settings.destinations, request.path_params["name"])


async def list_destinations(request: Request) -> Response:
    rt = authorize(request)
    known_params(request, set())
    now = datetime.now(UTC)
    places = rt.forwarder.places() if rt.forwarder else None
    views = await write_store(
        rt, lambda conn: admin.overview(conn, rt.settings.destinations, now=now, places=places)
    )
    return JSON({"destinations": views})


async def get_destination(request: Request) -> Response:
    rt = authorize(request)
    known_params(request, set())
    return JSON(await _view(rt, _destination(rt, request)))


async def _view(rt: Runtime, destination: DestinationSettings) -> dict[str, Any]:
    now = datetime.now(UTC)
    places = rt.forwarder.places() if rt.forwarder else None
    views = await write_store(
        rt, lambda conn: admin.overview(conn, [destination], now=now, places=places)
    )
    return views[0]


async def list_attempts(request: Request) -> Response:
    rt = authorize(request)
    destination = _destination(rt, request)
    p = known_params(request, {"limit", "before"})
    limit = queries.parse_limit(p.get("limit"), high=admin.MAX_ATTEMPTS_PAGE)
    before = _whole("before", p.get("before"))
    page = await read_store(
        rt, lambda conn: admin.attempts(conn, destination.name, limit=limit, before=before)
    )
    return JSON(page)


async def list_messages(request: Request) -> Response:
    rt = authorize(request)
    destination = _destination(rt, request)
    p = known_params(request, {"state", "limit"})
    state = p.get("state", store.DEAD)
    if state not in (store.PENDING, store.DEAD):
        raise QueryError("state: must be pending or dead")
    limit = queries.parse_limit(p.get("limit"))
    found = await read_store(
        rt, lambda conn: admin.messages(conn, destination.name, state=state, limit=limit)
    )
    return JSON({"messages": found})


async def resend(request: Request) -> Response:
    """``{"event_ids": [...]}``, ``{"since": ..., "until": ...}`` and/or ``{"dead_letters":
    true}``: sent again with their ids unchanged."""
    rt = authorize(request)
    destination = _destination(rt, request)
    payload = await _object(request, {"event_ids", "since", "until", "dead_letters"})
    event_ids = payload.get("event_ids")
    if event_ids is not None and (
        not isinstance(event_ids, list)
        or not 0 < len(event_ids) <= MAX_EVENT_IDS
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in event_ids)
    ):
        raise QueryError(f"event_ids: must be a list of 1 to {MAX_EVENT_IDS} event ids")
    since = _time(payload, "since")
    until = _time(payload, "until")
    dead_letters = payload.get("dead_letters", False)
    if not isinstance(dead_letters, bool):
        raise QueryError("dead_letters: must be true or false")
    now = datetime.now(UTC)
    counts = await write_store(
        rt,
        lambda conn: admin.resend(
            conn,
            destination,
            event_ids=event_ids,
            since=since,
            until=until,
            dead_letters=dead_letters,
            now=now,
        ),
    )
    if rt.forwarder is not None:
        rt.forwarder.poke(destination.name)
    return JSON(counts)


async def enable(request: Request) -> Response:
    rt = authorize(request)
    destination = _destination(rt, request)
    await _object(request, set())
    now = datetime.now(UTC)
    await write_store(rt, lambda conn: admin.enable(conn, destination, now=now))
    if rt.forwarder is not None:
        await rt.forwarder.refresh()
        rt.forwarder.poke(destination.name)
    return JSON(await _view(rt, destination))


async def disable(request: Request) -> Response:
    rt = authorize(request)
    destination = _destination(rt, request)
    payload = await _object(request, {"reason"})
    reason = payload.get("reason", "disabled by hand")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 200:
        raise QueryError("reason: a string of 1 to 200 characters")
    caller = request.state.caller
    text = f"{reason.strip()} (token {caller.token_id})"
    now = datetime.now(UTC)
    await write_store(rt, lambda conn: admin.disable(conn, destination, reason=text, now=now))
    if rt.forwarder is not None:
        await rt.forwarder.refresh()
    return JSON(await _view(rt, destination))


async def _object(request: Request, allowed: set[str]) -> dict[str, Any]:
    body = await read_body(request, BODY_LIMIT)
    if not body.strip():
        return {}
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise QueryError("body: must be a JSON object") from None
    if not isinstance(payload, dict):
        raise QueryError("body: must be a JSON object")
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise QueryError(
            f"body: unknown field {unknown[0][:40]!r} (allowed: {', '.join(sorted(allowed))})"
        )
    return payload


def _time(payload: dict[str, Any], name: str) -> datetime | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, str):
        raise QueryError(f"{name}: must be an RFC 3339 time like 2024-09-10T00:30:00Z")
    return queries.parse_time(name, value)


def _whole(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise QueryError(f"{name}: must be an attempt id (a whole number)")
    return int(value)


routes = [
    Route("/v1/destinations", list_destinations, methods=["GET"]),
    Route("/v1/destinations/{name}", get_destination, methods=["GET"]),
    Route("/v1/destinations/{name}/attempts", list_attempts, methods=["GET"]),
    Route("/v1/destinations/{name}/messages", list_messages, methods=["GET"]),
    Route("/v1/destinations/{name}/resend", resend, methods=["POST"]),
    Route("/v1/destinations/{name}/enable", enable, methods=["POST"]),
    Route("/v1/destinations/{name}/disable", disable, methods=["POST"]),
]

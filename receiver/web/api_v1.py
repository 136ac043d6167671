"""The query API under /v1: what was received, refused and found, and acknowledging findings.
A bearer token, or the console's session cookie (receiver.web.console.sessions), is required."""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Awaitable, Callable, Set
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.crosscheck import jobs
from receiver.errors import (
    ApiUnauthorized,
    CsrfRefused,
    NotConfigured,
    NotFound,
    QueryError,
    StoreUnavailable,
)
from receiver.intake.bodies import read_body
from receiver.intake.responses import JSON
from receiver.store import queries
from receiver.store.paging import Page
from receiver.web.console.sessions import (
    COOKIE,
    CSRF_HEADER,
    Caller,
    match_token,
    session_caller,
    token_id,
)

if TYPE_CHECKING:
    from receiver.web.runtime import Runtime

T = TypeVar("T")
CROSSCHECK_BODY_LIMIT = 4096


def _runtime(request: Request) -> Runtime:
    value: Runtime = request.app.state.runtime
    return value


def authorize(request: Request) -> Runtime:
    """The runtime, once the request has shown a bearer token or the console's session (and,
    for a session, the CSRF token on anything but GET/HEAD). The caller is kept in
    ``request.state.caller``."""
    rt = _runtime(request)
    request.state.caller = identify(request, rt.settings.api_tokens)
    return rt


def identify(request: Request, tokens: tuple[str, ...]) -> Caller:
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiUnauthorized("send Authorization: Bearer <token> (one of api_tokens)")
        matched = match_token(token.strip(), tokens)
        if matched is None:
            raise ApiUnauthorized("the bearer token is not one of api_tokens")
        return Caller(token_id=token_id(matched), via="bearer", token=matched)
    session = request.cookies.get(COOKIE)
    if session:
        caller = session_caller(session, tokens)
        if caller is None:
            raise ApiUnauthorized("the console session has expired or is not valid; log in again")
        if request.method not in ("GET", "HEAD"):
            given = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(given.encode(), caller.csrf().encode()):
                raise CsrfRefused("this action needs the console's CSRF token (X-CSRF-Token)")
        return caller
    raise ApiUnauthorized("send Authorization: Bearer <token> (one of api_tokens)")


async def read_store(rt: Runtime, work: Callable[[Any], T]) -> T:
    """``work(conn)`` on a thread; a store that does not answer is StoreUnavailable (503)."""
    return await _on_store(rt, work, commit=False)


async def write_store(rt: Runtime, work: Callable[[Any], T]) -> T:
    """The same in a transaction, committed when ``work`` returns."""
    return await _on_store(rt, work, commit=True)


async def _on_store(rt: Runtime, work: Callable[[Any], T], *, commit: bool) -> T:
    def run() -> T:
        try:
            with rt.reader.begin() if commit else rt.reader.connect() as conn:
                return work(conn)
        except DBAPIError as exc:
            problem = type(exc.orig).__name__
            raise StoreUnavailable(f"the store did not answer: {problem}") from exc

    return await asyncio.to_thread(run)


ACK_ACTIONS = ("ack", "mute")
ACK_BODY_LIMIT = 4096
_PLAIN_NAME = re.compile(r"^[\w .@+-]{1,64}$")


async def ack_finding(request: Request) -> Response:
    """``{"action": "ack"|"mute", "reason": "...", "by": "name"}``: recorded with the caller's
    token id and the time; the finding then no longer counts as open."""
    rt = authorize(request)
    caller: Caller = request.state.caller
    raw = request.path_params["finding_id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise NotFound(f"no finding {raw[:40]!r}")
    body = await read_body(request, ACK_BODY_LIMIT)
    try:
        payload = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise QueryError(
            'body: must be a JSON object like {"action": "ack", "reason": "..."}'
        ) from None
    if not isinstance(payload, dict) or set(payload) - {"action", "reason", "by"}:
        raise QueryError("body: the fields are action, reason and by")
    action = payload.get("action", "ack")
    if action not in ACK_ACTIONS:
        raise QueryError("action: must be ack or mute")
    reason = payload.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 500:
        raise QueryError("reason: required, a string of at most 500 characters")
    name = payload.get("by")
    if name is not None and (not isinstance(name, str) or not _PLAIN_NAME.match(name)):
        raise QueryError("by: at most 64 letters, digits, spaces or . @ + - _")
    by = f"{name} (token {caller.token_id})" if name else f"token {caller.token_id}"
    now = datetime.now(UTC)
    finding = await write_store(
        rt,
        lambda conn: queries.acknowledge_finding(
            conn, int(raw), action=action, reason=reason.strip(), by=by, now=now
        ),
    )
    return JSON(finding)


def known_params(request: Request, allowed: Set[str]) -> dict[str, str]:
    """The query's parameters, each at most once, none but ``allowed``."""
    found: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            raise QueryError(
                f"{name[:40]}: unknown parameter (allowed: {', '.join(sorted(allowed))})"
            )
        if name in found:
            raise QueryError(f"{name}: given more than once")
        found[name] = value
    return found


def _limit(_name: str, value: str | None) -> int:
    return queries.parse_limit(value)


def _as_given(_name: str, value: str | None) -> str | None:
    return value


def _finding_status(_name: str, value: str | None) -> str:
    return "all" if value is None else value  # checked by queries.list_findings


_PAGING: dict[str, queries.Parser] = {"limit": _limit, "cursor": _as_given}
# Each list's parameters and their parsers, in the order they are checked (the first error is
# the answer), and the store query that answers it. A parameter is passed to the query under
# its own name, but for those in queries.KEYWORDS.
_LISTS: dict[str, tuple[Callable[..., Page], dict[str, queries.Parser]]] = {
    "events": (
        queries.list_events,
        {**queries.EVENT_FILTERS, **_PAGING},
    ),
    "deliveries": (
        queries.list_deliveries,
        {
            "status": queries.parse_text,
            "endpoint": queries.parse_text,
            "since": queries.parse_time,
            "until": queries.parse_time,
            **_PAGING,
        },
    ),
    "rejections": (
        queries.list_rejections,
        {
            "endpoint": queries.parse_text,
            "reason": queries.parse_text,
            "since": queries.parse_time,
            **_PAGING,
        },
    ),
    "findings": (
        queries.list_findings,
        {
            "room_id": queries.parse_text,
            "job_id": queries.parse_text,
            "kind": queries.parse_text,
            "status": _finding_status,
            **_PAGING,
        },
    ),
}


async def _list(
    request: Request, name: str, *, before: Callable[[Runtime], Awaitable[None]] | None = None
) -> Response:
    """One page of the list ``name`` (a key of _LISTS), as ``{name: [...], "next_cursor"}``;
    ``before`` runs once the parameters are checked, before the store is read."""
    rt = authorize(request)
    read, parsers = _LISTS[name]
    p = known_params(request, parsers.keys())
    kwargs = {
        queries.KEYWORDS.get(key, key): parse(key, p.get(key)) for key, parse in parsers.items()
    }
    if before is not None:
        await before(rt)
    page = await read_store(rt, lambda conn: read(conn, **kwargs))
    return JSON({name: page.items, "next_cursor": page.next_cursor})


async def list_events(request: Request) -> Response:
    return await _list(request, "events")


async def get_event(request: Request) -> Response:
    rt = authorize(request)
    raw = request.path_params["event_id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # "²".isdigit(), but int() refuses
        raise QueryError("event id: must be a whole number")
    event = await read_store(rt, lambda conn: queries.get_event(conn, int(raw)))
    if event is None:
        raise NotFound(f"no event with id {raw}")
    return JSON(event)


async def get_job(request: Request) -> Response:
    rt = authorize(request)
    job_id = queries.parse_text("job_id", request.path_params["job_id"])
    assert job_id is not None
    p = known_params(request, _PAGING.keys())  # a job's timeline is paged as the lists are
    limit = queries.parse_limit(p.get("limit"), default=1000, high=queries.MAX_TIMELINE)
    view = await read_store(
        rt, lambda conn: jobs.job_view(conn, job_id, limit=limit, cursor=p.get("cursor"))
    )
    if view is None:
        raise NotFound(f"no event names job {job_id[:64]!r}")
    return JSON(view)


async def list_deliveries(request: Request) -> Response:
    return await _list(request, "deliveries")


async def list_rejections(request: Request) -> Response:
    return await _list(request, "rejections", before=lambda rt: rt.rejections.flush())


async def list_findings(request: Request) -> Response:
    return await _list(request, "findings")


async def run_crosscheck(request: Request) -> Response:
    rt = authorize(request)
    body = await read_body(request, CROSSCHECK_BODY_LIMIT)  # {"room_id": ...} at most
    if rt.crosschecker is None:
        raise NotConfigured("cross-checking needs a [metastudio] section in the config")
    room_id = None
    if body.strip():
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise QueryError('body: must be a JSON object like {"room_id": "..."}') from None
        if not isinstance(payload, dict) or set(payload) - {"room_id"}:
            raise QueryError("body: the only field is room_id")
        value = payload.get("room_id")
        if value is not None and not isinstance(value, str):
            raise QueryError("room_id: must be a string")
        room_id = queries.parse_text("room_id", value)
    # Asked for now: MetaStudio is asked now too, not answered from the cache.
    report = await rt.crosschecker.run(room_id=room_id, fresh=True)
    return JSON(report.as_json())


routes = [
    Route("/v1/events", list_events, methods=["GET"]),
    Route("/v1/events/{event_id}", get_event, methods=["GET"]),
    Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/v1/deliveries", list_deliveries, methods=["GET"]),
    Route("/v1/rejections", list_rejections, methods=["GET"]),
    Route("/v1/findings", list_findings, methods=["GET"]),
    Route("/v1/findings/{finding_id}/ack", ack_finding, methods=["POST"]),
    Route("/v1/crosscheck", run_crosscheck, methods=["POST"]),
]

"""``POST /callbacks/{name}``: the hot path, as plain ASGI.

Every delivery MetaStudio sends comes through here, so it skips what the query API uses and a
callback does not need: Starlette's router, its middleware stack, and the Request and Response
objects. The answers are the same as everywhere else: JSON, MetaStudio's error shape
(``{"error_code", "error_msg"}``, receiver.intake.responses), the status of
receiver.intake.responses.status_for,
``Retry-After`` on 503, and an ``X-Request-Id`` (the caller's when it is short and plain) that
every log line written meanwhile carries.

:class:`ReceiverApp` routes the callback path here before Starlette sees it; any other method or
path (``GET /callbacks/x`` is a 405, ``/callbacks/x/`` a 404) goes through Starlette as before.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import orjson
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from receiver.errors import (
    BodyTooLarge,
    ReceiverError,
    StoreUnavailable,
    UndecodableStored,
    UnknownEndpoint,
)
from receiver.intake.bodies import parse_length, read_asgi_body
from receiver.intake.receive import receive as receive_delivery
from receiver.intake.responses import RETRY_AFTER_SECONDS, error_body, status_for
from receiver.observability import request_id, request_id_for

if TYPE_CHECKING:
    from receiver.web.runtime import Runtime

log = logging.getLogger("receiver.api")

PREFIX = "/callbacks/"
_PREFIX_LENGTH = len(PREFIX)
_JSON = (b"content-type", b"application/json")
_RETRY_AFTER = (b"retry-after", RETRY_AFTER_SECONDS.encode())
INTERNAL_ERROR = "RCV.INTERNAL_ERROR"


def callback_name(scope: Scope) -> str | None:
    """The endpoint name of a ``POST /callbacks/{name}``, else None (``{name}`` is one
    non-empty path segment, as Starlette's router would match it)."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
        return None
    path: str = scope["path"]
    if not path.startswith(PREFIX):
        return None
    name = path[_PREFIX_LENGTH:]
    if not name or "/" in name:
        return None
    return name


class ReceiverApp(Starlette):
    """Starlette, with ``POST /callbacks/{name}`` answered by :func:`handle_callback` first."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = callback_name(scope)
        if name is None:
            await super().__call__(scope, receive, send)
            return
        await handle_callback(self.state.runtime, scope, receive, send, name)


async def callback_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """The same handler as a Starlette route (reached only when ReceiverApp did not take the
    request first, e.g. under a root_path)."""
    app = scope["app"]
    await handle_callback(app.state.runtime, scope, receive, send, scope["path_params"]["name"])


async def handle_callback(
    rt: Runtime, scope: Scope, receive: Receive, send: Send, name: str
) -> None:
    started = time.perf_counter()
    now = time.time()
    headers = Headers(raw=scope["headers"])
    rid = request_id_for(scope["headers"])
    token = request_id.set(rid)
    try:
        status, body, extra = await _callback(rt, scope, receive, name, now, started, headers)
    except Exception:
        log.exception("unexpected error on POST %s", scope["path"])
        status, body, extra = (
            500,
            error_body(INTERNAL_ERROR, "internal error; it has been logged"),
            None,
        )
    finally:
        request_id.reset(token)
    answer = [_JSON, (b"content-length", b"%d" % len(body)), (b"x-request-id", rid.encode())]
    if extra is not None:
        answer.append(extra)
    await send({"type": "http.response.start", "status": status, "headers": answer})
    await send({"type": "http.response.body", "body": body})


async def _callback(
    rt: Runtime,
    scope: Scope,
    receive: Receive,
    name: str,
    now: float,
    started: float,
    headers: Headers,
) -> tuple[int, bytes, tuple[bytes, bytes] | None]:
    """(status, body, one more header or None) for one callback."""
    client = scope.get("client")
    remote = client[0] if client else None
    metrics = rt.metrics
    body = b""
    length = headers.get("content-length")
    declared = None if length is None else parse_length(length)
    try:
        endpoint = rt.endpoints.get(name)
        if endpoint is None:
            raise UnknownEndpoint(f"no endpoint named {name[:64]!r} is configured")
        body = await read_asgi_body(scope, receive, rt.settings.max_body_bytes, declared)
        receipt = await receive_delivery(
            endpoint=endpoint,
            body=body,
            query_string=scope["query_string"].decode("latin-1"),
            headers=headers,
            remote_addr=remote,
            now=now,
            writer=rt.writer,
            on_verified=metrics.clock_skew.observe,
        )
    except StoreUnavailable as exc:
        metrics.delivered(name[:64], "unavailable")
        log.warning("503 for %s: %s", scope["path"], exc.message)
        return 503, error_body(exc.code, exc.message), _RETRY_AFTER
    except UndecodableStored as exc:
        metrics.delivered(name, "undecodable")
        rt.rejections.record(exc=exc, endpoint=name, remote_addr=remote, body=body, now=now)
        metrics.rejections.labels("undecodable").inc()
        log.info("refused callback for %r: %s %s", name[:64], exc.code, exc.message)
        result = "duplicate" if exc.duplicate else "stored"
        answer = error_body(exc.code, exc.message, result=result, delivery_id=exc.delivery_id)
        return status_for(exc), answer, None
    except ReceiverError as exc:
        known = name if name in rt.endpoints else "(unknown)"
        metrics.delivered(known, "rejected")
        size = len(body)
        if isinstance(exc, BodyTooLarge):
            size = declared or rt.settings.max_body_bytes + 1
        reason = rt.rejections.record(
            exc=exc, endpoint=name, remote_addr=remote, body=body, body_size=size, now=now
        )
        metrics.rejections.labels(reason).inc()
        log.info("refused callback for %r: %s %s", name[:64], exc.code, exc.message)
        return status_for(exc), error_body(exc.code, exc.message), None
    metrics.delivered(name, receipt.result)
    metrics.intake_seconds.observe(time.perf_counter() - started)
    stored: dict[str, object] = {
        "result": receipt.result,
        "delivery_id": receipt.delivery_id,
        "event_id": receipt.event_id,
    }
    return 200, orjson.dumps(stored), None

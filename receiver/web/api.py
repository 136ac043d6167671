"""HTTP routes, and the exception handlers where the project's errors become HTTP answers
(receiver.intake.endpoint answers the callback path itself, with the same status map and shape).

Every error answer has MetaStudio's own shape, ``{"error_code": ..., "error_msg": ...}``
(metastudio-list-smart-live-jobs.txt, Tables 15-17), and no input a client can send gets a 500.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.errors import (
    ReceiverError,
    StoreUnavailable,
)
from receiver.intake.responses import JSON, error_answer, status_for
from receiver.metrics import CONTENT_TYPE
from receiver.observability import request_id
from receiver.web import api_destinations, api_v1
from receiver.web.openapi import document

if TYPE_CHECKING:
    from receiver.web.runtime import Runtime

log = logging.getLogger("receiver.api")

_HTTP_CODES = {
    400: "RCV.BAD_REQUEST",
    401: "RCV.UNAUTHORIZED",
    403: "RCV.FORBIDDEN",
    404: "RCV.NOT_FOUND",
    405: "RCV.METHOD_NOT_ALLOWED",
    413: "RCV.BODY_TOO_LARGE",
    500: "RCV.INTERNAL_ERROR",
    503: "RCV.STORE_UNAVAILABLE",
}


def runtime(request: Request) -> Runtime:
    value: Runtime = request.app.state.runtime
    return value


async def healthz(request: Request) -> Response:
    return JSON({"status": "ok"})


async def readyz(request: Request) -> Response:
    rt = runtime(request)
    problem = await rt.store_problem()
    if problem is not None:
        return error_answer(503, StoreUnavailable.code, problem)
    return JSON({"status": "ready"})


async def metrics(request: Request) -> Response:
    return Response(runtime(request).metrics.render(), media_type=CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    return JSON(document())


async def on_receiver_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ReceiverError)
    # Callbacks are answered by receiver.intake.endpoint, which logs and shapes their refusals
    # itself.
    if isinstance(exc, StoreUnavailable):
        log.warning("503 for %s: %s", request.url.path, exc.message)
    return error_answer(status_for(exc), exc.code, exc.message)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"RCV.HTTP_{exc.status_code}")
    answer = error_answer(exc.status_code, code, str(exc.detail))
    if exc.headers:
        answer.headers.update(exc.headers)
    return answer


async def on_unexpected(request: Request, exc: Exception) -> Response:
    rid = request.scope.get("request_id")
    token = request_id.set(rid) if rid else None
    try:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
    finally:
        if token is not None:
            request_id.reset(token)
    answer = error_answer(500, _HTTP_CODES[500], "internal error; it has been logged")
    if rid:
        answer.headers["x-request-id"] = rid
    return answer


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    *api_v1.routes,
    *api_destinations.routes,
]

exception_handlers = {
    ReceiverError: on_receiver_error,
    HTTPException: on_http_error,
    Exception: on_unexpected,
}

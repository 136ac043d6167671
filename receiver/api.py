"""HTTP routes. The only module where the project's errors become HTTP answers.

Every error answer has MetaStudio's own shape, ``{"error_code": ..., "error_msg": ...}``
(metastudio-list-smart-live-jobs.txt, Tables 15-17), and no input a client can send gets a 500.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.errors import (
    BodyTooLarge,
    DecodeError,
    QueryError,
    ReceiverError,
    SignatureError,
    StoreUnavailable,
    UndecodableStored,
    UnknownEndpoint,
)
from receiver.intake import receive

if TYPE_CHECKING:
    from receiver.app import Runtime

log = logging.getLogger("receiver.api")

_STATUS: list[tuple[type[ReceiverError], int]] = [
    (SignatureError, 401),
    (DecodeError, 400),
    (UnknownEndpoint, 404),
    (BodyTooLarge, 413),
    (StoreUnavailable, 503),
    (QueryError, 400),
]
_HTTP_CODES = {
    400: "RCV.BAD_REQUEST",
    401: "RCV.UNAUTHORIZED",
    404: "RCV.NOT_FOUND",
    405: "RCV.METHOD_NOT_ALLOWED",
    413: "RCV.BODY_TOO_LARGE",
    500: "RCV.INTERNAL_ERROR",
    503: "RCV.STORE_UNAVAILABLE",
}


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_answer(status: int, code: str, message: str, **extra: Any) -> JSON:
    body: dict[str, Any] = {"error_code": code, "error_msg": message}
    body.update(extra)
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSON(body, status_code=status, headers=headers)


def runtime(request: Request) -> Runtime:
    value: Runtime = request.app.state.runtime
    return value


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def callback(request: Request) -> Response:
    rt = runtime(request)
    name = request.path_params["name"]
    endpoint = rt.endpoints.get(name)
    if endpoint is None:
        raise UnknownEndpoint(f"no endpoint named {name!r} is configured")
    body = await read_body(request, rt.settings.max_body_bytes)
    client = request.client
    receipt = await receive(
        endpoint=endpoint,
        body=body,
        query_string=request.scope["query_string"].decode("latin-1"),
        headers=request.headers,
        remote_addr=client.host if client else None,
        now=time.time(),
        writer=rt.writer,
    )
    return JSON(
        {"result": receipt.result, "delivery_id": receipt.delivery_id, "event_id": receipt.event_id}
    )


async def healthz(request: Request) -> Response:
    return JSON({"status": "ok"})


async def readyz(request: Request) -> Response:
    rt = runtime(request)
    problem = await rt.store_problem()
    if problem is not None:
        return error_answer(503, StoreUnavailable.code, problem)
    return JSON({"status": "ready"})


async def on_receiver_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ReceiverError)
    status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 400)
    endpoint = request.path_params.get("name")
    if isinstance(exc, StoreUnavailable):
        log.warning("503 for %s: %s", request.url.path, exc.message)
    elif endpoint is not None:
        log.info("refused callback for %r: %s %s", endpoint, exc.code, exc.message)
    if isinstance(exc, UndecodableStored):
        return error_answer(
            status,
            exc.code,
            exc.message,
            result="duplicate" if exc.duplicate else "stored",
            delivery_id=exc.delivery_id,
        )
    return error_answer(status, exc.code, exc.message)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"RCV.HTTP_{exc.status_code}")
    answer = error_answer(exc.status_code, code, str(exc.detail))
    if exc.headers:
        answer.headers.update(exc.headers)
    return answer


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_answer(500, _HTTP_CODES[500], "internal error; it has been logged")


routes = [
    Route("/callbacks/{name}", callback, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]

exception_handlers = {
    ReceiverError: on_receiver_error,
    HTTPException: on_http_error,
    Exception: on_unexpected,
}

"""JSON answers (orjson) and MetaStudio's error shape ``{"error_code", "error_msg"}``."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from receiver.errors import (
    ApiUnauthorized,
    BodyTooLarge,
    ClientGone,
    CsrfRefused,
    DecodeError,
    MetaStudioError,
    NotConfigured,
    NotFound,
    QueryError,
    ReceiverError,
    SignatureError,
    StoreUnavailable,
    UnknownEndpoint,
)

_STATUS: list[tuple[type[ReceiverError], int]] = [
    (SignatureError, 401),
    (ApiUnauthorized, 401),
    (CsrfRefused, 403),
    (DecodeError, 400),
    (QueryError, 400),
    (UnknownEndpoint, 404),
    (NotFound, 404),
    (NotConfigured, 409),
    (MetaStudioError, 502),
    (BodyTooLarge, 413),
    (ClientGone, 400),
    (StoreUnavailable, 503),
]
RETRY_AFTER_SECONDS = "5"  # on every 503: the store is expected back soon


def status_for(exc: ReceiverError) -> int:
    """The HTTP status of one of the project's errors."""
    return next((code for kind, code in _STATUS if isinstance(exc, kind)), 400)


def error_body(code: str, message: str, **extra: Any) -> bytes:
    body: dict[str, Any] = {"error_code": code, "error_msg": message}
    body.update(extra)
    return orjson.dumps(body)


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_answer(status: int, code: str, message: str, **extra: Any) -> JSON:
    body: dict[str, Any] = {"error_code": code, "error_msg": message}
    body.update(extra)
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
    return JSON(body, status_code=status, headers=headers)

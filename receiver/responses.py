"""JSON answers (orjson) and MetaStudio's error shape ``{"error_code", "error_msg"}``."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_answer(status: int, code: str, message: str, **extra: Any) -> JSON:
    body: dict[str, Any] = {"error_code": code, "error_msg": message}
    body.update(extra)
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSON(body, status_code=status, headers=headers)

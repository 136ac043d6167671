"""The OpenAPI document of every route (GET /openapi.json)."""

from __future__ import annotations

from typing import Any


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "metastudio-receiver", "version": "0.1.0"},
        "paths": {},
    }

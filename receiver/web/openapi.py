"""The OpenAPI 3.1 document of every route (``GET /openapi.json``).

Data, built once at import: ``DOCUMENT`` puts together the paths (``openapi_paths``: what
``api.py`` and ``api_v1.py`` do) and the component schemas (``openapi_schemas``: the fields of
``queries.event_json``, ``delivery_json``, ``rejection_json`` and ``job_view``), both written
with ``openapi_builders``. ``tests/web/test_openapi.py`` holds the two together (the document's
operations against the app's routes, and a schemathesis run of the app against the document).
"""

from __future__ import annotations

import copy
from typing import Any

from receiver import __version__
from receiver.web import openapi_destinations
from receiver.web.openapi_builders import Schema
from receiver.web.openapi_paths import PATHS
from receiver.web.openapi_schemas import SCHEMAS

DOCUMENT: Schema = {
    "openapi": "3.1.0",
    "info": {
        "title": "metastudio-receiver",
        "version": __version__,
        "description": "Receives, verifies, stores and serves Huawei Cloud MetaStudio livestream"
        " callbacks. Errors are {error_code, error_msg}; stream keys are masked in every answer.",
    },
    "paths": {**PATHS, **openapi_destinations.PATHS},
    "components": {
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "description": "One of api_tokens."}
        },
        "schemas": {**SCHEMAS, **openapi_destinations.SCHEMAS},
    },
}


def document() -> dict[str, Any]:
    """The document: a copy, so that a caller's changes never reach the next answer."""
    return copy.deepcopy(DOCUMENT)

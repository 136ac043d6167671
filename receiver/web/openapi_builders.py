"""The small vocabulary the OpenAPI document is written in: JSON Schema pieces (``fields``,
``nullable``, ``enum``, ``ref`` ...), parameters, answers with their X-Request-Id header, and
``operation`` (one route's method, with the 400/401/503 every query route shares). No route and
no stored object is described here: ``openapi_schemas`` and ``openapi_paths`` do that with these.
"""

from __future__ import annotations

from typing import Any

from receiver.store.queries import MAX_FILTER_LENGTH, MAX_LIMIT

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
TIME: Schema = {"type": "string", "format": "date-time"}
ANY_OBJECT: Schema = {"type": "object", "additionalProperties": True}
NO_NUL = r"^[^\u0000]*$"
TEXT: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_FILTER_LENGTH, "pattern": NO_NUL}
_KINDS = {"str": STR, "int": INT, "num": NUMBER, "time": TIME, "obj": ANY_OBJECT}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or null (JSON Schema 2020-12, as OpenAPI 3.1 uses it)."""
    if "type" not in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    nulls = {"enum": [*schema["enum"], None]} if "enum" in schema else {}
    return {**schema, "type": [schema["type"], "null"], **nulls}


def enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


def fields(spec: str, **special: Schema) -> Schema:
    """An object whose fields are all present. ``spec`` lists ``name:kind`` (kind: str, int, num,
    time or obj; str when left out), a trailing ``?`` meaning "or null"; ``special`` adds fields
    with schemas of their own."""
    properties: dict[str, Schema] = {}
    for item in spec.split():
        name, _, kind = item.rstrip("?").partition(":")
        schema = _KINDS[kind or "str"]
        properties[name] = nullable(schema) if item.endswith("?") else schema
    properties.update(special)
    return {"type": "object", "required": list(properties), "properties": properties}


def closed(properties: dict[str, Schema], *required: str) -> Schema:
    """An object of only these properties (a request body: anything else is refused)."""
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return {**schema, "additionalProperties": False}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def described(schema: Schema, description: str) -> Schema:
    return {**schema, "description": description}


def page(key: str, item: str) -> Schema:
    """One page of a listing: ``key`` holds the ``item`` objects, then the cursor to go on."""
    return fields("next_cursor?", **{key: array(ref(item))})


def param(where: str, name: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema or TEXT,
    }


def limit(high: int = MAX_LIMIT, default: int = 100) -> Schema:
    schema = {"type": "integer", "minimum": 1, "maximum": high, "default": default}
    return param("query", "limit", f"Page size, 1 to {high}.", schema)


def json_body(schema: Schema, *, required: bool) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def answer(description: str, schema: Schema, media: str = "application/json") -> Schema:
    request_id = described(STR, "The caller's X-Request-Id when short and plain, else a new id.")
    return {
        "description": description,
        "headers": {"X-Request-Id": {"schema": request_id}},
        "content": {media: {"schema": schema}},
    }


def error(description: str, schema: str = "Error") -> Schema:
    return answer(description, ref(schema))


def unavailable() -> Schema:
    response = error("The store did not answer (never a 200 that was not stored); retry later.")
    response["headers"]["Retry-After"] = {"schema": described(STR, "Seconds to wait.")}
    return response


def operation(
    op_id: str,
    summary: str,
    responses: dict[str, Schema],
    *parameters: Schema,
    secured: bool = False,
    **extra: Any,
) -> dict[str, Schema]:
    """One GET (or ``method=``) operation. ``secured``: needs a bearer token, reads the store."""
    method = extra.pop("method", "get")
    result: Schema = {"operationId": op_id, "summary": summary, "parameters": list(parameters)}
    result["tags"] = ["query" if secured else "callbacks" if method == "post" else "service"]
    if secured:
        result["security"] = [{"bearerAuth": []}]
        responses = {
            **responses,
            "400": error("A parameter is unknown, repeated or malformed; error_msg names it."),
            "401": error("No bearer token, or not one of api_tokens."),
            "503": unavailable(),
        }
    return {method: {**result, **extra, "responses": responses}}

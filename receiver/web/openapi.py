"""The OpenAPI 3.1 document of every route (``GET /openapi.json``).

Data, built once at import: ``DOCUMENT`` says what ``api.py`` and ``api_v1.py`` do, and its
schemas list the fields of ``queries.event_json``, ``delivery_json``, ``rejection_json`` and
``job_view``. ``tests/web/test_openapi.py`` holds the two together (the document's operations
against
the app's routes, and a schemathesis run of the app against the document).
"""

from __future__ import annotations

import copy
from typing import Any

from receiver import __version__
from receiver.store.models import DeliveryStatus
from receiver.store.queries import FINDING_STATUSES, MAX_FILTER_LENGTH, MAX_LIMIT, MAX_TIMELINE

Schema = dict[str, Any]

# signing.parse_hw_time and the hex of an HMAC-SHA256.
HEX_TIME = r"^[0-9a-fA-F]{1,16}$"
HEX_SIGNATURE = r"^[0-9a-fA-F]{64}$"

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
TIME: Schema = {"type": "string", "format": "date-time"}
ANY_OBJECT: Schema = {"type": "object", "additionalProperties": True}
NO_NUL = r"^[^\u0000]*$"
TEXT: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_FILTER_LENGTH, "pattern": NO_NUL}
_KINDS = {"str": STR, "int": INT, "num": {"type": "number"}, "time": TIME, "obj": ANY_OBJECT}


# -- builders ------------------------------------------------------------------------------------


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


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def described(schema: Schema, description: str) -> Schema:
    return {**schema, "description": description}


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


def page(key: str, item: str) -> Schema:
    return fields("next_cursor?", **{key: array(ref(item))})


# -- component schemas ---------------------------------------------------------------------------

RESULT = enum("stored", "duplicate")
STATUS = enum(*DeliveryStatus.ALL)
REASONS = enum(
    *("signature_missing", "signature_malformed", "signature_mismatch", "signature_expired"),
    *("unknown_endpoint", "body_too_large", "undecodable", "refused"),
)
SCHEMAS: dict[str, Schema] = {
    "Event": fields(
        "id:int endpoint event_type room_id? job_id? received_at:time signed_at:time?"
        " delivery_id:int",
        message=described(ANY_OBJECT, "Decoded and typed; every stream_key masked."),
        message_encoding=enum("string", "object"),
        extra=described(ANY_OBJECT, "Top-level body fields besides event_type and message."),
    ),
    "EventPage": page("events", "Event"),
    "Delivery": fields(
        "id:int endpoint received_at:time signed_at:time? body_size:int body_sha256"
        " remote_addr? error? duplicate_of:int?",
        status=STATUS,
        key_index=nullable({"type": "integer", "minimum": 0}),
        time_unit=nullable(enum("seconds", "milliseconds")),
        body=nullable(described(STR, "The raw body as text, every stream_key masked.")),
        headers={"type": "object", "additionalProperties": STR},
        query=described(
            array({**array(STR), "minItems": 2, "maxItems": 2}),
            "The request's query as [name, value] pairs, credentials left out.",
        ),
        event_id=nullable(described(INT, "Its event (for a duplicate, the original's).")),
    ),
    "DeliveryPage": page("deliveries", "Delivery"),
    "Rejection": fields(
        "id:int received_at:time endpoint? error_code detail remote_addr? body_size:int"
        " body_sha256",
        reason=REASONS,
        clock_skew_seconds=nullable(described(_KINDS["num"], "now - hwTime, in seconds.")),
        body_prefix=described(STR, "The body's first bytes as text, every stream_key masked."),
        suppressed_before=described(
            {"type": "integer", "minimum": 0},
            "Refusals left out of the log (over its rate limit) just before this one.",
        ),
    ),
    "RejectionPage": page("rejections", "Rejection"),
    "JobView": fields(
        "job_id job_key room_id? event_count:int first_received_at:time?"
        " last_received_at:time? next_cursor?",
        event_counts={"type": "object", "additionalProperties": INT},
        rtmp=nullable(ref("RtmpState")),
        script=nullable(ref("ScriptPosition")),
        replies=ref("Replies"),
        timeline=described(array(ref("Event")), "The job's events, oldest first (paged)."),
        metastudio=nullable(ref("JobSnapshot")),
        findings=described(array(ref("Finding")), "The cross-check's findings about the job."),
    ),
    "JobSnapshot": fields(
        "job_id room_id state? fetched_at:time first_fetched_at:time",
        job=described(ANY_OBJECT, "The job as MetaStudio's job query returned it; key masked."),
    ),
    "Finding": fields(
        "id:int kind room_id? job_id? endpoint? event_id:int? detail first_seen_at:time"
        " last_seen_at:time resolved_at:time? occurrences:int",
        status=enum("open", "acknowledged", "muted", "resolved"),
        data=ANY_OBJECT,
        acknowledgement=nullable(
            described(
                fields("by at:time reason", action=enum("ack", "mute")),
                "Who acknowledged or muted it (a name and the token's id, a hash), when, why.",
            )
        ),
    ),
    "FindingPage": page("findings", "Finding"),
    "CrosscheckReport": fields(
        "started_at:time finished_at:time? skipped? rooms_checked:int rooms_failed:int"
        " jobs_seen:int findings_opened:int findings_resolved:int",
        open_findings=array(ref("Finding")),
    ),
    "RtmpState": fields(
        "state? since:time? since_event_id:int last_event_id:int output_url?",
        stream_key=nullable(described(STR, "Masked: **** and at most the last 4 characters.")),
    ),
    "ScriptPosition": fields(
        "scene_script_name? shoot_script_sequence_no:int? shoot_script_title? since:time?"
        " event_id:int"
    ),
    "Replies": fields("finished:int", recent=array(fields("reply_id? at:time? event_id:int"))),
    "Error": fields("error_code error_msg"),
    "UndecodableError": {
        "description": "A correctly signed body that did not decode: kept (undecodable), refused.",
        "allOf": [ref("Error"), fields("delivery_id:int", result=RESULT)],
    },
    "CallbackReceipt": fields("delivery_id:int event_id:int?", result=RESULT),
    "CallbackBody": fields(
        "",
        event_type=described(STR, "A documented type or another (stored, not refused)."),
        message=described(
            {"oneOf": [STR, ANY_OBJECT]}, "JSON text of an object (as sent), or the object."
        ),
    ),
}


# -- paths ---------------------------------------------------------------------------------------

CURSOR = param(
    "query",
    "cursor",
    "next_cursor of the previous page, with the same filters. Opaque: one this API did not issue,"
    " or issued for other filters, is refused with 400.",
    {"type": "string", "minLength": 1, "maxLength": 200},
)
ENDPOINT = param("query", "endpoint", "Only this endpoint (its configured name).")
_SPELLINGS = (
    " Either of MetaStudio's spellings of a UUID-shaped id (32 hex digits, as callbacks send it,"
    " or dashed, as the job query API lists it; any case) matches both; other ids match exactly."
)
ROOM_ID = param("query", "room_id", "Only this room." + _SPELLINGS)
JOB_ID = param("query", "job_id", "Only this job." + _SPELLINGS)
SINCE = param("query", "since", "Received at or after this RFC 3339 time.", TIME)
UNTIL = param("query", "until", "Received at or before this RFC 3339 time.", TIME)
SIGNATURE = {"type": "string", "pattern": HEX_SIGNATURE}
SIGNED_TIME = {"type": "string", "pattern": HEX_TIME}

CALLBACK = operation(
    "receiveCallback",
    "Receive one MetaStudio callback; answered only once it is stored",
    {
        "200": answer("Committed to the store.", ref("CallbackReceipt")),
        "400": error("The body is not a MetaStudio event (it was kept).", "UndecodableError"),
        "401": error("Signature missing, malformed, wrong or expired."),
        "404": error("No endpoint of that name."),
        "408": error("The request head or body did not arrive within client_timeout_seconds."),
        "413": error("Body over max_body_bytes."),
        "414": error("Request target over 8 KiB."),
        "431": error("Over 100 header fields, or a request head over 64 KiB."),
        "503": unavailable(),
    },
    param("path", "name", "The endpoint's name.", {**TEXT, "examples": ["shop-a"]}),
    param("query", "hwSecret", "MSS_A: hex HMAC-SHA256 of the signed string.", SIGNATURE),
    param("query", "hwTime", "MSS_A: signing time, hex Unix seconds or milliseconds.", SIGNED_TIME),
    param("header", "x-hw-mss-secret", "MSS_A_HEAD: the signature.", SIGNATURE),
    param("header", "x-hw-mss-time", "MSS_A_HEAD: the signing time.", SIGNED_TIME),
    method="post",
    description="Signed per the endpoint's auth_type: MSS_A in the query (hwSecret, hwTime),"
    " MSS_A_HEAD in headers, NONE by the registered URL's own query parameters. The body is read"
    " as JSON whatever its Content-Type.",
    requestBody={
        "required": True,
        "content": {
            "application/json": {"schema": ref("CallbackBody")},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
)


def status(op_id: str, summary: str, value: str, **more: Schema) -> dict[str, Schema]:
    body = fields("", status=enum(value))
    return operation(op_id, summary, {"200": answer(summary, body), **more})


PATHS: dict[str, dict[str, Schema]] = {
    "/callbacks/{name}": CALLBACK,
    "/healthz": status("healthz", "The process answers", "ok"),
    "/readyz": status("readyz", "The store answers", "ready", **{"503": unavailable()}),
    "/metrics": operation(
        "metrics", "Prometheus metrics", {"200": answer("Text format.", STR, "text/plain")}
    ),
    "/openapi.json": operation(
        "openapi", "This document", {"200": answer("OpenAPI 3.1.", ANY_OBJECT)}
    ),
    "/v1/events": operation(
        "listEvents",
        "Stored events, oldest first",
        {"200": answer("A page of events.", ref("EventPage"))},
        ENDPOINT,
        ROOM_ID,
        JOB_ID,
        param(
            "query",
            "event_type",
            "Comma-separated event types (at most 50); an unknown type matches nothing.",
            {"type": "string", "pattern": r"^[^\u0000]*[^,\s\u0000][^\u0000]*$"},
        ),
        SINCE,
        UNTIL,
        limit(),
        CURSOR,
        secured=True,
    ),
    "/v1/events/{event_id}": operation(
        "getEvent",
        "One stored event",
        {"200": answer("The event.", ref("Event")), "404": error("No such event.")},
        param("path", "event_id", "The event's id.", {**INT, "minimum": 0, "maximum": 10**18 - 1}),
        secured=True,
    ),
    "/v1/jobs/{job_id}": operation(
        "getJob",
        "A job's timeline and what it implies",
        {"200": answer("The job.", ref("JobView")), "404": error("No event names this job.")},
        param("path", "job_id", "MetaStudio job id." + _SPELLINGS),
        limit(MAX_TIMELINE, 1000),
        CURSOR,
        secured=True,
    ),
    "/v1/deliveries": operation(
        "listDeliveries",
        "Verified deliveries as received, oldest first",
        {"200": answer("A page of deliveries.", ref("DeliveryPage"))},
        param("query", "status", "Only this status.", STATUS),
        ENDPOINT,
        SINCE,
        UNTIL,
        limit(),
        CURSOR,
        secured=True,
    ),
    "/v1/rejections": operation(
        "listRejections",
        "Refused callbacks (a bounded, rate-limited log), oldest first",
        {"200": answer("A page of rejections.", ref("RejectionPage"))},
        ENDPOINT,
        param("query", "reason", "Only this reason (see Rejection.reason)."),
        SINCE,
        limit(),
        CURSOR,
        secured=True,
    ),
    "/v1/findings": operation(
        "listFindings",
        "What the cross-checks against MetaStudio found, oldest first",
        {"200": answer("A page of findings.", ref("FindingPage"))},
        ROOM_ID,
        JOB_ID,
        param("query", "kind", "Only this kind, e.g. unknown_job."),
        param(
            "query",
            "status",
            "open (neither resolved nor acknowledged), acknowledged, muted, resolved, or all "
            "(the default).",
            enum(*FINDING_STATUSES),
        ),
        limit(),
        CURSOR,
        secured=True,
    ),
    "/v1/findings/{finding_id}/ack": operation(
        "ackFinding",
        "Acknowledge or mute a finding, with a reason; it then no longer counts as open",
        {
            "200": answer("The finding, with its acknowledgement.", ref("Finding")),
            "403": error("A console session without the page's CSRF token (X-CSRF-Token)."),
            "404": error("No such finding."),
            "413": error("The body is over 4096 bytes."),
        },
        param("path", "finding_id", "The finding's id.", {"type": "string", "pattern": "^[0-9]+$"}),
        secured=True,
        method="post",
        description="ack: handled; the finding opens again if its condition clears and comes"
        " back. mute: it stays out of the open list however often it recurs.",
        requestBody={
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "action": enum("ack", "mute"),
                            "reason": {"type": "string", "minLength": 1, "maxLength": 500},
                            "by": {"type": "string", "pattern": r"^[\w .@+-]{1,64}$"},
                        },
                        "required": ["reason"],
                        "additionalProperties": False,
                    }
                }
            },
        },
    ),
    "/v1/events/stream": operation(
        "streamEvents",
        "Stored events as server-sent events, as they commit; resumable with Last-Event-ID",
        {
            "200": answer(
                "One message per event: id is the event's id, data the Event as JSON text.",
                {
                    "type": "object",
                    "required": ["id", "data"],
                    "properties": {"id": STR, "event": STR, "data": STR},
                },
                "text/event-stream",
            )
        },
        ROOM_ID,
        JOB_ID,
        param(
            "query",
            "after",
            "Start after this event id (0: from the first). Default: with what commits next.",
            {"type": "string", "pattern": "^[0-9]{1,18}$"},
        ),
        param(
            "header",
            "last-event-id",
            "The id of the last event received: the stream goes on after it (wins over after).",
            {"type": "string", "pattern": "^[0-9]{1,18}$"},
        ),
        secured=True,
    ),
    "/v1/crosscheck": operation(
        "runCrosscheck",
        "Cross-check the stored events against MetaStudio's job query now",
        {
            "200": answer("What the run did and the open findings.", ref("CrosscheckReport")),
            "409": error("No [metastudio] section is configured."),
            # MetaStudio failing is not an error of this call: the report says rooms_failed.
            "413": error("The body is over 4096 bytes (it holds at most a room_id)."),
        },
        secured=True,
        method="post",
        requestBody={
            "required": False,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"room_id": nullable(described(TEXT, "Only this room."))},
                        "additionalProperties": False,
                    }
                }
            },
        },
    ),
}

DOCUMENT: Schema = {
    "openapi": "3.1.0",
    "info": {
        "title": "metastudio-receiver",
        "version": __version__,
        "description": "Receives, verifies, stores and serves Huawei Cloud MetaStudio livestream"
        " callbacks. Errors are {error_code, error_msg}; stream keys are masked in every answer.",
    },
    "paths": PATHS,
    "components": {
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "description": "One of api_tokens."}
        },
        "schemas": SCHEMAS,
    },
}


def document() -> dict[str, Any]:
    """The document: a copy, so that a caller's changes never reach the next answer."""
    return copy.deepcopy(DOCUMENT)

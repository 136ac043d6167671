"""The OpenAPI document's paths: every route ``api.py`` and ``api_v1.py`` serve, with their
parameters (the shared filters: endpoint, room_id, job_id, since, until, limit, cursor), the
callback's signature parameters and body, and each route's answers.

``tests/web/test_openapi.py`` holds these and the app's routes together.
"""

from __future__ import annotations

from receiver.store.queries import FINDING_STATUSES, MAX_TIMELINE
from receiver.web.openapi_builders import (
    ANY_OBJECT,
    INT,
    STR,
    TEXT,
    TIME,
    Schema,
    answer,
    closed,
    described,
    enum,
    error,
    fields,
    json_body,
    limit,
    nullable,
    operation,
    param,
    ref,
    unavailable,
)
from receiver.web.openapi_schemas import STATUS

# signing.parse_hw_time and the hex of an HMAC-SHA256.
HEX_TIME = r"^[0-9a-fA-F]{1,16}$"
HEX_SIGNATURE = r"^[0-9a-fA-F]{64}$"

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
# An event id as the stream's after / Last-Event-ID take it (text, at most 18 digits).
EVENT_ID_TEXT = {"type": "string", "pattern": "^[0-9]{1,18}$"}

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


def _status(op_id: str, summary: str, value: str, **more: Schema) -> dict[str, Schema]:
    body = fields("", status=enum(value))
    return operation(op_id, summary, {"200": answer(summary, body), **more})


def _listing(op_id: str, summary: str, key: str, item: str, *filters: Schema) -> dict[str, Schema]:
    """A paged listing: ``key`` holds the ``item`` objects (the ``{item}Page`` schema, made by
    ``page(key, item)``); its filters, then limit and cursor."""
    return operation(
        op_id,
        summary,
        {"200": answer(f"A page of {key}.", ref(f"{item}Page"))},
        *filters,
        limit(),
        CURSOR,
        secured=True,
    )


PATHS: dict[str, dict[str, Schema]] = {
    "/callbacks/{name}": CALLBACK,
    "/healthz": _status("healthz", "The process answers", "ok"),
    "/readyz": _status("readyz", "The store answers", "ready", **{"503": unavailable()}),
    "/metrics": operation(
        "metrics", "Prometheus metrics", {"200": answer("Text format.", STR, "text/plain")}
    ),
    "/openapi.json": operation(
        "openapi", "This document", {"200": answer("OpenAPI 3.1.", ANY_OBJECT)}
    ),
    "/v1/events": _listing(
        "listEvents",
        "Stored events, oldest first",
        "events",
        "Event",
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
    "/v1/deliveries": _listing(
        "listDeliveries",
        "Verified deliveries as received, oldest first",
        "deliveries",
        "Delivery",
        param("query", "status", "Only this status.", STATUS),
        ENDPOINT,
        SINCE,
        UNTIL,
    ),
    "/v1/rejections": _listing(
        "listRejections",
        "Refused callbacks (a bounded, rate-limited log), oldest first",
        "rejections",
        "Rejection",
        ENDPOINT,
        param("query", "reason", "Only this reason (see Rejection.reason)."),
        SINCE,
    ),
    "/v1/findings": _listing(
        "listFindings",
        "What the cross-checks against MetaStudio found, oldest first",
        "findings",
        "Finding",
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
        requestBody=json_body(
            closed(
                {
                    "action": enum("ack", "mute"),
                    # Not blank: a reason of only spaces or line breaks is refused (400).
                    "reason": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 500,
                        "pattern": r"\S",
                    },
                    "by": {"type": "string", "pattern": r"^[\w .@+-]{1,64}$"},
                },
                "reason",
            ),
            required=True,
        ),
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
            EVENT_ID_TEXT,
        ),
        param(
            "header",
            "last-event-id",
            "The id of the last event received: the stream goes on after it (wins over after).",
            EVENT_ID_TEXT,
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
        requestBody=json_body(
            closed({"room_id": nullable(described(TEXT, "Only this room."))}), required=False
        ),
    ),
}

"""The OpenAPI document's part for ``/v1/destinations`` (receiver.web.api_destinations): its
paths and the schemas of a destination's overview, attempts and messages."""

from __future__ import annotations

from receiver.web.openapi_builders import (
    INT,
    NUMBER,
    STR,
    TIME,
    Schema,
    answer,
    array,
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
)

NAME = param(
    "path", "name", "The destination's name.", {"type": "string", "pattern": "^[a-z0-9-]{1,40}$"}
)
_NOT_FOUND = {"404": error("No destination of that name is configured.")}
_DESTINATION = {"200": answer("The destination.", ref("Destination")), **_NOT_FOUND}
_NAMES = {"type": "array", "items": STR}

SCHEMAS: dict[str, Schema] = {
    "Destination": fields(
        "name url format last_delivered_at:time? last_error? last_error_at:time?"
        " failing_since:time? retry_at:time? disabled_at:time? disabled_reason? sender?",
        kind=enum("http", "redis", "nats", "rabbitmq"),
        state=described(
            enum("active", "retrying", "disabled"),
            "retrying: the destination is failing (its place kept) or messages it refused are "
            "waiting for their next attempt.",
        ),
        lag_events=described(INT, "Messages stored and not yet taken, parked ones included."),
        lag_seconds=described(NUMBER, "Age of the oldest of them; 0 when up to date."),
        dead_letters=INT,
        parked=described(INT, "Messages waiting on their own (refused, behind one, resent)."),
        failures=described(INT, "Failed attempts in a row."),
        position=fields("event_id:int finding_change_id:int"),
        filters=fields(
            "",
            event_types=nullable(_NAMES),
            endpoints=nullable(_NAMES),
            findings={"type": "boolean"},
            events={"type": "boolean"},
        ),
    ),
    "Attempt": fields(
        "id:int at:time message_id messages:int status_code:int? latency_ms:num error? response?",
        outcome=enum("delivered", "failed", "refused", "gone", "dead_lettered"),
    ),
    "ForwardMessage": fields(
        "message_id attempts:int next_attempt_at:time? last_error? queued_at:time",
        state=enum("pending", "dead"),
        resend={"type": "boolean"},
    ),
}

_EVENT_IDS = {"type": "array", "items": {**INT, "minimum": 0}, "minItems": 1, "maxItems": 10000}

PATHS: dict[str, dict[str, Schema]] = {
    "/v1/destinations": operation(
        "listDestinations",
        "Where stored events are handed on, and how each destination is doing",
        {
            "200": answer(
                "Every configured destination.", fields("", destinations=array(ref("Destination")))
            )
        },
        secured=True,
    ),
    "/v1/destinations/{name}": operation(
        "getDestination", "One destination", _DESTINATION, NAME, secured=True
    ),
    "/v1/destinations/{name}/attempts": operation(
        "listDestinationAttempts",
        "The destination's attempts, newest first (a bounded log)",
        {
            "200": answer(
                "A page of attempts; next_before pages back.",
                fields("next_before:int?", attempts=array(ref("Attempt"))),
            ),
            **_NOT_FOUND,
        },
        NAME,
        limit(1000),
        param(
            "query",
            "before",
            "Attempts older than this attempt id.",
            {"type": "string", "pattern": "^[0-9]{1,18}$"},
        ),
        secured=True,
    ),
    "/v1/destinations/{name}/messages": operation(
        "listDestinationMessages",
        "Messages dead-lettered (state=dead, the default) or waiting on their own (pending)",
        {
            "200": answer("Oldest first.", fields("", messages=array(ref("ForwardMessage")))),
            **_NOT_FOUND,
        },
        NAME,
        param("query", "state", "dead or pending.", enum("dead", "pending")),
        limit(),
        secured=True,
    ),
    "/v1/destinations/{name}/resend": operation(
        "resendToDestination",
        "Send events (by id or received time) or the dead letters again, ids unchanged",
        {
            "200": answer(
                "How many were queued, and skipped (unknown ids, or not for this destination).",
                fields("queued:int skipped:int"),
            ),
            **_NOT_FOUND,
            "413": error("The body is over 256 KiB."),
        },
        NAME,
        secured=True,
        method="post",
        requestBody=json_body(
            closed(
                {
                    "event_ids": _EVENT_IDS,
                    "since": described(TIME, "Events received at or after this time."),
                    "until": described(TIME, "Events received at or before this time."),
                    "dead_letters": {"type": "boolean"},
                }
            ),
            required=True,
        ),
    ),
    "/v1/destinations/{name}/enable": operation(
        "enableDestination",
        "Send to it again, from where it was (a failing one is tried at once)",
        {**_DESTINATION, "413": error("The body is over 256 KiB.")},
        NAME,
        secured=True,
        method="post",
    ),
    "/v1/destinations/{name}/disable": operation(
        "disableDestination",
        "Stop sending to it, keeping its place",
        {**_DESTINATION, "413": error("The body is over 256 KiB.")},
        NAME,
        secured=True,
        method="post",
        requestBody=json_body(
            closed(
                {"reason": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S"}}
            ),
            required=False,
        ),
    ),
}

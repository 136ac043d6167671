"""The OpenAPI document's component schemas: the stored objects as the API answers them.

Each lists the fields of what builds it (``queries.event_json``, ``delivery_json``,
``rejection_json``, ``job_view``, the cross-check's report and findings) and the callback's own
body, receipt and errors; ``tests/web/test_openapi.py`` checks the answers against them.
"""

from __future__ import annotations

from receiver.store.models import DeliveryStatus
from receiver.web.openapi_builders import (
    ANY_OBJECT,
    INT,
    NUMBER,
    STR,
    Schema,
    array,
    described,
    enum,
    fields,
    nullable,
    page,
    ref,
)

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
        clock_skew_seconds=nullable(described(NUMBER, "now - hwTime, in seconds.")),
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

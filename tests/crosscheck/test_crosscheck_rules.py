"""The cross-check rules as pure functions of (events, jobs, now): no server, no database."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from receiver.config import EndpointSettings
from receiver.crosscheck import rules
from receiver.crosscheck.signature_reuse import SignedDelivery, reused_signatures
from receiver.protocol.signing import AuthType

NOW = datetime(2024, 9, 10, 12, 0, tzinfo=UTC)
URL = "https://hooks.example.com/callbacks/shop-a"
ENDPOINTS = {
    "shop-a": EndpointSettings(
        name="shop-a", registered_url=URL, auth_type=AuthType.MSS_A, keys=("k",)
    ),
}
ALL_TYPES = ["SHOOT_SCRIPT_SWITCH", "RTMP_STREAM_STATE_CHANGE", "REPLY_COMMAND_FINISH"]


def job(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "job_id": "job-1",
        "room_id": "room-1",
        "state": "PROCESSING",
        "start_time": "2024-09-10T10:00:00Z",
        "end_time": None,
        "live_event_callback_config": {
            "live_event_type_callback_url": URL,
            "auth_type": "MSS_A",
            "key": "secret",
            "callback_event_type": ALL_TYPES,
        },
    }
    data.update(overrides)
    return data


def activity(**overrides: Any) -> rules.JobActivity:
    data: dict[str, Any] = {
        "job_id": "job-1",
        "room_id": "room-1",
        "endpoints": frozenset({"shop-a"}),
        "event_count": 5,
        "first_at": NOW - timedelta(hours=1),
        "last_at": NOW - timedelta(minutes=1),
        "first_event_id": 10,
        "last_event_id": 14,
        "rtmp_state": "CONNECTED",
        "rtmp_at": NOW - timedelta(minutes=30),
        "rtmp_event_id": 12,
    }
    data.update(overrides)
    return rules.JobActivity(**data)


def kinds(drafts: list[rules.Draft]) -> list[str]:
    return sorted(d.kind for d in drafts)


def evaluate(jobs: list[dict[str, Any]], acts: list[rules.JobActivity], **kw: Any) -> list[Any]:
    return rules.evaluate_room(
        room_id="room-1", jobs=jobs, activity=acts, endpoints=ENDPOINTS, now=NOW, **kw
    )


def test_a_healthy_job_gives_no_finding() -> None:
    assert evaluate([job()], [activity()]) == []


def test_event_for_a_job_metastudio_does_not_list() -> None:
    drafts = evaluate([job(job_id="other")], [activity()])
    assert kinds(drafts) == [rules.UNKNOWN_JOB]
    assert drafts[0].job_id == "job-1" and drafts[0].event_id == 10
    assert "room-1" in drafts[0].detail


@pytest.mark.parametrize(
    ("first", "last", "flagged"),
    [
        (NOW - timedelta(hours=3), NOW - timedelta(minutes=1), True),  # before start - skew
        (datetime(2024, 9, 10, 9, 59, tzinfo=UTC), NOW, False),  # within the 120 s skew
        (datetime(2024, 9, 10, 9, 57, 59, tzinfo=UTC), NOW, True),  # just past it
    ],
)
def test_events_outside_the_start_window(first: datetime, last: datetime, flagged: bool) -> None:
    drafts = evaluate([job()], [activity(first_at=first, last_at=last)])
    assert (rules.OUTSIDE_JOB_WINDOW in kinds(drafts)) is flagged


def test_events_after_the_end_time_and_a_configurable_skew() -> None:
    ended = job(state="SUCCEED", end_time="2024-09-10T11:00:00Z")
    late = activity(last_at=datetime(2024, 9, 10, 11, 10, tzinfo=UTC), rtmp_state="END")
    assert rules.OUTSIDE_JOB_WINDOW in kinds(evaluate([ended], [late]))
    wide = rules.Policy(window_skew=timedelta(minutes=15))
    assert rules.OUTSIDE_JOB_WINDOW not in kinds(evaluate([ended], [late], policy=wide))


def test_stream_ended_but_job_still_running_after_grace() -> None:
    recent_end = activity(rtmp_state="END", rtmp_at=NOW - timedelta(seconds=60))
    assert evaluate([job()], [recent_end]) == []  # within the grace period
    old_end = activity(rtmp_state="END", rtmp_at=NOW - timedelta(minutes=10))
    drafts = evaluate([job(state="WAITING")], [old_end])
    assert kinds(drafts) == [rules.STREAM_ENDED_JOB_RUNNING]
    assert drafts[0].data["job_state"] == "WAITING"


@pytest.mark.parametrize("state", ["SUCCEED", "FAILED", "BLOCKED"])
def test_job_ended_but_stream_last_seen_connected(state: str) -> None:
    ended = job(state=state, end_time="2024-09-10T11:00:00Z", block_reason="r")
    drafts = evaluate([ended], [activity(last_at=datetime(2024, 9, 10, 10, 30, tzinfo=UTC))])
    assert rules.JOB_ENDED_STREAM_CONNECTED in kinds(drafts)


def test_failed_job_reports_its_error_info() -> None:
    failed = job(state="FAILED", error_info={"error_code": "MSS.123", "error_msg": "boom"})
    drafts = [d for d in evaluate([failed], []) if d.kind == rules.JOB_FAILED]
    assert len(drafts) == 1 and "MSS.123" in drafts[0].detail and "boom" in drafts[0].detail


def test_blocked_job_reports_its_block_reason() -> None:
    drafts = evaluate([job(state="BLOCKED", block_reason="violation")], [])
    assert kinds(drafts) == [rules.JOB_BLOCKED]
    assert "violation" in drafts[0].detail


def test_callback_config_pointing_elsewhere_other_auth_and_missing_types() -> None:
    config = {
        "live_event_type_callback_url": "https://other.example.com/cb?token=abc",
        "auth_type": "MSS_A_HEAD",
        "key": "secret",
        "callback_event_type": ["RTMP_STREAM_STATE_CHANGE"],
    }
    drafts = evaluate([job(live_event_callback_config=config)], [activity()])
    assert kinds(drafts) == sorted(
        [rules.CALLBACK_URL_MISMATCH, rules.CALLBACK_AUTH_MISMATCH, rules.CALLBACK_EVENTS_MISSING]
    )
    url = next(d for d in drafts if d.kind == rules.CALLBACK_URL_MISMATCH)
    assert "abc" not in url.detail and "token=****" in url.detail  # NONE credentials masked
    missing = next(d for d in drafts if d.kind == rules.CALLBACK_EVENTS_MISSING)
    assert missing.data["missing"] == ["REPLY_COMMAND_FINISH", "SHOOT_SCRIPT_SWITCH"]


def test_fingerprint_is_one_per_condition() -> None:
    a = evaluate([job(job_id="x")], [activity(event_count=1)])[0]
    b = evaluate([job(job_id="x")], [activity(event_count=9, first_event_id=99)])[0]
    assert a.fingerprint == b.fingerprint  # the same condition, seen again
    c = evaluate([job(job_id="x")], [activity(job_id="job-2")])[0]
    assert c.fingerprint != a.fingerprint


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "yesterday",
        "2024-09-10 10:00",
        12345,
        "2024-09-10T10:00:00",
        # Readable, but skew and grace arithmetic on them would overflow.
        "9999-12-31T23:59:59Z",
        "0001-01-01T00:00:00Z",
    ],
)
@pytest.mark.parametrize("field", ["start_time", "end_time", "lastupdate_time"])
def test_unreadable_job_times_are_ignored_not_fatal(value: Any, field: str) -> None:
    assert rules.parse_time(value) is None
    found = kinds(evaluate([job(**{field: value})], [activity()]))
    assert rules.OUTSIDE_JOB_WINDOW not in found


# -- one signature, different bodies -----------------------------------------------------------

SIGNED = datetime(2024, 9, 10, 11, 59, 30, tzinfo=UTC)


def signed(delivery_id: int, body: str, after: float, **overrides: Any) -> SignedDelivery:
    """A delivery of shop-a signed at SIGNED (seconds, first key), received ``after`` s later."""
    data: dict[str, Any] = {
        "delivery_id": delivery_id,
        "endpoint": "shop-a",
        "signed_at": SIGNED,
        "time_unit": "seconds",
        "key_index": 0,
        "body_sha256": body * 64,
        "received_at": SIGNED + timedelta(seconds=after),
        "event_id": delivery_id + 100,
        "room_id": "room-1",
        "job_id": "job-1",
    }
    data.update(overrides)
    return SignedDelivery(**data)


def test_a_signature_that_carried_another_body_later_is_one_finding() -> None:
    forged = signed(2, "b", 45.0, event_id=None, room_id="room-x", job_id=None)
    [draft] = reused_signatures([signed(1, "a", 0.4), forged])
    assert (draft.kind, draft.endpoint, draft.room_id, draft.job_id) == (
        rules.SIGNATURE_REUSED,
        "shop-a",
        None,  # a signature is the endpoint's, and a forged body may name any room
        None,
    )
    assert draft.event_id is None  # the late body did not decode: it has no event
    assert draft.data["delivery_ids"] == [1, 2] and draft.data["late_delivery_ids"] == [2]
    assert draft.data["event_ids"] == [101, None]
    assert draft.data["room_ids"] == ["room-1", "room-x"] and draft.data["job_ids"] == ["job-1"]
    assert draft.data["signed_at"] == "2024-09-10T11:59:30Z"
    assert draft.data["spread_seconds"] == pytest.approx(44.6)
    assert "deliveries 1, 2 (events 101, -)" in draft.detail
    assert "delivery 2 (event -) may be a captured signed URL" in draft.detail
    assert "45 s apart" in draft.detail and "MetaStudio retry" in draft.detail
    assert "one second alike" in draft.detail and "within 10 s" in draft.detail


def test_bodies_arriving_together_look_like_metastudios_own_second() -> None:
    """MetaStudio signs all its callbacks of one second alike: not a finding unless apart."""
    together = [signed(1, "a", 0.1), signed(2, "b", 0.3), signed(3, "c", 9.9)]
    assert reused_signatures(together) == []
    assert len(reused_signatures(together, rules.Policy(reuse_spread=timedelta(0)))) == 1
    # A third body much later: the finding names all three, the late one as the suspect.
    [draft] = reused_signatures([*together, signed(4, "d", 120)])
    assert draft.data["delivery_ids"] == [1, 2, 3, 4]
    assert draft.data["late_delivery_ids"] == [4] and draft.event_id == 104


def test_the_same_body_again_is_no_finding_and_counts_once() -> None:
    assert reused_signatures([signed(1, "a", 0), signed(2, "a", 200)]) == []
    [draft] = reused_signatures([signed(1, "a", 0), signed(2, "a", 30), signed(3, "b", 31)])
    assert draft.data["delivery_ids"] == [1, 3]  # body a first seen at 0, b at 31


@pytest.mark.parametrize(
    "other",
    [
        {"endpoint": "shop-b"},
        {"signed_at": SIGNED + timedelta(seconds=1)},
        {"time_unit": "milliseconds"},  # the same instant, another hwTime text
        {"key_index": 1},  # signed with the other configured key
    ],
)
def test_another_endpoint_time_unit_or_key_is_another_signature(other: dict[str, Any]) -> None:
    assert reused_signatures([signed(1, "a", 0), signed(2, "b", 60, **other)]) == []


def test_reused_signature_fingerprint_is_per_signature_and_says_nothing_secret() -> None:
    first = reused_signatures([signed(1, "a", 0), signed(2, "b", 60)])[0]
    grown = reused_signatures([signed(1, "a", 0), signed(2, "b", 60), signed(3, "c", 90)])[0]
    assert grown.fingerprint == first.fingerprint  # more bodies: the same condition
    other_second = {"signed_at": SIGNED + timedelta(seconds=5)}
    later = reused_signatures(
        [signed(4, "a", 0, **other_second), signed(5, "b", 60, **other_second)]
    )
    assert len(later) == 1 and later[0].fingerprint != first.fingerprint
    millis = reused_signatures(
        [signed(1, "a", 0, time_unit="milliseconds"), signed(2, "b", 60, time_unit="milliseconds")]
    )[0]
    assert millis.fingerprint != first.fingerprint and "one millisecond alike" in millis.detail
    # Without a scope the fingerprint is the one stored findings already have.
    plain = rules.Draft(kind="unknown_job", room_id="r", job_id="j", detail="")
    key = "\x1f".join(("unknown_job", "r", "j", ""))
    assert plain.fingerprint == hashlib.sha256(key.encode()).hexdigest()
    assert "hwSecret" not in first.detail and "secret" not in str(first.data).lower()

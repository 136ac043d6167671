"""What a round's outcomes mean (receiver.forward.settle) and when to try again (schedule):
pure functions, every case without a destination."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from receiver.forward import schedule
from receiver.forward.messages import Message
from receiver.forward.settle import settle_log, settle_parked
from receiver.forward.transport import DELIVERED, FAILED, GONE, REFUSED, Outcome

NOW = datetime(2026, 12, 6, tzinfo=UTC)
OK, FAIL = Outcome(DELIVERED, 0.01), Outcome(FAILED, 0.01, error="HTTP 503")
REFUSE, GONE_ = Outcome(REFUSED, 0.01, status=422), Outcome(GONE, 0.01, status=410)


def message(event_id: int, job: str) -> Message:
    return Message(
        id=f"evt_{event_id}",
        type="metastudio.X",
        body=b"{}",
        order_key=f"job:{job}",
        source="event",
        source_id=event_id,
        stored_at=NOW,
        data={},
    )


def test_all_delivered_moves_to_the_head_when_the_read_was_complete() -> None:
    messages = [message(3, "a"), message(5, "b")]
    done = settle_log(messages, [OK, OK], blocked=set(), cursor=2, head=9, complete=True)
    assert done.cursor == 9 and len(done.delivered) == 2 and not done.park
    # A read cut by its limit moves only to the last message read.
    cut = settle_log(messages, [OK, OK], blocked=set(), cursor=2, head=9, complete=False)
    assert cut.cursor == 5


def test_nothing_read_moves_to_the_head() -> None:
    done = settle_log([], [], blocked=set(), cursor=4, head=7, complete=True)
    assert done.cursor == 7


def test_a_refusal_parks_its_job_behind_it_and_the_rest_flows() -> None:
    messages = [message(1, "a"), message(2, "b"), message(3, "a"), message(4, "b")]
    done = settle_log(
        messages, [REFUSE, OK, None, OK], blocked=set(), cursor=0, head=4, complete=True
    )
    assert done.cursor == 4
    assert [(m.id, refusals) for m, refusals, _ in done.park] == [("evt_1", 1), ("evt_3", 0)]
    assert [m.id for m, _ in done.delivered] == ["evt_2", "evt_4"]
    assert done.failure is None


def test_a_failure_keeps_the_place_before_it() -> None:
    messages = [message(1, "a"), message(2, "b"), message(3, "a"), message(4, "b")]
    done = settle_log(
        messages, [OK, FAIL, OK, None], blocked=set(), cursor=0, head=4, complete=True
    )
    assert done.cursor == 1 and done.failure is FAIL
    # evt_3 was delivered past the place: it is read again (and sent again, same id).
    assert [m.id for m, _ in done.delivered] == ["evt_1", "evt_3"]


def test_nothing_is_parked_past_the_kept_place() -> None:
    messages = [message(1, "b"), message(2, "a"), message(3, "a")]
    done = settle_log(
        messages, [FAIL, REFUSE, None], blocked=set(), cursor=0, head=3, complete=True
    )
    assert done.cursor == 0 and done.park == []


def test_jobs_already_parked_are_queued_unsent() -> None:
    messages = [message(7, "a"), message(8, "b")]
    done = settle_log(messages, [None, OK], blocked={"job:a"}, cursor=6, head=8, complete=True)
    assert [(m.id, refusals) for m, refusals, _ in done.park] == [("evt_7", 0)]
    assert done.cursor == 8


def test_gone_keeps_the_place_and_says_which() -> None:
    messages = [message(1, "a"), message(2, "b")]
    done = settle_log(messages, [OK, GONE_], blocked=set(), cursor=0, head=2, complete=True)
    assert done.cursor == 1 and done.gone == (messages[1], GONE_)


def test_parked_runs_stop_at_their_first_undelivered() -> None:
    runs = [
        (10, message(1, "a")),
        (11, message(3, "a")),
        (12, message(2, "b")),
        (13, message(4, "b")),
    ]
    done = settle_parked(runs, [OK, REFUSE, FAIL, OK])
    assert [row for row, _, _ in done.delivered] == [10]
    assert [row for row, _, _ in done.refused] == [11]
    assert done.failure is FAIL  # evt_4 came back delivered, but its job's run had stopped


def test_schedule_steps_jitter_and_the_last_step_repeats() -> None:
    steps = (5.0, 300.0, 1800.0)
    rand = random.Random(1)
    for failures, step in [(1, 5.0), (2, 300.0), (3, 1800.0), (9, 1800.0)]:
        waits = [schedule.delay(steps, failures, rand=rand) for _ in range(200)]
        assert step * 0.8 <= min(waits) < max(waits) <= step * 1.2
    assert schedule.delay(steps, 1, retry_after=42) == 42
    assert schedule.delay(steps, 1, retry_after=10**9) == schedule.MAX_RETRY_AFTER
    assert not schedule.spent(steps, 3) and schedule.spent(steps, 4)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Sun, 06 Dec 2026 00:01:00 GMT", 60.0),
        ("Sat, 05 Dec 2026 00:00:00 GMT", 0.0),  # in the past: at once
        ("soon", None),
        ("-5", None),
        (None, None),
    ],
)
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert schedule.retry_after_seconds(header, now=NOW + timedelta(0)) == seconds

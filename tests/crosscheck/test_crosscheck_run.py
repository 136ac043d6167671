"""The cross-check run end to end, on SQLite and PostgreSQL.

Events go in through the real intake (the app, in process), so they are what production stores;
the official SDK then really talks HTTP to the fake MetaStudio on loopback. Every finding kind
appears and then clears when the job in the fake changes; one row per condition (occurrences,
first/last seen, reopened when it returns); job snapshots; one list call per room per run; and
the advisory lock that lets one replica of several run. Runs pass ``now`` so that grace periods
and skews are exact.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import KEY, REGISTERED, free_port
from crosscheck_world import (
    ALL_TYPES,
    ENV,
    JOB,
    ROOM,
    World,
    hex_id,
    job,
    list_calls,
    reply,
    rfc3339,
    rtmp,
    script,
    signed_url,
    when,
)

from receiver import fake_metastudio as fm
from receiver.crosscheck import rules
from receiver.crosscheck.run import CrossChecker, RunReport
from receiver.store.writer import create_engine_for
from receiver.web.app import build_crosschecker

# -- each kind appears, then clears ------------------------------------------------------------


def test_unknown_job_opens_once_counts_occurrences_resolves_and_reopens_the_same_row(
    world: World,
) -> None:
    w = world
    w.fake.add_job(job(hex_id("another job"), start=w.at(-3600)))
    first = w.send(script(), at=w.at(-600))
    w.send(reply(), at=w.at(-500))
    checker = w.checker()

    report = w.run(checker)
    assert (report.rooms_checked, report.rooms_failed, report.jobs_seen) == (1, 0, 1)
    assert (report.findings_opened, report.findings_resolved) == (1, 0)
    found = w.finding(rules.UNKNOWN_JOB)
    assert (found["room_id"], found["job_id"], found["event_id"]) == (ROOM, JOB, first)
    assert found["status"] == "open" and found["occurrences"] == 1
    assert found["data"] == {"event_count": 2, "endpoints": ["shop-a"]}
    assert ROOM in found["detail"] and JOB in found["detail"]
    assert when(found["first_seen_at"]) == when(found["last_seen_at"]) == w.t0
    assert [f["id"] for f in report.open_findings] == [found["id"]]

    # Seen again: the same row, counted, first_seen_at kept, last_seen_at moved.
    again = w.run(checker, after=60)
    assert (again.findings_opened, again.findings_resolved) == (0, 0)
    row = w.finding(rules.UNKNOWN_JOB)
    assert row["id"] == found["id"] and row["occurrences"] == 2
    assert when(row["first_seen_at"]) == w.t0 and when(row["last_seen_at"]) == w.at(60)

    # MetaStudio now lists the job: resolved.
    w.fake.add_job(job(start=w.at(-3600)))
    cleared = w.run(checker, after=120)
    assert (cleared.findings_opened, cleared.findings_resolved, cleared.jobs_seen) == (0, 1, 2)
    row = w.finding(rules.UNKNOWN_JOB)
    assert row["status"] == "resolved" and when(row["resolved_at"]) == w.at(120)
    assert row["occurrences"] == 2 and w.open_kinds() == []
    assert cleared.open_findings == []

    # It comes back: the same row reopens.
    w.fake.remove_job(JOB)
    back = w.run(checker, after=180)
    assert (back.findings_opened, back.findings_resolved) == (1, 0)
    row = w.finding(rules.UNKNOWN_JOB)
    assert row["id"] == found["id"] and row["status"] == "open" and row["resolved_at"] is None
    assert row["occurrences"] == 3
    assert when(row["first_seen_at"]) == w.t0 and when(row["last_seen_at"]) == w.at(180)
    assert len(w.findings()) == 1


def test_events_outside_the_job_window_and_a_configurable_skew(world: World) -> None:
    w = world
    early, late = hex_id("early"), hex_id("late")
    # Signed 300 s before its job started: past the default 120 s skew, within 600 s.
    w.fake.add_job(job(early, start=w.t0))
    before = w.send(script(early), at=w.at(-300))
    w.send(reply(early), at=w.at(60))
    # Signed 300 s after its job's end_time.
    w.fake.add_job(job(late, start=w.at(-3600), end=w.at(-900), state="SUCCEED"))
    w.send(script(late), at=w.at(-1800))
    w.send(reply(late), at=w.at(-600))
    strict, lenient = w.checker(), w.checker(window_skew_seconds=600)

    w.run(strict)
    assert w.open_kinds() == [rules.OUTSIDE_JOB_WINDOW] * 2
    found = w.finding(rules.OUTSIDE_JOB_WINDOW, job_id=early)
    assert (found["room_id"], found["event_id"], found["status"]) == (ROOM, before, "open")
    assert "before start_time" in found["detail"] and "allowed skew 120 s" in found["detail"]
    assert when(found["data"]["first_event_at"]) == w.at(-300)
    found = w.finding(rules.OUTSIDE_JOB_WINDOW, job_id=late)
    assert "after end_time" in found["detail"]
    assert when(found["data"]["last_event_at"]) == w.at(-600)

    # window_skew_seconds = 600 allows both: the conditions are gone; back with 120 s.
    assert w.run(lenient, after=60).findings_resolved == 2
    assert w.open_kinds() == []
    assert w.run(strict, after=120).findings_opened == 2

    # MetaStudio's times change to cover the events: resolved for good.
    w.fake.update_job(early, start_time=rfc3339(w.at(-3600)))
    w.fake.update_job(late, end_time=rfc3339(w.at(-500)))
    assert w.run(strict, after=180).findings_resolved == 2
    assert w.open_kinds() == []


def test_stream_ended_but_job_still_running_after_the_grace_period(world: World) -> None:
    w = world
    w.fake.add_job(job(start=w.at(-3600)))
    w.send(rtmp("CONNECTED"), at=w.at(-3500))
    end = w.send(rtmp("END"), at=w.at(-600))
    checker = w.checker()  # grace_seconds defaults to 300

    w.run(checker, after=-400)  # 200 s after END: within the grace period
    assert w.findings() == []
    w.run(w.checker(grace_seconds=900))  # 600 s after END, with a longer grace period
    assert w.findings() == []

    w.run(checker)  # 600 s after END
    found = w.finding(rules.STREAM_ENDED_JOB_RUNNING)
    assert (found["job_id"], found["event_id"], found["status"]) == (JOB, end, "open")
    assert found["data"]["job_state"] == "PROCESSING" and found["data"]["rtmp_state"] == "END"
    assert when(found["data"]["rtmp_at"]) == w.at(-600)

    w.fake.update_job(JOB, state="SUCCEED", end_time=rfc3339(w.at(-590)))
    w.run(checker, after=60)
    assert w.finding(rules.STREAM_ENDED_JOB_RUNNING)["status"] == "resolved"
    assert w.open_kinds() == []


def test_job_ended_but_stream_last_seen_connected_until_an_end_arrives(world: World) -> None:
    w = world
    w.fake.add_job(job(start=w.at(-3600), end=w.at(-900), state="SUCCEED"))
    w.send(rtmp("CONNECTING"), at=w.at(-3590))
    connected = w.send(rtmp("CONNECTED"), at=w.at(-3580))
    w.send(script(), at=w.at(-2000))
    checker = w.checker()

    w.run(checker, after=-700)  # 200 s after the job's end_time: within the grace period
    assert w.findings() == []
    w.run(checker)
    found = w.finding(rules.JOB_ENDED_STREAM_CONNECTED)
    assert (found["job_id"], found["event_id"], found["status"]) == (JOB, connected, "open")
    assert found["data"]["job_state"] == "SUCCEED" and found["data"]["rtmp_state"] == "CONNECTED"

    # The END callback arrives late (signed just before end_time): resolved.
    w.send(rtmp("END"), at=w.at(-905))
    w.run(checker, after=60)
    assert w.finding(rules.JOB_ENDED_STREAM_CONNECTED)["status"] == "resolved"
    assert w.open_kinds() == []


def test_failed_and_blocked_jobs_with_their_error_info_and_block_reason(world: World) -> None:
    w = world
    failed, blocked = hex_id("failed"), hex_id("blocked")
    error = {"error_code": "MSS.00000100", "error_msg": "push stream failed"}
    w.fake.add_job(job(failed, start=w.at(-3600), end=w.at(-600), state="FAILED", error_info=error))
    reason = "Illegal content in the live room"
    w.fake.add_job(job(blocked, start=w.at(-3600), end=w.at(-600), state="BLOCKED"))
    w.fake.update_job(blocked, block_reason=reason)
    w.send(script(failed), at=w.at(-1800))  # the blocked job sent nothing: flagged all the same
    checker = w.checker()

    w.run(checker)
    assert w.open_kinds() == [rules.JOB_BLOCKED, rules.JOB_FAILED]
    found = w.finding(rules.JOB_FAILED)
    assert (found["room_id"], found["job_id"]) == (ROOM, failed)
    assert found["data"] == {"error_info": error}
    assert "MSS.00000100" in found["detail"] and "push stream failed" in found["detail"]
    found = w.finding(rules.JOB_BLOCKED)
    assert (found["room_id"], found["job_id"]) == (ROOM, blocked)
    assert found["data"] == {"block_reason": reason} and reason in found["detail"]

    # MetaStudio ran the jobs again and they succeeded: resolved.
    w.fake.update_job(failed, state="SUCCEED", error_info={"error_code": "", "error_msg": ""})
    w.fake.update_job(blocked, state="SUCCEED", block_reason="")
    assert w.run(checker, after=60).findings_resolved == 2
    assert w.open_kinds() == []


def test_callback_config_pointing_elsewhere_other_auth_type_and_missing_event_types(
    world: World,
) -> None:
    w = world
    elsewhere = {
        "live_event_type_callback_url": "https://other.example.com/callbacks/x?token=abc123",
        "auth_type": "MSS_A_HEAD",
        "key": "another-key-0123456789",
        "callback_event_type": ["RTMP_STREAM_STATE_CHANGE"],
    }
    w.fake.add_job(job(start=w.at(-3600), live_event_callback_config=elsewhere))
    w.send(script(), at=w.at(-600))
    checker = w.checker()

    w.run(checker)
    assert w.open_kinds() == sorted(
        [rules.CALLBACK_URL_MISMATCH, rules.CALLBACK_AUTH_MISMATCH, rules.CALLBACK_EVENTS_MISSING]
    )
    url = w.finding(rules.CALLBACK_URL_MISMATCH)
    assert url["endpoint"] == "shop-a" and url["job_id"] == JOB
    assert url["data"] == {
        "callback_url": "https://other.example.com/callbacks/x?token=****",
        "registered_url": REGISTERED,
    }
    assert "abc123" not in url["detail"]
    auth = w.finding(rules.CALLBACK_AUTH_MISMATCH)
    assert auth["data"] == {"job_auth_type": "MSS_A_HEAD", "endpoint_auth_type": "MSS_A"}
    missing = w.finding(rules.CALLBACK_EVENTS_MISSING)
    assert missing["data"]["missing"] == ["REPLY_COMMAND_FINISH", "SHOOT_SCRIPT_SWITCH"]

    w.fake.update_job(
        JOB,
        live_event_callback_config={
            "live_event_type_callback_url": REGISTERED,
            "auth_type": "MSS_A",
            "key": KEY,
            "callback_event_type": ALL_TYPES,
        },
    )
    report = w.run(checker, after=60)
    assert report.findings_resolved == 3 and w.open_kinds() == []


# -- MetaStudio refusing or not answering ------------------------------------------------------


def test_refused_credentials_are_a_finding_that_leaves_job_findings_alone(world: World) -> None:
    w = world
    w.send(script(), at=w.at(-600))  # a job MetaStudio does not list
    good = w.checker()
    wrong_sk = {**ENV, "HUAWEICLOUD_SDK_SK": "not-the-secret-key-of-this-ak-000"}
    refused = w.checker(environ=wrong_sk)

    w.run(good)
    unknown = w.finding(rules.UNKNOWN_JOB)
    report = w.run(refused, after=60)
    assert (report.rooms_checked, report.rooms_failed, report.jobs_seen) == (0, 1, 0)
    found = w.finding(rules.METASTUDIO_UNAUTHORIZED)
    assert (found["room_id"], found["job_id"], found["status"]) == (ROOM, None, "open")
    assert "HTTP 401" in found["detail"] and "MSS.00000001" in found["detail"]
    assert wrong_sk["HUAWEICLOUD_SDK_SK"] not in found["detail"]
    assert list_calls(w.fake)[-1].auth == "invalid"
    assert len(list_calls(w.fake)) == 2  # a 401 is not retried
    # What MetaStudio said before is not taken back because it cannot be asked now.
    assert w.finding(rules.UNKNOWN_JOB)["status"] == "open"

    w.run(good, after=120)
    assert w.finding(rules.METASTUDIO_UNAUTHORIZED)["status"] == "resolved"
    row = w.finding(rules.UNKNOWN_JOB)
    assert row["id"] == unknown["id"] and row["status"] == "open" and row["occurrences"] == 2


def test_metastudio_failing_is_a_finding_until_it_answers(world: World) -> None:
    w = world
    w.fake.add_job(job(start=w.at(-3600)))
    w.send(script(), at=w.at(-600))
    good = w.checker()
    cases = [
        # (what fails, the checker, the fake's mode, kind, list calls, what the finding says)
        (
            "error mode",
            good,
            "error",
            rules.METASTUDIO_UNREACHABLE,
            3,
            ["HTTP 500", "MSS.00000004", "3 attempts"],
        ),
        (
            "nothing listening",
            w.checker(endpoint=f"http://127.0.0.1:{free_port()}"),
            "ok",
            rules.METASTUDIO_UNREACHABLE,
            0,
            ["cannot reach", "3 attempts"],
        ),
        (
            "no answer",
            w.checker(timeout_seconds=0.2),
            "hang",
            rules.METASTUDIO_UNREACHABLE,
            3,
            ["no answer within 0.2 s", "3 attempts"],
        ),
        (
            "another project",
            w.checker(project_id="70b76aa4d3e44e5a8e9c5f0a1b2c3d4e"),
            "ok",
            rules.METASTUDIO_BAD_REQUEST,
            1,
            ["HTTP 400", "MSS.00000003"],
        ),
    ]
    ids: dict[str, int] = {}
    for step, (how, broken, mode, kind, calls, said) in enumerate(cases):
        w.fake.clear_requests()
        w.fake.set_mode(mode)
        report = w.run(broken, after=100 * step)
        assert (report.rooms_checked, report.rooms_failed) == (0, 1), how
        found = w.finding(kind)
        assert (found["room_id"], found["job_id"], found["status"]) == (ROOM, None, "open"), how
        for text in said:
            assert text in found["detail"], (how, found["detail"])
        assert fm.DEFAULT_SK not in found["detail"]
        # 5xx, time-outs and refused connections are tried three times, a 400 once.
        assert len(list_calls(w.fake, ROOM)) == calls, how
        # A kind seen before (resolved since) reopens its row.
        assert ids.setdefault(kind, found["id"]) == found["id"]
        if step == 0:  # still failing: the same row, seen twice
            w.run(broken, after=10)
            row = w.finding(kind)
            assert (row["id"], row["occurrences"], row["status"]) == (found["id"], 2, "open")

        w.fake.set_mode("ok")
        report = w.run(good, after=100 * step + 50)
        assert (report.rooms_checked, report.rooms_failed, report.findings_resolved) == (1, 0, 1)
        assert w.finding(kind)["status"] == "resolved", how
        assert w.open_kinds() == []


# -- snapshots, forged bodies, batching ----------------------------------------------------------


def test_job_snapshots_keep_every_field_and_add_a_row_only_when_the_job_changes(
    world: World,
) -> None:
    w = world
    other = hex_id("job-2")
    w.fake.add_job(job(start=w.at(-3600)))
    w.fake.add_job(job(other, start=w.at(-7200), end=w.at(-3700), state="SUCCEED"))
    w.send(script(), at=w.at(-600))
    checker = w.checker()

    w.run(checker)
    rows = w.snapshots()
    assert sorted(r.job_id for r in rows) == sorted([JOB, other])
    for row in rows:
        assert row.data == w.fake.get_job(row.job_id)  # every field, as returned
        assert row.room_id == ROOM and row.state == row.data["state"]
        assert row.fetched_at == row.first_fetched_at == w.t0

    w.run(checker, after=60)  # nothing changed: no new row, fetched_at moves
    rows = w.snapshots()
    assert len(rows) == 2
    assert all(r.fetched_at == w.at(60) and r.first_fetched_at == w.t0 for r in rows)

    w.fake.update_job(JOB, state="SUCCEED", end_time=rfc3339(w.at(90)))
    w.run(checker, after=120)
    mine = w.snapshots(JOB)
    assert [r.state for r in mine] == ["PROCESSING", "SUCCEED"]
    assert mine[-1].data == w.fake.get_job(JOB)
    assert mine[-1].first_fetched_at == mine[-1].fetched_at == w.at(120)
    assert mine[0].fetched_at == w.at(60)  # the old version was last seen then
    [theirs] = w.snapshots(other)
    assert theirs.fetched_at == w.at(120) and theirs.first_fetched_at == w.t0


def test_a_replayed_signature_with_a_forged_body_is_stored_then_flagged(world: World) -> None:
    """MSS_A signs the URL and the time, not the body (signing-notes.md): within the tolerance a
    captured URL carries any body. The intake cannot tell; the cross-check can."""
    w = world
    w.fake.add_job(job(start=w.at(-3600)))
    captured = signed_url(w.at(-30))
    w.send(script(), at=w.at(-30), url=captured)
    forged_job = hex_id("a job that does not exist")
    forged = w.send(reply(forged_job), at=w.at(-30), url=captured)

    w.run(w.checker())
    found = w.finding(rules.UNKNOWN_JOB)
    assert (found["job_id"], found["event_id"], found["room_id"]) == (forged_job, forged, ROOM)
    # Milliseconds apart, the two bodies look like MetaStudio's own callbacks of one second: no
    # signature_reused with the default reuse_spread (the next test and test_signature_reuse).
    assert w.open_kinds() == [rules.UNKNOWN_JOB]


def test_one_list_call_per_room_per_run_and_none_within_the_cache_ttl(world: World) -> None:
    w = world
    rooms = [hex_id(f"room-{n}") for n in range(3)]
    for r, room in enumerate(rooms):
        jobs = 5 if r == 0 else 1
        for j in range(jobs):
            job_id = hex_id(f"job-{r}-{j}")
            w.fake.add_job(job(job_id, room, start=w.at(-3600)))
            for n in range(8 if r == 0 else 2):
                w.send(script(job_id, room, n), at=w.at(-1800 + n))
    checker, source = build_crosschecker(w.settings(cache_seconds=300), w.engine)
    w.sources.append(source)
    w.fake.clear_requests()

    report = w.run(checker)
    assert (report.rooms_checked, report.jobs_seen, report.findings_opened) == (3, 7, 0)
    for room in rooms:
        assert len(list_calls(w.fake, room)) == 1
    assert len(w.fake.requests) == 3 and source.calls == 3 and source.queries == 3

    w.run(checker, after=5)
    w.run(checker, after=6, room_id=rooms[0])
    assert len(w.fake.requests) == 3 and source.calls == 3  # all from the cache


# -- one run at a time -----------------------------------------------------------------------


def test_one_replica_runs_and_the_other_skips(world: World) -> None:
    """Two replicas (two checkers, two engines) on one PostgreSQL start at the same moment: the
    advisory lock lets one run. On SQLite (one process per file) a second run started in the
    same process while one is going skips."""
    w = world
    w.fake.add_job(job(start=w.at(-3600)))
    w.send(script(), at=w.at(-600))
    postgres = w.engine.dialect.name == "postgresql"
    other_engine = create_engine_for(w.url)
    try:
        first = w.checker()
        second = first
        if postgres:
            second, source = build_crosschecker(w.settings(), other_engine)
            w.sources.append(source)
        w.fake.set_mode("hang")  # the list call takes ~1 s (max_hang_seconds): the runs overlap

        async def both() -> list[RunReport]:
            return list(await asyncio.gather(first.run(now=w.t0), second.run(now=w.t0)))

        started = time.monotonic()
        reports = asyncio.run(both())
        assert time.monotonic() - started < 10
        skipped = [r for r in reports if r.skipped]
        ran = [r for r in reports if not r.skipped]
        assert len(skipped) == 1 and len(ran) == 1
        expected = "another replica" if postgres else "already running in this process"
        assert expected in (skipped[0].skipped or "")
        assert ran[0].rooms_checked == 1 and skipped[0].rooms_checked == 0
        assert len(list_calls(w.fake)) == 1
        assert skipped[0].as_json()["skipped"] == skipped[0].skipped

        # The lock was released: each replica runs in turn.
        w.fake.set_mode("ok")
        assert w.run(first, after=60).rooms_checked == 1
        assert w.run(second, after=120).rooms_checked == 1
    finally:
        other_engine.dispose()


def test_a_store_failure_during_a_run_is_store_unavailable(tmp_path: Any) -> None:
    """POST /v1/crosscheck answers 503 (not a 500) when the store, not MetaStudio, fails."""
    import asyncio

    from receiver.crosscheck.run import CrossChecker
    from receiver.errors import StoreUnavailable

    class NeverAsked:
        async def list_room_jobs(self, room_id: str) -> Any:
            raise AssertionError("MetaStudio must not be asked when the store cannot be read")

    engine = sa.create_engine(f"sqlite:///{tmp_path}/no/such/folder/receiver.db")
    checker = CrossChecker(engine=engine, source=NeverAsked(), endpoints={})
    outcomes: list[str] = []
    checker.on_outcome = outcomes.append  # what /metrics counts (receiver_crosscheck_runs)
    with pytest.raises(StoreUnavailable, match="could not use the store"):
        asyncio.run(checker.run(now=datetime.now(UTC)))
    engine.dispose()
    assert outcomes == ["store_error"]


# -- a signature that carried different bodies -------------------------------------------------


def reuse_checker(w: World, **metastudio: Any) -> CrossChecker:
    """A checker that flags different bodies under one signature however close they came (the
    in-process sends are milliseconds apart; the default spread would take them for
    MetaStudio's own callbacks of one second)."""
    configured = w.checker(**metastudio)
    return CrossChecker(
        engine=w.engine,
        source=configured.source,
        endpoints=configured.endpoints,
        policy=rules.Policy(reuse_spread=timedelta(0)),
    )


def test_a_reused_signature_is_found_across_runs_without_metastudio_and_stays_open(
    world: World,
) -> None:
    w = world
    w.fake.add_job(job(start=w.at(-3600)))
    captured = signed_url(w.at(-30))
    first = w.send(script(), at=w.at(-30), url=captured)
    checker = reuse_checker(w)
    assert w.run(checker).findings_opened == 0  # one body so far

    # The second body comes after that run; MetaStudio cannot be reached for this one.
    second = w.send(reply(hex_id("forged job"), hex_id("forged room")), at=w.at(-30), url=captured)
    unreachable = reuse_checker(w, endpoint=f"http://127.0.0.1:{free_port()}")
    report = w.run(unreachable, after=30)
    assert report.rooms_failed == 2 and report.findings_opened == 3  # two rooms + the signature
    found = w.finding(rules.SIGNATURE_REUSED)
    assert found["endpoint"] == "shop-a" and found["event_id"] == second
    assert found["data"]["event_ids"] == [first, second] and found["occurrences"] == 1
    assert found["id"] in [f["id"] for f in report.open_findings]

    # A room's run neither looks for it nor clears it.
    room_run = w.run(checker, after=40, room_id=ROOM)
    assert room_run.findings_resolved == 1  # that room's API problem
    assert found["id"] not in [f["id"] for f in room_run.open_findings]
    assert w.finding(rules.SIGNATURE_REUSED)["status"] == "open"

    # A third body under the same signature: the same row, now naming three deliveries. A full
    # run that MetaStudio answers clears the other room's API problem, not this: nothing
    # MetaStudio says makes a reused signature unused.
    third = w.send(rtmp("CONNECTED"), at=w.at(-30), url=captured)
    assert w.run(checker, after=50).findings_resolved == 1
    row = w.finding(rules.SIGNATURE_REUSED)
    assert (row["id"], row["status"], row["occurrences"]) == (found["id"], "open", 2)
    assert row["data"]["event_ids"] == [first, second, third]
    # Runs read what came since the last one (less a margin for late commits, plus the window
    # before it): long after, the same deliveries are not read, or counted, again.
    w.run(checker, after=900)
    seen = w.finding(rules.SIGNATURE_REUSED)["occurrences"]
    w.run(checker, after=1000)
    assert w.finding(rules.SIGNATURE_REUSED)["occurrences"] == seen
    assert w.finding(rules.SIGNATURE_REUSED)["status"] == "open"
    # A checker that starts afresh (a restart, another replica) reads its lookback once and
    # finds the same condition: the same row again, still open.
    w.run(reuse_checker(w), after=1200)
    assert [f["id"] for f in w.findings(kind=rules.SIGNATURE_REUSED, status="open")] == [row["id"]]

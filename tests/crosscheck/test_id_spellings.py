"""One job, two spellings: MetaStudio's callbacks name ids with 32 hex digits, its job query API
lists them as dashed UUIDs (metastudio-list-smart-live-jobs.txt). Every comparison of room and
job ids goes through ``receiver.protocol.ids.id_key``; these tests hold each place to it, on SQLite
and
PostgreSQL, with the official SDK talking to the fake MetaStudio on loopback.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import write_config
from crosscheck_world import JOB, ROOM, World, job, list_calls, reply, rtmp, script
from hypothesis import given
from hypothesis import strategies as st

from receiver import fake_metastudio as fm
from receiver.cli import main
from receiver.crosscheck import rules
from receiver.crosscheck.metastudio import MetaStudioJobs
from receiver.crosscheck.run import CrossChecker
from receiver.protocol.ids import api_form, callback_form, id_key, is_uuid_shaped, same_id
from receiver.store import queries
from receiver.store.migrate import upgrade
from receiver.store.writer import create_engine_for
from receiver.tools.replay_records import filter_records, read_export

# -- the key itself ----------------------------------------------------------------------------

DOC_JOB_LISTED = "26f06524-4f75-4b3a-a853-b649a21aaf66"  # the document's example response
DOC_ROOM_CALLBACK = "26f065244f754b3aa853b649a21aaf66"  # its callback example: the same value


def test_the_documents_two_spellings_are_one_id() -> None:
    assert id_key(DOC_JOB_LISTED) == id_key(DOC_ROOM_CALLBACK) == DOC_ROOM_CALLBACK
    assert same_id(DOC_JOB_LISTED.upper(), DOC_ROOM_CALLBACK)
    assert api_form(DOC_ROOM_CALLBACK) == DOC_JOB_LISTED
    assert callback_form(DOC_JOB_LISTED) == DOC_ROOM_CALLBACK


@pytest.mark.parametrize(
    "value",
    [
        "job-1",
        "room 1",
        "",
        "26f065244f754b3aa853b649a21aaf6",  # 31 digits
        "26f065244f754b3aa853b649a21aaf666",  # 33
        "26f065244f754b3aa853b649a21aaf6g",  # not hex
        "26f06524-4f754b3a-a853-b649a21aaf66",  # dashes in the wrong places
        "-26f065244f754b3aa853b649a21aaf66",
        "26f06524-4f75-4b3a-a853-b649a21aaf66-",
        "{26f06524-4f75-4b3a-a853-b649a21aaf66}",
        "\uff21\uff22" * 16,  # full-width letters are not hex
        "\u0663" * 32,  # nor are Arabic-Indic digits
    ],
)
def test_ids_that_are_not_uuid_shaped_are_kept_exactly(value: str) -> None:
    assert not is_uuid_shaped(value)
    assert id_key(value) == value and api_form(value) == value
    assert not same_id(value, value.upper()) or value == value.upper()


@given(st.uuids())
def test_every_spelling_of_a_uuid_has_one_key(value: uuid.UUID) -> None:
    spellings = [value.hex, str(value), value.hex.upper(), str(value).upper()]
    assert {id_key(s) for s in spellings} == {value.hex}
    assert {api_form(s) for s in spellings} == {str(value)}
    assert all(same_id(a, b) for a in spellings for b in spellings)


@given(st.text(max_size=40))
def test_the_key_is_idempotent_and_only_changes_uuids(value: str) -> None:
    key = id_key(value)
    assert id_key(key) == key
    assert key == value or is_uuid_shaped(value)


# -- the cross-check rules (pure) --------------------------------------------------------------


def test_rules_match_a_listed_dashed_job_to_undashed_events(world: World) -> None:
    w = world
    listed = job(DOC_JOB_LISTED, api_form(ROOM), start=w.at(-3600))
    activity = [
        rules.JobActivity(
            job_id=DOC_ROOM_CALLBACK.upper(),
            room_id=ROOM,
            endpoints=frozenset({"shop-a"}),
            event_count=1,
            first_at=w.at(-60),
            last_at=w.at(-60),
            first_event_id=1,
            last_event_id=1,
        )
    ]
    drafts = rules.evaluate_room(
        room_id=ROOM, jobs=[listed], activity=activity, endpoints={}, now=w.t0
    )
    assert [d.kind for d in drafts] == []
    failed = {**listed, "state": "FAILED", "error_info": {"error_code": "E", "error_msg": "x"}}
    drafts = rules.evaluate_room(
        room_id=ROOM, jobs=[failed], activity=activity, endpoints={}, now=w.t0
    )
    assert [d.kind for d in drafts] == [rules.JOB_FAILED]
    # The finding shows MetaStudio's spelling, and its fingerprint is that of either spelling.
    assert drafts[0].job_id == DOC_JOB_LISTED and drafts[0].room_id == api_form(ROOM)
    again = rules.Draft(kind=rules.JOB_FAILED, room_id=ROOM, job_id=DOC_ROOM_CALLBACK, detail="")
    assert again.fingerprint == drafts[0].fingerprint


# -- the cross-check run, both stores ----------------------------------------------------------


def dashed_world(w: World, *, events_as: str = "bare") -> tuple[str, str]:
    """A job MetaStudio lists dashed (room too), and its events in another spelling: one
    before the job's start (outside its window), a stream that ENDed long ago while MetaStudio
    still says PROCESSING. Returns (job, room) as the events spell them."""
    spell = {"bare": id_key, "upper": lambda v: id_key(v).upper(), "dashed": api_form}[events_as]
    w.fake.add_job(job(api_form(JOB), api_form(ROOM), start=w.at(-3600)))
    job_id, room_id = spell(JOB), spell(ROOM)
    w.send(script(job_id, room_id, 1), at=w.at(-4000))  # 400 s before start_time
    w.send(rtmp("CONNECTED", job_id, room_id), at=w.at(-3500))
    w.send(reply(job_id, room_id, 1), at=w.at(-2000))
    w.send(rtmp("END", job_id, room_id), at=w.at(-1200))
    return job_id, room_id


@pytest.mark.parametrize("events_as", ["bare", "upper"])
def test_undashed_events_against_a_job_listed_dashed(world: World, events_as: str) -> None:
    w = world
    job_id, room_id = dashed_world(w, events_as=events_as)
    report = w.run(w.checker())
    assert (report.rooms_checked, report.rooms_failed, report.jobs_seen) == (1, 0, 1)
    # Not unknown: the right rules fire instead, each once.
    assert w.open_kinds() == sorted([rules.OUTSIDE_JOB_WINDOW, rules.STREAM_ENDED_JOB_RUNNING])
    outside = w.finding(rules.OUTSIDE_JOB_WINDOW)
    assert (outside["job_id"], outside["room_id"]) == (job_id, room_id)  # as received
    assert "before start_time" in outside["detail"]
    # MetaStudio was asked in its own spelling of the room, once.
    assert [r.path.split("/")[-2] for r in list_calls(w.fake)] == [api_form(ROOM)]
    # The snapshot keeps MetaStudio's spelling and is found by the events' one.
    assert [row.job_id for row in w.snapshots()] == [api_form(JOB)]
    # Every lookup by any spelling finds the same findings.
    for spell in (str, api_form, str.upper, lambda v: api_form(v).upper()):
        assert w.open_kinds(job_id=spell(JOB)) == w.open_kinds()
        assert w.open_kinds(room_id=spell(ROOM)) == w.open_kinds()
    # MetaStudio ends the job: the stream rule clears, the window rule stays; nothing unknown.
    w.fake.update_job(JOB, state="SUCCEED", end_time=w.at(-1190).strftime("%Y-%m-%dT%H:%M:%SZ"))
    w.run(w.checker(), after=60)
    assert w.open_kinds() == [rules.OUTSIDE_JOB_WINDOW]


def test_dashed_events_against_a_job_listed_bare(world: World) -> None:
    """The reverse: a fake (or MetaStudio) that lists the 32-digit form, events dashed."""
    w = world
    w.fake.add_job(job(JOB, ROOM, start=w.at(-3600)))
    w.send(script(api_form(JOB), api_form(ROOM)), at=w.at(-600))
    w.send(script(JOB.upper(), ROOM, 2), at=w.at(-500))  # the same job, spelt a third way
    report = w.run(w.checker())
    assert (report.rooms_checked, report.jobs_seen, report.findings_opened) == (1, 1, 0)
    assert w.findings() == []
    # A job nobody lists, in both spellings: one unknown_job, not two.
    other = uuid.uuid4()
    w.send(script(other.hex, ROOM, 3), at=w.at(-400))
    w.send(script(str(other), api_form(ROOM), 4), at=w.at(-300))
    w.run(w.checker(), after=60)
    unknown = w.finding(rules.UNKNOWN_JOB)
    assert id_key(unknown["job_id"]) == other.hex and unknown["data"]["event_count"] == 2
    assert len(list_calls(w.fake)) == 2  # one query per room per run, whatever the spelling


def test_a_crosscheck_of_one_room_by_either_spelling(world: World) -> None:
    w = world
    dashed_world(w)
    checker = w.checker()
    for n, spelling in enumerate((ROOM, api_form(ROOM), api_form(ROOM).upper())):
        report = w.run(checker, after=n, room_id=spelling)
        assert (report.rooms_checked, report.jobs_seen) == (1, 1)
        assert sorted(f["kind"] for f in report.open_findings) == w.open_kinds()
    assert {r.path.split("/")[-2] for r in list_calls(w.fake)} == {api_form(ROOM)}
    assert w.finding(rules.OUTSIDE_JOB_WINDOW)["occurrences"] == 3


def paged_checker(w: World) -> tuple[CrossChecker, MetaStudioJobs]:
    """A checker whose client reads two jobs a page, retries twice and does not cache."""
    source = MetaStudioJobs(
        endpoint=w.base_url,
        project_id=fm.DEFAULT_PROJECT_ID,
        ak=fm.DEFAULT_AK,
        sk=fm.DEFAULT_SK,
        timeout=5,
        cache_ttl=0,
        page_limit=2,
        retries=2,
        backoff=0.01,
    )
    w.sources.append(source)
    settings = w.settings()
    checker = CrossChecker(
        engine=w.engine,
        source=source,
        endpoints={e.name: e for e in settings.endpoints},
    )
    return checker, source


def test_a_transient_500_mid_listing_never_makes_a_listed_job_unknown(world: World) -> None:
    w = world
    # Five jobs listed dashed, three pages of two; each sent its callbacks undashed.
    jobs = [uuid.uuid4() for _ in range(5)]
    for n, value in enumerate(jobs):
        w.fake.add_job(job(str(value), api_form(ROOM), start=w.at(-3600 + n)))
        w.send(script(value.hex, ROOM, n), at=w.at(-600 + n))
    checker, _ = paged_checker(w)

    # The second page fails once: retried, the listing completes, nothing is unknown.
    w.fake.fail_requests(1, after=1)
    w.fake.clear_requests()
    report = w.run(checker)
    assert (report.rooms_checked, report.rooms_failed, report.jobs_seen) == (1, 0, 5)
    assert len(list_calls(w.fake)) == 4  # page 1, page 2 (500), page 2 again, page 3
    assert w.open_kinds() == []

    # The second page keeps failing: the room is unreachable, and still no job is unknown.
    w.fake.fail_requests(50, after=1)
    report = w.run(checker, after=60)
    assert (report.rooms_checked, report.rooms_failed) == (0, 1)
    assert w.open_kinds() == [rules.METASTUDIO_UNREACHABLE]
    assert "HTTP 500" in w.finding(rules.METASTUDIO_UNREACHABLE)["detail"]

    # MetaStudio recovers: the outage clears, nothing else opens.
    w.fake.fail_requests(0)
    report = w.run(checker, after=120)
    assert (report.rooms_checked, report.jobs_seen, report.findings_resolved) == (1, 5, 1)
    assert w.open_kinds() == []
    assert not w.findings(kind=rules.UNKNOWN_JOB)


def test_a_listing_cut_short_leaves_unknown_job_findings_as_they_were(world: World) -> None:
    """Paging that stops before ``count`` (an empty page) is no evidence about missing jobs."""
    w = world
    listed = uuid.uuid4()
    w.fake.add_job(job(str(listed), api_form(ROOM), start=w.at(-3600)))
    w.send(script(listed.hex, ROOM), at=w.at(-600))
    checker, source = paged_checker(w)
    source.max_pages = 1
    for n in range(3):  # more jobs than one page holds
        w.fake.add_job(job(str(uuid.uuid4()), api_form(ROOM), start=w.at(-7200 - n)))
    report = w.run(checker)
    assert report.rooms_failed == 0 and report.jobs_seen == 2
    assert w.open_kinds() == []


# -- the query API and the CLI, both stores ----------------------------------------------------


def test_the_job_view_and_every_filter_take_either_spelling(world: World) -> None:
    w = world
    job_id, room_id = dashed_world(w)
    w.run(w.checker())
    api = w.client
    auth = {"authorization": "Bearer test-token"}
    spellings = [JOB, api_form(JOB), JOB.upper(), api_form(JOB).upper()]

    views = [api.get(f"/v1/jobs/{s}", headers=auth) for s in spellings]
    assert {v.status_code for v in views} == {200}
    first = views[0].json()
    assert len(first["timeline"]) == 4 and first["metastudio"]["job_id"] == api_form(JOB)
    assert {f["kind"] for f in first["findings"]} == set(w.open_kinds())
    assert first["job_id"] == job_id and first["job_key"] == JOB and first["room_id"] == room_id
    for view in views[1:]:
        assert view.json() == first

    for name, values in (("job_id", spellings), ("room_id", [ROOM, api_form(ROOM).upper()])):
        pages = [api.get("/v1/events", params={name: v}, headers=auth).json() for v in values]
        assert all(p["events"] == pages[0]["events"] for p in pages)
        assert [e["job_id"] for e in pages[0]["events"]] == [job_id] * 4  # as received
        found = [api.get("/v1/findings", params={name: v}, headers=auth).json() for v in values]
        assert all(f["findings"] == found[0]["findings"] for f in found)
        assert len(found[0]["findings"]) == 2

    # A cursor issued for one spelling pages on under the other.
    page = api.get("/v1/events", params={"job_id": JOB, "limit": 2}, headers=auth).json()
    rest = api.get(
        "/v1/events",
        params={"job_id": api_form(JOB), "limit": 2, "cursor": page["next_cursor"]},
        headers=auth,
    ).json()
    assert [e["id"] for e in page["events"] + rest["events"]] == [
        e["id"] for e in first["timeline"]
    ]
    # Another job's spelling finds nothing; a non-UUID id is compared exactly.
    assert api.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth).status_code == 404
    assert api.get("/v1/jobs/JOB-1", headers=auth).status_code == 404


def test_events_export_and_replay_filters_take_either_spelling(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = world
    dashed_world(w)
    w.send(script("job-1", "room-1"), at=w.at(-100))  # ids that are not UUIDs: exact only
    config = write_config(tmp_path / "r.toml", w.url)

    def cli(*args: str) -> str:
        capsys.readouterr()
        assert main([*args, "--config", str(config)], environ={}) == 0
        return capsys.readouterr().out

    listed = json.loads(cli("events", "--job-id", api_form(JOB).upper(), "--json"))
    assert len(listed["events"]) == 4
    assert json.loads(cli("events", "--room-id", api_form(ROOM), "--json")) == listed
    assert json.loads(cli("events", "--job-id", "JOB-1", "--json"))["events"] == []
    assert len(json.loads(cli("events", "--job-id", "job-1", "--json"))["events"]) == 1

    export = tmp_path / "job.jsonl"
    export.write_text(cli("export", "--job-id", api_form(JOB)))
    records = read_export(export)
    assert [r.event_id for r in records] == [e["id"] for e in listed["events"]]
    everything = tmp_path / "all.jsonl"
    everything.write_text(cli("export"))
    every = read_export(everything)
    for spelling in (JOB, api_form(JOB), api_form(JOB).upper()):
        assert filter_records(every, job_id=spelling) == records
    assert len(filter_records(every, room_id=api_form(ROOM))) == 4
    assert len(filter_records(every, job_id="job-1")) == 1
    assert filter_records(every, job_id="JOB-1") == []


# -- the migration fills the keys of rows stored before it -------------------------------------


def test_migration_keys_rows_stored_before_it(db_url: str) -> None:
    upgrade(db_url, "0004")
    engine = create_engine_for(db_url, pool_size=1)
    spelled = [DOC_JOB_LISTED, DOC_JOB_LISTED.upper(), DOC_ROOM_CALLBACK.upper(), "job-1", None]
    now = "2026-12-01 00:00:00"
    try:
        with engine.begin() as conn:
            for n, value in enumerate(spelled, start=1):
                conn.execute(
                    sa.text(
                        "INSERT INTO deliveries (id, endpoint, status, received_at, body_sha256,"
                        " body_size, headers, query) VALUES (:n, 'a', 'stored', :t, 'x', 0,"
                        " '{}', '[]')"
                    ),
                    {"n": n, "t": now},
                )
                conn.execute(
                    sa.text(
                        "INSERT INTO events (delivery_id, endpoint, event_type, room_id, job_id,"
                        " received_at, message, message_encoding, extra) VALUES (:n, 'a', 'T',"
                        " :v, :v, :t, '{}', 'string', '{}')"
                    ),
                    {"n": n, "v": value, "t": now},
                )
                conn.execute(
                    sa.text(
                        "INSERT INTO findings (fingerprint, kind, room_id, job_id, detail, data,"
                        " first_seen_at, last_seen_at, occurrences) VALUES (:f, 'k', :v, :v, '',"
                        " '{}', :t, :t, 1)"
                    ),
                    {"f": f"f{n}", "v": value, "t": now},
                )
                if value is not None:
                    conn.execute(
                        sa.text(
                            "INSERT INTO job_snapshots (job_id, room_id, data, data_sha256,"
                            " first_fetched_at, fetched_at) VALUES (:v, :v, '{}', 'x', :t, :t)"
                        ),
                        {"v": value, "t": now},
                    )
        upgrade(db_url)
        expected = [id_key(v) if v is not None else None for v in spelled]
        with engine.connect() as conn:
            for table in ("events", "findings", "job_snapshots"):
                rows = conn.execute(
                    sa.text(f"SELECT job_id, job_key, room_key FROM {table} ORDER BY id")  # noqa: S608
                ).all()
                wanted = expected if table != "job_snapshots" else expected[:-1]
                assert [r.job_key for r in rows] == wanted, table
                assert [r.room_key for r in rows] == wanted, table
                assert [r.job_id for r in rows] == spelled[: len(rows)], table  # kept as received
            # And the query side finds the old rows by either spelling.
            for spelling in (DOC_ROOM_CALLBACK, DOC_JOB_LISTED):
                page = queries.list_events(conn, job_id=spelling)
                assert [e["job_id"] for e in page.items] == spelled[:3]
    finally:
        engine.dispose()


def test_simulate_uses_the_two_spellings_the_document_shows(world: World) -> None:
    from receiver.tools.simulate import simulate_job

    w = world
    report = simulate_job(
        receiver_url="http://testserver/callbacks/shop-a",
        registered_url=w.settings().endpoints[0].registered_url,
        key=w.settings().endpoints[0].keys[0],
        fake=w.fake,
        client=w.client,
    )
    assert report.ok, report.render()
    assert len(report.job_id) == 32 and is_uuid_shaped(report.job_id)
    assert report.listed_job_id == str(uuid.UUID(report.job_id))
    listed = w.fake.jobs()
    assert [(j["job_id"], j["room_id"]) for j in listed] == [
        (report.listed_job_id, report.listed_room_id)
    ]
    messages = [s for s in report.sent if s.event_id is not None]
    assert messages and all(s.job_id == report.job_id for s in report.stored_for_job())
    with w.engine.connect() as conn:
        stored = queries.list_events(conn, job_id=report.listed_job_id, limit=1000).items
    assert {e["job_id"] for e in stored} == {report.job_id}
    assert len(stored) == len(report.stored_for_job())
    w.run(w.checker())
    assert rules.UNKNOWN_JOB not in w.open_kinds(job_id=report.listed_job_id)


def test_lookups_by_either_spelling_stay_on_the_key_indexes(world: World) -> None:
    """The filters compare the stored key with the key of the asked id: a plain equality on
    the indexed column, whichever spelling was asked (EXPLAIN names the index)."""
    w = world
    dashed_world(w)
    w.run(w.checker())
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        seen.append((sql, params))

    lookups = {
        "ix_events_job_key_id": lambda c: queries.list_events(c, job_id=api_form(JOB)),
        "ix_events_room_key_id": lambda c: queries.list_events(c, room_id=api_form(ROOM)),
        "ix_findings_job_key_id": lambda c: queries.list_findings(c, job_id=api_form(JOB)),
        "ix_findings_room_key_id": lambda c: queries.list_findings(c, room_id=ROOM.upper()),
    }
    sqlite = w.engine.dialect.name == "sqlite"
    with w.engine.connect() as conn:
        if not sqlite:  # tiny tables: make the planner show whether it *can* use the index
            conn.execute(sa.text("SET enable_seqscan = off"))
        for index, lookup in lookups.items():
            seen.clear()
            sa.event.listen(w.engine, "before_cursor_execute", record)
            try:
                lookup(conn)
            finally:
                sa.event.remove(w.engine, "before_cursor_execute", record)
            sql, params = seen[-1]
            explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
            plan = conn.exec_driver_sql(explain + sql, params).all()
            assert index in " ".join(str(row[-1]) for row in plan), (index, plan)

"""Retention (receiver.store.retention), on both stores: what the prune deletes, what it keeps
(newer rows, what destinations still need, the signature tolerance, duplicates' originals),
the other bounds, and archives that hold each row exactly once and replay byte-exact into a
fresh receiver."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import KEY, REGISTERED, endpoint_table, make_settings, run_cli, stored_bodies
from forwarding_world import callback, wait_until
from starlette.testclient import TestClient

from receiver.protocol.signing import AuthType
from receiver.store import prune_rows, retention
from receiver.store.migrate import upgrade
from receiver.store.models import (
    Archive,
    Delivery,
    Event,
    Finding,
    ForwardMessage,
    ForwardState,
    JobSnapshot,
    Rejection,
)
from receiver.store.writer import create_engine_for
from receiver.testing import deliver, sign_request
from receiver.tools.replay_records import read_export

DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
EVENTS = Event.__table__  # type: ignore[attr-defined]
ARCHIVES = Archive.__table__  # type: ignore[attr-defined]
PARKED = ForwardMessage.__table__  # type: ignore[attr-defined]
PLACES = ForwardState.__table__  # type: ignore[attr-defined]
FINDINGS = Finding.__table__  # type: ignore[attr-defined]
SNAPSHOTS = JobSnapshot.__table__  # type: ignore[attr-defined]
REJECTIONS = Rejection.__table__  # type: ignore[attr-defined]

NOW = datetime.now(UTC)
POLICY = retention.RetentionPolicy(days=30, default_tolerance=300)


@pytest.fixture
def engine(migrated_url: str) -> Iterator[sa.Engine]:
    engine = create_engine_for(migrated_url, pool_size=1)
    yield engine
    engine.dispose()


@pytest.fixture
def client(app_client: Callable[..., TestClient]) -> TestClient:
    return app_client()


def _store(client: TestClient, n: int, job: str = "job-a") -> list[int]:
    """``n`` events through the real app; their delivery ids, in order."""
    ids = []
    for i in range(1, n + 1):
        answer = deliver(callback(job, i), client=client)
        assert answer.stored, answer
        ids.append(answer.json["delivery_id"])
    return ids


def _age(engine: sa.Engine, delivery_ids: list[int], days: float) -> None:
    """As if these deliveries (and their events) had been received ``days`` ago."""
    when = NOW - timedelta(days=days)
    with engine.begin() as conn:
        conn.execute(
            sa.update(DELIVERIES).where(DELIVERIES.c.id.in_(delivery_ids)).values(received_at=when)
        )
        conn.execute(
            sa.update(EVENTS).where(EVENTS.c.delivery_id.in_(delivery_ids)).values(received_at=when)
        )


def _stored(engine: sa.Engine) -> tuple[set[int], set[int]]:
    """The delivery ids and the delivery ids of events still stored."""
    with engine.connect() as conn:
        deliveries = set(conn.execute(sa.select(DELIVERIES.c.id)).scalars())
        events = set(conn.execute(sa.select(EVENTS.c.delivery_id)).scalars())
    return deliveries, events


def _event_id(engine: sa.Engine, delivery_id: int) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(EVENTS.c.id).where(EVENTS.c.delivery_id == delivery_id)
            ).scalar_one()
        )


def test_prune_deletes_what_is_older_and_keeps_what_is_newer(
    engine: sa.Engine, client: TestClient
) -> None:
    ids = _store(client, 6)
    events = [_event_id(engine, d) for d in ids]
    _age(engine, ids[:3], days=40)
    _age(engine, ids[3:4], days=20)

    counted = retention.prune(engine, POLICY, now=NOW, dry_run=True, pause=0)
    assert (counted.events, counted.deliveries) == (3, 3)
    assert _stored(engine) == (set(ids), set(ids)), "a dry run changes nothing"

    report = retention.prune(engine, POLICY, now=NOW, pause=0, chunk=2)
    assert (report.events, report.deliveries) == (3, 3)
    assert _stored(engine) == (set(ids[3:]), set(ids[3:]))
    again = retention.prune(engine, POLICY, now=NOW, pause=0)
    assert (again.events, again.deliveries) == (0, 0)
    # The API still answers for what is left, and no longer for what went.
    assert client.get(f"/v1/events/{events[0]}", headers=_auth()).status_code == 404
    assert client.get(f"/v1/events/{events[4]}", headers=_auth()).status_code == 200


def _auth() -> dict[str, str]:
    return {"Authorization": "Bearer test-token"}


def test_before_and_an_endpoint_override_never_reach_into_the_tolerance(
    engine: sa.Engine, client: TestClient
) -> None:
    ids = _store(client, 4)
    _age(engine, ids[:1], days=20)
    _age(engine, ids[1:2], days=400 / 86400)  # 400 s ago: past a 300 s tolerance
    # --before in the future: everything received before now, but not inside the tolerance.
    report = retention.prune(engine, POLICY, now=NOW, before=NOW + timedelta(days=1), pause=0)
    assert report.events == 2
    assert _stored(engine)[1] == set(ids[2:]), "received just now: inside the window"

    more = _store(client, 2, job="job-b")
    _age(engine, more, days=20)
    kept_30 = retention.prune(engine, POLICY, now=NOW, pause=0)
    assert kept_30.events == 0, "20 days is inside retention_days = 30"
    shorter = retention.RetentionPolicy(days=30, endpoint_days={"shop-a": 10})
    assert retention.prune(engine, shorter, now=NOW, pause=0).events == 2


def test_what_destinations_have_not_taken_stays(engine: sa.Engine, client: TestClient) -> None:
    ids = _store(client, 5)
    _age(engine, ids, days=40)
    events = [_event_id(engine, d) for d in ids]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(PLACES).values(
                name="hook",
                event_cursor=events[2],
                finding_cursor=0,
                lease_until=0.0,
                failures=0,
                created_at=NOW,
            )
        )
        conn.execute(
            sa.insert(PARKED).values(
                destination="hook",
                message_id="msg_dead_1",
                source="event",
                source_id=events[0],
                order_key="job-a",
                state="dead",
                attempts=8,
                next_attempt_at=NOW,
                created_at=NOW,
            )
        )
    policy = retention.RetentionPolicy(days=30, keep_for=("hook",))
    report = retention.prune(engine, policy, now=NOW, pause=0)
    # Taken by the destination: events 2 and 3; event 1 is dead-lettered (a resend needs it),
    # events 4 and 5 are past its place.
    assert report.events == 2 and report.kept_for_forwarding == events[2]
    assert _stored(engine)[1] == {ids[0], ids[3], ids[4]}
    # A destination the config no longer has does not hold anything back.
    assert retention.prune(engine, POLICY, now=NOW, pause=0).events == 2


def test_the_policy_follows_the_configuration(migrated_url: str) -> None:
    settings = make_settings(
        migrated_url,
        endpoint_table(retention_days=7, tolerance_seconds=900),
        endpoint_table(name="shop-b", registered_url=REGISTERED.replace("shop-a", "shop-b")),
        retention_days=30,
        destinations=[{"name": "hook", "kind": "redis", "url": "redis://127.0.0.1:9"}],
        rules={"stream_down_seconds": 30},
    )
    policy = retention.policy_from(settings)
    assert policy.days == 30 and dict(policy.endpoint_days) == {"shop-a": 7}
    assert policy.keep_for == ("hook", retention.RULES_PLACE)
    assert policy.tolerance["shop-a"] == 900
    assert policy.cutoff("shop-a", NOW, None) == NOW - timedelta(days=7)
    assert policy.cutoff("shop-b", NOW, None) == NOW - timedelta(days=30)
    assert policy.cutoff("shop-a", NOW, NOW) == NOW - timedelta(seconds=900)
    assert retention.enabled(settings)
    assert not retention.enabled(make_settings(migrated_url))


def _raw(client: TestClient, body: bytes) -> int:
    """A correctly signed body that does not decode: refused (400) but stored, as
    ``undecodable``."""
    url, headers = sign_request(
        registered_url=REGISTERED, auth_type=AuthType.MSS_A, key=KEY, when=time.time()
    )
    answer = client.post(
        url.removeprefix("https://hooks.example.com"),
        content=body,
        headers={**headers, "Content-Type": "application/json"},
    )
    assert answer.status_code == 400 and answer.json()["result"] == "stored", answer.text
    return int(answer.json()["delivery_id"])


def test_duplicates_go_with_their_original_unless_one_is_still_inside_the_window(
    engine: sa.Engine, client: TestClient
) -> None:
    old, recent = callback("job-a", 1), callback("job-a", 2)
    first = deliver(old, client=client).json["delivery_id"]
    assert deliver(old, client=client).result == "duplicate"
    second = deliver(recent, client=client).json["delivery_id"]
    assert deliver(recent, client=client).result == "duplicate"
    (receipt,), (late,) = _receipts(engine, first), _receipts(engine, second)
    undecodable = _raw(client, b'{"event_type": "SHOOT_SCRIPT_SWITCH", "message": "{not json"}')
    _age(engine, [first, receipt, second, undecodable], days=40)
    # ``late`` (a receipt of ``second``) came just now: ``second`` stays with it.
    report = retention.prune(engine, POLICY, now=NOW, pause=0)
    assert report.events == 1 and report.deliveries == 3
    assert _stored(engine) == ({second, late}, {second})


def _receipts(engine: sa.Engine, original: int) -> list[int]:
    with engine.connect() as conn:
        query = sa.select(DELIVERIES.c.id).where(DELIVERIES.c.duplicate_of == original)
        return list(conn.execute(query).scalars())


def _rows(engine: sa.Engine, table: sa.Table) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(table).order_by(table.c.id)))


def test_findings_snapshots_and_rejections_have_bounds_of_their_own(engine: sa.Engine) -> None:
    old, recent = NOW - timedelta(days=40), NOW - timedelta(days=1)

    def finding(fingerprint: str, resolved: datetime | None, ack: str | None = None) -> dict:
        return {
            "fingerprint": fingerprint,
            "kind": "job_state_mismatch",
            "detail": "x",
            "data": {},
            "first_seen_at": old,
            "last_seen_at": old,
            "resolved_at": resolved,
            "occurrences": 1,
            "ack_action": ack,
        }

    def snapshot(job: str, at: datetime) -> dict:
        return {
            "job_id": job,
            "room_id": "r",
            "job_key": job,
            "room_key": "r",
            "data": {},
            "data_sha256": "0" * 64,
            "first_fetched_at": at,
            "fetched_at": at,
        }

    def rejection(at: datetime) -> dict:
        return {
            "received_at": at,
            "reason": "signature",
            "error_code": "RCV.SIGNATURE_INVALID",
            "detail": "x",
            "body_size": 0,
            "body_sha256": "0" * 64,
            "body_prefix": "",
        }

    with engine.begin() as conn:
        conn.execute(
            sa.insert(FINDINGS),
            [
                finding("resolved-long-ago", old),
                finding("muted", old, "mute"),
                finding("open", None),
                finding("resolved-lately", recent),
            ],
        )
        conn.execute(
            sa.insert(SNAPSHOTS),
            [snapshot("j1", old), snapshot("j1", old), snapshot("j2", old), snapshot("j1", recent)],
        )
        conn.execute(sa.insert(REJECTIONS), [rejection(old), rejection(recent)])
    report = retention.prune(engine, POLICY, now=NOW, pause=0)
    assert (report.findings, report.snapshots, report.rejections) == (1, 2, 1)
    assert [r.fingerprint for r in _rows(engine, FINDINGS)] == [
        "muted",
        "open",
        "resolved-lately",
    ]
    assert [(r.job_id, r.fetched_at == old) for r in _rows(engine, SNAPSHOTS)] == [
        ("j2", True),  # the newest of its job, however old
        ("j1", False),
    ]
    assert len(_rows(engine, REJECTIONS)) == 1


def _archived_lines(folder: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted(folder.rglob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            lines += [json.loads(line) for line in handle]
    return lines


def test_archives_hold_each_row_once_and_replay_byte_exact_into_a_fresh_receiver(
    engine: sa.Engine,
    client: TestClient,
    migrated_url: str,
    tmp_path: Path,
    server_factory: Callable[..., Any],
) -> None:
    sent = [callback("job-a", i) for i in range(1, 8)]
    sent.append(callback("job-b", 1, event_type="RTMP_STREAM_STATE_CHANGE"))
    sent.append(callback("job-b", 2, event_type="REPLY_COMMAND_FINISH"))
    ids = [deliver(c, client=client).json["delivery_id"] for c in sent]
    assert deliver(sent[0], client=client).result == "duplicate"
    (receipt,) = _receipts(engine, ids[0])
    undecodable = _raw(client, b"\xff\xfe not even text")
    _age(engine, [*ids, receipt, undecodable], days=40)
    archive = tmp_path / "archive"
    policy = retention.RetentionPolicy(days=30, archive_dir=str(archive))

    report = retention.prune(engine, policy, now=NOW, pause=0, chunk=4)
    assert report.events == len(sent) and report.deliveries == len(sent) + 2
    assert _stored(engine) == (set(), set())
    files = sorted(archive.rglob("*.jsonl.gz"))
    assert len(files) == report.archived_files == len(_rows(engine, ARCHIVES))
    lines = _archived_lines(archive)
    event_ids = [line["event_id"] for line in lines if "event_id" in line]
    assert len(event_ids) == len(set(event_ids)) == len(sent), "each event in one file, once"
    assert sorted(line["delivery_id"] for line in lines) == sorted([*ids, receipt, undecodable])
    records = read_export(archive)
    assert [r.body for r in records] == [c.body for c in sent]

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(fresh)
    target = server_factory(fresh, endpoint_table())
    done = run_cli(
        "replay",
        "--from",
        str(archive),
        "--to",
        REGISTERED,
        "--deliver-to",
        target.base_url,
        "--key",
        KEY,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert set(stored_bodies(fresh)) == {c.body for c in sent}
    # One file read on its own is the same records.
    one = read_export(next(f for f in files if "-events-" in f.name))
    assert one and all(r.body in {c.body for c in sent} for r in one)


def test_a_prune_that_stops_while_it_writes_an_archive_loses_nothing(
    engine: sa.Engine, client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _store(client, 9)
    _age(engine, ids, days=40)
    archive = tmp_path / "archive"
    archive.mkdir()
    theirs = archive / "shop-a" / "2026-10" / "kept-by-hand.jsonl.gz"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(gzip.compress(b"{}\n"))
    policy = retention.RetentionPolicy(days=30, archive_dir=str(archive))
    real = prune_rows.write_file
    calls = {"n": 0}

    def dies_on_the_second(folder: Path, packed: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            # As a kill would: announced, half written under its temporary name.
            (folder / packed.relative).with_name(Path(packed.relative).name + ".tmp").write_bytes(
                b"\x1f\x8b half"
            )
            raise KeyboardInterrupt
        real(folder, packed)

    monkeypatch.setattr(prune_rows, "write_file", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        retention.prune(engine, policy, now=NOW, pause=0, chunk=3)
    assert len(list(archive.rglob("*.jsonl.gz"))) == 2, "one archive, and the file kept by hand"
    assert _stored(engine)[1] == set(ids[3:])
    monkeypatch.setattr(prune_rows, "write_file", real)

    report = retention.prune(engine, policy, now=NOW, pause=0, chunk=3)
    assert report.removed_unwritten == 1 and report.events == 6
    assert not list(archive.rglob("*.tmp"))
    assert theirs.exists(), "a file the store does not know is never touched"
    theirs.unlink()
    lines = _archived_lines(archive)
    assert sorted(line["delivery_id"] for line in lines) == sorted(ids), "each exactly once"
    assert _stored(engine) == (set(), set())
    states = {row.state for row in _rows(engine, ARCHIVES)}
    assert states == {"complete"}


def test_a_prune_that_stops_while_it_deletes_is_finished_by_the_next_one(
    engine: sa.Engine, client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _store(client, 8)
    _age(engine, ids, days=40)
    archive = tmp_path / "archive"
    policy = retention.RetentionPolicy(days=30, archive_dir=str(archive))
    monkeypatch.setattr(prune_rows, "DELETE_BATCH", 1)
    deleted = {"events": 0}

    def stops_half_way(events: int, deliveries: int, archived: bool) -> None:
        deleted["events"] += events
        if deleted["events"] == 3:
            raise KeyboardInterrupt  # as a kill would, between two delete transactions

    with pytest.raises(KeyboardInterrupt):
        retention.prune(engine, policy, now=NOW, pause=0, chunk=5, on_batch=stops_half_way)
    assert len(_stored(engine)[1]) == 5, "three of the first file's five events deleted"
    with engine.connect() as conn:
        pending = conn.execute(sa.select(ARCHIVES).where(ARCHIVES.c.state == "deleting"))
        assert len(pending.all()) == 1

    report = retention.prune(engine, policy, now=NOW, pause=0, chunk=5)
    assert report.finished_archives == 1 and report.events == 5
    lines = _archived_lines(archive)
    assert sorted(line["delivery_id"] for line in lines) == sorted(ids), "each exactly once"
    assert _stored(engine) == (set(), set())
    with engine.connect() as conn:
        done = conn.execute(sa.select(ARCHIVES.c.completed_at)).scalars().all()
    assert len(done) == 2 and all(done)


def test_one_prune_at_a_time(engine: sa.Engine) -> None:
    with retention._one_at_a_time(engine), pytest.raises(retention.PruneBusy):
        retention.prune(engine, POLICY, now=NOW, pause=0)


def test_the_stream_rules_hold_back_only_the_rtmp_events_they_have_not_read(
    engine: sa.Engine, app_client: Callable[..., TestClient]
) -> None:
    # The app's own rules off: the rules' place is set by hand here.
    client = app_client(rules={"stream_down_seconds": 0, "stream_flapping": "off"})
    ids = [
        deliver(callback("job-a", 1), client=client).json["delivery_id"],
        deliver(callback("job-a", 2, event_type="RTMP_STREAM_STATE_CHANGE"), client=client).json[
            "delivery_id"
        ],
        deliver(callback("job-a", 3), client=client).json["delivery_id"],
    ]
    _age(engine, ids, days=40)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(PLACES).values(
                name=retention.RULES_PLACE,
                event_cursor=0,
                finding_cursor=0,
                lease_until=0.0,
                failures=0,
                created_at=NOW,
            )
        )
    policy = retention.RetentionPolicy(days=30, keep_for=(retention.RULES_PLACE,))
    report = retention.prune(engine, policy, now=NOW, pause=0)
    assert report.events == 2 and report.kept_for_stream_rules == 0
    assert _stored(engine)[1] == {ids[1]}


def test_with_no_rtmp_events_the_rules_place_still_moves_so_the_prune_can_take_them(
    engine: sa.Engine, migrated_url: str, client: TestClient
) -> None:
    ids = _store(client, 3)
    last = _event_id(engine, ids[-1])

    def rules_place() -> int:
        with engine.connect() as conn:
            query = sa.select(PLACES.c.event_cursor).where(PLACES.c.name == retention.RULES_PLACE)
            return int(conn.execute(query).scalar() or 0)

    wait_until(lambda: rules_place() >= last, timeout=20, what="the rules' place saved")
    _age(engine, ids, days=40)
    policy = retention.policy_from(make_settings(migrated_url, retention_days=30))
    assert retention.RULES_PLACE in policy.keep_for
    assert retention.prune(engine, policy, now=NOW, pause=0).events == 3

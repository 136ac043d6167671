"""The durable write path used directly: ``Store.write_batch`` and ``GroupCommitWriter``.

Every test runs on SQLite and on PostgreSQL unless it is about one of them. What is checked is
what the HTTP answer promises: one stored row per dedup key, duplicates pointing at it with the
delivery id the original was answered with, nothing refused or lost because of a neighbour.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from receiver.errors import StoreUnavailable
from receiver.store.driver import Store
from receiver.store.group_commit import GroupCommitWriter
from receiver.store.incoming import IncomingDelivery, WriteOutcome, delivery_of
from receiver.store.migrate import upgrade
from receiver.store.rows import Rows, prepare
from receiver.store.writer import DELIVERIES, EVENTS, create_engine_for
from receiver.testing import encode

SIGNED = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def body_for(n: int, **fields: Any) -> bytes:
    message = {"room_id": "room-1", "job_id": "job-1", "shoot_script_sequence_no": n}
    message.update(fields)
    return encode("SHOOT_SCRIPT_SWITCH", message)


def incoming(
    body: bytes,
    *,
    signed_at: datetime | None = SIGNED,
    endpoint: str = "shop-a",
    query: Sequence[tuple[str, str]] = (),
    remote_addr: str | None = "127.0.0.1",
    key_index: int | None = 0,
) -> IncomingDelivery:
    """What intake builds for a verified delivery (decoding included)."""
    return delivery_of(
        (
            endpoint,
            body,
            datetime.now(UTC),
            signed_at,
            key_index if signed_at is not None else None,
            "seconds" if signed_at is not None else None,
            {"content-type": "application/json"},
            list(query),
            remote_addr,
        )
    )


@pytest.fixture
def store(migrated_url: str) -> Iterator[Store]:
    store = Store(migrated_url)
    try:
        yield store
    finally:
        store.close()


def rows(url: str, table: sa.Table = DELIVERIES) -> list[dict[str, Any]]:
    engine = create_engine_for(url, pool_size=1)
    try:
        with engine.connect() as conn:
            result = conn.execute(sa.select(table).order_by(table.c.id))
            return [dict(row._mapping) for row in result]
    finally:
        engine.dispose()


def originals(url: str) -> list[dict[str, Any]]:
    return [row for row in rows(url) if row["dedup_key"] is not None]


# --- write_batch ---------------------------------------------------------------------------------


def test_mixed_batch_outcomes_in_order(store: Store, migrated_url: str) -> None:
    earlier = incoming(body_for(1))
    [first] = store.write_batch([earlier])
    assert (first.result, first.status) == ("stored", "stored")
    assert first.event_id is not None

    new = incoming(body_for(2))
    bad = incoming(b'{"event_type": "SHOOT_SCRIPT_SWITCH", "message": "{not json"}')
    assert bad.event is None and bad.error
    other = incoming(body_for(3))
    batch = [
        new,  # 0 new
        incoming(body_for(2)),  # 1 in-batch duplicate of 0
        incoming(body_for(1)),  # 2 duplicate of the row committed earlier
        bad,  # 3 undecodable: stored, without an event
        incoming(bad.body),  # 4 in-batch duplicate of the undecodable one
        other,  # 5 new
        incoming(body_for(2)),  # 6 a third copy of 0
        incoming(body_for(2), signed_at=SIGNED + timedelta(seconds=1)),  # 7 new: other time
        incoming(body_for(2), endpoint="shop-b"),  # 8 new: other endpoint
    ]
    out = store.write_batch(batch)
    assert [(o.result, o.status) for o in out] == [
        ("stored", "stored"),
        ("duplicate", "stored"),
        ("duplicate", "stored"),
        ("stored", "undecodable"),
        ("duplicate", "undecodable"),
        ("stored", "stored"),
        ("duplicate", "stored"),
        ("stored", "stored"),
        ("stored", "stored"),
    ]
    # Duplicates answer with the id (and event id) the original was answered with.
    assert out[1] == WriteOutcome("duplicate", "stored", out[0].delivery_id, out[0].event_id)
    assert out[6] == out[1]
    assert out[2] == WriteOutcome("duplicate", "stored", first.delivery_id, first.event_id)
    assert out[3].event_id is None
    assert out[4] == WriteOutcome("duplicate", "undecodable", out[3].delivery_id, None)
    stored_ids = [first.delivery_id] + [out[i].delivery_id for i in (0, 3, 5, 7, 8)]
    assert len(set(stored_ids)) == 6

    all_rows = rows(migrated_url)
    kept = [r for r in all_rows if r["dedup_key"] is not None]
    assert sorted(r["id"] for r in kept) == sorted(stored_ids)
    assert len({r["dedup_key"] for r in kept}) == len(kept)
    by_id = {r["id"]: r for r in all_rows}
    assert by_id[out[3].delivery_id]["status"] == "undecodable"
    assert by_id[out[3].delivery_id]["body"] == bad.body
    assert by_id[out[3].delivery_id]["error"] == bad.error
    assert by_id[out[0].delivery_id]["body"] == new.body
    # One receipt per duplicate, pointing at its original, without a second copy of the body.
    receipts = [r for r in all_rows if r["status"] == "duplicate"]
    assert Counter(r["duplicate_of"] for r in receipts) == Counter(
        {out[0].delivery_id: 2, first.delivery_id: 1, out[3].delivery_id: 1}
    )
    assert all(r["body"] is None and r["dedup_key"] is None for r in receipts)
    assert all(r["body_sha256"] == by_id[r["duplicate_of"]]["body_sha256"] for r in receipts)
    # One event per decodable original, none for the undecodable one or for duplicates.
    events = rows(migrated_url, EVENTS)
    assert sorted(e["delivery_id"] for e in events) == sorted(
        [first.delivery_id] + [out[i].delivery_id for i in (0, 5, 7, 8)]
    )
    assert {e["id"] for e in events} == {first.event_id} | {out[i].event_id for i in (0, 5, 7, 8)}


def test_unsigned_deliveries_are_never_deduplicated(store: Store, migrated_url: str) -> None:
    """auth_type NONE: no signing time, so two equal bodies may be two real events."""
    body = encode("RTMP_STREAM_STATE_CHANGE", {"room_id": "r", "job_id": "j", "state": "CONNECTED"})
    out = store.write_batch([incoming(body, signed_at=None) for _ in range(3)])
    out += store.write_batch([incoming(body, signed_at=None)])
    assert [o.result for o in out] == ["stored"] * 4
    assert len({o.delivery_id for o in out}) == 4
    assert len({o.event_id for o in out}) == 4
    kept = originals(migrated_url)
    assert [r["body"] for r in kept] == [body] * 4
    assert all(r["signed_at"] is None for r in kept)


def test_nul_characters_are_stored(store: Store, migrated_url: str) -> None:
    """PostgreSQL text/JSONB cannot hold U+0000: the decoded copy gets U+FFFD, the raw body
    (bytea) keeps the exact bytes. SQLite keeps both as sent."""
    as_string = body_for(1, shoot_script_title="a\x00b")
    as_object = encode(
        "SHOOT_SCRIPT_SWITCH", {"room_id": "r\x00", "job_id": "j", "x": "\x00"}, message_as="object"
    )
    # JSON escapes that spell \u0000 only after the outer string is decoded: "\\\u00750000".
    hidden = (
        b'{"event_type":"SHOOT_SCRIPT_SWITCH","message":'
        b'"{\\"room_id\\":\\"r\\",\\"job_id\\":\\"j\\",\\"title\\":\\"a\\\\\\u00750000b\\"}"}'
    )
    unknown_type = encode("VENDOR\x00EVENT", {"room_id": "r", "job_id": "j"})
    items = [
        incoming(as_string, query=[("note", "x\x00y")]),
        incoming(as_object),
        incoming(hidden),
        incoming(unknown_type),
    ]
    assert all(item.event is not None for item in items)
    assert items[2].event is not None and items[2].event.message["title"] == "a\x00b"
    out = store.write_batch(items)
    assert [o.result for o in out] == ["stored"] * 4
    kept = {r["id"]: r for r in originals(migrated_url)}
    for item, outcome in zip(items, out, strict=True):
        assert kept[outcome.delivery_id]["body"] == item.body  # exact bytes
    events = {e["delivery_id"]: e for e in rows(migrated_url, EVENTS)}
    nul = "\ufffd" if store.dialect == "postgresql" else "\x00"
    assert events[out[0].delivery_id]["message"]["shoot_script_title"] == f"a{nul}b"
    assert kept[out[0].delivery_id]["query"] == [["note", f"x{nul}y"]]
    assert events[out[1].delivery_id]["room_id"] == f"r{nul}"
    assert events[out[2].delivery_id]["message"]["title"] == f"a{nul}b"
    assert events[out[3].delivery_id]["event_type"] == f"VENDOR{nul}EVENT"
    # The same bytes again are duplicates of what was stored (the key is taken before cleaning).
    again = store.write_batch([incoming(item.body) for item in items])
    assert [(o.result, o.delivery_id) for o in again] == [("duplicate", o.delivery_id) for o in out]


def test_overlong_remote_address_is_stored(store: Store, migrated_url: str) -> None:
    """remote_addr comes from X-Forwarded-For (uvicorn proxy_headers) and can be any length;
    the column holds 64 characters. A verified delivery must not be refused for it."""
    item = incoming(body_for(1), remote_addr="203.0.113.7-" + "x" * 200)
    [out] = store.write_batch([item])
    assert out.result == "stored"
    [row] = originals(migrated_url)
    assert row["body"] == item.body
    assert row["remote_addr"] is not None and item.remote_addr is not None
    assert item.remote_addr.startswith(row["remote_addr"])


def test_a_refused_item_does_not_fail_its_batch(pg_url: str) -> None:
    """One row the database refuses (here: key_index out of SMALLINT range) fails alone;
    the writer answers every other delivery of the batch with its own outcome."""
    upgrade(pg_url)
    good = [incoming(body_for(n)) for n in range(5)]
    poison = incoming(body_for(99), key_index=70000)
    batch = [good[0], good[1], poison, good[2], incoming(good[0].body), good[3], good[4]]

    async def main() -> tuple[list[Any], list[int]]:
        writer = GroupCommitWriter(Store(pg_url), timeout=10)
        await writer.start()
        try:
            answers = await asyncio.gather(
                *(writer.write(item) for item in batch), return_exceptions=True
            )
        finally:
            await writer.stop()
        return answers, writer.batch_sizes

    answers, sizes = asyncio.run(main())
    assert sizes and sizes[0] == len(batch), f"expected one batch, got {sizes}"
    assert isinstance(answers[2], StoreUnavailable)
    outcomes = [a for i, a in enumerate(answers) if i != 2]
    assert all(isinstance(a, WriteOutcome) for a in outcomes), answers
    assert [a.result for a in outcomes] == ["stored", "stored", "stored", "duplicate"] + [
        "stored"
    ] * 2
    assert answers[4] == WriteOutcome(
        "duplicate", "stored", answers[0].delivery_id, answers[0].event_id
    )
    kept = originals(pg_url)
    assert sorted(r["body"] for r in kept) == sorted(g.body for g in good)
    assert {r["id"] for r in kept} == {a.delivery_id for a in outcomes}


# --- GroupCommitWriter ---------------------------------------------------------------------------


def test_concurrent_writes_share_commits(migrated_url: str) -> None:
    distinct = [incoming(body_for(n)) for n in range(450)]
    again = [incoming(distinct[n].body) for n in range(0, 450, 9)]  # 50 duplicates
    items = distinct + again
    random.Random(7).shuffle(items)
    assert len(items) == 500

    async def main() -> tuple[list[WriteOutcome], list[int]]:
        writer = GroupCommitWriter(Store(migrated_url), max_batch=64, timeout=30)
        await writer.start()
        try:
            outcomes = await asyncio.gather(*(writer.write(item) for item in items))
        finally:
            await writer.stop()
        return list(outcomes), list(writer.batch_sizes)

    started = time.monotonic()
    outcomes, sizes = asyncio.run(main())
    elapsed = time.monotonic() - started
    print(f"500 writes in {elapsed:.2f} s, {len(sizes)} batches, sizes {sizes}")
    assert sum(sizes) == 500
    assert max(sizes) > 1 and len(sizes) < 500
    assert max(sizes) <= 64
    first_answer: dict[bytes, WriteOutcome] = {}
    results = Counter()
    for item, outcome in zip(items, outcomes, strict=True):
        results[outcome.result] += 1
        if outcome.result == "stored":
            assert item.body not in first_answer
            first_answer[item.body] = outcome
    assert results == Counter({"stored": 450, "duplicate": 50})
    for item, outcome in zip(items, outcomes, strict=True):
        assert outcome.delivery_id == first_answer[item.body].delivery_id
        assert outcome.event_id == first_answer[item.body].event_id
    kept = originals(migrated_url)
    assert len(kept) == 450
    assert {r["body"]: r["id"] for r in kept} == {
        body: o.delivery_id for body, o in first_answer.items()
    }


class _HangingStore:
    """A store whose every call blocks until released: a database that stopped answering."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def start(self) -> None:
        pass

    def ping(self) -> None:
        self.release.wait(10)

    def prepare(self, item: IncomingDelivery) -> Rows:
        return prepare(item, sqlite=True)

    def write_batch(
        self, items: Sequence[IncomingDelivery], rows: Sequence[Rows] | None = None
    ) -> list[WriteOutcome]:
        self.release.wait(10)
        raise StoreUnavailable("gone")

    def checkpoint(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_hanging_store_is_unavailable_not_an_error() -> None:
    """ping() and write() give up after the writer's timeout with StoreUnavailable (so
    /readyz and the callback answer 503), never a bare TimeoutError (which becomes a 500)."""
    fake = _HangingStore()

    async def main() -> tuple[BaseException | None, BaseException | None, float]:
        writer = GroupCommitWriter(fake, timeout=0.3)  # type: ignore[arg-type]
        await writer.start()
        started = time.monotonic()
        try:
            answers = await asyncio.gather(
                writer.ping(), writer.write(incoming(body_for(1))), return_exceptions=True
            )
        finally:
            fake.release.set()
            await writer.stop()
        ping_error, write_error = (a if isinstance(a, BaseException) else None for a in answers)
        return ping_error, write_error, time.monotonic() - started

    ping_error, write_error, elapsed = asyncio.run(main())
    assert isinstance(write_error, StoreUnavailable), repr(write_error)
    assert isinstance(ping_error, StoreUnavailable), repr(ping_error)
    assert elapsed < 5


# --- Two replicas on one PostgreSQL --------------------------------------------------------------


def test_two_replicas_store_each_key_once(pg_url: str) -> None:
    """Two Store instances (two receiver processes behind one balancer) get the same deliveries
    at the same time, in different orders: each is stored once, and the copy that lost answers
    "duplicate" with the winner's delivery id. No deadlock, no 503."""
    upgrade(pg_url)
    rounds, per_round = 6, 400
    keys = [[incoming(body_for(r * 1000 + n)) for n in range(per_round)] for r in range(rounds)]
    results: dict[str, list[tuple[bytes, WriteOutcome]]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def replica(name: str, seed: int) -> None:
        store = Store(pg_url)
        shuffle = random.Random(seed)
        try:
            for r in range(rounds):
                items = list(keys[r])
                shuffle.shuffle(items)
                batches = [items[i : i + 200] for i in range(0, len(items), 200)]
                barrier.wait(timeout=30)
                for batch in batches:
                    outcomes = store.write_batch(batch)
                    results[name].extend(zip((i.body for i in batch), outcomes, strict=True))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            store.close()

    threads = [
        threading.Thread(target=replica, args=("a", 1)),
        threading.Thread(target=replica, args=("b", 2)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert errors == []
    total = rounds * per_round
    a = dict(results["a"])
    b = dict(results["b"])
    assert len(a) == len(b) == total
    wins = Counter()
    for body, outcome_a in a.items():
        outcome_b = b[body]
        assert {outcome_a.result, outcome_b.result} == {"stored", "duplicate"}, body
        assert outcome_a.delivery_id == outcome_b.delivery_id
        assert outcome_a.event_id == outcome_b.event_id
        wins["a" if outcome_a.result == "stored" else "b"] += 1
    print(f"two replicas, {total} keys each: wins {dict(wins)}")
    kept = originals(pg_url)
    assert len(kept) == total
    assert {r["body"]: r["id"] for r in kept} == {body: o.delivery_id for body, o in a.items()}
    receipts = [r for r in rows(pg_url) if r["status"] == "duplicate"]
    assert len(receipts) == total
    assert len(rows(pg_url, EVENTS)) == total

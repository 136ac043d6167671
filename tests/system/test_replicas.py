"""Three replicas on one PostgreSQL: they migrate together, share one stream of deliveries and
take turns at the cross-check.

PRODUCT.md: a delivery identical to one already stored answers ``duplicate`` and is stored once,
whichever replica each copy reaches; with several replicas one cross-check runs at a time. Three
real ``serve`` processes start at the same moment on one fresh database (the migration lock lets
all three come up), concurrent senders spread signed deliveries over them, some copies of one
delivery racing to different replicas at once, some resent later; every answer is then checked
against what the database holds. Last, ``POST /v1/crosscheck`` reaches all three at once while
the fake MetaStudio holds its answers: one replica runs the check, the others say another
replica is running it, and the fake, the lock table and the findings show it.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from conftest import (
    ServerProcess,
    endpoint_table,
    free_port,
    signed_path,
    write_config,
)

from receiver.crosscheck.run import CROSSCHECK_LOCK
from receiver.protocol.ids import id_key
from receiver.store.models import Finding
from receiver.store.writer import DELIVERIES, EVENTS, create_engine_for
from receiver.testing import FakeMetaStudioServer, encode, fake_job

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.exclusive]  # timed races

FINDINGS = Finding.__table__  # type: ignore[attr-defined]
AUTH = {"Authorization": "Bearer test-token"}
REPLICAS = 3
DISTINCT = 300
SENDERS = 12
RACE_SHARE = 0.3  # of the deliveries, sent to 2 or 3 replicas at the same moment
RESENT = 60  # of the deliveries, sent again afterwards to a replica other than the first
SKIPPED = "another replica is running the cross-check"
# Same number as migrations/env.py MIGRATION_LOCK (not imported: env.py runs migrations on import).
MIGRATION_LOCK = 0x6D73_7276_6D69_6772


def hex_id(text: str) -> str:
    """A 32-hex-character id, as MetaStudio's room and job ids are."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


ROOMS = [hex_id(f"room-{r}") for r in range(4)]
JOBS = {room: [hex_id(f"job-{room}-{j}") for j in range(3)] for room in ROOMS}
FAILED_JOB, BLOCKED_JOB = hex_id("failed-job"), hex_id("blocked-job")


@dataclass(frozen=True)
class Delivery:
    """One signed callback: MetaStudio sends (and resends) the same URL and body."""

    number: int
    path_and_query: str
    body: bytes


@dataclass
class Answer:
    delivery: Delivery
    replica: int
    status: int
    result: str | None
    delivery_id: int | None
    started: float
    finished: float


def new_delivery(n: int) -> Delivery:
    room = ROOMS[n % len(ROOMS)]
    job = JOBS[room][(n // len(ROOMS)) % 3]
    body = encode("REPLY_COMMAND_FINISH", {"room_id": room, "job_id": job, "reply_id": f"r-{n}"})
    return Delivery(n, signed_path(), body)


# -- three replicas, started together ----------------------------------------------------------


@pytest.fixture(params=[1, 2], ids=["one-worker", "two-workers"])
def replicas(
    pg_url: str,
    fake_metastudio: FakeMetaStudioServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[list[ServerProcess]]:
    """Three ``serve`` processes with one config on one fresh database, started at one moment
    (each migrates at start; the advisory lock in migrations/env.py makes them take turns).
    Run twice: with one worker each, and with ``workers = 2`` (six writers; /metrics then sums
    a replica's two workers)."""
    workers: int = request.param
    metastudio = fake_metastudio.metastudio_table(
        crosscheck_interval_seconds=0,  # runs only when asked: the test decides when
        cache_seconds=0,
        timeout_seconds=20,  # longer than the fake is held in hang mode
    )
    # Top-level dotted keys: the [metastudio] table in the TOML write_config writes.
    top = {f"metastudio.{k}": v for k, v in metastudio.items()}
    config = write_config(
        tmp_path / "replica.toml",
        pg_url,
        endpoint_table(),
        api_tokens=["test-token"],
        workers=workers,
        **top,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "HUAWEICLOUD"))}
    env.update(fake_metastudio.environ)
    servers = [
        ServerProcess(
            config=config,
            port=free_port(),
            env=dict(env),
            log_path=tmp_path / f"replica-{i}.log",
            workers=workers,
        )
        for i in range(REPLICAS)
    ]
    failures: list[BaseException] = []

    def start(server: ServerProcess) -> None:
        try:
            server.start(timeout=60)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    holder_engine = create_engine_for(pg_url, pool_size=1)
    try:
        # The test holds the migration lock while the three start, so that all three are
        # certainly at the lock together (not one done before the next begins), then lets go.
        with holder_engine.connect() as holder:
            holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            holder.commit()
            try:
                for thread in threads:
                    thread.start()
                deadline = time.monotonic() + 30
                while advisory_waiters(holder, MIGRATION_LOCK) < REPLICAS:
                    assert time.monotonic() < deadline, "the replicas did not queue to migrate"
                    assert not failures, failures
                    time.sleep(0.05)
                assert set(sa.inspect(holder).get_table_names()) == set()
                holder.commit()
            finally:
                holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                holder.commit()
        for thread in threads:
            thread.join(timeout=90)
        assert failures == [], failures
        assert all(s.proc is not None and s.proc.poll() is None for s in servers)
        # One of them created the schema; the others found it at the latest migration.
        migrated = [s for s in servers if "Running upgrade  -> 0001" in s.output()]
        assert len(migrated) == 1, [s.output() for s in servers]
        yield servers
    finally:
        holder_engine.dispose()
        fake_metastudio.fake.set_mode("ok")  # no request left held by the fake
        for thread in threads:
            thread.join(timeout=90)
        for server in servers:
            server.stop()


def advisory_waiters(conn: sa.Connection, key: int, *, granted: bool = False) -> int:
    """Sessions of this database waiting for (or, ``granted``, holding) the advisory lock."""
    count: int = conn.execute(
        sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted = :granted "
            "AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = :k "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        {"k": key, "granted": granted},
    ).scalar_one()
    conn.commit()
    return count


# -- sending -----------------------------------------------------------------------------------


class Senders:
    """A pool of sender threads, each with its own HTTP client, and every answer they got."""

    def __init__(self, servers: list[ServerProcess]) -> None:
        self.urls = [s.base_url for s in servers]
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._clients: list[httpx.Client] = []

    def send(self, delivery: Delivery, replica: int, barrier: threading.Barrier | None) -> None:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=30)
            with self._lock:
                self._clients.append(client)
        if barrier is not None:
            barrier.wait(timeout=30)  # every copy of this delivery leaves at once
        started = time.monotonic()
        response = client.post(
            self.urls[replica] + delivery.path_and_query,
            content=delivery.body,
            headers={"content-type": "application/json"},
        )
        finished = time.monotonic()
        data = response.json() if response.status_code == 200 else {}
        answer = Answer(
            delivery,
            replica,
            response.status_code,
            data.get("result"),
            data.get("delivery_id"),
            started,
            finished,
        )
        with self._lock:
            self.answers.append(answer)

    def run(self, tasks: list[tuple[Delivery, int, threading.Barrier | None]]) -> None:
        """Every copy of a race is submitted next to the others: with a FIFO queue and more
        workers than copies, the parties of one barrier are always taken together."""
        with ThreadPoolExecutor(SENDERS) as pool:
            for future in [pool.submit(self.send, *task) for task in tasks]:
                future.result(timeout=60)

    def close(self) -> None:
        for client in self._clients:
            client.close()


def plan(chooser: random.Random) -> tuple[list[Delivery], list[Any], list[list[int]]]:
    """The deliveries, the send tasks in order, and the replicas of each race."""
    deliveries = [new_delivery(n) for n in range(DISTINCT)]
    tasks: list[tuple[Delivery, int, threading.Barrier | None]] = []
    races: list[list[int]] = []
    raced = set(chooser.sample(range(DISTINCT), int(DISTINCT * RACE_SHARE)))
    for delivery in deliveries:
        if delivery.number in raced:
            copies = 2 + delivery.number % 2
            targets = chooser.sample(range(REPLICAS), copies)  # all different replicas
            barrier = threading.Barrier(copies)
            tasks += [(delivery, replica, barrier) for replica in targets]
            races.append(targets)
        else:
            tasks.append((delivery, chooser.randrange(REPLICAS), None))
    return deliveries, tasks, races


def stored(url: str) -> tuple[dict[bytes, tuple[int, str]], Counter[int], list[int]]:
    """body -> (id, status) of the rows holding it (dedup_key set); original id -> receipts;
    the delivery ids of the events."""
    engine = create_engine_for(url, pool_size=1)
    try:
        with engine.connect() as conn:
            originals: dict[bytes, tuple[int, str]] = {}
            rows = conn.execute(
                sa.select(DELIVERIES.c.id, DELIVERIES.c.body, DELIVERIES.c.status).where(
                    DELIVERIES.c.dedup_key.is_not(None)
                )
            ).all()
            for delivery_id, body, status in rows:
                assert bytes(body) not in originals, "one delivery is stored twice"
                originals[bytes(body)] = (delivery_id, status)
            receipts = Counter(
                conn.execute(
                    sa.select(DELIVERIES.c.duplicate_of).where(DELIVERIES.c.status == "duplicate")
                ).scalars()
            )
            events = list(conn.execute(sa.select(EVENTS.c.delivery_id)).scalars())
    finally:
        engine.dispose()
    return originals, receipts, events


def test_three_replicas_store_each_delivery_once_and_take_turns_at_the_crosscheck(
    replicas: list[ServerProcess], pg_url: str, fake_metastudio: FakeMetaStudioServer
) -> None:
    started = time.monotonic()
    chooser = random.Random(20240611)
    deliveries, tasks, races = plan(chooser)
    senders = Senders(replicas)
    try:
        senders.run(tasks)
        first_copy: dict[int, int] = {}
        for answer in sorted(senders.answers, key=lambda a: a.started):
            first_copy.setdefault(answer.delivery.number, answer.replica)
        # Later, MetaStudio's retries of some of them reach another replica.
        again = chooser.sample(deliveries, RESENT)
        senders.run(
            [(d, (first_copy[d.number] + 1 + d.number % 2) % REPLICAS, None) for d in again]
        )
    finally:
        senders.close()
    answers = senders.answers
    resent = answers[len(tasks) :]
    assert [a.result for a in resent] == ["duplicate"] * RESENT, "a retry was stored again"

    statuses = Counter(a.status for a in answers)
    assert statuses == {200: len(tasks) + RESENT}, statuses  # no 500, no 503, nothing lost

    by_delivery: dict[int, list[Answer]] = defaultdict(list)
    for answer in answers:
        by_delivery[answer.delivery.number].append(answer)
    assert len(by_delivery) == DISTINCT
    originals, receipts, events = stored(pg_url)
    assert len(originals) == DISTINCT
    duplicate_answers: Counter[int] = Counter()
    for delivery in deliveries:
        got = by_delivery[delivery.number]
        ids = {a.delivery_id for a in got}
        assert len(ids) == 1, f"delivery {delivery.number} answered with ids {ids}"
        delivery_id = ids.pop()
        assert delivery_id is not None
        assert originals[delivery.body] == (delivery_id, "stored")
        results = sorted(a.result or "" for a in got)
        assert results == ["duplicate"] * (len(got) - 1) + ["stored"], (delivery.number, results)
        duplicate_answers[delivery_id] += len(got) - 1
    # One event per delivery, each of a stored original.
    assert sorted(events) == sorted(i for i, _ in originals.values())
    # Every duplicate answer left its receipt, pointing at the original, and no other is there.
    assert receipts == +duplicate_answers

    # The races: every copy of one delivery was in flight at once (the barrier released them
    # together), and the replica that stored it varies.
    overlapping = 0
    winners: Counter[int] = Counter()
    race_numbers = {delivery.number for delivery, _, barrier in tasks if barrier is not None}
    for number in race_numbers:
        copies = sorted(by_delivery[number], key=lambda a: a.started)[: 2 + number % 2]
        assert len({a.replica for a in copies}) == len(copies)  # different replicas
        if max(a.started for a in copies) < min(a.finished for a in copies):
            overlapping += 1
        winners.update(a.replica for a in copies if a.result == "stored")
    stored_by = Counter(a.replica for a in answers if a.result == "stored")
    print(
        f"\n{DISTINCT} distinct deliveries, {len(answers)} copies sent, "
        f"{sum(1 for a in answers if a.result == 'stored')} answered stored, "
        f"{sum(duplicate_answers.values())} answered duplicate, {len(race_numbers)} races "
        f"({overlapping} with every copy in flight at once; won by replica "
        f"{dict(sorted(winners.items()))}), stored per replica {dict(sorted(stored_by.items()))}, "
        f"in {time.monotonic() - started:.1f} s"
    )
    assert len(race_numbers) == len(races) == int(DISTINCT * RACE_SHARE)
    assert overlapping >= len(race_numbers) // 2, "the copies of a race did not overlap"
    assert len(winners) == REPLICAS, "one replica won every race"
    assert len(stored_by) == REPLICAS

    crosscheck_in_turns(replicas, pg_url, fake_metastudio)
    print(f"whole test body: {time.monotonic() - started:.1f} s")


# -- the cross-check, one replica at a time ----------------------------------------------------


def crosscheck_lock_holders(url: str) -> int:
    """Sessions holding the cross-check's advisory lock, as PostgreSQL itself reports them."""
    engine = create_engine_for(url, pool_size=1)
    try:
        with engine.connect() as conn:
            return advisory_waiters(conn, CROSSCHECK_LOCK, granted=True)
    finally:
        engine.dispose()


def findings_rows(url: str) -> list[tuple[str, str, str, int]]:
    """Every findings row (kind, room, job, occurrences); none of them may be resolved."""
    engine = create_engine_for(url, pool_size=1)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    FINDINGS.c.kind,
                    FINDINGS.c.room_id,
                    FINDINGS.c.job_id,
                    FINDINGS.c.occurrences,
                    FINDINGS.c.resolved_at,
                )
            ).all()
    finally:
        engine.dispose()
    assert [row for row in rows if row.resolved_at is not None] == []
    return [(kind, room, job, seen) for kind, room, job, seen, _ in rows]


def queried_rooms(control: httpx.Client) -> list[str]:
    """The rooms the fake MetaStudio was asked about, one entry per request (AK/SK signed), in
    the callbacks' spelling (the receiver asks with the dashed form the job query API uses)."""
    log = control.get("/_fake/requests").json()["requests"]
    assert all(r["auth"] == "aksk" and r["method"] == "GET" for r in log), log
    return [id_key(r["path"].split("/smart-live-rooms/")[1].split("/")[0]) for r in log]


def crosscheck_runs(replica: ServerProcess) -> dict[str, float]:
    """receiver_crosscheck_runs_total by outcome, as the replica's /metrics shows it."""
    text = httpx.get(replica.base_url + "/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('receiver_crosscheck_runs_total{outcome="'):
            outcome = line.split('"')[1]
            counts[outcome] = float(line.rsplit(" ", 1)[1])
    return {outcome: n for outcome, n in counts.items() if n}


def crosscheck_in_turns(
    replicas: list[ServerProcess], pg_url: str, fake_metastudio: FakeMetaStudioServer
) -> None:
    """All three replicas are asked to cross-check at one moment while MetaStudio is slow: one
    takes the advisory lock and queries, the others answer at once that another replica runs."""
    fake_metastudio.fake.add_job(fake_job(job_id=FAILED_JOB, room_id=ROOMS[1], state="FAILED"))
    fake_metastudio.fake.add_job(
        fake_job(job_id=BLOCKED_JOB, room_id=ROOMS[2], state="BLOCKED", block_reason="policy")
    )
    # Every job the deliveries named is unknown to MetaStudio; the two it lists have ended badly.
    expected = {("unknown_job", room, job) for room in ROOMS for job in JOBS[room]}
    expected |= {("job_failed", ROOMS[1], FAILED_JOB), ("job_blocked", ROOMS[2], BLOCKED_JOB)}

    answers: dict[int, tuple[int, dict[str, Any]]] = {}
    barrier = threading.Barrier(REPLICAS)

    def ask(index: int) -> None:
        with httpx.Client(timeout=60) as client:
            barrier.wait(timeout=10)
            response = client.post(replicas[index].base_url + "/v1/crosscheck", headers=AUTH)
            answers[index] = (response.status_code, response.json())

    with httpx.Client(base_url=fake_metastudio.base_url, timeout=10) as control:
        assert control.delete("/_fake/requests").status_code == 204
        assert control.post("/_fake/mode", json={"mode": "hang"}).json() == {"mode": "hang"}
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(REPLICAS)]
        try:
            for thread in threads:
                thread.start()
            # The fake holds the running replica's queries (one per room, 4 in flight at most);
            # meanwhile the other two have answered.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (
                len(answers) < REPLICAS - 1 or len(queried_rooms(control)) < len(ROOMS)
            ):
                time.sleep(0.05)
            held = dict(answers)
            holders = crosscheck_lock_holders(pg_url)
            time.sleep(0.5)  # room for any query a second runner would make
            rooms_while_held = queried_rooms(control)
        finally:
            control.post("/_fake/mode", json={"mode": "ok"})
            for thread in threads:
                thread.join(timeout=40)
        assert not any(thread.is_alive() for thread in threads)

        assert len(held) == REPLICAS - 1, f"answers while MetaStudio was held: {held}"
        assert holders == 1
        assert sorted(rooms_while_held) == sorted(ROOMS), "the rooms were queried more than once"
        for status, report in held.values():
            assert status == 200, report
            assert report["skipped"] == SKIPPED
            assert (report["rooms_checked"], report["findings_opened"]) == (0, 0)
        (winner,) = set(range(REPLICAS)) - set(held)
        status, report = answers[winner]
        assert status == 200, report
        assert report["skipped"] is None
        assert (report["rooms_checked"], report["rooms_failed"], report["jobs_seen"]) == (4, 0, 2)
        assert report["findings_opened"] == len(expected)
        assert sorted(queried_rooms(control)) == sorted(ROOMS), "one run asks once per room"
        rows = findings_rows(pg_url)
        assert len(rows) == len(expected)  # one row per condition, none twice
        assert {row[:3] for row in rows} == expected
        assert {row[3] for row in rows} == {1}, "a condition was recorded by two runs"
        assert crosscheck_lock_holders(pg_url) == 0

        # The lock went with the run: the next turn goes to a replica that was turned away.
        other = min(held)
        response = httpx.post(replicas[other].base_url + "/v1/crosscheck", headers=AUTH, timeout=60)
        assert response.status_code == 200, response.text
        again = response.json()
        assert again["skipped"] is None
        assert (again["rooms_checked"], again["findings_opened"]) == (4, 0)
        assert sorted(queried_rooms(control)) == sorted(ROOMS * 2)
        rows = findings_rows(pg_url)
        assert len(rows) == len(expected)
        assert {row[3] for row in rows} == {2}

    # Each replica's /metrics tells its own side: two turns ran, two were skipped, none failed.
    runs = [crosscheck_runs(replica) for replica in replicas]
    assert runs[winner] == {"ran": 1}
    assert runs[other] == {"skipped": 1, "ran": 1}
    (third,) = set(range(REPLICAS)) - {winner, other}
    assert runs[third] == {"skipped": 1}
    print(
        f"crosscheck: replica {winner} ran ({report['rooms_checked']} rooms, "
        f"{report['findings_opened']} findings opened) while replicas {sorted(held)} answered "
        f"{SKIPPED!r}; {len(rooms_while_held)} MetaStudio queries during the run, 1 lock holder; "
        f"then replica {other} ran alone: {len(rows)} findings, each seen twice"
    )

"""kill -9 while deliveries are in flight, many times in a row: nothing acknowledged is lost,
nothing is stored twice.

PRODUCT.md, "Callback intake": ``200`` only after the delivery is committed to the store; a
delivery identical to one already stored answers ``duplicate`` and is stored once. A real
``serve`` process takes signed deliveries from 16 concurrent senders, is killed with SIGKILL in
the middle of it, and restarted on the same database; then every answer it gave is checked
against what the database holds. That is done CYCLES times in a row on the same database. Each
kill comes once the restarted server has acknowledged LOAD_GOING deliveries (the load is under
way, however slow the machine), plus a delay drawn (seeded, so a run can be replayed) from
KILL_DELAY: the group-commit writer cycles every few milliseconds, so the kills land at different
points of it (a batch being gathered, being committed, its answers being sent).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from conftest import ServerProcess, signed_path, stored_bodies

from receiver.store.writer import DELIVERIES, create_engine_for
from receiver.testing import encode

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]  # load and kill -9, timed

WORKERS = 16
CYCLES = 10
LOAD_GOING = 50  # deliveries acknowledged in a cycle before its kill delay starts
KILL_DELAY = (0.0, 0.8)  # seconds from then to the kill, drawn uniformly for each cycle
SEED = 20261125


@dataclass(frozen=True)
class Delivery:
    """One signed callback as MetaStudio would send (and resend) it: same URL, same body."""

    path_and_query: str
    body: bytes


@dataclass
class Answer:
    delivery: Delivery
    status: int | None  # None: no answer (connection refused or cut)
    result: str | None = None
    delivery_id: int | None = None
    started: float = 0.0  # time.monotonic() when the request was sent


@dataclass
class Tally:
    answers: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    killed_at: float = 0.0
    going: threading.Event = field(default_factory=threading.Event)  # LOAD_GOING acknowledged
    acknowledged: int = 0

    def add(self, answer: Answer) -> None:
        with self.lock:
            self.answers.append(answer)
            if answer.status == 200:
                self.acknowledged += 1
                if self.acknowledged >= LOAD_GOING:
                    self.going.set()


_numbers = itertools.count(1)


def new_delivery(cycle: int, worker: int) -> Delivery:
    n = next(_numbers)
    body = encode(
        "SHOOT_SCRIPT_SWITCH",
        {
            "room_id": f"room-{cycle}",
            "job_id": f"job-{worker}",
            "scene_script_name": f"scene-{n}",
            "shoot_script_sequence_no": str(n),
        },
    )
    return Delivery(signed_path(), body)


def send(client: httpx.Client, base_url: str, delivery: Delivery) -> Answer:
    started = time.monotonic()
    answer = _send(client, base_url, delivery)
    answer.started = started
    return answer


def _send(client: httpx.Client, base_url: str, delivery: Delivery) -> Answer:
    try:
        response = client.post(
            base_url + delivery.path_and_query,
            content=delivery.body,
            headers={"content-type": "application/json"},
        )
    except httpx.TransportError:
        return Answer(delivery, None)
    if response.status_code == 200:
        data = response.json()
        return Answer(delivery, 200, data["result"], data["delivery_id"])
    return Answer(delivery, response.status_code, response.json().get("error_code"))


def load_until_killed(server: ServerProcess, cycle: int, kill_delay: float) -> Tally:
    """16 senders post new deliveries (every 7th sent twice in a row, and now and then one that
    another sender got acknowledged) until the server is SIGKILLed ``kill_delay`` seconds after
    it acknowledged LOAD_GOING of them."""
    tally = Tally()
    stop = threading.Event()
    acked_recently: list[Delivery] = []

    def sender(worker: int) -> None:
        chooser = random.Random(cycle * 100 + worker)
        with httpx.Client(timeout=10) as client:
            for i in itertools.count():
                if stop.is_set():
                    return
                if i % 11 == 10 and acked_recently:
                    delivery = chooser.choice(acked_recently[-200:])
                else:
                    delivery = new_delivery(cycle, worker)
                answer = send(client, server.base_url, delivery)
                tally.add(answer)
                if answer.status is None and tally.killed_at:
                    return  # the server is gone; stop like a sender that backs off
                if answer.status == 200:
                    acked_recently.append(delivery)
                if i % 7 == 0 and not stop.is_set():
                    tally.add(send(client, server.base_url, delivery))

    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(sender, w) for w in range(WORKERS)]
        going = tally.going.wait(timeout=60)
        if going:
            time.sleep(kill_delay)
        tally.killed_at = time.monotonic()
        server.kill()
        stop.set()
        for future in futures:
            future.result(timeout=30)
    assert going, f"only {tally.acknowledged} acknowledged in 60 s: the load did not get going"
    return tally


def resend_all(server: ServerProcess, deliveries: Iterable[Delivery]) -> list[Answer]:
    local = threading.local()
    clients: list[httpx.Client] = []

    def one(delivery: Delivery) -> Answer:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=10)
            clients.append(local.client)
        return send(local.client, server.base_url, delivery)

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            return list(pool.map(one, list(deliveries)))
    finally:
        for client in clients:
            client.close()


def stored_originals(url: str) -> tuple[dict[bytes, list[int]], Counter[int]]:
    """body -> ids of the rows that hold it; original id -> number of duplicate receipts."""
    originals: dict[bytes, list[int]] = defaultdict(list, stored_bodies(url))
    engine = create_engine_for(url, pool_size=1)
    try:
        with engine.connect() as conn:
            receipts = Counter(
                conn.execute(
                    sa.select(DELIVERIES.c.duplicate_of).where(DELIVERIES.c.status == "duplicate")
                ).scalars()
            )
    finally:
        engine.dispose()
    return originals, receipts


@dataclass
class Totals:
    """What the whole run of cycles on one store did; printed even when a check fails."""

    store: str
    cycles: int = 0
    requests: int = 0
    cut: int = 0  # requests in flight at a kill, their connection cut
    acked: int = 0  # distinct deliveries answered 200
    lost: set[bytes] = field(default_factory=set)  # bodies acknowledged, then missing
    doubled: set[bytes] = field(default_factory=set)  # bodies held by more than one row
    in_flight_committed: int = 0  # deliveries committed without the sender seeing a 200

    def line(self) -> str:
        return (
            f"[{self.store}] TOTAL {self.cycles} kill -9 cycles: {self.requests} requests, "
            f"{self.acked} distinct deliveries acknowledged, {len(self.lost)} acknowledged lost, "
            f"{len(self.doubled)} stored twice, {self.cut} requests cut by the kills, "
            f"{self.in_flight_committed} in-flight deliveries committed without an answer"
        )


def test_kill_9_during_load_loses_nothing_acknowledged(
    db_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    store = db_url.split(":")[0].split("+")[0]
    kill_delays = random.Random(f"{SEED}-{store}")
    totals = Totals(store)
    try:
        _kill_cycles(db_url, server_factory, kill_delays, totals)
    finally:
        print(totals.line())


@pytest.mark.postgres
def test_kill_9_of_two_workers_during_load_loses_nothing_acknowledged(
    pg_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    """The same with ``workers = 2`` (PostgreSQL): each worker group-commits on its own, and the
    kill takes the supervisor and both workers at once."""
    kill_delays = random.Random(f"{SEED}-postgres-workers")
    totals = Totals("postgres, 2 workers")
    try:
        _kill_cycles(pg_url, server_factory, kill_delays, totals, cycles=CYCLES // 2, workers=2)
    finally:
        print(totals.line())


def _kill_cycles(
    db_url: str,
    server_factory: Callable[..., ServerProcess],
    kill_delays: random.Random,
    totals: Totals,
    cycles: int = CYCLES,
    **top: object,
) -> None:
    server = server_factory(db_url, **top)
    acked: dict[Delivery, int] = {}  # every delivery answered 200 -> the delivery id it was given
    duplicate_acks: Counter[int] = Counter()
    all_unacked: set[Delivery] = set()
    for cycle in range(1, cycles + 1):
        kill_delay = kill_delays.uniform(*KILL_DELAY)
        tally = load_until_killed(server, cycle, kill_delay)
        statuses = Counter(a.status for a in tally.answers)
        assert set(statuses) <= {200, 503, None}, statuses  # no 500, no 4xx for good requests
        conflicting = []
        for answer in tally.answers:
            if answer.status != 200:
                continue
            assert answer.delivery_id is not None
            known = acked.setdefault(answer.delivery, answer.delivery_id)
            if known != answer.delivery_id:
                conflicting.append((answer, known))
            if answer.result == "duplicate":
                duplicate_acks[answer.delivery_id] += 1
        assert conflicting == [], "one delivery was answered with two delivery ids"
        unacked = {a.delivery for a in tally.answers if a.status != 200} - set(acked)
        all_unacked |= unacked

        server.start()  # same port, same config, same database
        originals, receipts = stored_originals(db_url)
        lost = [d for d in acked if d.body not in originals]
        doubled = {body: ids for body, ids in originals.items() if len(ids) > 1}
        wrong_id = [d for d, i in acked.items() if d.body in originals and originals[d.body] != [i]]
        in_flight_stored = sum(1 for d in unacked if d.body in originals)
        cut = sum(1 for a in tally.answers if a.status is None and a.started < tally.killed_at)
        cycle_acked = {a.delivery for a in tally.answers if a.status == 200}
        totals.cycles = cycle
        totals.requests += len(tally.answers)
        totals.cut += cut
        totals.acked = len(acked)
        totals.lost.update(d.body for d in lost)
        totals.doubled.update(doubled)
        totals.in_flight_committed += in_flight_stored
        print(
            f"[{totals.store}] cycle {cycle}, killed {kill_delay:.3f} s after the "
            f"{LOAD_GOING}th acknowledgement: "
            f"{len(tally.answers)} requests, {statuses[200]} answered 200 "
            f"({sum(1 for a in tally.answers if a.result == 'duplicate')} of them duplicate), "
            f"{cut} in flight at the kill and cut, {statuses[None] - cut} refused after it, "
            f"{statuses[503]} answered 503; "
            f"{len(cycle_acked)} distinct deliveries acknowledged, {len(unacked)} in flight or "
            f"failed ({in_flight_stored} of those committed anyway); store holds "
            f"{len(originals)} deliveries; lost {len(lost)}, doubled {len(doubled)}, "
            f"wrong id {len(wrong_id)}"
        )
        assert lost == []
        assert doubled == {}
        assert wrong_id == []
        # Every "duplicate" answer left its receipt.
        assert all(receipts[i] >= n for i, n in duplicate_acks.items())
        assert len(originals) == len(acked) + sum(1 for d in all_unacked if d.body in originals)

        # The sender's retries after the restart: acknowledged ones are duplicates of the same id.
        again = resend_all(server, cycle_acked)
        assert [(a.status, a.result) for a in again] == [(200, "duplicate")] * len(again)
        assert all(acked[a.delivery] == a.delivery_id for a in again)
        for a in again:
            duplicate_acks[a.delivery_id] += 1

    # Finally the deliveries never acknowledged are retried too: each is stored exactly once, and
    # those committed before a kill cut their answer are recognised as duplicates.
    committed = {d for d in all_unacked if d.body in originals}
    retried = resend_all(server, all_unacked)
    assert all(a.status == 200 for a in retried), Counter(a.status for a in retried)
    assert {a.delivery for a in retried if a.result == "duplicate"} == committed
    originals, receipts = stored_originals(db_url)
    everything = set(acked) | all_unacked
    totals.lost.update(d.body for d in acked if d.body not in originals)
    totals.doubled.update(body for body, ids in originals.items() if len(ids) > 1)
    assert all(len(originals[d.body]) == 1 for d in everything)
    assert len(originals) == len({d.body for d in everything})
    assert all(receipts[i] >= n for i, n in duplicate_acks.items())
    print(
        f"[{totals.store}] after retrying the {len(all_unacked)} unacknowledged: "
        f"{Counter(a.result for a in retried)}; store holds {len(originals)} deliveries, "
        f"each once"
    )

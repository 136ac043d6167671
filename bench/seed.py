"""Seed a receiver database with a large, realistic history of stored deliveries and events.

Run by hand, never by CI, from the project root:

    .venv/bin/python bench/seed.py /tmp/rcv-bench-query.db                  # SQLite file
    .venv/bin/python bench/seed.py postgresql://postgres@127.0.0.1:5432/rcv_bench_query
    .venv/bin/python bench/seed.py /tmp/small.db --events 100000 --jobs 100 --big-job-events 0

The database is created when missing (a PostgreSQL database on the named server, trust auth
assumed) and migrated with ``receiver.store.migrate.upgrade``. It then gets ``--events`` deliveries
and
their events (default 1,000,000) spread evenly over ``--jobs`` jobs (1,000) in ``--rooms`` rooms
(100), plus one "big" job with ``--big-job-events`` events (10,000) for the job-view benchmark.

What the rows look like, as the receiver itself would have stored them:

* Bodies are built with ``receiver.protocol.events.encode`` (compact JSON, ``message`` as JSON
text, the
  sequence number as a string as in the document's example); the stored ``message`` is what
  ``receiver.protocol.events.decode`` makes of it (checked on a sample of rows before anything is
  written).
* Each job is a live stream of 6 to 18 hours starting somewhere in a 30-day span (the big job:
  48 hours in the middle), so about 17 jobs are live at a time and their events interleave. Ids and
  ``received_at`` increase together, as they do when live traffic is committed.
* A job opens with RTMP ``CONNECTING``/``CONNECTED``, ends with ``END`` (the big job is still
  live), and in between sends about 60 % SHOOT_SCRIPT_SWITCH, 35 % REPLY_COMMAND_FINISH and 5 %
  RTMP_STREAM_STATE_CHANGE (``RECONNECTING``/``CONNECTED``, with an ``output_url`` and a
  ``stream_key``).
* ``dedup_key`` is computed as ``receiver.store.incoming.dedup_key_for`` does; ``headers`` is ``{}``
and
  ``query`` is ``[]``.

Rows go in with SQLAlchemy Core ``executemany`` on the tables of ``receiver.store.models``,
``--chunk``
deliveries and their events per transaction (5,000), with explicit ids (so an event needs no
round trip to learn its delivery's id); PostgreSQL's id sequences are moved past them afterwards
and the tables are ``VACUUM ANALYZE``d, the state autovacuum would reach on its own. SQLite gets
no ``ANALYZE``: the receiver never runs it, so the planner works without statistics in
production too.

Seeding is skipped when the database already holds exactly this data set (the total count and
the counts of two known jobs); a database holding anything else is refused unless ``--reset``
is given, which deletes the SQLite file or drops and re-creates the PostgreSQL database.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from receiver.protocol.events import EventType, decode, encode
from receiver.protocol.ids import id_key
from receiver.store.driver import sqlite_path
from receiver.store.migrate import upgrade
from receiver.store.models import Delivery, DeliveryStatus, Event
from receiver.store.writer import create_engine_for

DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
EVENTS = Event.__table__  # type: ignore[attr-defined]

ENDPOINT = "live"
BASE = datetime(2026, 10, 1, tzinfo=UTC)
SPAN_SECONDS = 30 * 86400
JOB_HOURS = (6.0, 18.0)
BIG_JOB_HOURS = 48.0
OUTPUT_URL = "rtmp://live.example.com/app"
CHECKED_ROWS = 2000  # rows compared with receiver.protocol.events.decode before anything is written

Log = Callable[[str], None]


def _hex_id(text: str) -> str:
    """A 32-hex-character id (MetaStudio's ids are 32 hex characters), stable across runs."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Spec:
    """The data set. Ids depend only on the indexes, not on ``seed``: a bench can name jobs
    without reading the database."""

    events: int = 1_000_000
    jobs: int = 1000
    rooms: int = 100
    big_job_events: int = 10_000
    seed: int = 1

    @property
    def total(self) -> int:
        return self.events + self.big_job_events

    def job_id(self, index: int) -> str:
        return _hex_id(f"bench-job-{index}")

    def room_id(self, index: int) -> str:
        return _hex_id(f"bench-room-{index}")

    def room_of(self, job_index: int) -> str:
        return self.room_id(job_index % self.rooms)

    def events_of(self, job_index: int) -> int:
        share, rest = divmod(self.events, self.jobs)
        return share + (1 if job_index < rest else 0)

    @property
    def big_job_id(self) -> str:
        return _hex_id("bench-job-big")

    @property
    def big_job_room(self) -> str:
        return self.room_id(0)


def database_url(target: str) -> str:
    """A SQLAlchemy URL from a SQLite path or a PostgreSQL URL."""
    if "://" not in target:
        return f"sqlite:///{os.path.abspath(target)}"
    if target.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + target.split("://", 1)[1]
    return target


def libpq(url: str) -> str:
    """The same PostgreSQL URL for psycopg itself."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# --- The rows ------------------------------------------------------------------------------------


@dataclass
class _Job:
    """Where one job is in its stream while its events are generated in time order."""

    job_id: str
    room_id: str
    count: int
    ends: bool
    emitted: int = 0
    sequence_no: int = 0
    replies: int = 0
    rtmp_reconnecting: bool = False


def _job_times(rng: random.Random, count: int, start: float, hours: float) -> list[float]:
    length = hours * 3600
    return sorted(start + rng.random() * length for _ in range(count))


def _timeline(spec: Spec, rng: random.Random) -> tuple[list[_Job], Iterator[tuple[float, int]]]:
    """The jobs, and (seconds after BASE, job index) for every event in time order."""
    jobs: list[_Job] = []
    streams: list[Iterator[tuple[float, int]]] = []
    for index in range(spec.jobs):
        count = spec.events_of(index)
        hours = rng.uniform(*JOB_HOURS)
        start = rng.uniform(0, SPAN_SECONDS - hours * 3600)
        jobs.append(_Job(spec.job_id(index), spec.room_of(index), count, ends=True))
        streams.append(_tagged(_job_times(rng, count, start, hours), index))
    if spec.big_job_events:
        start = SPAN_SECONDS / 2 - BIG_JOB_HOURS * 1800
        jobs.append(_Job(spec.big_job_id, spec.big_job_room, spec.big_job_events, ends=False))
        times = _job_times(rng, spec.big_job_events, start, BIG_JOB_HOURS)
        streams.append(_tagged(times, len(jobs) - 1))
    return jobs, heapq.merge(*streams)


def _tagged(times: list[float], index: int) -> Iterator[tuple[float, int]]:
    for moment in times:
        yield moment, index


def _next_message(job: _Job, rng: random.Random) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(event type, message as sent, message as decoded) of the job's next event."""
    n = job.emitted
    job.emitted += 1
    ids = {"room_id": job.room_id, "job_id": job.job_id}
    last = n == job.count - 1
    if n < 2 or (last and job.ends):
        state = "CONNECTING" if n == 0 else "CONNECTED" if n == 1 else "END"
        return _rtmp(ids, state, job)
    draw = rng.random()
    if draw < 0.05:
        job.rtmp_reconnecting = not job.rtmp_reconnecting
        return _rtmp(ids, "RECONNECTING" if job.rtmp_reconnecting else "CONNECTED", job)
    if draw < 0.40:
        job.replies += 1
        reply_id = _hex_id(f"{job.job_id}-reply-{job.replies}")
        message = {**ids, "reply_id": reply_id}
        return EventType.REPLY_COMMAND_FINISH.value, message, message
    job.sequence_no += 1
    number = job.sequence_no
    sent = {
        **ids,
        "scene_script_name": f"scene-{(number - 1) // 20 + 1}",
        # A string, as in the document's example; decode makes it an integer.
        "shoot_script_sequence_no": str(number),
        "shoot_script_title": f"Product {(number - 1) % 20 + 1}: live introduction",
    }
    return EventType.SHOOT_SCRIPT_SWITCH.value, sent, {**sent, "shoot_script_sequence_no": number}


def _rtmp(ids: dict[str, str], state: str, job: _Job) -> tuple[str, dict[str, Any], dict[str, Any]]:
    message = {
        **ids,
        "state": state,
        "output_url": OUTPUT_URL,
        "stream_key": "sk-" + job.job_id[:16],
    }
    return EventType.RTMP_STREAM_STATE_CHANGE.value, message, message


def rows(spec: Spec) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(delivery row, event row) in id order; ids start at 1."""
    rng = random.Random(spec.seed)
    jobs, timeline = _timeline(spec, rng)
    previous = -1.0
    for number, (moment, index) in enumerate(timeline, start=1):
        # Strictly increasing received_at, in whole microseconds.
        moment = max(round(moment, 6), round(previous + 1e-6, 6))
        previous = moment
        received_at = BASE + timedelta(seconds=moment)
        # Signed 20-400 ms before it arrived, in milliseconds (MetaStudio's hwTime).
        signed_ms = int(received_at.timestamp() * 1000) - rng.randint(20, 400)
        signed_at = datetime.fromtimestamp(signed_ms / 1000, UTC)
        job = jobs[index]
        event_type, sent, decoded = _next_message(job, rng)
        body = encode(event_type, sent)
        dedup = hashlib.sha256()
        dedup.update(ENDPOINT.encode())
        dedup.update(b"\n%d\n" % signed_ms)
        dedup.update(body)
        delivery = {
            "id": number,
            "endpoint": ENDPOINT,
            "status": DeliveryStatus.STORED,
            "dedup_key": dedup.hexdigest(),
            "duplicate_of": None,
            "received_at": received_at,
            "signed_at": signed_at,
            "key_index": 0,
            "time_unit": "milliseconds",
            "body": body,
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_size": len(body),
            "headers": {},
            "query": [],
            "remote_addr": f"100.85.0.{1 + index % 200}",
            "error": None,
        }
        event = {
            "id": number,
            "delivery_id": number,
            "endpoint": ENDPOINT,
            "event_type": event_type,
            "room_id": job.room_id,
            "job_id": job.job_id,
            "room_key": id_key(job.room_id),
            "job_key": id_key(job.job_id),
            "received_at": received_at,
            "signed_at": signed_at,
            "message": decoded,
            "message_encoding": "string",
            "extra": {},
        }
        yield delivery, event


def check_rows(spec: Spec, count: int = CHECKED_ROWS) -> None:
    """The event rows are what the receiver's decoder makes of the bodies."""
    for number, (delivery, event) in enumerate(rows(spec), start=1):
        decoded = decode(delivery["body"])
        got = (decoded.event_type, decoded.room_id, decoded.job_id, decoded.message)
        want = (event["event_type"], event["room_id"], event["job_id"], event["message"])
        if got != want or decoded.message_encoding != "string" or decoded.extra:
            raise AssertionError(f"row {number}: decode gives {got!r}, the seed has {want!r}")
        if number >= count:
            return


# --- The database --------------------------------------------------------------------------------


def prepare(url: str, *, reset: bool, log: Log) -> None:
    """Create (or, with ``reset``, re-create) the database, then migrate it to head."""
    path = sqlite_path(url)
    if path is not None:
        if reset:
            for suffix in ("", "-wal", "-shm"):
                Path(path + suffix).unlink(missing_ok=True)
            log(f"deleted {path}")
    else:
        name = make_url(url).database
        if not name:
            raise SystemExit(f"seed: {url} names no database")
        admin = libpq(make_url(url).set(database="postgres").render_as_string(False))
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if exists and reset:
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                log(f"dropped database {name}")
                exists = None
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
                log(f"created database {name}")
    upgrade(url)


def _count(conn: Connection, table: sa.Table, job_id: str | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(table)
    if job_id is not None:
        query = query.where(table.c.job_key == id_key(job_id))
    return int(conn.execute(query).scalar_one())


def holds(engine: Engine, spec: Spec) -> tuple[int, bool]:
    """(events stored, whether they are exactly this data set)."""
    with engine.connect() as conn:
        total = _count(conn, EVENTS)
        deliveries = _count(conn, DELIVERIES)
        if total != spec.total or deliveries != spec.total:
            return total, False
        last = spec.jobs - 1
        if _count(conn, EVENTS, spec.job_id(last)) != spec.events_of(last):
            return total, False
        if _count(conn, EVENTS, spec.job_id(spec.jobs)) != 0:  # one job too many
            return total, False
        return total, _count(conn, EVENTS, spec.big_job_id) == spec.big_job_events


def _bulk_engine(url: str) -> Engine:
    engine = create_engine_for(url, pool_size=1)
    if sqlite_path(url) is not None:

        def fast(dbapi_connection: Any, _record: Any) -> None:
            # Runs after the receiver's own pragmas. A crash while seeding loses only the seed.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.execute("PRAGMA cache_size=-262144")  # 256 MiB: the indexes stay in memory
            cursor.close()

        sa.event.listen(engine, "connect", fast)
    return engine


def _insert(engine: Engine, spec: Spec, *, chunk: int, log: Log) -> None:
    started = time.monotonic()
    last_report = started
    deliveries: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    done = 0

    def flush() -> None:
        with engine.begin() as conn:
            conn.execute(sa.insert(DELIVERIES), deliveries)
            conn.execute(sa.insert(EVENTS), events)
        deliveries.clear()
        events.clear()

    for delivery, event in rows(spec):
        deliveries.append(delivery)
        events.append(event)
        if len(deliveries) >= chunk:
            flush()
            done += chunk
            now = time.monotonic()
            if now - last_report >= 5 or done == spec.total:
                rate = done / (now - started)
                left = (spec.total - done) / rate
                log(f"  {done:>9,} / {spec.total:,} rows  {rate:>7,.0f} rows/s  ~{left:.0f} s left")
                last_report = now
    if deliveries:
        done += len(deliveries)
        flush()
    log(f"  {done:,} deliveries and events in {time.monotonic() - started:.1f} s")


def _finish(engine: Engine, url: str, log: Log) -> None:
    started = time.monotonic()
    if sqlite_path(url) is not None:
        with engine.connect() as conn:
            # Fold the WAL into the database file, so the server starts on a compact file.
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        log(f"  checkpoint in {time.monotonic() - started:.1f} s")
        return
    with engine.begin() as conn:
        for table in ("deliveries", "events"):
            # The ids were given explicitly: move the sequences past them for the server.
            conn.exec_driver_sql(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608 - constant
                f"(SELECT max(id) FROM {table}))"
            )
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE deliveries")
        conn.execute("VACUUM ANALYZE events")
    log(f"  sequences moved and VACUUM ANALYZE in {time.monotonic() - started:.1f} s")


def ensure_seeded(
    url: str, spec: Spec, *, reset: bool = False, chunk: int = 5000, log: Log = print
) -> dict[str, Any]:
    """Seed ``url`` with ``spec`` unless it already holds it; what was done and how long it took."""
    url = database_url(url)
    started = time.monotonic()
    prepare(url, reset=reset, log=log)
    engine = _bulk_engine(url)
    try:
        stored, same = holds(engine, spec)
        if same:
            log(f"{_safe(url)} already holds the {spec.total:,} events: not seeding")
            return {"seeded": False, "events": stored, "seconds": 0.0}
        if stored:
            raise SystemExit(
                f"seed: {_safe(url)} holds {stored:,} events, not this data set of "
                f"{spec.total:,}; give --reset to start again"
            )
        check_rows(spec)
        log(f"seeding {_safe(url)}: {spec.total:,} deliveries and events ...")
        _insert(engine, spec, chunk=chunk, log=log)
        _finish(engine, url, log)
    finally:
        engine.dispose()
    seconds = round(time.monotonic() - started, 1)
    log(f"seeded {spec.total:,} events in {seconds:.1f} s")
    return {"seeded": True, "events": spec.total, "seconds": seconds}


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="SQLite file path or PostgreSQL URL (database included)")
    parser.add_argument("--events", type=int, default=Spec.events, help="spread over --jobs")
    parser.add_argument("--jobs", type=int, default=Spec.jobs)
    parser.add_argument("--rooms", type=int, default=Spec.rooms)
    parser.add_argument("--big-job-events", type=int, default=Spec.big_job_events)
    parser.add_argument("--seed", type=int, default=Spec.seed, help="random seed of the content")
    parser.add_argument("--chunk", type=int, default=5000, help="rows per transaction")
    parser.add_argument("--reset", action="store_true", help="start from an empty database")
    args = parser.parse_args(argv)
    if args.events < args.jobs or args.jobs < 1 or args.rooms < 1 or args.big_job_events < 0:
        parser.error("need --jobs >= 1, --rooms >= 1, --events >= --jobs, --big-job-events >= 0")
    spec = Spec(args.events, args.jobs, args.rooms, args.big_job_events, args.seed)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    ensure_seeded(args.target, spec, reset=args.reset, chunk=args.chunk, log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())

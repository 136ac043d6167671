"""Cross-checking 10,000 jobs in 100 rooms against 100,000 stored events: wall time and API calls.

Run by hand, never by CI, from the project root:

    .venv/bin/python bench/crosscheck.py                    # SQLite, a fresh file
    .venv/bin/python bench/crosscheck.py --store postgres   # a fresh database, dropped afterwards
    .venv/bin/python bench/crosscheck.py --store both
    #   --events 100000 --jobs 10000 --rooms 100 --pg-url postgresql://postgres@127.0.0.1:5432

For each store:

1. A fresh database is migrated and seeded by ``seed.py`` (its ``Spec``, without the big job):
   ``--events`` deliveries and their events over ``--jobs`` jobs in ``--rooms`` rooms, inserted
   with SQLAlchemy Core ``executemany``. Every job opens with RTMP CONNECTING/CONNECTED and ends
   with END; the events span 30 days of October 2026.
2. The jobs go into a ``FakeMetaStudio`` served on loopback (``serve_fake``), each a full Table 6
   SmartLiveJob whose start/end times cover its events and whose callbacks point at the seeded
   endpoint. One job per room in six is made wrong on purpose, so the run has known work to do:
   left out of the fake (``unknown_job``), FAILED, BLOCKED, started an hour after its first
   event, calling back another URL, and still PROCESSING after its stream ENDed. That is
   6 x ``--rooms`` findings expected (600 by default), checked after the first run.
3. ``CrossChecker.run`` runs three times with ``now`` one hour after the last event, over the
   official SDK talking HTTP to the fake, exactly as ``receiver.web.app.build_crosschecker`` builds
   it (concurrency 4, the default policy) but with a 600 s cache:

   - cold: nothing cached, no snapshots or findings stored yet;
   - warm: again at once, within the cache TTL (no API call expected);
   - steady: the cache dropped, nothing changed in MetaStudio (what a periodic run costs: every
     room asked again, no new snapshot rows, every finding seen once more).

Printed per run: wall time, API calls (the fake's request log, and ``MetaStudioJobs.calls``
which counts every page and attempt), findings opened/resolved, and the per-phase split (time
summed over rooms, 4 at a time, so the phases add up to more than the wall time): listing the
rooms, the MetaStudio query, reading a room's events, writing snapshots and findings.
The figures also go to ``bench/results/crosscheck-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

# bench/ itself, for seed.py (the data set of the query benchmark, reused here).
sys.path.insert(0, str(Path(__file__).resolve().parent))

import seed

from receiver import fake_metastudio as fm
from receiver.config import EndpointSettings
from receiver.crosscheck.metastudio import MetaStudioJobs, RoomJobs
from receiver.crosscheck.rules import Policy
from receiver.crosscheck.run import CrossChecker, RunReport
from receiver.protocol.ids import api_form
from receiver.protocol.signing import AuthType
from receiver.store.models import Event, Finding, JobSnapshot, UTCDateTime
from receiver.store.writer import create_engine_for

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REGISTERED = f"https://hooks.example.com/callbacks/{seed.ENDPOINT}"
CACHE_SECONDS = 600.0
EVENTS = Event.__table__  # type: ignore[attr-defined]
FINDINGS = Finding.__table__  # type: ignore[attr-defined]
SNAPSHOTS = JobSnapshot.__table__  # type: ignore[attr-defined]

# One job per room for each of these is made wrong (chosen by (job index // rooms) % 100).
FLAWS = {
    1: "unknown_job",
    2: "job_failed",
    3: "job_blocked",
    4: "event_outside_job_window",
    5: "callback_url_mismatch",
    6: "stream_ended_job_running",
}


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- Stores --------------------------------------------------------------------------------------


@contextlib.contextmanager
def database(store: str, pg_server: str) -> Iterator[str]:
    """A fresh database URL; the SQLite file's directory or the PostgreSQL database is removed
    afterwards."""
    if store == "sqlite":
        with tempfile.TemporaryDirectory(prefix="rcv-bench-crosscheck-") as workdir:
            yield f"sqlite:///{Path(workdir) / 'receiver.db'}"
        return
    name = f"bench_crosscheck_{secrets.token_hex(6)}"
    server = make_url(seed.database_url(pg_server))
    admin = seed.libpq(server.set(database="postgres").render_as_string(hide_password=False))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def job_spans(engine: sa.Engine) -> dict[str, tuple[str, datetime, datetime]]:
    """job_id -> (room_id, first signed_at, last signed_at) of the stored events."""
    query = sa.select(
        EVENTS.c.job_id,
        EVENTS.c.room_id,
        sa.func.min(EVENTS.c.signed_at, type_=UTCDateTime()),
        sa.func.max(EVENTS.c.signed_at, type_=UTCDateTime()),
    ).group_by(EVENTS.c.job_id, EVENTS.c.room_id)
    with engine.connect() as conn:
        return {
            job_id: (room_id, first, last) for job_id, room_id, first, last in conn.execute(query)
        }


def counts(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        by_kind = dict(
            conn.execute(
                sa.select(FINDINGS.c.kind, sa.func.count())
                .where(FINDINGS.c.resolved_at.is_(None))
                .group_by(FINDINGS.c.kind)
            ).all()
        )
        snapshots = conn.execute(sa.select(sa.func.count()).select_from(SNAPSHOTS)).scalar_one()
    return {"open_by_kind": dict(sorted(by_kind.items())), "snapshot_rows": snapshots}


# --- MetaStudio's side ---------------------------------------------------------------------------


def metastudio_jobs(spec: seed.Spec, spans: Mapping[str, tuple[str, datetime, datetime]]) -> list:
    """Every job as MetaStudio would list it, with the flaws of FLAWS; the left-out ones omitted."""
    jobs = []
    for index in range(spec.jobs):
        job_id = spec.job_id(index)
        room_id, first, last = spans[job_id]
        flaw = FLAWS.get((index // spec.rooms) % 100)
        if flaw == "unknown_job":
            continue
        start = first.replace(microsecond=0) - timedelta(seconds=5)
        end = last.replace(microsecond=0) + timedelta(seconds=6)
        # Listed as MetaStudio's API spells ids (dashed), while the events carry 32 hex digits.
        job = fm.fake_job(
            job_id=api_form(job_id),
            room_id=api_form(room_id),
            room_name=f"room {room_id[:8]}",
            state="SUCCEED",
            create_time=rfc3339(start - timedelta(minutes=1)),
            start_time=rfc3339(start),
            end_time=rfc3339(end),
            lastupdate_time=rfc3339(end + timedelta(seconds=3)),
            duration=(end - start).total_seconds(),
        )
        job["live_event_callback_config"]["live_event_type_callback_url"] = REGISTERED
        if flaw == "job_failed":
            job["state"] = "FAILED"
            job["error_info"] = {"error_code": "MSS.00000100", "error_msg": "push stream failed"}
        elif flaw == "job_blocked":
            job["state"] = "BLOCKED"
            job["block_reason"] = "Illegal content in the live room"
        elif flaw == "event_outside_job_window":
            job["start_time"] = rfc3339(start + timedelta(hours=1))
        elif flaw == "callback_url_mismatch":
            job["live_event_callback_config"]["live_event_type_callback_url"] = (
                "https://other.example.com/callbacks/live"
            )
        elif flaw == "stream_ended_job_running":
            job["state"] = "PROCESSING"
            del job["end_time"]
        jobs.append(job)
    return jobs


# --- The measured checker ------------------------------------------------------------------------


@dataclass
class Phases:
    seconds: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            with self.lock:
                self.seconds[name] = self.seconds.get(name, 0.0) + spent

    def take(self) -> dict[str, float]:
        with self.lock:
            taken, self.seconds = self.seconds, {}
        return {k: round(v, 3) for k, v in taken.items()}


class TimedSource:
    """The JobSource the checker sees: MetaStudioJobs, with the time spent waiting for it."""

    def __init__(self, inner: MetaStudioJobs, phases: Phases) -> None:
        self.inner = inner
        self.phases = phases

    async def list_room_jobs(self, room_id: str) -> RoomJobs:
        with self.phases.timed("metastudio_query"):
            return await self.inner.list_room_jobs(room_id)


class TimedChecker(CrossChecker):
    """CrossChecker with its database phases timed (they run in worker threads)."""

    phases: Phases

    def _rooms(self, now: datetime) -> list[str]:
        with self.phases.timed("list_rooms"):
            return super()._rooms(now)

    def _activity(self, room: str) -> Any:
        with self.phases.timed("read_events"):
            return super()._activity(room)

    def _save(self, *args: Any) -> tuple[int, int]:
        with self.phases.timed("write_snapshots_findings"):
            return super()._save(*args)


def measure(
    name: str, checker: TimedChecker, source: MetaStudioJobs, fake: fm.FakeMetaStudio, now: datetime
) -> dict[str, Any]:
    requests, calls, queries = len(fake.requests), source.calls, source.queries
    started = time.perf_counter()
    report: RunReport = asyncio.run(checker.run(now=now))
    wall = time.perf_counter() - started
    if report.skipped:
        raise SystemExit(f"crosscheck bench: the {name} run was skipped: {report.skipped}")
    return {
        "run": name,
        "wall_s": round(wall, 3),
        "api_requests_seen_by_fake": len(fake.requests) - requests,
        "api_calls_made_by_client": source.calls - calls,
        "room_queries": source.queries - queries,
        "rooms_checked": report.rooms_checked,
        "rooms_failed": report.rooms_failed,
        "jobs_seen": report.jobs_seen,
        "findings_opened": report.findings_opened,
        "findings_resolved": report.findings_resolved,
        "phases_s": checker.phases.take(),
    }


def run_store(store: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = seed.Spec(events=args.events, jobs=args.jobs, rooms=args.rooms, big_job_events=0)
    with database(store, args.pg_url) as url:
        log(f"== {store}")
        seeded = seed.ensure_seeded(url, spec, log=log)
        url = seed.database_url(url)
        engine = create_engine_for(url)
        try:
            spans = job_spans(engine)
            last = max(span[2] for span in spans.values())
            now = last.replace(microsecond=0) + timedelta(hours=1)
            jobs = metastudio_jobs(spec, spans)
            fake = fm.FakeMetaStudio(credentials={fm.DEFAULT_AK: fm.DEFAULT_SK}, jobs=jobs)
            log(f"fake MetaStudio: {len(jobs):,} jobs in {args.rooms} rooms; now = {now}")
            with fm.serve_fake(fake) as base_url:
                phases = Phases()
                source = MetaStudioJobs(
                    endpoint=base_url,
                    project_id=fm.DEFAULT_PROJECT_ID,
                    ak=fm.DEFAULT_AK,
                    sk=fm.DEFAULT_SK,
                    cache_ttl=CACHE_SECONDS,
                )
                endpoint = EndpointSettings(
                    name=seed.ENDPOINT,
                    registered_url=REGISTERED,
                    auth_type=AuthType.MSS_A,
                    keys=("bench-key",),
                )
                checker = TimedChecker(
                    engine=engine,
                    source=TimedSource(source, phases),
                    endpoints={endpoint.name: endpoint},
                    policy=Policy(),
                )
                checker.phases = phases
                try:
                    runs = [measure("cold", checker, source, fake, now)]
                    after_cold = counts(engine)
                    runs.append(measure("warm", checker, source, fake, now + timedelta(minutes=1)))
                    source.invalidate()
                    runs.append(
                        measure("steady", checker, source, fake, now + timedelta(minutes=2))
                    )
                    after = counts(engine)
                finally:
                    source.close()
        finally:
            engine.dispose()
    expected = {kind: args.rooms for kind in FLAWS.values()}
    return {
        "store": store,
        "events": spec.events,
        "jobs": spec.jobs,
        "jobs_listed_by_metastudio": len(jobs),
        "rooms": spec.rooms,
        "seed_s": seeded["seconds"],
        "runs": runs,
        "after_cold": after_cold,
        "after_steady": after,
        "expected_open_by_kind": expected,
        "findings_as_expected": after_cold["open_by_kind"] == expected == after["open_by_kind"],
    }


# --- Output --------------------------------------------------------------------------------------


def table(results: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{'store':<9}{'run':<8}{'wall s':>8}{'API calls':>11}{'(client)':>10}{'rooms':>7}"
        f"{'jobs':>8}{'opened':>8}{'resolved':>9}   phases (s, summed over rooms)"
    ]
    for result in results:
        for run in result["runs"]:
            phases = ", ".join(f"{k} {v:.2f}" for k, v in run["phases_s"].items())
            lines.append(
                f"{result['store']:<9}{run['run']:<8}{run['wall_s']:>8.2f}"
                f"{run['api_requests_seen_by_fake']:>11}{run['api_calls_made_by_client']:>10}"
                f"{run['rooms_checked']:>7}{run['jobs_seen']:>8}{run['findings_opened']:>8}"
                f"{run['findings_resolved']:>9}   {phases}"
            )
    for result in results:
        verdict = "as expected" if result["findings_as_expected"] else "NOT as expected"
        lines.append(
            f"{result['store']}: {result['events']:,} events, {result['jobs']:,} jobs "
            f"({result['jobs_listed_by_metastudio']:,} listed) in {result['rooms']} rooms, "
            f"seeded in {result['seed_s']:.1f} s; open findings {verdict}: "
            f"{result['after_steady']['open_by_kind']}; "
            f"snapshot rows {result['after_cold']['snapshot_rows']:,} after cold, "
            f"{result['after_steady']['snapshot_rows']:,} after steady"
        )
    return "\n".join(lines)


def write_json(results: list[dict[str, Any]], args: argparse.Namespace) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS / f"crosscheck-{stamp}.json"
    document = {
        "time": stamp,
        "options": {"events": args.events, "jobs": args.jobs, "rooms": args.rooms},
        "cache_seconds": CACHE_SECONDS,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
            "python": platform.python_version(),
        },
        "results": results,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help=f"PostgreSQL server ({DEFAULT_PG})")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rooms", type=int, default=100)
    args = parser.parse_args(argv)
    # Each room needs one job of each flaw: jobs >= rooms * (highest flaw + 1).
    if args.rooms < 1 or args.jobs < args.rooms * (max(FLAWS) + 1) or args.events < args.jobs:
        parser.error(f"need --rooms >= 1, --jobs >= {max(FLAWS) + 1} x --rooms, --events >= --jobs")
    if math.ceil(args.jobs / args.rooms) > fm.MAX_LIMIT * 100:
        parser.error("too many jobs per room for MetaStudioJobs' 100 pages")
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    results = [run_store(store, args) for store in stores]
    print(table(results))
    print(f"figures written to {write_json(results, args).relative_to(BENCH.parent)}")
    return 0 if all(r["findings_as_expected"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

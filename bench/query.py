"""Query latency of the read API over a large store, and the query plans behind it.

Run by hand, never by CI, from the project root:

    .venv/bin/python bench/query.py                       # SQLite and PostgreSQL (--store both)
    .venv/bin/python bench/query.py --store sqlite
    .venv/bin/python bench/query.py --store postgres --repeat 100
    .venv/bin/python bench/query.py --reset               # seed again from scratch first

For each store it

1. seeds the database with ``bench/seed.py`` unless it already holds the data set (1,000,000
   events over 1,000 jobs in 100 rooms, plus one job with 10,000 events). The databases persist
   between runs: ``--sqlite-path`` (``/tmp/rcv-bench-query.db``) and ``--pg-url`` (database
   ``rcv_bench_query`` on 127.0.0.1:5432, created when missing; trust auth assumed);
2. starts the real server, ``python -m receiver serve`` with a temporary config (``api_tokens``
   set, no endpoints), on a free 127.0.0.1 port, and samples its VmRSS every 50 ms;
3. times requests, one at a time, with a keep-alive ``httpx2`` client. The requests of a row are
   taken round-robin (e.g. the first page of 20 random jobs, 50 rounds); 2 untimed warm-up rounds
   also check the answers. Each time is the full exchange as a client sees it (the body read);
4. stops the server (VmHWM read first), then runs the SQL the server runs for the page and job
   queries, captured from ``receiver.store.queries`` itself, under ``EXPLAIN QUERY PLAN`` (SQLite)
   or
   ``EXPLAIN (ANALYZE, BUFFERS)`` (PostgreSQL), and times each statement alone.

The targets (issue: query performance): ``GET /v1/events?job_id=..&limit=100`` median <= 10 ms on
the first page and on a page deep in the job's history (after its ~900th event);
``GET /v1/jobs/{id}`` for the job with 10,000 events median <= 100 ms (with the default timeline
of 1,000 events; ``limit=10000`` is measured too and judged against the same bound, as
information); server peak RSS (VmHWM) <= 200 MiB. The other rows are for information.

It prints a table and the plans per store, writes everything to ``bench/results/query-<time>.json``
and exits 0 when every target passes, 1 otherwise. The whole run is bounded by ``--timeout``;
the server is stopped on every exit path.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import random
import re
import secrets
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx2
import sqlalchemy as sa
from procs import Server, free_port
from seed import Spec, database_url, ensure_seeded
from sqlalchemy.engine import Connection, Engine

from receiver.crosscheck import jobs
from receiver.store import queries
from receiver.store.driver import sqlite_path
from receiver.store.writer import create_engine_for

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"

TARGET_PAGE_MS = 10.0
TARGET_JOB_MS = 100.0
TARGET_RSS_MIB = 200.0

DEFAULT_SQLITE = "/tmp/rcv-bench-query.db"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/rcv_bench_query"
TOKEN = secrets.token_urlsafe(24)
REQUEST_TIMEOUT = 60.0
WARMUP_ROUNDS = 2
SQL_REPEAT = 5


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- The server ----------------------------------------------------------------------------------


def receiver_server(database_url: str, workdir: Path) -> Server:
    """``python -m receiver serve`` on 127.0.0.1 with an API token (bench/procs.py runs it)."""
    config = workdir / "receiver.toml"
    config.write_text(
        f"database_url = {json.dumps(database_url)}\n"
        f"api_tokens = [{json.dumps(TOKEN)}]\n"
        'log_level = "WARNING"\n'
    )
    env = dict(os.environ)
    for name in ("RECEIVER_DATABASE_URL", "RECEIVER_CONFIG"):
        env.pop(name, None)  # they would override the config
    port = free_port()
    command = [sys.executable, "-m", "receiver", "serve", "--config", str(config)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    return Server(
        name="receiver",
        command=command,
        port=port,
        workdir=workdir,
        ready_method="GET",
        ready_path="/healthz",
        cwd=ROOT,
        env=env,
    )


# --- Timed requests ------------------------------------------------------------------------------

Params = dict[str, str]
Check = Callable[[Params, dict[str, Any]], None]


@dataclass
class Row:
    """One line of the table: a kind of request, timed over several concrete requests."""

    name: str
    path: str
    requests: list[Params]
    target_ms: float | None = None  # judged on the median
    info_bound_ms: float | None = None  # shown against the median, not a target
    check: Check | None = None
    explain_key: str | None = None  # which captured SQL names the index
    times_ms: list[float] = field(default_factory=list)
    index: str | None = None

    def summary(self) -> dict[str, Any]:
        times = sorted(self.times_ms)
        bound = self.target_ms if self.target_ms is not None else self.info_bound_ms
        p50 = statistics.median(times) if times else math.nan
        return {
            "name": self.name,
            "path": self.path,
            "distinct_requests": len(self.requests),
            "n": len(times),
            "p50_ms": round(p50, 2),
            "p95_ms": round(_percentile(times, 95), 2),
            "min_ms": round(times[0], 2) if times else None,
            "max_ms": round(times[-1], 2) if times else None,
            "target_ms": self.target_ms,
            "info_bound_ms": self.info_bound_ms,
            "within": None if bound is None else p50 <= bound,
            "index": self.index,
        }


def _percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ordered list."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _target(path: str, params: Params) -> tuple[str, Params]:
    """``/v1/jobs/{id}`` takes its job from the ``job`` entry of the parameters."""
    if "job" not in params:
        return path, params
    rest = {k: v for k, v in params.items() if k != "job"}
    return path.replace("{id}", params["job"]), rest


def get_json(client: httpx2.Client, path: str, params: Params) -> dict[str, Any]:
    path, params = _target(path, params)
    answer = client.get(path, params=params)
    if answer.status_code != 200:
        raise RuntimeError(
            f"GET {path} {params} answered {answer.status_code}: {answer.text[:300]}"
        )
    value: dict[str, Any] = answer.json()
    return value


def run_row(client: httpx2.Client, row: Row, rounds: int) -> None:
    for _ in range(WARMUP_ROUNDS):
        for params in row.requests:
            body = get_json(client, row.path, params)
            if row.check is not None:
                row.check(params, body)
    for _ in range(rounds):
        for params in row.requests:
            path, query = _target(row.path, params)
            started = time.perf_counter()
            answer = client.get(path, params=query)
            elapsed = time.perf_counter() - started
            if answer.status_code != 200:
                raise RuntimeError(f"GET {path} {query} answered {answer.status_code}")
            row.times_ms.append(elapsed * 1000)


def cursor_after(client: httpx2.Client, params: Params, count: int) -> str:
    """The cursor that follows the ``count``-th event of a listing, by paging to it."""
    cursor: str | None = None
    seen = 0
    while seen < count:
        page = dict(params, limit=str(min(queries.MAX_LIMIT, count - seen)))
        if cursor is not None:
            page["cursor"] = cursor
        body = get_json(client, "/v1/events", page)
        seen += len(body["events"])
        cursor = body["next_cursor"]
        if cursor is None:
            raise RuntimeError(f"{params} has fewer than {count + 1} events")
    assert cursor is not None
    return cursor


def _page_check(key: str, size: int = 100) -> Check:
    def check(params: Params, body: dict[str, Any]) -> None:
        events = body["events"]
        if len(events) != size or any(event[key] != params[key] for event in events):
            raise RuntimeError(f"{params}: expected {size} events of that {key}")
        ids = [event["id"] for event in events]
        if ids != sorted(ids) or body["next_cursor"] is None:
            raise RuntimeError(f"{params}: a page out of order, or without a next cursor")

    return check


def _type_check(params: Params, body: dict[str, Any]) -> None:
    if {event["event_type"] for event in body["events"]} != {params["event_type"]}:
        raise RuntimeError(f"{params}: events of another type")
    _size_check(params, body)


def _size_check(params: Params, body: dict[str, Any]) -> None:
    if len(body["events"]) != int(params["limit"]):
        raise RuntimeError(f"{params}: expected {params['limit']} events")


def _job_check(spec: Spec, timeline: int) -> Check:
    def check(params: Params, body: dict[str, Any]) -> None:
        if body["event_count"] != spec.big_job_events or len(body["timeline"]) != timeline:
            raise RuntimeError(
                f"job view: {body['event_count']} events, {len(body['timeline'])} in the "
                f"timeline; expected {spec.big_job_events} and {timeline}"
            )

    return check


@dataclass
class Plan:
    """What the rows need from the database: sample jobs and rooms, cursors, times."""

    jobs: list[str]
    job_deep: list[str]
    rooms: list[str]
    room_deep: list[str]
    type_deep: str
    since: dict[str, str]


def build_rows(spec: Spec, plan: Plan) -> list[Row]:
    reply = "REPLY_COMMAND_FINISH"
    page = "100"
    rows = [
        Row(
            "events?job_id first page",
            "/v1/events",
            [{"job_id": job, "limit": page} for job in plan.jobs],
            target_ms=TARGET_PAGE_MS,
            check=_page_check("job_id"),
            explain_key="job page, first",
        ),
        Row(
            "events?job_id deep page (~900th)",
            "/v1/events",
            [
                {"job_id": job, "limit": page, "cursor": cursor}
                for job, cursor in zip(plan.jobs, plan.job_deep, strict=True)
            ],
            target_ms=TARGET_PAGE_MS,
            check=_page_check("job_id", size=min(100, spec.events_of(0) - _job_depth(spec))),
            explain_key="job page, deep",
        ),
    ]
    if spec.big_job_events:
        view = f"/v1/jobs/{spec.big_job_id}"
        default_timeline = min(1000, spec.big_job_events)
        rows += [
            Row(
                f"jobs/{{id}} ({spec.big_job_events:,} ev), default limit",
                view,
                [{}],
                target_ms=TARGET_JOB_MS,
                check=_job_check(spec, default_timeline),
                explain_key="job view (limit 1000): first/last received_at",
            ),
            Row(
                f"jobs/{{id}} ({spec.big_job_events:,} ev), limit={spec.big_job_events}",
                view,
                [{"limit": str(spec.big_job_events)}],
                info_bound_ms=TARGET_JOB_MS,
                check=_job_check(spec, spec.big_job_events),
            ),
        ]
    rows += [
        Row(
            f"jobs/{{id}} ({spec.events_of(0):,} ev), default limit",
            "/v1/jobs/{id}",
            [{"job": job} for job in plan.jobs],
            info_bound_ms=TARGET_JOB_MS,
            explain_key="small job view (limit 1000): first/last received_at",
        ),
        Row(
            "events?job_id&event_type first page",
            "/v1/events",
            [{"job_id": job, "event_type": reply, "limit": "20"} for job in plan.jobs],
            check=_type_check,
            explain_key="job + type page, first",
        ),
        Row(
            "events?room_id first page",
            "/v1/events",
            [{"room_id": room, "limit": page} for room in plan.rooms],
            check=_page_check("room_id"),
            explain_key="room page, first",
        ),
        Row(
            "events?room_id deep page (middle)",
            "/v1/events",
            [
                {"room_id": room, "limit": page, "cursor": cursor}
                for room, cursor in zip(plan.rooms, plan.room_deep, strict=True)
            ],
            check=_page_check("room_id"),
            explain_key="room page, deep",
        ),
        Row(
            "events?event_type first page",
            "/v1/events",
            [{"event_type": reply, "limit": page}],
            check=_type_check,
            explain_key="type page, first",
        ),
        Row(
            "events?event_type deep page",
            "/v1/events",
            [{"event_type": reply, "limit": page, "cursor": plan.type_deep}],
            check=_type_check,
            explain_key="type page, deep",
        ),
    ]
    for where, since in plan.since.items():
        rows.append(
            Row(
                f"events?since ({where}) first page",
                "/v1/events",
                [{"since": since, "limit": page}],
                check=_size_check,
                explain_key=f"since ({where}) page, first",
            )
        )
    return rows


def _job_depth(spec: Spec) -> int:
    """How many of a job's events come before its deep page: ~90 % in, a full page left."""
    count = spec.events_of(0)
    return max(1, min(count * 9 // 10, count - 100) - 1)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def make_plan(client: httpx2.Client, engine: Engine, spec: Spec, args: argparse.Namespace) -> Plan:
    rng = random.Random(args.sample_seed)
    job_indexes = rng.sample(range(spec.jobs), min(args.sample, spec.jobs))
    jobs = [spec.job_id(index) for index in job_indexes]
    room_indexes = rng.sample(range(spec.rooms), min(args.sample, spec.rooms))
    rooms = [spec.room_id(index) for index in room_indexes]
    log(f"  paging to the deep cursors of {len(jobs)} jobs and {len(rooms)} rooms ...")
    job_deep = [cursor_after(client, {"job_id": job}, _job_depth(spec)) for job in jobs]
    per_room = spec.events // spec.rooms
    room_deep = [cursor_after(client, {"room_id": room}, per_room // 2) for room in rooms]
    type_deep = cursor_after(client, {"event_type": "REPLY_COMMAND_FINISH"}, args.type_depth)
    events = queries.EVENTS
    since: dict[str, str] = {}
    with engine.connect() as conn:
        for where, share in (("1 %", 0.01), ("50 %", 0.5), ("99 %", 0.99)):
            event_id = max(1, int(spec.total * share))
            moment = conn.execute(
                sa.select(events.c.received_at).where(events.c.id == event_id)
            ).scalar_one()
            since[f"{where} in"] = _iso(moment)
    return Plan(jobs, job_deep, rooms, room_deep, type_deep, since)


# --- Query plans ---------------------------------------------------------------------------------


@dataclass
class Statement:
    key: str
    sql: str
    params: Any
    plan: list[str] = field(default_factory=list)
    sql_ms: float | None = None
    rows: int | None = None

    def as_dict(self) -> dict[str, Any]:
        params = self.params if isinstance(self.params, dict) else list(self.params)
        return {
            "key": self.key,
            "sql": self.sql,
            "params": {k: str(v) for k, v in params.items()}
            if isinstance(params, dict)
            else [str(v) for v in params],
            "plan": self.plan,
            "sql_ms": self.sql_ms,
            "rows": self.rows,
        }


@contextlib.contextmanager
def capture(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement (and its DBAPI parameters) the engine sends while the block runs."""
    seen: list[tuple[str, Any]] = []

    def record(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, many: bool) -> None:
        seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def _job_view_label(sql: str, params: Any) -> str:
    text = " ".join(sql.split()).lower()
    values = {str(v) for v in (params.values() if isinstance(params, dict) else params)}
    if "group by" in text:
        return "counts by type"
    if "min(" in text:
        return "first/last received_at"
    if "count(*)" in text:
        return "count of replies"
    if text.startswith("select events.room_id"):
        return "room"
    for kind, label in (
        ("RTMP_STREAM_STATE_CHANGE", "rtmp state (batch)"),
        ("SHOOT_SCRIPT_SWITCH", "script position"),
        ("REPLY_COMMAND_FINISH", "recent replies"),
    ):
        if kind in values:
            return label
    return "timeline page"


def collect_statements(engine: Engine, spec: Spec, plan: Plan) -> list[Statement]:
    """The SQL behind the page and job queries, as ``receiver.store.queries`` builds it."""
    job = plan.jobs[0]
    calls: list[tuple[str, Callable[[Connection], Any]]] = [
        ("job page, first", lambda c: queries.list_events(c, job_id=job, limit=100)),
        (
            "job page, deep",
            lambda c: queries.list_events(c, job_id=job, limit=100, cursor=plan.job_deep[0]),
        ),
        (
            "job + type page, first",
            lambda c: queries.list_events(
                c, job_id=job, event_types=["REPLY_COMMAND_FINISH"], limit=20
            ),
        ),
        ("room page, first", lambda c: queries.list_events(c, room_id=plan.rooms[0], limit=100)),
        (
            "room page, deep",
            lambda c: queries.list_events(
                c, room_id=plan.rooms[0], limit=100, cursor=plan.room_deep[0]
            ),
        ),
        (
            "type page, first",
            lambda c: queries.list_events(c, event_types=["REPLY_COMMAND_FINISH"], limit=100),
        ),
        (
            "type page, deep",
            lambda c: queries.list_events(
                c, event_types=["REPLY_COMMAND_FINISH"], limit=100, cursor=plan.type_deep
            ),
        ),
    ]
    for where, since in plan.since.items():
        moment = queries.parse_time("since", since)
        calls.append(
            (
                f"since ({where}) page, first",
                functools.partial(queries.list_events, since=moment, limit=100),
            )
        )
    calls.append(("small job view (limit 1000)", lambda c: jobs.job_view(c, job, limit=1000)))
    if spec.big_job_events:
        for limit in (1000, spec.big_job_events):
            calls.append(
                (
                    f"job view (limit {limit})",
                    functools.partial(jobs.job_view, job_id=spec.big_job_id, limit=limit),
                )
            )
    statements: list[Statement] = []
    with engine.connect() as conn:
        for key, call in calls:
            with capture(engine) as seen:
                call(conn)
            for index, (sql, params) in enumerate(seen):
                label = key
                if "job view" in key:
                    label = f"{key}: {_job_view_label(sql, params)}"
                elif len(seen) > 1:
                    label = f"{key} #{index + 1}"
                statements.append(Statement(label, sql, params))
    # The rtmp walk may take several batches; one of each kind is enough.
    unique: dict[str, Statement] = {}
    for statement in statements:
        unique.setdefault(statement.key, statement)
    return list(unique.values())


def explain(engine: Engine, statements: list[Statement], *, is_sqlite: bool) -> None:
    """Fill in each statement's plan and its own time (median of a few runs, rows fetched)."""
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        for statement in statements:
            cursor = raw.cursor()
            try:
                if is_sqlite:
                    cursor.execute("EXPLAIN QUERY PLAN " + statement.sql, statement.params)
                    statement.plan = _sqlite_tree(cursor.fetchall())
                else:
                    cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement.sql, statement.params)
                    statement.plan = [line for (line,) in cursor.fetchall()]
                times = []
                for _ in range(SQL_REPEAT):
                    started = time.perf_counter()
                    cursor.execute(statement.sql, statement.params)
                    statement.rows = len(cursor.fetchall())
                    times.append((time.perf_counter() - started) * 1000)
                statement.sql_ms = round(statistics.median(times), 2)
            finally:
                cursor.close()
        if not is_sqlite:
            raw.rollback()


def _sqlite_tree(rows: Sequence[tuple[int, int, int, str]]) -> list[str]:
    depth: dict[int, int] = {0: -1}
    lines = []
    for node, parent, _unused, detail in rows:
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node] + detail)
    return lines


_INDEX = re.compile(
    r"USING (?:COVERING )?INDEX (\w+)|USING INTEGER PRIMARY KEY|SCAN events$|Seq Scan on events"
    r"|Index(?: Only)? Scan(?: Backward)? using (\w+)|Bitmap Index Scan on (\w+)"
    r"|USE TEMP B-TREE FOR ORDER BY|Sort Key"
)


def index_of(plan: list[str]) -> str:
    """The access path of the plan's first scan of ``events``: an index name, or a scan."""
    names: list[str] = []
    for line in plan:
        for match in _INDEX.finditer(line):
            text = match.group(0)
            name = match.group(1) or match.group(2) or match.group(3)
            if name:
                names.append(name)
            elif "PRIMARY KEY" in text:
                names.append("rowid")
            elif "TEMP B-TREE" in text or "Sort" in text:
                names.append("+ sort")
            else:
                names.append("full scan")
    return ", ".join(dict.fromkeys(names)) or "?"


def _compact(sql: str) -> str:
    text = " ".join(sql.split())
    return re.sub(r"SELECT (?:events\.\w+, ){6,}events\.\w+ FROM", "SELECT events.* FROM", text)


# --- One store -----------------------------------------------------------------------------------


def run_store(store: str, spec: Spec, args: argparse.Namespace) -> dict[str, Any]:
    url = database_url(args.sqlite_path if store == "sqlite" else args.pg_url)
    log(f"[{store}] seed {url}")
    seeding = ensure_seeded(url, spec, reset=args.reset, chunk=args.chunk, log=log)
    engine = create_engine_for(url, pool_size=1)
    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory(prefix=f"bench-query-{store}-") as tmp:
            server = receiver_server(url, Path(tmp))
            try:
                log(f"[{store}] server on {server.base_url}")
                server.start()
                headers = {"authorization": f"Bearer {TOKEN}"}
                with httpx2.Client(
                    base_url=server.base_url, headers=headers, timeout=REQUEST_TIMEOUT
                ) as client:
                    plan = make_plan(client, engine, spec, args)
                    rows = build_rows(spec, plan)
                    for row in rows:
                        log(f"[{store}] {row.name}: {len(row.requests)} x {args.repeat} ...")
                        run_row(client, row, args.repeat)
            except Exception:
                log(f"--- server log ---\n{server.log_tail()}")
                raise
            finally:
                load_after = os.getloadavg()
                server.stop()
        log(f"[{store}] query plans ...")
        statements = collect_statements(engine, spec, plan)
        explain(engine, statements, is_sqlite=sqlite_path(url) is not None)
    finally:
        engine.dispose()
    by_key = {statement.key: statement for statement in statements}
    for row in rows:
        if row.explain_key in by_key:
            row.index = index_of(by_key[row.explain_key].plan)
    samples = server.rss_samples_kib or [0]
    rss = {
        "idle_mib": round(server.idle_rss_kib / 1024, 1),
        "max_sampled_mib": round(max(samples) / 1024, 1),
        "peak_vmhwm_mib": round(server.peak_rss_kib / 1024, 1),
        "samples": len(server.rss_samples_kib),
    }
    summaries = [row.summary() for row in rows]
    targets = {row["name"]: row["within"] for row in summaries if row["target_ms"] is not None}
    targets["server peak RSS"] = rss["peak_vmhwm_mib"] <= TARGET_RSS_MIB
    return {
        "store": store,
        "database": make_safe(url),
        "seeding": seeding,
        "rows": summaries,
        "rss": rss,
        # Other work on the machine skews the figures: the 1-minute load before and after.
        "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
        "statements": [statement.as_dict() for statement in statements],
        "targets": targets,
        "passed": all(targets.values()),
    }


def make_safe(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


# --- Report --------------------------------------------------------------------------------------


def _verdict(row: dict[str, Any]) -> str:
    if row["within"] is None:
        return "info"
    if row["target_ms"] is not None:
        return "PASS" if row["within"] else "FAIL"
    return "(within)" if row["within"] else "(over)"


def print_report(runs: list[dict[str, Any]]) -> None:
    header = (
        f"{'store':<9}{'request':<41}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}"
        f"{'bound':>9}  {'verdict':<9}index (EXPLAIN)"
    )
    print(header)
    print("-" * (len(header) + 24))
    for run in runs:
        for row in run["rows"]:
            bound = row["target_ms"] or row["info_bound_ms"]
            print(
                f"{run['store']:<9}{row['name']:<41}{row['n']:>6}{row['p50_ms']:>9.2f}"
                f"{row['p95_ms']:>9.2f}{row['max_ms']:>9.2f}"
                f"{(f'<={bound:g}' if bound else '-'):>9}  {_verdict(row):<9}{row['index'] or ''}"
            )
        rss = run["rss"]
        ok = run["targets"]["server peak RSS"]
        print(
            f"{run['store']:<9}{'server RSS (VmHWM peak)':<41}{'':>6}"
            f"{'idle ' + str(rss['idle_mib']):>18}{rss['peak_vmhwm_mib']:>9.1f}"
            f"{f'<={TARGET_RSS_MIB:g}':>9}  {'PASS' if ok else 'FAIL':<9}MiB"
        )
        seeding = run["seeding"]
        done = f"seeded in {seeding['seconds']} s" if seeding["seeded"] else "already seeded"
        print(f"{run['store']:<9}{run['database']} ({seeding['events']:,} events, {done})")
        before, after = run["load_average_1m"]
        print(f"{run['store']:<9}load average (1 min) {before} before, {after} after the requests")
    print()
    for run in runs:
        print(f"=== {run['store']}: the SQL behind the requests, and its plan ===")
        for statement in run["statements"]:
            print(
                f"\n-- {statement['key']}: {statement['sql_ms']} ms alone, {statement['rows']} rows"
            )
            print(f"   {_compact(statement['sql'])}")
            print(f"   params: {statement['params']}")
            for line in statement["plan"]:
                print(f"   | {line}")
        print()


# --- Main ----------------------------------------------------------------------------------------


class Timeout(Exception):
    pass


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if signum == signal.SIGALRM:
        raise Timeout("the run took longer than --timeout")
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--sqlite-path", default=DEFAULT_SQLITE)
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="PostgreSQL URL with its database")
    parser.add_argument("--events", type=int, default=Spec.events)
    parser.add_argument("--jobs", type=int, default=Spec.jobs)
    parser.add_argument("--rooms", type=int, default=Spec.rooms)
    parser.add_argument("--big-job-events", type=int, default=Spec.big_job_events)
    parser.add_argument("--chunk", type=int, default=5000, help="rows per seeding transaction")
    parser.add_argument("--reset", action="store_true", help="seed again from an empty database")
    parser.add_argument("--sample", type=int, default=20, help="random jobs (and rooms) timed")
    parser.add_argument("--sample-seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=50, help="timed rounds over the sample")
    parser.add_argument(
        "--type-depth", type=int, default=100_000, help="events before the event_type deep page"
    )
    parser.add_argument("--timeout", type=int, default=3600, help="seconds for the whole run")
    args = parser.parse_args(argv)
    spec = Spec(args.events, args.jobs, args.rooms, args.big_job_events)
    if spec.events_of(spec.jobs - 1) < 200:
        parser.error("need at least 200 events per job (--events / --jobs)")
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(signum, _on_signal)
    signal.alarm(args.timeout)
    started = datetime.now(UTC)
    try:
        runs = [run_store(store, spec, args) for store in stores]
    finally:
        signal.alarm(0)
    print_report(runs)

    RESULTS.mkdir(exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    output = RESULTS / f"query-{stamp}.json"
    report = {
        "time": stamp,
        "spec": {
            "events": spec.events,
            "jobs": spec.jobs,
            "rooms": spec.rooms,
            "big_job_events": spec.big_job_events,
            "seed": spec.seed,
        },
        "load": {
            "sample": args.sample,
            "repeat": args.repeat,
            "warmup_rounds": WARMUP_ROUNDS,
            "client": "httpx2, one keep-alive connection, one request at a time",
        },
        "targets": {
            "page_p50_ms": TARGET_PAGE_MS,
            "job_view_p50_ms": TARGET_JOB_MS,
            "peak_rss_mib": TARGET_RSS_MIB,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
        },
        "runs": runs,
    }
    output.write_text(json.dumps(report, indent=2) + "\n")
    passed = all(run["passed"] for run in runs)
    print(f"{'PASS' if passed else 'FAIL'}; figures in {output.relative_to(ROOT)}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

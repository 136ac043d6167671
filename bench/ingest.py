"""Ingest throughput: the receiver (verify + decode + group commit) against a bare Starlette app.

Run by hand, never by CI, from the project root:

    .venv/bin/python bench/ingest.py                      # SQLite (the default store)
    .venv/bin/python bench/ingest.py --store postgres     # PostgreSQL on 127.0.0.1:5432
    .venv/bin/python bench/ingest.py --store both --connections 32 --duration 10

For each store it starts, one at a time, on free 127.0.0.1 ports:

1. ``bench/bare_app.py`` (reads the body, answers 200; same uvicorn options as ``serve``), and
2. the receiver, ``metastudio-receiver serve`` (through ``bench/serve_receiver.py``, which only
   adds a note of the group-commit batch sizes at shutdown), with one MSS_A endpoint and a fresh
   database: a SQLite file in a temporary folder, or a PostgreSQL database created for the run
   and dropped afterwards (``--pg-url`` names the server; trust auth is assumed).

Each server gets a 2 s warm-up, then ``wrk -t2 -c32 -d10s --latency`` POSTing distinct, valid
callback bodies (``bench/loadgen.py``) to a URL signed once before the run (the signature covers
URL and time, not the body; the bench endpoint has a one-hour tolerance). The server's RSS is
sampled every 100 ms and its peak (VmHWM) read at the end. Afterwards the rows of the measured run
are counted and compared with the 2xx answers wrk saw (the store may hold up to one in-flight
request per connection more: wrk does not count requests cut off at the end of the run).

On PostgreSQL the receiver is also measured with ``serve --workers 2`` (``--workers N``; each
worker group-commits on its own), against a fresh database of its own.

It prints one table and writes the figures to ``bench/results/ingest-<time>.json``. The targets
(issue: ingest CPU and every core), on one worker with SQLite: server CPU <= 120 us per delivery,
receiver req/s >= 30 % of bare, p99 <= 25 ms, peak RSS <= 150 MiB; on PostgreSQL, two workers
give >= 1.6x one worker's req/s (its one-worker figures are reported, not judged). The
group-commit batch sizes of every worker are summed into a histogram. Exit status 0 when every
target and check passes, 1 otherwise.

Beside the targets it reports the server's CPU time per request (user + system, from /proc), and
where the machine's CPU went during each run, in cores: the server, the database's backends
(PostgreSQL), wrk, and everything else. wrk shares the machine with the server, so a busy
neighbour changes both req/s figures; a warning is printed when "other" exceeds 0.25 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from loadgen import WrkResult, lua_script, run_wrk
from procs import CpuUse, Server, free_port, measure_cpu
from sqlalchemy.engine import make_url

from receiver.protocol.signing import AuthType, sign_request

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"

# Targets (issue: ingest CPU and every core), checked on one worker with SQLite, the default
# store; PostgreSQL gets the same figures, and its two-worker run is checked against one worker.
MIN_RATIO = 0.30
MAX_P99_MS = 25.0
MAX_RSS_MIB = 150.0
MAX_CPU_US = 120.0
MIN_WORKER_GAIN = 1.6

ENDPOINT = "bench"
REGISTERED_URL = f"https://hooks.example.com/callbacks/{ENDPOINT}"
KEY = secrets.token_urlsafe(24)  # 32 characters, MetaStudio's longest key
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
WARMUP_SECONDS = 2
# Other programs using more than this many cores during a run make its figures doubtful.
BUSY_MACHINE_CORES = 0.25


# --- Servers -------------------------------------------------------------------------------------


def bare_server(workdir: Path) -> Server:
    port = free_port()
    return Server(
        name="bare",
        command=[sys.executable, str(BENCH / "bare_app.py"), "--port", str(port)],
        port=port,
        workdir=workdir,
        ready_method="POST",
        ready_path=f"/callbacks/{ENDPOINT}",
        cwd=ROOT,
    )


def receiver_server(
    workdir: Path, database_url: str, workers: int = 1, store_writer: str = "process"
) -> Server:
    port = free_port()
    config = workdir / "receiver.toml"
    config.write_text(
        f"database_url = {json.dumps(database_url)}\n"
        # Only when not the default: profile_ingest.py --source runs older checkouts too.
        + (f"store_writer = {json.dumps(store_writer)}\n" if store_writer != "process" else "")
        + "[[endpoints]]\n"
        f'name = "{ENDPOINT}"\n'
        f'registered_url = "{REGISTERED_URL}"\n'
        'auth_type = "MSS_A"\n'
        f'keys = ["{KEY}"]\n'
        # One signed URL carries the whole run, warm-up included.
        "tolerance_seconds = 3600\n"
    )
    name = "receiver" if workers == 1 else f"receiver-w{workers}"
    if store_writer != "process":
        name += f"-{store_writer}"
    env = dict(os.environ, BENCH_BATCH_STATS=str(workdir / f"batches-{name}.json"))
    env.pop("RECEIVER_DATABASE_URL", None)  # it would override database_url
    return Server(
        name=name,
        command=[
            *(sys.executable, str(BENCH / "serve_receiver.py"), "serve"),
            *("--config", str(config), "--host", "127.0.0.1", "--port", str(port)),
            *(("--workers", str(workers)) if workers != 1 else ()),
        ],
        port=port,
        workdir=workdir,
        ready_method="GET",
        ready_path="/healthz",
        cwd=ROOT,
        env=env,
    )


# --- Stores --------------------------------------------------------------------------------------


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def database(store: str, workdir: Path, pg_server: str, *, tag: str = "ingest") -> Iterator[str]:
    """A fresh, empty database URL for one run; a PostgreSQL one is dropped afterwards.
    ``tag`` names the benchmark in the PostgreSQL database's name."""
    if store == "sqlite":
        # A file of its own each time: runs in one work folder must not share (a store grown by
        # the run before is slower, and a new destination would start with its backlog).
        path = workdir / f"{tag}-{secrets.token_hex(4)}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                leftover.unlink(missing_ok=True)
        return
    name = f"bench_{tag}_{secrets.token_hex(6)}"
    admin = _libpq(make_url(pg_server).set(database="postgres").render_as_string(False))
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_backend_pids(database_url: str) -> list[int]:
    """The PostgreSQL backends serving ``database_url`` (other than this query's own)."""
    query = (
        "SELECT pid FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    with psycopg.connect(_libpq(database_url), connect_timeout=5) as conn:
        return [pid for (pid,) in conn.execute(query).fetchall()]


def count_rows(database_url: str, tag: str) -> dict[str, Any]:
    """Deliveries by status, and the events of the measured run (job ids start with ``tag``)."""
    by_status = "SELECT status, count(*) FROM deliveries GROUP BY status"
    measured = "SELECT count(*) FROM events WHERE job_id LIKE %s"
    if database_url.startswith("sqlite:"):
        path = make_url(database_url).database
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            statuses = dict(conn.execute(by_status).fetchall())
            (run,) = conn.execute(measured.replace("%s", "?"), (tag + "%",)).fetchone()
    else:
        with psycopg.connect(_libpq(database_url), connect_timeout=5) as conn:
            statuses = dict(conn.execute(by_status).fetchall())
            row = conn.execute(measured, (tag + "%",)).fetchone()
            run = row[0] if row else 0
    return {"deliveries_by_status": statuses, "measured_run_events": int(run)}


# --- One measurement -----------------------------------------------------------------------------


@dataclass
class Measurement:
    server: str
    wrk: WrkResult
    peak_rss_mib: float
    max_sampled_rss_mib: float
    cpu: CpuUse
    server_us_per_request: float
    writer_us_per_request: float  # the part of it spent in the store's writer process
    rows: dict[str, Any] | None = None
    batches: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "wrk": self.wrk.as_dict(),
            "peak_rss_mib": self.peak_rss_mib,
            "max_sampled_rss_mib": self.max_sampled_rss_mib,
            "cpu_cores": asdict(self.cpu),
            "server_cpu_us_per_request": self.server_us_per_request,
            "writer_process_cpu_us_per_request": self.writer_us_per_request,
            "rows": self.rows,
            "batches": self.batches,
        }


def _signed_path() -> str:
    url, _headers = sign_request(
        registered_url=REGISTERED_URL, auth_type=AuthType.MSS_A, key=KEY, when=time.time()
    )
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def measure(
    server: Server,
    args: argparse.Namespace,
    script: Path,
    store_pids: Callable[[], list[int]] = list,
) -> tuple[Measurement, str]:
    """Warm up, run the measured load, stop the server. (figures, run tag)."""
    url = f"http://127.0.0.1:{server.port}{_signed_path()}"
    load = {"script": script, "threads": args.threads, "connections": args.connections}
    try:
        server.start()
        run_wrk(url=url, tag=secrets.token_hex(4), seconds=WARMUP_SECONDS, **load)
        tag = secrets.token_hex(4)
        assert server.proc is not None
        (result, report), cpu = measure_cpu(
            server.proc.pid,
            lambda: run_wrk(url=url, tag=tag, seconds=args.duration, **load),
            store_pids(),  # after the warm-up: the receiver's connections are open by then
        )
    except Exception:
        print(f"--- {server.name} log ---\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        server.stop()
    (server.workdir / f"{server.name}.wrk.txt").write_text(report)
    samples = server.rss_samples_kib or [0]
    measurement = Measurement(
        server=server.name,
        wrk=result,
        peak_rss_mib=round(server.peak_rss_kib / 1024, 1),
        max_sampled_rss_mib=round(max(samples) / 1024, 1),
        cpu=cpu,
        server_us_per_request=round(cpu.server_seconds / max(result.requests, 1) * 1e6, 1),
        writer_us_per_request=round(cpu.writer_seconds / max(result.requests, 1) * 1e6, 1),
    )
    return measurement, tag


def batch_summary(path: Path) -> dict[str, Any] | None:
    """Group-commit batch sizes over the server's life, from every worker's file
    (``<path>.<pid>``, bench/serve_receiver.py): count, mean, percentiles, and a histogram."""
    sizes: list[int] = []
    batches = 0
    for part in sorted(path.parent.glob(path.name + ".*")):
        try:
            stats = json.loads(part.read_text())
        except (OSError, ValueError):
            continue
        sizes += stats.get("sizes", [])
        batches += stats.get("batches", 0)
    if not sizes:
        return None
    sizes.sort()
    bounds = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    histogram: dict[str, int] = {}
    low = 1
    for high in bounds:
        count = sum(1 for size in sizes if low <= size <= high)
        if count:
            histogram[f"{low}-{high}" if low != high else str(low)] = count
        low = high + 1
    return {
        "batches": batches,
        "sizes_kept": len(sizes),  # the writer keeps the most recent sizes only
        "mean": round(sum(sizes) / len(sizes), 1),
        "p50": sizes[len(sizes) // 2],
        "p99": sizes[min(len(sizes) - 1, int(len(sizes) * 0.99))],
        "max": sizes[-1],
        "histogram": histogram,
    }


def run_store(store: str, args: argparse.Namespace, script: Path) -> dict[str, Any]:
    """Bare, then the receiver, the receiver with its store writer on a thread (the figures the
    writer process is judged against), and on PostgreSQL the receiver with two workers, minutes
    apart at most; the figures and verdicts of one store."""
    with tempfile.TemporaryDirectory(prefix=f"bench-ingest-{store}-") as tmp:
        workdir = Path(tmp)
        print(f"[{store}] bare endpoint ...", file=sys.stderr, flush=True)
        bare, _ = measure(bare_server(workdir), args, script)
        runs: dict[str, Measurement] = {}
        plan = [(1, "process"), (1, "thread")]
        if store == "postgres" and args.workers > 1:
            plan.append((args.workers, "process"))
        for workers, writer in plan:
            with database(store, workdir, args.pg_url) as url:
                server = receiver_server(workdir, url, workers, writer)
                kind = server.name
                print(f"[{store}] {kind} ...", file=sys.stderr, flush=True)
                backends = functools.partial(pg_backend_pids, url) if store == "postgres" else list
                measured, tag = measure(server, args, script, backends)
                measured.rows = count_rows(url, tag)
            measured.batches = batch_summary(workdir / f"batches-{kind}.json")
            runs[kind] = measured
    run = {"store": store, "bare": bare, **runs}
    return {**run, **verdicts(store, bare, runs, args)}


def _checks(bare: Measurement, receiver: Measurement, args: argparse.Namespace) -> dict[str, bool]:
    assert receiver.rows is not None
    extra = receiver.rows["measured_run_events"] - receiver.wrk.answered_2xx
    statuses = receiver.rows["deliveries_by_status"]
    return {
        "no_non_2xx": bare.wrk.non_2xx == 0 and receiver.wrk.non_2xx == 0,
        "no_socket_errors": not any(bare.wrk.socket_errors.values())
        and not any(receiver.wrk.socket_errors.values()),
        # Stored = answered 2xx, plus at most one in-flight request per connection.
        "rows_match_2xx": 0 <= extra <= args.connections,
        "all_rows_stored": set(statuses) <= {"stored"},
    }


def verdicts(
    store: str, bare: Measurement, runs: dict[str, Measurement], args: argparse.Namespace
) -> dict[str, Any]:
    one = runs["receiver"]
    ratio = one.wrk.requests_per_second / bare.wrk.requests_per_second
    checks: dict[str, bool] = {}
    for kind, measured in runs.items():
        checks.update({f"{kind}: {name}": ok for name, ok in _checks(bare, measured, args).items()})
    targets = {
        "ratio": ratio >= MIN_RATIO,
        "cpu": one.server_us_per_request <= MAX_CPU_US,
        "p99": one.wrk.latency_ms["99"] <= MAX_P99_MS,
        "rss": one.peak_rss_mib <= MAX_RSS_MIB,
    }
    result: dict[str, Any] = {"ratio": round(ratio, 4)}
    many = [kind for kind in runs if kind.startswith("receiver-w")]
    if many:
        gain = runs[many[0]].wrk.requests_per_second / one.wrk.requests_per_second
        result["worker_gain"] = round(gain, 3)
        targets["worker_gain"] = gain >= MIN_WORKER_GAIN
    # The one-worker targets are SQLite's (the default store); PostgreSQL reports the figures.
    judged = (
        targets if store == "sqlite" else {k: v for k, v in targets.items() if k == "worker_gain"}
    )
    result.update(
        checks=checks,
        targets=targets,
        passed=all(checks.values()) and all(judged.values()),
    )
    return result


# --- Report --------------------------------------------------------------------------------------


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _servers(run: dict[str, Any]) -> list[str]:
    return [kind for kind in run if kind == "bare" or kind.startswith("receiver")]


def print_table(runs: list[dict[str, Any]]) -> None:
    header = (
        f"{'store':<9}{'server':<17}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'peak RSS':>11}"
        f"{'CPU us/req':>11}{'of it writer':>13}{'cores srv/db/wrk/other':>24}"
        f"{'non-2xx':>9}{'2xx':>9}{'stored':>9}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        for kind in _servers(run):
            m: Measurement = run[kind]
            rows = str(m.rows["measured_run_events"]) if m.rows else "-"
            cores = f"{m.cpu.server:.2f}/{m.cpu.store:.2f}/{m.cpu.load:.2f}/{m.cpu.other:.2f}"
            print(
                f"{run['store']:<9}{kind:<17}{m.wrk.requests_per_second:>8.0f}"
                f"{m.wrk.latency_ms['50']:>8.2f}{m.wrk.latency_ms['99']:>8.2f}"
                f"{m.peak_rss_mib:>7.1f} MiB{m.server_us_per_request:>11.1f}"
                f"{m.writer_us_per_request or '-':>13}{cores:>24}"
                f"{m.wrk.non_2xx:>9}{m.wrk.answered_2xx:>9}{rows:>9}"
            )
        r: Measurement = run["receiver"]
        t, c = run["targets"], run["checks"]
        judged = "" if run["store"] == "sqlite" else " (reported; judged on SQLite)"
        print(
            f"{'':<9}one worker{judged}: ratio {run['ratio'] * 100:.1f}% "
            f"(>= {MIN_RATIO:.0%}: {_mark(t['ratio'])})  "
            f"CPU {r.server_us_per_request:.1f} us/req (<= {MAX_CPU_US:g}: {_mark(t['cpu'])})  "
            f"p99 {r.wrk.latency_ms['99']:.2f} ms (<= {MAX_P99_MS:g}: {_mark(t['p99'])})  "
            f"RSS {r.peak_rss_mib:.1f} MiB (<= {MAX_RSS_MIB:g}: {_mark(t['rss'])})"
        )
        if "worker_gain" in run:
            print(
                f"{'':<9}workers: {run['worker_gain']:.2f}x one worker's req/s "
                f"(>= {MIN_WORKER_GAIN:g}x: {_mark(t['worker_gain'])})"
            )
        failed = [name for name, ok in c.items() if not ok]
        print(f"{'':<9}checks: {'all PASS' if not failed else 'FAIL ' + ', '.join(failed)}")
        for kind in _servers(run)[1:]:
            m = run[kind]
            if m.rows:
                extra = m.rows["measured_run_events"] - m.wrk.answered_2xx
                print(
                    f"{'':<9}{kind}: stored - 2xx = {extra}, "
                    f"statuses {m.rows['deliveries_by_status']}"
                )
            if m.batches:
                print(f"{'':<9}{kind} group commit batches (whole server life): {m.batches}")
        print()


def write_json(runs: list[dict[str, Any]], args: argparse.Namespace) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS / f"ingest-{stamp}.json"
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout

    document = {
        "time": stamp,
        "load": {
            "tool": wrk_version.split("\n")[0].strip(),
            "threads": args.threads,
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": WARMUP_SECONDS,
        },
        "targets": {
            "min_ratio": MIN_RATIO,
            "max_cpu_us": MAX_CPU_US,
            "max_p99_ms": MAX_P99_MS,
            "max_rss_mib": MAX_RSS_MIB,
            "min_worker_gain": MIN_WORKER_GAIN,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
            "python": platform.python_version(),
        },
        "runs": [
            {k: (v.as_dict() if isinstance(v, Measurement) else v) for k, v in run.items()}
            for run in runs
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Receiver ingest vs a bare Starlette endpoint, under wrk."
    )
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help=f"PostgreSQL server ({DEFAULT_PG})")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="PostgreSQL: also run the receiver with this many workers (default 2; 1: skip)",
    )
    args = parser.parse_args(argv)
    if args.threads < 1 or args.duration < 1:
        parser.error("--threads and --duration must be at least 1")
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    return args


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: servers stop, databases drop


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        script = Path(tmp) / "callbacks.lua"
        script.write_text(lua_script())
        runs = [run_store(store, args, script) for store in stores]
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency, distinct bodies; "
        f"{os.cpu_count()} CPUs shared by wrk and the server\n"
    )
    print_table(runs)
    busy = max(run[kind].cpu.other for run in runs for kind in _servers(run))
    if busy > BUSY_MACHINE_CORES:
        print(
            f"WARNING: other programs used up to {busy:.2f} cores during the runs (column "
            "'other'); the figures are not representative of an idle machine. Run it again."
        )
    print(f"figures written to {write_json(runs, args).relative_to(ROOT)}")
    return 0 if all(run["passed"] for run in runs) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

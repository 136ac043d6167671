"""Soak: the receiver for a long stretch at half its maximum ingest rate; nothing may creep.

Run by hand, never by CI, from the project root:

    .venv/bin/python bench/soak.py                          # SQLite, 10 minutes, rate measured
    .venv/bin/python bench/soak.py --store postgres         # PostgreSQL on 127.0.0.1:5432
    .venv/bin/python bench/soak.py --minutes 2 --segment 30 --rate 1500   # a short trial

The target (issue: soak): 10 minutes at half the measured maximum ingest rate, RSS flat, p99
latency flat, no file descriptors leaked.

The receiver is started as ``bench/ingest.py`` starts it (``bench/serve_receiver.py``, one MSS_A
endpoint, a fresh SQLite file or a PostgreSQL database created for the run and dropped
afterwards), and gets the same 2 s warm-up. Unless ``--rate`` names the target, an unthrottled
``wrk`` run of ``--max-seconds`` measures the maximum and the target is half of it. The load is
then a series of ``wrk --latency`` segments of ``--segment`` seconds with the bodies of
``bench/loadgen.py`` and a pacer added to its Lua script: ``delay()`` gives each request of a wrk
thread the next free slot of a fixed schedule (thread rate = target / threads), so the arrival
rate stays at the target whatever the latency, and falls below it only if every connection is
busy. After each segment the script waits 1 s (wrk's connections are closed by then) and reads
from ``/proc`` the server's RSS (VmRSS) and peak (VmHWM), its open file descriptors and its
threads, and, for SQLite, the sizes of the database and ``-wal`` files (PostgreSQL: the
database's size). The RSS sampled every 100 ms during the segment gives its maximum.

Verdicts (exit status 0 only when all pass), each against the state after the first segment,
when the server is warm and its pools are full:

- RSS flat: RSS after the last segment <= RSS after the first + max(10 %, 15 MiB).
- p99 flat: the last segment's p99 <= max(2 x the first's, the first's + 5 ms); p99 on a shared
  2-core machine moves by a few ms from one minute to the next, a leak or a growing queue moves it
  by more and keeps moving it.
- fds: the open descriptors after the last segment = those after the first, +- 4 (pooled
  database connections may be opened or recycled).
- load: every segment reached >= 90 % of the target rate (otherwise it was no soak at that rate).
- answers: no non-2xx answers and no socket errors in any segment.
- rows: each segment stored as many deliveries as it got 2xx answers, plus at most one request
  per connection in flight when wrk stopped; every delivery has the status ``stored``.

It prints one table and writes the figures to ``bench/results/soak-<time>.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from ingest import (
    DEFAULT_PG,
    RESULTS,
    ROOT,
    WARMUP_SECONDS,
    _libpq,
    _signed_path,
    _terminate,
    count_rows,
    database,
    pg_backend_pids,
    receiver_server,
)
from loadgen import WrkResult, lua_script, run_wrk
from procs import CpuUse, Server, measure_cpu, proc_status
from sqlalchemy.engine import make_url

RSS_GROWTH = 0.10
RSS_GROWTH_MIB = 15.0
P99_FACTOR = 2.0
P99_SLACK_MS = 5.0
FD_SLACK = 4
MIN_RATE_SHARE = 0.90
SETTLE_SECONDS = 1.0


def paced_script(rate: float, threads: int) -> str:
    """``bench/loadgen.py``'s script plus a ``delay()`` that holds each wrk thread to its share.

    wrk calls ``delay()`` before every request of a connection and waits that many milliseconds
    (an integer: the fraction is dropped, the schedule stays exact because slots are absolute).
    The clock is CLOCK_MONOTONIC through LuaJIT's ffi: wrk's Lua has no millisecond clock.
    """
    interval_ms = threads * 1000.0 / rate
    return (
        lua_script()
        + f"""
-- Written by bench/soak.py: a fixed schedule of {rate:g} requests/s over all wrk threads.
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} soak_timespec;
int clock_gettime(int clk_id, soak_timespec *tp);
]]
local soak_ts = ffi.new("soak_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, soak_ts)  -- CLOCK_MONOTONIC
  return tonumber(soak_ts.tv_sec) * 1000 + tonumber(soak_ts.tv_nsec) / 1e6
end

local interval_ms = {interval_ms!r}
local next_slot = 0
function delay()
  local now = now_ms()
  local slot = math.max(next_slot, now)  -- a slot missed is not made up with a burst
  next_slot = slot + interval_ms
  return slot - now
end
"""
    )


# --- Readings from /proc and the store -----------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def store_sizes(database_url: str) -> dict[str, int]:
    """Bytes on disk: the SQLite file and its -wal, or the PostgreSQL database."""
    if database_url.startswith("sqlite:"):
        path = Path(str(make_url(database_url).database))
        wal = path.with_name(path.name + "-wal")
        return {
            "db_bytes": path.stat().st_size,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        }
    with psycopg.connect(_libpq(database_url), connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return {"db_bytes": int(row[0]) if row else 0}


@dataclass
class Segment:
    index: int
    tag: str
    wrk: WrkResult
    cpu: CpuUse
    rss_mib: float  # VmRSS SETTLE_SECONDS after the segment
    max_rss_mib: float  # the largest VmRSS sampled during the segment
    hwm_mib: float  # VmHWM, the peak of the server's life so far
    fds: int
    threads: int
    sizes: dict[str, int]
    stored: int | None = None  # events of this segment's bodies found in the store

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["wrk"] = self.wrk.as_dict()
        return data


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


# --- The run -------------------------------------------------------------------------------------


def run_segment(
    server: Server,
    index: int,
    script: Path,
    args: argparse.Namespace,
    database_url: str,
    store_pids: Callable[[], list[int]],
) -> Segment:
    assert server.proc is not None
    pid = server.proc.pid
    tag = secrets.token_hex(4)
    url = f"http://127.0.0.1:{server.port}{_signed_path()}"  # signed afresh: long runs stay valid
    first_sample = len(server.rss_samples_kib)
    (result, _report), cpu = measure_cpu(
        pid,
        lambda: run_wrk(
            url=url,
            script=script,
            tag=tag,
            threads=args.threads,
            connections=args.connections,
            seconds=args.segment,
        ),
        store_pids(),
    )
    time.sleep(SETTLE_SECONDS)
    status = proc_status(pid)
    during = server.rss_samples_kib[first_sample:] or [0]
    return Segment(
        index=index,
        tag=tag,
        wrk=result,
        cpu=cpu,
        rss_mib=mib(status.get("VmRSS", 0)),
        max_rss_mib=mib(max(during)),
        hwm_mib=mib(status.get("VmHWM", 0)),
        fds=open_fds(pid),
        threads=thread_count(pid),
        sizes=store_sizes(database_url),
    )


def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    plain = workdir / "callbacks.lua"
    plain.write_text(lua_script())
    load = {"script": plain, "threads": args.threads, "connections": args.connections}
    count = max(2, math.ceil(args.minutes * 60 / args.segment))
    with database(args.store, workdir, args.pg_url) as url:
        server = receiver_server(workdir, url)
        backends: Callable[[], list[int]] = (
            functools.partial(pg_backend_pids, url) if args.store == "postgres" else list
        )
        segments: list[Segment] = []
        maximum: WrkResult | None = None
        try:
            server.start()
            assert server.proc is not None
            start = {"rss_mib": mib(server.idle_rss_kib), "fds": open_fds(server.proc.pid)}
            start["threads"] = thread_count(server.proc.pid)
            base = f"http://127.0.0.1:{server.port}"
            print(f"[{args.store}] warm-up {WARMUP_SECONDS} s ...", file=sys.stderr, flush=True)
            run_wrk(
                url=base + _signed_path(), tag=secrets.token_hex(4), seconds=WARMUP_SECONDS, **load
            )
            rate = args.rate
            if rate is None:
                print(
                    f"[{args.store}] maximum rate, {args.max_seconds} s unthrottled ...",
                    file=sys.stderr,
                    flush=True,
                )
                maximum, _ = run_wrk(
                    url=base + _signed_path(),
                    tag=secrets.token_hex(4),
                    seconds=args.max_seconds,
                    **load,
                )
                rate = round(maximum.requests_per_second / 2)
            script = workdir / "paced.lua"
            script.write_text(paced_script(rate, args.threads))
            for index in range(1, count + 1):
                print(
                    f"[{args.store}] segment {index}/{count}: {args.segment} s at {rate} req/s ...",
                    file=sys.stderr,
                    flush=True,
                )
                segments.append(run_segment(server, index, script, args, url, backends))
        except Exception:
            print(f"--- receiver log ---\n{server.log_tail()}", file=sys.stderr)
            raise
        finally:
            server.stop()
        rows = [count_rows(url, segment.tag) for segment in segments]
    for segment, counted in zip(segments, rows, strict=True):
        segment.stored = counted["measured_run_events"]
    statuses = rows[-1]["deliveries_by_status"] if rows else {}
    return {
        "store": args.store,
        "rate": rate,
        "maximum": maximum.as_dict() if maximum else None,
        "start": start,
        "segments": segments,
        "deliveries_by_status": statuses,
        **verdicts(segments, rate, statuses, args),
    }


def verdicts(
    segments: list[Segment], rate: float, statuses: dict[str, int], args: argparse.Namespace
) -> dict[str, Any]:
    first, last = segments[0], segments[-1]
    rss_limit = first.rss_mib + max(first.rss_mib * RSS_GROWTH, RSS_GROWTH_MIB)
    p99_first = first.wrk.latency_ms["99"]
    p99_limit = max(p99_first * P99_FACTOR, p99_first + P99_SLACK_MS)
    extra = [(s.stored or 0) - s.wrk.answered_2xx for s in segments]
    checks = {
        "rss_flat": last.rss_mib <= rss_limit,
        "p99_flat": last.wrk.latency_ms["99"] <= p99_limit,
        "fds_flat": abs(last.fds - first.fds) <= FD_SLACK,
        "rate_held": all(s.wrk.requests_per_second >= MIN_RATE_SHARE * rate for s in segments),
        "no_non_2xx": all(s.wrk.non_2xx == 0 for s in segments),
        "no_socket_errors": not any(any(s.wrk.socket_errors.values()) for s in segments),
        "rows_match_2xx": all(0 <= e <= args.connections for e in extra),
        "all_rows_stored": set(statuses) <= {"stored"},
    }
    return {
        "limits": {
            "rss_mib": round(rss_limit, 1),
            "p99_ms": round(p99_limit, 2),
            "fds": [first.fds - FD_SLACK, first.fds + FD_SLACK],
            "min_rate": round(MIN_RATE_SHARE * rate, 1),
        },
        "stored_minus_2xx": extra,
        "checks": checks,
        "passed": all(checks.values()),
    }


# --- Report --------------------------------------------------------------------------------------


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_report(run: dict[str, Any], args: argparse.Namespace) -> None:
    maximum = run["maximum"]
    source = (
        f"half of the {maximum['requests_per_second']:.0f} req/s measured unthrottled"
        if maximum
        else "--rate"
    )
    print(
        f"[{run['store']}] target {run['rate']} req/s ({source}); wrk -t{args.threads} "
        f"-c{args.connections}, {len(run['segments'])} segments of {args.segment} s; "
        f"{os.cpu_count()} CPUs shared by wrk and the server\n"
    )
    sqlite = run["store"] == "sqlite"
    header = (
        f"{'seg':>3}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'non2xx':>7}{'sockerr':>8}"
        f"{'RSS':>7}{'max RSS':>8}{'HWM':>7}{'fds':>5}{'thr':>4}"
        f"{'db MiB':>8}{'wal MiB' if sqlite else '':>8}{'cores srv/db/other':>19}"
        f"{'2xx':>8}{'stored':>8}"
    )
    print(header)
    print("-" * len(header))
    start = run["start"]
    print(
        f"{'0':>3}{'(started, idle)':>31}{start['rss_mib']:>15.1f}{'':>15}"
        f"{start['fds']:>5}{start['threads']:>4}"
    )
    for s in run["segments"]:
        wal = f"{s.sizes.get('wal_bytes', 0) / 2**20:>8.1f}" if sqlite else f"{'':>8}"
        print(
            f"{s.index:>3}{s.wrk.requests_per_second:>8.0f}{s.wrk.latency_ms['50']:>8.2f}"
            f"{s.wrk.latency_ms['99']:>8.2f}{s.wrk.non_2xx:>7}{sum(s.wrk.socket_errors.values()):>8}"
            f"{s.rss_mib:>7.1f}{s.max_rss_mib:>8.1f}{s.hwm_mib:>7.1f}{s.fds:>5}{s.threads:>4}"
            f"{s.sizes['db_bytes'] / 2**20:>8.1f}{wal}"
            f"{f'{s.cpu.server:.2f}/{s.cpu.store:.2f}/{s.cpu.other:.2f}':>19}{s.wrk.answered_2xx:>8}{s.stored:>8}"
        )
    first, last = run["segments"][0], run["segments"][-1]
    limits, checks = run["limits"], run["checks"]
    print(
        f"\nRSS: {start['rss_mib']:.1f} MiB at start, {first.rss_mib:.1f} after segment 1, "
        f"{last.rss_mib:.1f} at the end (<= {limits['rss_mib']}: {_mark(checks['rss_flat'])})"
    )
    print(
        f"p99: {first.wrk.latency_ms['99']:.2f} ms in segment 1, {last.wrk.latency_ms['99']:.2f} "
        f"in the last (<= {limits['p99_ms']}: {_mark(checks['p99_flat'])})"
    )
    print(
        f"fds: {start['fds']} at start, {first.fds} after segment 1, {last.fds} at the end "
        f"(within {limits['fds']}: {_mark(checks['fds_flat'])}); threads {first.threads} -> "
        f"{last.threads}"
    )
    print(f"rate: every segment >= {limits['min_rate']} req/s: {_mark(checks['rate_held'])}")
    answers = ("no_non_2xx", "no_socket_errors", "rows_match_2xx", "all_rows_stored")
    failed = [name for name in answers if not checks[name]]
    print(
        f"answers and rows: {'all PASS' if not failed else 'FAIL ' + ', '.join(failed)} "
        f"(stored - 2xx per segment {run['stored_minus_2xx']}, statuses "
        f"{run['deliveries_by_status']})"
    )
    busy = max(s.cpu.other for s in run["segments"])
    if busy > 0.25:
        print(
            f"WARNING: other programs used up to {busy:.2f} cores during a segment; latency and "
            "rate figures are not those of an idle machine."
        )


def write_json(run: dict[str, Any], args: argparse.Namespace) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS / f"soak-{stamp}.json"
    document = {
        "time": stamp,
        "arguments": {k: v for k, v in vars(args).items() if k != "pg_url"},
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
            "python": platform.python_version(),
        },
        **{k: v for k, v in run.items() if k != "segments"},
        "segments": [s.as_dict() for s in run["segments"]],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Receiver soak at half its maximum ingest rate.")
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help=f"PostgreSQL server ({DEFAULT_PG})")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the paced load")
    parser.add_argument("--segment", type=int, default=60, help="seconds per wrk segment")
    parser.add_argument("--rate", type=int, help="target req/s (default: half the measured max)")
    parser.add_argument("--max-seconds", type=int, default=10, help="unthrottled run for the max")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    args = parser.parse_args(argv)
    if args.segment < 5 or args.minutes <= 0 or args.max_seconds < 1 or args.threads < 1:
        parser.error("--segment must be >= 5, --minutes > 0, --max-seconds and --threads >= 1")
    if args.rate is not None and args.rate < args.threads:
        parser.error("--rate must be at least --threads")
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix=f"bench-soak-{args.store}-") as tmp:
        run = soak(args, Path(tmp))
    print_report(run, args)
    print(f"figures written to {write_json(run, args).relative_to(ROOT)}")
    return 0 if run["passed"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

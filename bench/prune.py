"""Retention under load: a receiver prunes half of 1,000,000 stored events while it takes callbacks.

Run by hand, never by CI, from the project root (wrk on PATH):

    .venv/bin/python bench/prune.py                       # SQLite, the defaults below
    .venv/bin/python bench/prune.py --store postgres      # the local PostgreSQL
    .venv/bin/python bench/prune.py --events 200000 --seconds 15    # a quicker look

The store is seeded once with ``bench/seed.py`` (``--events`` events over October 2026) and
copied for each run (the prune is destructive): the SQLite file is copied, a PostgreSQL database
is made from the seeded one as a template. Then, in one run, on the same machine and with the
same load (wrk, ``--connections`` connections each waiting ``--delay-ms`` between requests: a
steady rate, not all the server can take):

1. ``without``: the receiver with no retention, ``--seconds`` of callbacks;
2. ``during``: the receiver restarted with ``retention_days`` set so that everything received
   before 2026-10-16 (about half) goes, archived to ``archive_dir``; the load starts once its
   periodic prune has deleted its first rows and runs ``--seconds`` (the prune must still be
   running when it ends, or the row says so); then the prune is let finish;
3. ``without`` again, so that a drift of the machine shows.

It prints, per phase, requests/s, p50/p99 latency and the server's CPU per request (the prune
runs inside the server, in a thread: phase 2's CPU includes it), the ratio of p99 during the
prune to the mean p99 without, the prune's time, and the store's size before and after (the
SQLite file with its WAL, or ``pg_database_size``). Targets (issue "Keep the store bounded"):
p99 during a prune <= 2x without; the SQLite file <= 60 % of its size after pruning half.
Figures go to ``bench/results/prune-<time>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT)]

from loadgen import lua_script, run_wrk  # noqa: E402
from procs import Server, free_port, measure_cpu  # noqa: E402
from seed import Spec, ensure_seeded, libpq  # noqa: E402

from receiver.protocol.signing import AuthType, sign_request  # noqa: E402

KEY = "bench-prune-key-0123456789abcdef"
REGISTERED_URL = "https://hooks.example.com/callbacks/bench"
HALF = datetime(2026, 10, 16, tzinfo=UTC)
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
WARMUP_SECONDS = 3.0
SERVE = (sys.executable, "-m", "receiver", "serve")
PRUNE = (sys.executable, "-m", "receiver", "prune")


def _signed_path() -> str:
    url, _ = sign_request(
        registered_url=REGISTERED_URL, auth_type=AuthType.MSS_A, key=KEY, when=time.time()
    )
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _store_bytes(url: str) -> int:
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0


def _events(url: str) -> int:
    if url.startswith("sqlite:///"):
        import sqlite3

        # Closed at once: a connection left open would keep the WAL from being folded back
        # and removed when the receiver closes its own, and the size would count it.
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
        return int(row[0]) if row else 0


def prepare_store(args: argparse.Namespace, workdir: Path, name: str = "receiver") -> str:
    """A fresh copy of the seeded store for this run; its URL."""
    spec = Spec(events=args.events, jobs=1000, rooms=100, big_job_events=0)
    if args.store == "sqlite":
        seeded = Path(args.seed_cache or f"/tmp/rcv-bench-prune-{args.events}.db")
        ensure_seeded(str(seeded), spec, log=lambda line: print(line, file=sys.stderr))
        copy = workdir / f"{name}.db"
        shutil.copyfile(seeded, copy)
        return f"sqlite:///{copy}"
    seeded_name = f"rcv_bench_prune_{args.events}"
    ensure_seeded(f"{PG_SERVER}/{seeded_name}", spec, log=lambda line: print(line, file=sys.stderr))
    name = f"rcv_bench_prune_run_{secrets.token_hex(3)}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{seeded_name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_store(url: str) -> None:
    if url.startswith("postgresql"):
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server(workdir: Path, url: str, name: str, retention_days: float | None) -> Server:
    port = free_port()
    config = workdir / f"{name}.toml"
    lines = [f"database_url = {json.dumps(url)}", 'api_tokens = ["bench-token"]']
    if retention_days is not None:
        lines += [
            f"retention_days = {retention_days!r}",
            f"archive_dir = {json.dumps(str(workdir / 'archive'))}",
            "prune_interval_seconds = 5",
        ]
    lines += [
        "[[endpoints]]",
        'name = "bench"',
        f'registered_url = "{REGISTERED_URL}"',
        'auth_type = "MSS_A"',
        f'keys = ["{KEY}"]',
        "tolerance_seconds = 3600",
    ]
    config.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    return Server(
        name=name,
        command=[*SERVE, "--config", str(config), "--port", str(port)],
        port=port,
        workdir=workdir,
        ready_method="GET",
        ready_path="/healthz",
        cwd=ROOT,
        env=env,
    )


def metric(base_url: str, name: str) -> float:
    with urllib.request.urlopen(base_url + "/metrics", timeout=5) as answer:  # noqa: S310
        for line in answer.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


PRUNED = 'receiver_pruned_rows_total{table="events"}'
RAN = 'receiver_prune_runs_total{outcome="ran"}'


def load(srv: Server, args: argparse.Namespace, script: Path, phase: str) -> dict[str, Any]:
    url = srv.base_url + _signed_path()
    assert srv.proc is not None
    (result, report), cpu = measure_cpu(
        srv.proc.pid,
        lambda: run_wrk(
            url=url,
            script=script,
            tag=secrets.token_hex(4),
            threads=1,
            connections=args.connections,
            seconds=args.seconds,
        ),
    )
    (srv.workdir / f"{phase}.wrk.txt").write_text(report)
    return {
        "phase": phase,
        "requests": result.requests,
        "rps": round(result.requests_per_second, 1),
        "p50_ms": result.latency_ms["50"],
        "p99_ms": result.latency_ms["99"],
        "non_2xx": result.non_2xx,
        "server_us_per_request": round(cpu.server_seconds / max(result.requests, 1) * 1e6, 1),
        "server_cpu": cpu.server,
    }


def phase_without(
    workdir: Path, url: str, args: argparse.Namespace, script: Path, phase: str
) -> dict[str, Any]:
    srv = server(workdir, url, phase, None)
    srv.start()
    try:
        run_wrk(
            url=srv.base_url + _signed_path(),
            script=script,
            tag=secrets.token_hex(4),
            threads=1,
            connections=args.connections,
            seconds=WARMUP_SECONDS,
        )
        return load(srv, args, script, phase)
    finally:
        srv.stop()


def phase_during(workdir: Path, url: str, args: argparse.Namespace, script: Path) -> dict[str, Any]:
    days = (datetime.now(UTC) - HALF).total_seconds() / 86400
    srv = server(workdir, url, "during", days)
    srv.start()
    try:
        deadline = time.monotonic() + 120
        while metric(srv.base_url, PRUNED) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the prune did not start:\n{srv.log_tail()}")
            time.sleep(0.1)
        figures = load(srv, args, script, "during")
        figures["prune_still_running_at_end"] = metric(srv.base_url, RAN) == 0
        figures["events_pruned_during_load"] = metric(srv.base_url, PRUNED)
        while metric(srv.base_url, RAN) == 0:
            if time.monotonic() > deadline + 3600:
                raise RuntimeError("the prune did not finish within an hour")
            time.sleep(0.5)
        figures["events_pruned"] = metric(srv.base_url, PRUNED)
    finally:
        srv.stop()
    found = re.search(r"pruned (\d+) events .* in ([0-9.]+) s", srv.log_path.read_text())
    figures["prune_seconds"] = float(found[2]) if found else None
    return figures


def quiet_prune(url: str, workdir: Path) -> dict[str, Any]:
    """``metastudio-receiver prune --before`` on a copy with no load: its time, and the store's
    size before and after (the size figure is only this: no callbacks arrive meanwhile)."""
    config = workdir / "quiet.toml"
    config.write_text(
        f"database_url = {json.dumps(url)}\n"
        f"archive_dir = {json.dumps(str(workdir / 'quiet-archive'))}\n"
        "[[endpoints]]\n"
        f'name = "bench"\nregistered_url = "{REGISTERED_URL}"\nauth_type = "MSS_A"\n'
        f'keys = ["{KEY}"]\n'
    )
    before_bytes, before_events = _store_bytes(url), _events(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    started = time.monotonic()
    done = subprocess.run(
        [*PRUNE, "--config", str(config), "--json", "--before", f"{HALF:%Y-%m-%dT%H:%M:%SZ}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    seconds = time.monotonic() - started
    report = json.loads(done.stdout)
    return {
        "seconds": round(seconds, 1),
        "events_pruned": report["events"],
        "events_before": before_events,
        "events_after": _events(url),
        "store_bytes_before": before_bytes,
        "store_bytes_after": _store_bytes(url),
        "archive_files": report["archived_files"],
        "archive_bytes": sum(p.stat().st_size for p in (workdir / "quiet-archive").rglob("*.gz")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=30.0, help="of load per phase")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--delay-ms", type=int, default=10, help="per connection, per request")
    parser.add_argument("--seed-cache", help="where the seeded SQLite file is kept")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("wrk is not on PATH (apt install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="rcv-bench-prune-"))
    script = workdir / "load.lua"
    script.write_text(lua_script(delay_ms=args.delay_ms))
    quiet_url = prepare_store(args, workdir, "quiet")
    try:
        quiet = quiet_prune(quiet_url, workdir)
    finally:
        drop_store(quiet_url)
        if quiet_url.startswith("sqlite"):
            os.unlink(quiet_url.removeprefix("sqlite:///"))
    url = prepare_store(args, workdir)
    try:
        phases = [phase_without(workdir, url, args, script, "without-1")]
        phases.append(phase_during(workdir, url, args, script))
        phases.append(phase_without(workdir, url, args, script, "without-2"))
    finally:
        drop_store(url)
    without = [p["p99_ms"] for p in phases if p["phase"].startswith("without")]
    during = phases[1]
    results = {
        "store": args.store,
        "events_seeded": args.events,
        "load": {"connections": args.connections, "delay_ms": args.delay_ms},
        "phases": phases,
        "p99_ratio_during_over_without": round(during["p99_ms"] / (sum(without) / 2), 2),
        "quiet_prune": quiet,
        "size_after_over_before": round(
            quiet["store_bytes_after"] / quiet["store_bytes_before"], 3
        ),
    }
    report(results)
    out = BENCH / "results" / f"prune-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nfigures: {out.relative_to(ROOT)}; logs and archive: {workdir}")
    return 0


def report(results: dict[str, Any]) -> None:
    print(f"\nprune bench, {results['store']}, {results['events_seeded']:,} events seeded")
    print(f"{'phase':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'µs/req':>8}")
    for p in results["phases"]:
        print(
            f"{p['phase']:<10} {p['rps']:>8} {p['p50_ms']:>8.2f} {p['p99_ms']:>8.2f} "
            f"{p['non_2xx']:>8} {p['server_us_per_request']:>8}"
        )
    during = results["phases"][1]
    ok_p99 = results["p99_ratio_during_over_without"] <= 2.0
    print(
        f"p99 during / without: {results['p99_ratio_during_over_without']} "
        f"(target <= 2: {'met' if ok_p99 else 'MISSED'})"
        + ("" if during["prune_still_running_at_end"] else "  [the prune ended before the load]")
    )
    print(
        f"prune under that load: {during['events_pruned']:.0f} events "
        f"in {during['prune_seconds']} s"
    )
    quiet = results["quiet_prune"]
    print(
        f"prune with no load (CLI, a copy): {quiet['events_pruned']} of {quiet['events_before']} "
        f"events in {quiet['seconds']} s; {quiet['archive_files']} archive files, "
        f"{quiet['archive_bytes'] / 1e6:.1f} MB"
    )
    ok_size = results["size_after_over_before"] <= 0.6
    target = (
        f"; target <= 60 %: {'met' if ok_size else 'MISSED'}"
        if results["store"] == "sqlite"
        else ""
    )
    ratio = results["size_after_over_before"]
    print(
        f"store: {quiet['store_bytes_before'] / 1e6:.1f} MB -> "
        f"{quiet['store_bytes_after'] / 1e6:.1f} MB ({ratio:.0%}{target})"
    )


if __name__ == "__main__":
    raise SystemExit(main())

"""Retention, whole: the ``prune`` command killed (-9) several times half way through, then run
to the end, on a seeded store of each kind: every event is either still stored or in exactly
one recorded archive, and the SQLite file shrinks. And a real ``serve`` prunes by itself,
counting it on ``/metrics``, while it keeps taking callbacks."""

from __future__ import annotations

import gzip
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from conftest import REPORT, endpoint_table, run_cli, write_config
from forwarding_world import callback

from receiver.store.driver import sqlite_path
from receiver.store.models import Archive, Event
from receiver.store.writer import create_engine_for
from receiver.testing import deliver

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EVENTS = Event.__table__  # type: ignore[attr-defined]
ARCHIVES = Archive.__table__  # type: ignore[attr-defined]
SEEDED = 20_000
# bench/seed.py spreads its events over 2026-10-01 .. 2026-10-31: this is about half of them.
HALF = "2026-10-16T00:00:00Z"


def _seed(url: str, events: int) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "seed.py"),
            url.replace("postgresql+psycopg://", "postgresql://"),
            "--events",
            str(events),
            "--jobs",
            "20",
            "--rooms",
            "5",
            "--big-job-events",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def _live_endpoint() -> dict[str, object]:
    # bench/seed.py stores its events under the endpoint "live".
    return endpoint_table(name="live", registered_url="https://hooks.example.com/callbacks/live")


def _archived_event_ids(folder: Path) -> list[int]:
    ids: list[int] = []
    for path in folder.rglob("*.jsonl.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            ids += [json.loads(line)["event_id"] for line in handle if '"event_id"' in line]
    return ids


def _db_file_bytes(url: str) -> int:
    path = sqlite_path(url)
    assert path is not None
    return sum(Path(p).stat().st_size for p in (path, path + "-wal") if Path(p).exists())


def test_a_prune_killed_again_and_again_loses_nothing_and_archives_each_row_once(
    db_url: str, tmp_path: Path
) -> None:
    _seed(db_url, SEEDED)
    archive = tmp_path / "archive"
    config = write_config(
        tmp_path / "receiver.toml", db_url, _live_endpoint(), archive_dir=str(archive)
    )
    engine = create_engine_for(db_url, pool_size=1)
    with engine.connect() as conn:
        before_half = conn.execute(
            sa.select(sa.func.count()).where(EVENTS.c.received_at < sa.literal(_half()))
        ).scalar_one()
    assert SEEDED * 0.4 < before_half < SEEDED * 0.6
    size_before = _db_file_bytes(db_url) if db_url.startswith("sqlite") else 0
    command = [sys.executable, "-m", "receiver", "prune", "--config", str(config), "--before", HALF]
    rng = random.Random(21)
    kills = 0
    for _ in range(3):
        files_before = len(list(archive.rglob("*.jsonl.gz"))) if archive.exists() else 0
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if archive.exists() and len(list(archive.rglob("*.jsonl.gz"))) > files_before:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    assert kills >= 2, "the prune finished before it could be killed: seed more"

    done = run_cli("prune", "--config", str(config), "--before", HALF, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with engine.connect() as conn:
        stored = set(conn.execute(sa.select(EVENTS.c.id)).scalars())
        recorded = conn.execute(sa.select(sa.func.count()).select_from(ARCHIVES)).scalar_one()
        old_left = conn.execute(
            sa.select(sa.func.count()).where(EVENTS.c.received_at < sa.literal(_half()))
        ).scalar_one()
    engine.dispose()
    archived = _archived_event_ids(archive)
    assert len(archived) == len(set(archived)), "an event in two archives"
    assert not stored & set(archived), "an event both stored and archived"
    assert stored | set(archived) == set(range(1, SEEDED + 1)), "an event lost"
    assert len(archived) == before_half and old_left == 0
    assert recorded == len(list(archive.rglob("*.jsonl.gz"))), "an archive nobody recorded"
    assert not list(archive.rglob("*.tmp"))
    kind = "SQLite" if db_url.startswith("sqlite") else "PostgreSQL"
    figures = (
        f"prune killed -9 {kills} times, then run to the end ({kind}): {len(archived):,} of "
        f"{SEEDED:,} events archived once each in {recorded} files, {len(stored):,} stored, "
        "0 lost, 0 in two places"
    )
    if db_url.startswith("sqlite"):
        size_after = _db_file_bytes(db_url)
        figures += f"; file {size_before / 1e6:.1f} -> {size_after / 1e6:.1f} MB"
        assert size_after < size_before * 0.7, "the SQLite file did not shrink"
    REPORT.append(figures)


def _half() -> object:
    from datetime import datetime

    return datetime.fromisoformat(HALF.replace("Z", "+00:00"))


def _metric(base_url: str, name: str) -> float:
    for line in httpx.get(base_url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def test_a_running_receiver_prunes_by_itself_and_says_so_on_metrics(
    db_url: str, tmp_path: Path, server_factory: object
) -> None:
    _seed(db_url, 2000)  # October 2026: all older than 30 days
    server = server_factory(  # type: ignore[operator]
        db_url,
        endpoint_table(),
        _live_endpoint(),
        retention_days=30,
        prune_interval_seconds=1,
        api_tokens=["test-token"],
    )
    answer = deliver(callback("job-new", 1), to=server.base_url)
    assert answer.stored, answer
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _metric(server.base_url, 'receiver_prune_runs_total{outcome="ran"}') >= 1:
            break
        time.sleep(0.2)
    assert _metric(server.base_url, 'receiver_pruned_rows_total{table="events"}') == 2000
    assert _metric(server.base_url, 'receiver_prune_runs_total{outcome="ran"}') >= 1
    assert _metric(server.base_url, "receiver_store_bytes") > 0
    assert 0 <= _metric(server.base_url, "receiver_oldest_event_age_seconds") < 60
    events = httpx.get(
        server.base_url + "/v1/events",
        headers={"Authorization": "Bearer test-token"},
        timeout=5,
    ).json()["events"]
    assert [e["job_id"] for e in events] == ["job-new"]

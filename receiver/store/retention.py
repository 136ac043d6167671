"""Keeping the store bounded: deliveries and events older than their retention are deleted, in
small batches, archived first when ``archive_dir`` is set (PRODUCT.md, "Retention and archives").

What is never deleted:

- an event a forwarding destination has not yet taken: past the lowest place in
  ``forward_state`` of the configured destinations (an RTMP event past the stream rules'
  place), or waiting in ``forward_messages`` (parked or dead-lettered: a resend needs it);
- anything received inside its endpoint's signature tolerance: duplicates are decided against
  what is stored, so a retry inside the window must still find its original.

**Archives, exactly once.** A chunk of rows is written as compressed JSON Lines in the export
format (``metastudio-receiver export``; ``replay --from`` reads the file as it is); its row in
``archives`` is committed before the file is written, the file is checked before any of its
rows is deleted, and the deletes come in short transactions (receiver.store.archives and
prune_rows). A prune killed while it writes a file leaves a file the next prune removes (its
rows are all still stored, and archived again). Killed while it deletes, it leaves a file
whose rows are partly stored: the next prune deletes the rest first and archives none of them
again. So every row is in exactly one archive or still stored (and in none), whenever the
prune stops. Files the store does not know are never touched.

One prune at a time: a PostgreSQL advisory lock (replicas share the database), a lock file
beside a SQLite database. Between two delete transactions it pauses, so the intake's writer is
never held up for long; on SQLite it gives the freed pages back afterwards (``incremental_vacuum``).
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from receiver.config import Settings
from receiver.store.archives import abandon_unwritten
from receiver.store.bounds import (
    Held,
    count_prunable,
    give_back_pages,
    held_back,
    prune_findings_and_snapshots,
)
from receiver.store.driver import sqlite_path
from receiver.store.models import Delivery
from receiver.store.prune_rows import (
    CHUNK,
    OnBatch,
    archive_then_delete,
    delivery_chunk,
    event_chunk,
    finish_interrupted,
)
from receiver.store.views import iso

DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]

# Any fixed 64-bit number, apart from the store's other locks.
PRUNE_LOCK = 0x6D73_7276_7072_756E
# The stream rules' place in the event log (receiver.rules.monitor keeps it under this name).
RULES_PLACE = "_rules"
PAUSE_SECONDS = 0.02  # between two delete transactions


class PruneBusy(Exception):
    """Another prune holds the lock."""


@dataclass(frozen=True)
class RetentionPolicy:
    """What may go: ``days`` for every endpoint (None: keep), ``endpoint_days`` overriding it,
    ``tolerance`` per endpoint (seconds; ``default_tolerance`` for others), the forwarding
    places that hold events back (``keep_for``: configured destinations, the stream rules)."""

    days: float | None
    endpoint_days: Mapping[str, float] = field(default_factory=dict)
    tolerance: Mapping[str, float] = field(default_factory=dict)
    default_tolerance: float = 300.0
    keep_for: tuple[str, ...] = ()
    archive_dir: str | None = None

    def cutoff(self, endpoint: str, now: datetime, before: datetime | None) -> datetime | None:
        """What received before goes, for ``endpoint`` (None: nothing)."""
        if before is None:
            days = self.endpoint_days.get(endpoint, self.days)
            if days is None:
                return None
            before = now - timedelta(days=days)
        window = self.tolerance.get(endpoint, self.default_tolerance)
        return min(before, now - timedelta(seconds=window))


def policy_from(settings: Settings) -> RetentionPolicy:
    """The policy the configuration says: ``retention_days`` (and each endpoint's), each
    endpoint's tolerance, the places of the configured destinations and of the stream rules."""
    keep_for = [destination.name for destination in settings.destinations]
    if settings.rules.active:
        keep_for.append(RULES_PLACE)
    tolerance = {e.name: e.tolerance_seconds for e in settings.endpoints}
    return RetentionPolicy(
        days=settings.retention_days,
        endpoint_days={e.name: e.retention_days for e in settings.endpoints if e.retention_days},
        tolerance=tolerance,
        default_tolerance=max([300.0, *tolerance.values()]),
        keep_for=tuple(keep_for),
        archive_dir=settings.archive_dir,
    )


def enabled(settings: Settings) -> bool:
    return settings.retention_days is not None or any(e.retention_days for e in settings.endpoints)


@dataclass
class PruneReport:
    started_at: datetime
    dry_run: bool = False
    events: int = 0
    deliveries: int = 0
    findings: int = 0
    finding_changes: int = 0
    snapshots: int = 0
    rejections: int = 0
    archived_files: int = 0
    removed_unwritten: int = 0  # files a prune that stopped was writing
    finished_archives: int = 0  # left half done by a prune that stopped
    kept_for_forwarding: int | None = None  # events past it: a destination has not taken them
    kept_for_stream_rules: int | None = None  # RTMP events past it: the rules have not read them
    seconds: float = 0.0
    freed_pages: int = 0

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["started_at"] = iso(self.started_at)
        return data


def prune(
    engine: Engine,
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
    before: datetime | None = None,
    dry_run: bool = False,
    chunk: int = CHUNK,
    pause: float = PAUSE_SECONDS,
    on_batch: OnBatch | None = None,
) -> PruneReport:
    """Prune once (see the module's docstring). ``before`` overrides the retention (every
    endpoint, tolerance still kept); ``dry_run`` counts what would go and changes nothing.
    Raises PruneBusy when another prune is running."""
    now = now or datetime.now(UTC)
    report = PruneReport(started_at=now, dry_run=dry_run)
    clock = time.monotonic()

    def counted(events: int, deliveries: int, archived: bool) -> None:
        report.events += events
        report.deliveries += deliveries
        report.archived_files += archived
        if on_batch is not None:
            on_batch(events, deliveries, archived)

    with _one_at_a_time(engine):
        if not dry_run:
            folder = Path(policy.archive_dir) if policy.archive_dir else None
            report.removed_unwritten = abandon_unwritten(engine, folder)
            report.finished_archives = finish_interrupted(
                engine, policy.archive_dir, pause=pause, on_batch=counted
            )
        with engine.connect() as conn:
            held = held_back(
                conn,
                [name for name in policy.keep_for if name != RULES_PLACE],
                RULES_PLACE if RULES_PLACE in policy.keep_for else None,
            )
            endpoints = sorted(
                set(conn.execute(sa.select(DELIVERIES.c.endpoint).distinct()).scalars())
            )
        report.kept_for_forwarding, report.kept_for_stream_rules = held.events, held.rtmp
        for endpoint in endpoints:
            cutoff = policy.cutoff(endpoint, now, before)
            if cutoff is None:
                continue
            if dry_run:
                count_prunable(engine, endpoint, cutoff, held, report)
                continue
            _take(engine, policy, endpoint, cutoff, held, chunk, pause, counted)
        if not dry_run and (before is not None or policy.days is not None):
            general = before or now - timedelta(days=policy.days or 0)
            prune_findings_and_snapshots(engine, general, report)
            report.freed_pages = give_back_pages(engine, pause)
    report.seconds = round(time.monotonic() - clock, 3)
    return report


def _take(
    engine: Engine,
    policy: RetentionPolicy,
    endpoint: str,
    cutoff: datetime,
    held: Held,
    limit: int,
    pause: float,
    counted: OnBatch,
) -> None:
    """One endpoint's events (with their deliveries and receipts), then its deliveries that
    have no event, chunk by chunk (receiver.store.prune_rows)."""
    for kind in ("events", "deliveries"):
        while True:
            with engine.connect() as conn:
                if kind == "events":
                    found = event_chunk(conn, endpoint, cutoff, held, limit)
                else:
                    found = delivery_chunk(conn, endpoint, cutoff, limit)
            if found is None:
                break
            archive_then_delete(
                engine,
                found,
                endpoint=endpoint,
                kind=kind,
                archive_dir=policy.archive_dir,
                pause=pause,
                on_batch=counted,
            )


@contextlib.contextmanager
def _one_at_a_time(engine: Engine) -> Iterator[None]:
    path = sqlite_path(engine.url.render_as_string(hide_password=False))
    if path is not None:
        with open(path + ".prune-lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PruneBusy("another prune is running on this database") from None
            yield
        return
    with engine.connect() as conn:
        got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": PRUNE_LOCK})
        if not got.scalar():
            raise PruneBusy("another replica is pruning")
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": PRUNE_LOCK})
            conn.commit()

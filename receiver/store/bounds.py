"""The prune's other bounds (receiver.store.retention): resolved findings and their change log,
job snapshots a newer one replaced, counting what a dry run would take, giving a SQLite file's
free pages back, and the store's figures for ``/metrics``."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from receiver.store.driver import sqlite_path
from receiver.store.models import (
    Delivery,
    Event,
    Finding,
    FindingChange,
    ForwardMessage,
    ForwardState,
    JobSnapshot,
    Rejection,
)

if TYPE_CHECKING:
    from receiver.store.retention import PruneReport

EVENTS = Event.__table__  # type: ignore[attr-defined]
DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
PARKED = ForwardMessage.__table__  # type: ignore[attr-defined]
PLACES = ForwardState.__table__  # type: ignore[attr-defined]
FINDINGS = Finding.__table__  # type: ignore[attr-defined]
CHANGES = FindingChange.__table__  # type: ignore[attr-defined]
SNAPSHOTS = JobSnapshot.__table__  # type: ignore[attr-defined]
REJECTIONS = Rejection.__table__  # type: ignore[attr-defined]
RTMP = "RTMP_STREAM_STATE_CHANGE"
VACUUM_PAGES = 1000  # 4 MB of 4 KiB pages: a few ms of the write lock at a time


@dataclass(frozen=True)
class Held:
    """What forwarding still needs, so the prune keeps it: events past ``events`` (the lowest
    place of the configured destinations), RTMP events past ``rtmp`` (the stream rules' place:
    they read nothing else), and events waiting in ``forward_messages`` (parked, or
    dead-lettered: a resend needs them)."""

    events: int | None = None
    rtmp: int | None = None

    def conditions(self) -> list[Any]:
        waiting = sa.select(PARKED.c.source_id).where(PARKED.c.source == "event")
        conditions: list[Any] = [EVENTS.c.id.not_in(waiting)]
        if self.events is not None:
            conditions.append(EVENTS.c.id <= self.events)
        if self.rtmp is not None:
            conditions.append(sa.or_(EVENTS.c.event_type != RTMP, EVENTS.c.id <= self.rtmp))
        return conditions


def held_back(conn: Connection, destinations: Sequence[str], rules_place: str | None) -> Held:
    """The places in ``forward_state`` of these destinations and of the stream rules (a name
    without a row yet starts at the log's end when it comes: it holds nothing back)."""
    names = [*destinations, *([rules_place] if rules_place else [])]
    if not names:
        return Held()
    query = sa.select(PLACES.c.name, PLACES.c.event_cursor).where(PLACES.c.name.in_(names))
    places: dict[str, int] = {name: cursor for name, cursor in conn.execute(query)}
    lowest = [int(places[name]) for name in destinations if name in places]
    rules = places.get(rules_place) if rules_place else None
    return Held(min(lowest) if lowest else None, None if rules is None else int(rules))


def count_prunable(
    engine: Engine, endpoint: str, cutoff: datetime, held: Held, report: PruneReport
) -> None:
    with engine.connect() as conn:
        report.events += int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(EVENTS)
                .where(EVENTS.c.endpoint == endpoint, EVENTS.c.received_at < cutoff)
                .where(*held.conditions())
            ).scalar_one()
        )
        report.deliveries += int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(DELIVERIES)
                .where(DELIVERIES.c.endpoint == endpoint, DELIVERIES.c.received_at < cutoff)
            ).scalar_one()
        )


def prune_findings_and_snapshots(engine: Engine, cutoff: datetime, report: PruneReport) -> None:
    """Resolved findings (not muted ones) and their changes, job snapshots that a newer one
    replaced, and rejections, all older than ``cutoff``; the change log only below the findings'
    forwarding places. (Rejections are also held to the newest 10,000 as written.)"""
    with engine.begin() as conn:
        report.rejections = conn.execute(
            sa.delete(REJECTIONS).where(REJECTIONS.c.received_at < cutoff)
        ).rowcount
        old = list(
            conn.execute(
                sa.select(FINDINGS.c.id)
                .where(
                    FINDINGS.c.resolved_at < cutoff,
                    # A muted finding is the mute itself: it stays for when the fault recurs.
                    sa.or_(FINDINGS.c.ack_action.is_(None), FINDINGS.c.ack_action != "mute"),
                )
                .limit(10_000)
            ).scalars()
        )
        if old:
            report.findings = conn.execute(
                sa.delete(FINDINGS).where(FINDINGS.c.id.in_(old))
            ).rowcount
        lowest = conn.execute(sa.select(sa.func.min(PLACES.c.finding_cursor))).scalar()
        changes = [CHANGES.c.at < cutoff]
        if lowest is not None:
            changes.append(CHANGES.c.id <= lowest)
        report.finding_changes = conn.execute(sa.delete(CHANGES).where(*changes)).rowcount
        newest = sa.select(sa.func.max(SNAPSHOTS.c.id)).group_by(SNAPSHOTS.c.job_key)
        report.snapshots = conn.execute(
            sa.delete(SNAPSHOTS).where(
                SNAPSHOTS.c.fetched_at < cutoff, SNAPSHOTS.c.id.not_in(newest)
            )
        ).rowcount


def give_back_pages(engine: Engine, pause: float) -> int:
    """SQLite: return free pages to the file system a few at a time (auto_vacuum incremental,
    migration 0009). PostgreSQL: autovacuum reuses the space."""
    if engine.dialect.name != "sqlite":
        return 0
    freed = 0
    with engine.connect() as conn:
        while True:
            free = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0)
            if free == 0:
                return freed
            conn.commit()
            # Each step of this statement frees one page, and the driver's execute() steps
            # once: executescript() steps it to the end.
            raw = conn.connection.dbapi_connection
            raw.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")  # type: ignore[union-attr]
            freed += min(free, VACUUM_PAGES)
            time.sleep(pause)


def store_figures(engine: Engine, *, now: datetime) -> tuple[float | None, int | None]:
    """The age of the oldest stored event (seconds) and the store's size (bytes)."""
    with engine.connect() as conn:
        oldest = conn.execute(sa.select(sa.func.min(EVENTS.c.received_at))).scalar()
        if engine.dialect.name == "postgresql":
            size = conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar()
        else:
            path = sqlite_path(engine.url.render_as_string(hide_password=False))
            size = None
            if path is not None:
                size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    age = None if oldest is None else max((now - oldest).total_seconds(), 0.0)
    return age, None if size is None else int(size)

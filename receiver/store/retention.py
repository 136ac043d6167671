"""Keeping the store bounded: deliveries and events older than their retention are deleted, in
small batches, archived first when ``archive_dir`` is set (PRODUCT.md, "Retention and archives").

What is never deleted:

- an event a forwarding destination has not yet taken: past the lowest place in
  ``forward_state`` of the configured destinations (an RTMP event past the stream rules'
  place), or waiting in ``forward_messages`` (parked or dead-lettered: a resend needs it);
- anything received inside its endpoint's signature tolerance: duplicates are decided against
  what is stored, so a retry inside the window must still find its original.

**Archives, exactly once.** A batch of rows is written as compressed JSON Lines in the export
format (``metastudio-receiver export``; ``replay --from`` reads the file as it is) to a temporary
file, fsynced, renamed into place, read back and checked (records, ids, checksum). Then one
transaction records the file in ``archives`` and deletes the rows, and checks that it deleted
exactly those. A prune killed before that commit leaves a file nobody recorded: the next prune
removes it first and archives its rows again. So every row is either still stored or in exactly
one recorded archive, whenever the prune stops.

One prune at a time: a PostgreSQL advisory lock (replicas share the database), a lock file
beside a SQLite database. Between batches it pauses, so the intake's writer is never held up
for long; on SQLite it gives the freed pages back afterwards (``incremental_vacuum``).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from receiver.config import Settings
from receiver.store.archives import (
    DELIVERY_FORMAT,
    record_archive,
    remove_orphans,
    write_archive,
)
from receiver.store.bounds import (
    Held,
    count_prunable,
    give_back_pages,
    held_back,
    prune_findings_and_snapshots,
)
from receiver.store.driver import sqlite_path
from receiver.store.models import Delivery, Event
from receiver.store.queries import export_record
from receiver.store.views import iso

EVENTS = Event.__table__  # type: ignore[attr-defined]
DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]

# Any fixed 64-bit number, apart from the store's other locks.
PRUNE_LOCK = 0x6D73_7276_7072_756E
# The stream rules' place in the event log (receiver.rules.monitor keeps it under this name).
RULES_PLACE = "_rules"
BATCH = 500
PAUSE_SECONDS = 0.05


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
    removed_orphans: int = 0
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
    batch: int = BATCH,
    pause: float = PAUSE_SECONDS,
    on_batch: Callable[[int, int, bool], None] | None = None,
) -> PruneReport:
    """Prune once (see the module's docstring). ``before`` overrides the retention (every
    endpoint, tolerance still kept); ``dry_run`` counts what would go and changes nothing.
    Raises PruneBusy when another prune is running."""
    now = now or datetime.now(UTC)
    report = PruneReport(started_at=now, dry_run=dry_run)
    clock = time.monotonic()
    with _one_at_a_time(engine):
        if policy.archive_dir and not dry_run:
            report.removed_orphans = remove_orphans(engine, Path(policy.archive_dir))
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
            _prune_events(engine, policy, endpoint, cutoff, held, report, batch, pause, on_batch)
            _prune_deliveries(engine, policy, endpoint, cutoff, report, batch, pause, on_batch)
        if not dry_run and (before is not None or policy.days is not None):
            general = before or now - timedelta(days=policy.days or 0)
            prune_findings_and_snapshots(engine, general, report)
            report.freed_pages = give_back_pages(engine, pause)
    report.seconds = round(time.monotonic() - clock, 3)
    return report


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


def _event_batch(conn: Connection, endpoint: str, cutoff: datetime, held: Held, limit: int) -> Any:
    conditions = [EVENTS.c.endpoint == endpoint, EVENTS.c.received_at < cutoff, *held.conditions()]
    # A duplicate receipt still inside the window keeps its original (and so its event).
    receipt = DELIVERIES.alias("receipt")
    conditions.append(
        sa.not_(
            sa.exists().where(
                receipt.c.duplicate_of == EVENTS.c.delivery_id, receipt.c.received_at >= cutoff
            )
        )
    )
    query = (
        sa.select(*EVENTS.c, DELIVERIES.c.body, DELIVERIES.c.headers.label("delivery_headers"))
        .select_from(EVENTS.join(DELIVERIES, DELIVERIES.c.id == EVENTS.c.delivery_id))
        .where(*conditions)
        .order_by(EVENTS.c.id)
        .limit(limit)
    )
    return conn.execute(query).all()


def _prune_events(
    engine: Engine,
    policy: RetentionPolicy,
    endpoint: str,
    cutoff: datetime,
    held: Held,
    report: PruneReport,
    batch: int,
    pause: float,
    on_batch: Callable[[int, int, bool], None] | None,
) -> None:
    """Events with their deliveries and the duplicate receipts of those (archived as delivery
    records beside them: replay skips them)."""
    while True:
        with engine.connect() as conn:
            rows = _event_batch(conn, endpoint, cutoff, held, batch)
            delivery_ids = [row.delivery_id for row in rows]
            receipts = _receipts_of(conn, delivery_ids) if rows else []
        if not rows:
            return
        event_ids = [row.id for row in rows]
        receipt_ids = [row.id for row in receipts]

        def delete(
            conn: Connection,
            event_ids: list[int] = event_ids,
            receipt_ids: list[int] = receipt_ids,
            delivery_ids: list[int] = delivery_ids,
        ) -> bool:
            gone = _delete(conn, EVENTS, event_ids)
            _delete(conn, DELIVERIES, receipt_ids)
            return gone == len(event_ids) and _delete(conn, DELIVERIES, delivery_ids) == len(
                delivery_ids
            )

        records = [export_record(row) for row in rows] + [_delivery_record(r) for r in receipts]
        if not _archive_and_delete(engine, policy, endpoint, "events", records, rows[0], delete):
            continue  # raced with another writer: read again
        report.events += len(event_ids)
        report.deliveries += len(delivery_ids) + len(receipt_ids)
        report.archived_files += policy.archive_dir is not None
        if on_batch is not None:
            on_batch(len(event_ids), len(delivery_ids) + len(receipt_ids), bool(policy.archive_dir))
        time.sleep(pause)


def _prune_deliveries(
    engine: Engine,
    policy: RetentionPolicy,
    endpoint: str,
    cutoff: datetime,
    report: PruneReport,
    batch: int,
    pause: float,
    on_batch: Callable[[int, int, bool], None] | None,
) -> None:
    """Deliveries with no event: undecodable ones (unless a newer receipt still names them),
    and duplicate receipts whose original stays; archived as delivery records."""
    newer = DELIVERIES.alias("newer")
    named_by_newer = sa.exists().where(
        newer.c.duplicate_of == DELIVERIES.c.id, newer.c.received_at >= cutoff
    )
    without_event = sa.not_(sa.exists().where(EVENTS.c.delivery_id == DELIVERIES.c.id))
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(DELIVERIES)
                .where(
                    DELIVERIES.c.endpoint == endpoint,
                    DELIVERIES.c.received_at < cutoff,
                    DELIVERIES.c.status != "stored",
                    without_event,
                    sa.not_(named_by_newer),
                )
                .order_by(DELIVERIES.c.id.desc())  # receipts before their originals
                .limit(batch)
            ).all()
        if not rows:
            return
        ids = [row.id for row in rows]

        def delete(conn: Connection, ids: list[int] = ids) -> bool:
            return _delete(conn, DELIVERIES, ids) == len(ids)

        records = [_delivery_record(row) for row in rows]
        if not _archive_and_delete(
            engine, policy, endpoint, "deliveries", records, rows[-1], delete
        ):
            continue
        report.deliveries += len(ids)
        report.archived_files += policy.archive_dir is not None
        if on_batch is not None:
            on_batch(0, len(ids), bool(policy.archive_dir))
        time.sleep(pause)


def _archive_and_delete(
    engine: Engine,
    policy: RetentionPolicy,
    endpoint: str,
    kind: str,
    records: list[dict[str, Any]],
    first: Any,
    delete: Callable[[Connection], bool],
) -> bool:
    """Archive ``records`` (when archiving) and, in one transaction, record the file and run
    ``delete``; False (nothing deleted, the file removed) when ``delete`` says it raced."""
    archive = None
    if policy.archive_dir:
        archive = write_archive(
            Path(policy.archive_dir), endpoint, kind, records, first.received_at
        )
    try:
        with engine.begin() as conn:
            if archive is not None:
                ids = [r["event_id"] for r in records if r.get("event_id") is not None]
                record_archive(conn, archive, endpoint, ids)
            if not delete(conn):
                raise _Raced()
    except (_Raced, sa.exc.IntegrityError):
        if archive is not None:
            archive.path.unlink(missing_ok=True)
        return False
    return True


class _Raced(Exception):
    pass


def _delete(conn: Connection, table: sa.Table, ids: Sequence[int]) -> int:
    if not ids:
        return 0
    return int(conn.execute(sa.delete(table).where(table.c.id.in_(list(ids)))).rowcount)


def _receipts_of(conn: Connection, delivery_ids: Sequence[int]) -> list[Any]:
    return list(
        conn.execute(
            sa.select(DELIVERIES)
            .where(DELIVERIES.c.duplicate_of.in_(list(delivery_ids)))
            .order_by(DELIVERIES.c.id)
        )
    )


def _delivery_record(row: Any) -> dict[str, Any]:
    return {
        "format": DELIVERY_FORMAT,
        "delivery_id": row.id,
        "endpoint": row.endpoint,
        "status": row.status,
        "duplicate_of": row.duplicate_of,
        "received_at": iso(row.received_at),
        "signed_at": iso(row.signed_at),
        "error": row.error,
        "body_b64": base64.b64encode(row.body or b"").decode() if row.body is not None else None,
        "body_sha256": row.body_sha256,
        "headers": row.headers,
        "query": row.query,
        "remote_addr": row.remote_addr,
    }

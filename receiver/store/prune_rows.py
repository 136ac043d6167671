"""The rows the prune takes (receiver.store.retention), chunk by chunk: which, their archive
records, and the deletes.

A chunk (up to ``CHUNK`` events with their deliveries and duplicate receipts, or deliveries
that have no event) becomes one archive file when ``archive_dir`` is set
(receiver.store.archives: announced, written and checked). Only then are its rows deleted,
``DELETE_BATCH`` at a time with a pause between: each delete transaction is short, so the
intake's writer never waits long for the store's write lock; the file is marked complete once
they are all gone. A prune that stops while it deletes leaves a file whose rows are partly
stored: the next prune first finishes it (:func:`finish_interrupted`, ids read from the file),
deleting what is left and archiving none of it again. So a row is archived in exactly one file,
and no longer stored once its file is complete.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from receiver.store.archives import (
    COMPLETE,
    DELETING,
    DELIVERY_FORMAT,
    announce,
    in_state,
    pack,
    set_state,
    write_file,
)
from receiver.store.bounds import Held
from receiver.store.models import Archive, Delivery, Event
from receiver.store.queries import export_record
from receiver.store.views import iso

EVENTS = Event.__table__  # type: ignore[attr-defined]
DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
ARCHIVES = Archive.__table__  # type: ignore[attr-defined]

CHUNK = 5000  # events (or deliveries without one) a chunk, so an archive file
DELETE_BATCH = 50  # rows a delete transaction: about 5 ms of the write lock (SQLite)
OnBatch = Callable[[int, int, bool], None]  # (events, deliveries deleted, a file archived)


@dataclass
class Chunk:
    records: list[dict[str, Any]]
    event_ids: list[int]
    delivery_ids: list[int]  # newest first: a receipt goes before the original it names
    received_at: datetime  # of its first row: the archive file's day


def event_chunk(
    conn: Connection, endpoint: str, cutoff: datetime, held: Held, limit: int
) -> Chunk | None:
    """Events received before ``cutoff`` that nothing holds back, with their deliveries and the
    duplicate receipts of those (archived beside them as delivery records: replay skips them).
    An event whose delivery has a receipt inside the window stays (duplicates are decided
    against the original)."""
    receipt = DELIVERIES.alias("receipt")
    recent_receipt = sa.exists().where(
        receipt.c.duplicate_of == EVENTS.c.delivery_id, receipt.c.received_at >= cutoff
    )
    rows = conn.execute(
        sa.select(*EVENTS.c, DELIVERIES.c.body, DELIVERIES.c.headers.label("delivery_headers"))
        .select_from(EVENTS.join(DELIVERIES, DELIVERIES.c.id == EVENTS.c.delivery_id))
        .where(EVENTS.c.endpoint == endpoint, EVENTS.c.received_at < cutoff, *held.conditions())
        .where(sa.not_(recent_receipt))
        .order_by(EVENTS.c.id)
        .limit(limit)
    ).all()
    if not rows:
        return None
    receipts: list[Any] = []
    originals = [row.delivery_id for row in rows]
    for start in range(0, len(originals), 500):
        receipts += conn.execute(
            sa.select(DELIVERIES)
            .where(DELIVERIES.c.duplicate_of.in_(originals[start : start + 500]))
            .order_by(DELIVERIES.c.id)
        ).all()
    return Chunk(
        records=[export_record(row) for row in rows] + [delivery_record(r) for r in receipts],
        event_ids=[row.id for row in rows],
        delivery_ids=sorted(originals + [r.id for r in receipts], reverse=True),
        received_at=rows[0].received_at,
    )


def delivery_chunk(conn: Connection, endpoint: str, cutoff: datetime, limit: int) -> Chunk | None:
    """Deliveries with no event received before ``cutoff``: undecodable ones (unless a receipt
    inside the window names them) and receipts whose original stays."""
    newer = DELIVERIES.alias("newer")
    named_by_newer = sa.exists().where(
        newer.c.duplicate_of == DELIVERIES.c.id, newer.c.received_at >= cutoff
    )
    without_event = sa.not_(sa.exists().where(EVENTS.c.delivery_id == DELIVERIES.c.id))
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
        .limit(limit)
    ).all()
    if not rows:
        return None
    return Chunk(
        records=[delivery_record(row) for row in rows],
        event_ids=[],
        delivery_ids=[row.id for row in rows],
        received_at=rows[-1].received_at,
    )


def archive_then_delete(
    engine: Engine,
    chunk: Chunk,
    *,
    endpoint: str,
    kind: str,
    archive_dir: str | None,
    pause: float,
    on_batch: OnBatch | None,
) -> bool:
    """Archive the chunk (when archiving: announced, written, checked), then delete its rows.
    True when a file was archived."""
    archive_id = None
    if archive_dir:
        packed = pack(endpoint, kind, chunk.records, chunk.received_at)
        with engine.begin() as conn:
            archive_id = announce(conn, packed, endpoint, chunk.event_ids)
        write_file(Path(archive_dir), packed)
        set_state(engine, archive_id, DELETING)
        if on_batch is not None:
            on_batch(0, 0, True)
    delete_rows(engine, chunk.event_ids, chunk.delivery_ids, pause=pause, on_batch=on_batch)
    if archive_id is not None:
        set_state(engine, archive_id, COMPLETE)
    return archive_id is not None


def delete_rows(
    engine: Engine,
    event_ids: Sequence[int],
    delivery_ids: Sequence[int],
    *,
    pause: float,
    on_batch: OnBatch | None,
) -> None:
    """The events, then the deliveries (in the order given), ``DELETE_BATCH`` a transaction."""
    for table, ids in ((EVENTS, event_ids), (DELIVERIES, delivery_ids)):
        for start in range(0, len(ids), DELETE_BATCH):
            part = list(ids[start : start + DELETE_BATCH])
            with engine.begin() as conn:
                gone = int(conn.execute(sa.delete(table).where(table.c.id.in_(part))).rowcount)
            if on_batch is not None and table is EVENTS:
                on_batch(gone, 0, False)
            elif on_batch is not None:
                on_batch(0, gone, False)
            time.sleep(pause)


def finish_interrupted(
    engine: Engine, archive_dir: str | None, *, pause: float, on_batch: OnBatch | None
) -> int:
    """Archives whose rows a stopped prune had not all deleted: delete the rest (ids read from
    the file). How many were finished."""
    pending = in_state(engine, DELETING)
    for row in pending:
        if archive_dir is None:
            raise OSError(
                f"the archive {row.path} was not finished, and archive_dir is no longer set: "
                "set it again so that the prune can finish it"
            )
        events, deliveries = _ids_in(Path(archive_dir) / row.path)
        delete_rows(engine, events, deliveries, pause=pause, on_batch=on_batch)
        set_state(engine, row.id, COMPLETE)
    return len(pending)


def _ids_in(path: Path) -> tuple[list[int], list[int]]:
    events, deliveries = [], []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record.get("event_id") is not None:
                events.append(int(record["event_id"]))
            deliveries.append(int(record["delivery_id"]))
    return events, sorted(deliveries, reverse=True)


def delivery_record(row: Any) -> dict[str, Any]:
    """A delivery with no event of its own, as archived (``DELIVERY_FORMAT``)."""
    return {
        "format": DELIVERY_FORMAT,
        "delivery_id": row.id,
        "endpoint": row.endpoint,
        "status": row.status,
        "duplicate_of": row.duplicate_of,
        "received_at": iso(row.received_at),
        "signed_at": iso(row.signed_at),
        "error": row.error,
        "body_b64": base64.b64encode(row.body).decode() if row.body is not None else None,
        "body_sha256": row.body_sha256,
        "headers": row.headers,
        "query": row.query,
        "remote_addr": row.remote_addr,
    }

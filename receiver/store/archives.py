"""Archive files of the prune (receiver.store.retention): written, checked, recorded.

A batch of rows becomes one gzipped JSON Lines file under ``archive_dir``:
``<endpoint>/<YYYY-MM>/<endpoint>-<YYYY-MM-DD>-<kind>-<first id>-<last id>.jsonl.gz``. Event
records are the export format (``metastudio-receiver export``, read back by ``replay --from``);
deliveries without an event (undecodable bodies, duplicate receipts) are ``DELIVERY_FORMAT``
records, which replay skips. A file is written to a temporary name, fsynced, renamed into place
(the folder fsynced too), read back and compared; it counts only once ``archives`` records it,
in the transaction that deletes its rows.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from receiver.store.models import Archive

ARCHIVES = Archive.__table__  # type: ignore[attr-defined]
DELIVERY_FORMAT = "metastudio-receiver/delivery/v1"


@dataclass(frozen=True)
class Written:
    path: Path
    relative: str
    records: int
    sha256: str
    first_id: int | None
    last_id: int | None


def write_archive(
    folder: Path, endpoint: str, kind: str, records: list[dict[str, Any]], day: datetime
) -> Written:
    """The records as one gzipped JSON Lines file, fsynced, renamed into place, read back."""
    ids = [r.get("event_id") or r.get("delivery_id") or 0 for r in records]
    first, last = min(ids), max(ids)
    name = f"{endpoint}-{day:%Y-%m-%d}-{kind}-{first}-{last}.jsonl.gz"
    relative = f"{endpoint}/{day:%Y-%m}/{name}"
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    text = b"".join(
        json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for r in records
    )
    digest = hashlib.sha256(text).hexdigest()
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
            packed.write(text)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    with gzip.open(path, "rb") as back:
        again = back.read()
    if hashlib.sha256(again).hexdigest() != digest or again.count(b"\n") != len(records):
        path.unlink(missing_ok=True)
        raise OSError(f"the archive {relative} did not read back as written")
    return Written(path, relative, len(records), digest, first, last)


def record_archive(
    conn: Connection, archive: Written, endpoint: str, event_ids: Sequence[int]
) -> None:
    conn.execute(
        sa.insert(ARCHIVES).values(
            path=archive.relative,
            endpoint=endpoint[:64],
            first_event_id=min(event_ids) if event_ids else None,
            last_event_id=max(event_ids) if event_ids else None,
            records=archive.records,
            sha256=archive.sha256,
            created_at=datetime.now(UTC),
        )
    )


def remove_orphans(engine: Engine, folder: Path) -> int:
    """Files a killed prune wrote but never recorded (their rows are still stored)."""
    if not folder.exists():
        return 0
    with engine.connect() as conn:
        recorded = set(conn.execute(sa.select(ARCHIVES.c.path)).scalars())
    removed = 0
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        relative = path.relative_to(folder).as_posix()
        if path.name.endswith(".tmp") or (
            relative.endswith(".jsonl.gz") and relative not in recorded
        ):
            path.unlink(missing_ok=True)
            removed += 1
    return removed

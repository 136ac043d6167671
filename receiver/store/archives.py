"""Archive files of the prune (receiver.store.retention): announced, written, checked, finished.

A chunk of rows becomes one gzipped JSON Lines file under ``archive_dir``:
``<endpoint>/<YYYY-MM>/<endpoint>-<YYYY-MM-DD>-<kind>-<first id>-<last id>.jsonl.gz``. Event
records are the export format (``metastudio-receiver export``, read back by ``replay --from``);
deliveries without an event (undecodable bodies, duplicate receipts) are ``DELIVERY_FORMAT``
records, which replay skips.

Each file goes through the states of its ``archives`` row: ``writing`` (committed before the
file is touched, so the prune only ever removes a file the store says it was writing, never
one it does not know), ``deleting`` once the file is written to a temporary name, fsynced,
renamed into place (the folder fsynced too) and read back and compared, and ``complete`` once
its rows are all deleted. A prune that stops leaves at most one file ``writing`` (removed by
:func:`abandon_unwritten`, its rows still stored) or ``deleting`` (finished by the next prune).
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
WRITING, DELETING, COMPLETE = "writing", "deleting", "complete"


@dataclass(frozen=True)
class Packed:
    """A chunk's records as the file will hold them (uncompressed), and where it goes."""

    relative: str
    text: bytes
    records: int
    sha256: str


def pack(endpoint: str, kind: str, records: list[dict[str, Any]], day: datetime) -> Packed:
    ids = [r.get("event_id") or r.get("delivery_id") or 0 for r in records]
    name = f"{endpoint}-{day:%Y-%m-%d}-{kind}-{min(ids)}-{max(ids)}.jsonl.gz"
    text = b"".join(
        json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for r in records
    )
    return Packed(
        f"{endpoint}/{day:%Y-%m}/{name}", text, len(records), hashlib.sha256(text).hexdigest()
    )


def announce(conn: Connection, packed: Packed, endpoint: str, event_ids: Sequence[int]) -> int:
    """The file's row in ``archives``, ``writing``, before the file exists; its id."""
    inserted = conn.execute(
        sa.insert(ARCHIVES).values(
            path=packed.relative,
            endpoint=endpoint[:64],
            state=WRITING,
            first_event_id=min(event_ids) if event_ids else None,
            last_event_id=max(event_ids) if event_ids else None,
            records=packed.records,
            sha256=packed.sha256,
            created_at=datetime.now(UTC),
        )
    )
    key = inserted.inserted_primary_key
    assert key is not None
    return int(key[0])


def write_file(folder: Path, packed: Packed) -> None:
    """Gzipped to a temporary name, fsynced, renamed into place, read back and compared."""
    path = folder / packed.relative
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as compressed:
            compressed.write(packed.text)
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
    if hashlib.sha256(again).hexdigest() != packed.sha256 or again.count(b"\n") != packed.records:
        path.unlink(missing_ok=True)
        raise OSError(f"the archive {packed.relative} did not read back as written")


def set_state(engine: Engine, archive_id: int, state: str) -> None:
    values: dict[str, Any] = {"state": state}
    if state == COMPLETE:
        values["completed_at"] = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(sa.update(ARCHIVES).where(ARCHIVES.c.id == archive_id).values(**values))


def in_state(engine: Engine, state: str) -> Sequence[Any]:
    """The (id, path) of every archive recorded in ``state``."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(ARCHIVES.c.id, ARCHIVES.c.path).where(ARCHIVES.c.state == state)
        ).all()


def abandon_unwritten(engine: Engine, folder: Path | None) -> int:
    """Files a stopped prune was writing (their rows are all still stored): the file and its
    temporary gone, the row too. How many."""
    rows = in_state(engine, WRITING)
    for row in rows:
        if folder is None:
            raise OSError(
                f"the archive {row.path} was being written when a prune stopped, and "
                "archive_dir is no longer set: set it again so that the prune can remove it"
            )
        path = folder / row.path
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".tmp").unlink(missing_ok=True)
        with engine.begin() as conn:
            conn.execute(sa.delete(ARCHIVES).where(ARCHIVES.c.id == row.id))
    return len(rows)

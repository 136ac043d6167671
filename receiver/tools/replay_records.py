"""What replay sends: :class:`ReplayRecord`, read from an export file or the store, filtered.

Records come from an export file (JSON Lines written by ``metastudio-receiver export``, format
``metastudio-receiver/export/v1``, see :func:`receiver.store.queries.export_events`), from the
prune's archives (the same lines gzipped; a file or the whole ``archive_dir``) or straight
from the store, which is read through that same export so both give the same records. A file is
filtered here with the store's own filters, and :func:`resume_point` says where a resumed run
starts. Nothing here sends or signs anything (that is :mod:`receiver.tools.replay`).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from receiver.errors import ReceiverError
from receiver.protocol.ids import optional_key

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

EXPORT_FORMAT = "metastudio-receiver/export/v1"  # the same as receiver.store.queries.EXPORT_FORMAT
# Archives (receiver.store.archives) also hold deliveries that had no event (undecodable bodies,
# duplicate receipts) in this format; replay passes over them.
DELIVERY_FORMAT = "metastudio-receiver/delivery/v1"


class ExportError(ReceiverError):
    """An export file (or record) that replay cannot read."""

    code = "RCV.EXPORT_INVALID"


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    """What replay needs of one exported event."""

    event_id: int
    endpoint: str
    event_type: str
    room_id: str | None
    job_id: str | None
    received_at: datetime | None
    signed_at: datetime | None
    body: bytes

    @property
    def when(self) -> datetime | None:
        """When the event originally happened, as far as the store knows."""
        return self.received_at or self.signed_at


# -- reading -----------------------------------------------------------------------------------


def _time(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ExportError(f"{what}: must be an RFC 3339 string or null")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ExportError(f"{what}: {value[:40]!r} is not an RFC 3339 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _optional_text(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ExportError(f"{what}: must be a string or null")


def record_from_export(data: Mapping[str, Any], *, where: str = "record") -> ReplayRecord:
    """One export record (a line of ``metastudio-receiver export``) -> :class:`ReplayRecord`."""
    fmt = data.get("format", EXPORT_FORMAT)
    if fmt != EXPORT_FORMAT:
        raise ExportError(f"{where}: format {str(fmt)[:60]!r} is not {EXPORT_FORMAT}")
    event_id = data.get("event_id")
    if isinstance(event_id, bool) or not isinstance(event_id, int):
        raise ExportError(f"{where}: event_id must be an integer")
    body_b64 = data.get("body_b64")
    if not isinstance(body_b64, str):
        raise ExportError(f"{where}: body_b64 (the original body, base64) is required")
    try:
        body = base64.b64decode(body_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ExportError(f"{where}: body_b64 is not valid base64") from None
    event_type = data.get("event_type")
    endpoint = data.get("endpoint")
    if not isinstance(event_type, str) or not isinstance(endpoint, str):
        raise ExportError(f"{where}: event_type and endpoint must be strings")
    return ReplayRecord(
        event_id=event_id,
        endpoint=endpoint,
        event_type=event_type,
        room_id=_optional_text(data.get("room_id"), f"{where}: room_id"),
        job_id=_optional_text(data.get("job_id"), f"{where}: job_id"),
        received_at=_time(data.get("received_at"), f"{where}: received_at"),
        signed_at=_time(data.get("signed_at"), f"{where}: signed_at"),
        body=body,
    )


def iter_export_lines(lines: Iterable[str], *, name: str = "export") -> Iterator[ReplayRecord]:
    """Records of a JSON Lines export; blank lines are skipped, anything else wrong is named."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise ExportError(f"{where}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ExportError(f"{where}: not a JSON object")
        if data.get("format") == DELIVERY_FORMAT:
            continue
        yield record_from_export(data, where=where)


def read_export(path: str | Path | IO[str]) -> list[ReplayRecord]:
    """Every record of an export file (a path, or an open text file such as stdin). A path
    ending in ``.gz`` is read gzipped (an archive); a folder (``archive_dir``) gives the records
    of every ``.jsonl`` and ``.jsonl.gz`` file in it, in event id order."""
    if not isinstance(path, str | Path):
        return list(iter_export_lines(path, name=getattr(path, "name", "export")))
    folder = Path(path)
    if folder.is_dir():
        files = sorted(
            p for p in folder.rglob("*") if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz"))
        )
        if not files:
            raise ExportError(f"{path}: no .jsonl or .jsonl.gz files in this folder")
        records = [record for file in files for record in _read_file(file)]
        return sorted(records, key=lambda record: record.event_id)
    return _read_file(folder)


def _read_file(path: Path) -> list[ReplayRecord]:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as packed:
                return list(iter_export_lines(packed, name=str(path)))
        with open(path, encoding="utf-8") as handle:
            return list(iter_export_lines(handle, name=str(path)))
    except FileNotFoundError:
        raise ExportError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ExportError(f"{path}: not UTF-8 text") from None
    except (gzip.BadGzipFile, EOFError, zlib.error):
        raise ExportError(f"{path}: not a complete gzip file") from None
    except OSError as exc:
        raise ExportError(f"{path}: cannot read it: {exc.strerror}") from None


def read_store(
    conn: Connection,
    *,
    endpoint: str | None = None,
    room_id: str | None = None,
    job_id: str | None = None,
    event_types: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[ReplayRecord]:
    """The matching stored events, oldest first, as an export would write them."""
    from receiver.store.queries import export_events

    rows = export_events(
        conn,
        endpoint=endpoint,
        room_id=room_id,
        job_id=job_id,
        event_types=event_types,
        since=since,
        until=until,
    )
    return [record_from_export(row, where=f"event {row.get('event_id')}") for row in rows]


def filter_records(
    records: Iterable[ReplayRecord],
    *,
    endpoint: str | None = None,
    room_id: str | None = None,
    job_id: str | None = None,
    event_types: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[ReplayRecord]:
    """The same filters as the store's, applied to records read from a file (a room or job id
    in either spelling matches both, as in the store)."""
    chosen = []
    types = set(event_types) if event_types else None
    room_key, job_key = optional_key(room_id), optional_key(job_id)
    for record in records:
        at = record.received_at
        if (
            (endpoint is not None and record.endpoint != endpoint)
            or (room_key is not None and optional_key(record.room_id) != room_key)
            or (job_key is not None and optional_key(record.job_id) != job_key)
            or (types is not None and record.event_type not in types)
            or (since is not None and (at is None or at < since))
            or (until is not None and (at is None or at > until))
        ):
            continue
        chosen.append(record)
    return chosen


def resume_point(records: Sequence[ReplayRecord], start_after: int | None) -> int:
    """Index of the first record to send when resuming after event ``start_after``: just past
    that event when it is among the records, else past every event with an id up to it."""
    if start_after is None:
        return 0
    for index, record in enumerate(records):
        if record.event_id == start_after:
            return index + 1
    return sum(1 for record in records if record.event_id <= start_after)

"""Deliver stored or exported events again, in order, re-signed for another receiver.

Records come from an export file (JSON Lines written by ``metastudio-receiver export``, format
``metastudio-receiver/export/v1``, see :func:`receiver.store.queries.export_events`) or straight
from
the store. Each is sent with its ORIGINAL body bytes, signed for the target at send time (a fresh
hwTime, so the target's tolerance window holds however old the event is) and marked with
``x-receiver-replay: <source>:<original event id>``.

A run stops at the first delivery that still fails after a few retries (unless ``keep_going``),
and on ``stop`` / Ctrl-C between two deliveries, so ``last_event_id`` -- the last one the target
confirmed -- is an exact resume point: ``start_after=last_event_id`` sends each event once.

Retries reuse the signed request, so a delivery that was stored although its answer was lost is
answered ``duplicate`` (the receiver deduplicates on endpoint, signing time and body) and is not
stored twice. For the same reason two identical bodies are never sent with the same hwTime.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from receiver.errors import ReceiverError
from receiver.protocol.ids import optional_key
from receiver.protocol.signing import AuthType, SignedUri, TimeUnit, mask_secrets_in
from receiver.tools.sender import (
    REPLAY_HEADER,
    USER_AGENT,
    Answer,
    SignedCallback,
    build_callback,
    deliver,
    retarget,
)

if TYPE_CHECKING:
    import httpx2
    from sqlalchemy.engine import Connection

EXPORT_FORMAT = "metastudio-receiver/export/v1"  # the same as receiver.store.queries.EXPORT_FORMAT
MAX_GAP_SECONDS = 60.0
RETRIES = 3
RETRY_BACKOFF = (0.5, 1.0, 2.0, 4.0)
# A signed request older than this is signed again before a retry (MetaStudio documents a
# one-minute validity for the same signature on its custom platform API).
RESIGN_AFTER_SECONDS = 30.0
# Answers worth retrying: the receiver could not store it now (503), or no answer came.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


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


@dataclass(frozen=True, slots=True)
class ReplayTarget:
    """The receiver endpoint to replay into, as MetaStudio would be configured for it."""

    registered_url: str
    auth_type: AuthType | str = "MSS_A"
    key: str = field(default="", repr=False)
    signed_uri: SignedUri | str = "host_path_query"
    time_unit: TimeUnit | str = "seconds"
    to: str | None = None
    """Base URL where the target really listens (None: the registered URL itself)."""

    def sign(self, record: ReplayRecord, *, when: float, source: str) -> SignedCallback:
        return build_callback(
            event_type=record.event_type,
            body=record.body,
            registered_url=self.registered_url,
            auth_type=self.auth_type,
            key=self.key,
            when=when,
            signed_uri=self.signed_uri,
            time_unit=self.time_unit,
            extra_headers={REPLAY_HEADER: f"{source}:{record.event_id}"},
        )

    def check(self) -> None:
        """Raise ValueError now, not at the first event, when the target cannot be signed for."""
        self.sign(
            ReplayRecord(0, "", "", None, None, None, None, b""), when=time.time(), source="x"
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """What a replay would send (``--dry-run``)."""

    total: int
    by_endpoint: dict[str, int]
    by_event_type: dict[str, int]
    first_event_id: int | None
    last_event_id: int | None
    first_at: datetime | None
    last_at: datetime | None
    target: str | None
    """Where the requests would go (the registered URL, moved to ``to`` if given)."""
    skipped: int = 0
    """Records left out by ``start_after``."""
    estimated_seconds: float | None = None
    """The least time the run takes at the given pace (None: as fast as the target answers)."""

    @property
    def span_seconds(self) -> float | None:
        if self.first_at is None or self.last_at is None:
            return None
        return (self.last_at - self.first_at).total_seconds()

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "skipped": self.skipped,
            "by_endpoint": self.by_endpoint,
            "by_event_type": self.by_event_type,
            "first_event_id": self.first_event_id,
            "last_event_id": self.last_event_id,
            "first_at": _iso(self.first_at),
            "last_at": _iso(self.last_at),
            "span_seconds": self.span_seconds,
            "target": self.target,
            "estimated_seconds": self.estimated_seconds,
        }

    def lines(self) -> list[str]:
        out = [
            f"would replay {self.total} event(s)" + (f" to {self.target}" if self.target else "")
        ]
        if self.skipped:
            out.append(f"  skipped (up to --resume-after): {self.skipped}")
        if self.total:
            out.append(
                f"  event ids {self.first_event_id} .. {self.last_event_id}; originally "
                f"{_iso(self.first_at) or '?'} .. {_iso(self.last_at) or '?'}"
                + (f" ({self.span_seconds:.1f} s)" if self.span_seconds is not None else "")
            )
        if self.estimated_seconds is not None:
            out.append(f"  at this pace: at least {self.estimated_seconds:.1f} s")
        for title, counts in (("endpoint", self.by_endpoint), ("event type", self.by_event_type)):
            for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
                out.append(f"  {title} {name}: {count}")
        return out


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """How far a replay got."""

    sent: int = 0
    """Records delivered and answered (whatever the answer)."""
    stored: int = 0
    duplicate: int = 0
    failed: int = 0
    last_event_id: int | None = None
    """The last event the target confirmed (stored or duplicate) before the run ended."""
    interrupted: bool = False
    total: int = 0
    skipped: int = 0
    failed_event_ids: tuple[int, ...] = ()
    error: str | None = None
    """Why the run stopped early (the last failure), if it did."""
    uncertain_event_id: int | None = None
    """Interrupted while this event was on its way: it may or may not be stored. Resuming sends
    it again, which the target stores a second time only if the first attempt was stored."""
    elapsed_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every record is stored (or was already) and nothing was interrupted."""
        done = self.stored + self.duplicate
        return not self.interrupted and self.failed == 0 and done == self.total - self.skipped

    @property
    def remaining(self) -> int:
        return max(self.total - self.skipped - self.stored - self.duplicate - self.failed, 0)

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "skipped": self.skipped,
            "sent": self.sent,
            "stored": self.stored,
            "duplicate": self.duplicate,
            "failed": self.failed,
            "failed_event_ids": list(self.failed_event_ids),
            "last_event_id": self.last_event_id,
            "interrupted": self.interrupted,
            "uncertain_event_id": self.uncertain_event_id,
            "error": self.error,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "ok": self.ok,
        }


Progress = Callable[[ReplayReport], None]
Send = Callable[[SignedCallback], Answer]


# -- reading -----------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


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
        yield record_from_export(data, where=where)


def read_export(path: str | Path | IO[str]) -> list[ReplayRecord]:
    """Every record of an export file (a path, or an open text file such as stdin)."""
    if not isinstance(path, str | Path):
        return list(iter_export_lines(path, name=getattr(path, "name", "export")))
    try:
        with open(path, encoding="utf-8") as handle:
            return list(iter_export_lines(handle, name=str(path)))
    except FileNotFoundError:
        raise ExportError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ExportError(f"{path}: not UTF-8 text") from None
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


# -- planning ----------------------------------------------------------------------------------


def plan(
    records: Iterable[ReplayRecord],
    target: ReplayTarget | None = None,
    *,
    start_after: int | None = None,
    pace: str | float | None = None,
    speed: float = 1.0,
    max_gap: float = MAX_GAP_SECONDS,
) -> Plan:
    """How many events a replay would send, where from, and over what original time span."""
    every = list(records)
    skip = resume_point(every, start_after)
    chosen = every[skip:]
    moments = [record.when for record in chosen if record.when is not None]
    where = None
    if target is not None:
        where = retarget(target.registered_url.partition("#")[0], target.to)
    return Plan(
        total=len(chosen),
        by_endpoint=dict(Counter(record.endpoint for record in chosen)),
        by_event_type=dict(Counter(record.event_type for record in chosen)),
        first_event_id=chosen[0].event_id if chosen else None,
        last_event_id=chosen[-1].event_id if chosen else None,
        first_at=min(moments) if moments else None,
        last_at=max(moments) if moments else None,
        target=where,
        skipped=skip,
        estimated_seconds=_estimate(chosen, pace, speed=speed, max_gap=max_gap),
    )


def _estimate(
    records: Sequence[ReplayRecord], pace: str | float | None, *, speed: float, max_gap: float
) -> float | None:
    if pace is None:
        return None
    if pace == "original":
        return sum(_gaps(records, max_gap=max_gap, speed=speed))
    return max(len(records) - 1, 0) / float(pace)


def _gaps(records: Sequence[ReplayRecord], *, max_gap: float, speed: float) -> list[float]:
    """Seconds to wait before each record to keep the original pace (0 before the first)."""
    gaps = [0.0]
    for before, after in itertools.pairwise(records):
        if before.when is None or after.when is None:
            gaps.append(0.0)
            continue
        gap = (after.when - before.when).total_seconds()
        gaps.append(min(max(gap, 0.0), max_gap) / speed)
    return gaps


def parse_pace(text: str | None) -> str | float | None:
    """``original``, ``N/s`` or ``N`` (events per second), ``max`` / None (as fast as possible)."""
    if text is None or text.strip().lower() in ("", "max", "none", "fast"):
        return None
    value = text.strip().lower()
    if value == "original":
        return "original"
    number = value.removesuffix("/s")
    try:
        rate = float(number)
    except ValueError:
        raise ValueError(
            f"pace must be 'original', a rate like '50/s', or 'max'; not {text!r}"
        ) from None
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"pace must be a positive rate, not {text!r}")
    return rate


# -- sending -----------------------------------------------------------------------------------


class _Run:
    """The mutable state of one run; frozen into a :class:`ReplayReport`."""

    def __init__(self, total: int, skipped: int) -> None:
        self.started = time.monotonic()
        self.report = ReplayReport(total=total, skipped=skipped)

    def update(self, **changes: Any) -> None:
        self.report = replace(
            self.report, elapsed_seconds=time.monotonic() - self.started, **changes
        )


def _tick(when: float, unit: TimeUnit | str) -> int:
    return round(when * 1000) if unit == TimeUnit.MILLISECONDS else int(when)


def replay(
    records: Iterable[ReplayRecord],
    *,
    target: ReplayTarget,
    pace: str | float | None = None,
    speed: float = 1.0,
    max_gap: float = MAX_GAP_SECONDS,
    start_after: int | None = None,
    keep_going: bool = False,
    retries: int = RETRIES,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    source: str | None = None,
    send: Send | None = None,
    client: httpx2.Client | None = None,
    timeout: float = 10.0,
    clock: Callable[[], float] = time.time,
) -> ReplayReport:
    """Send ``records`` to ``target`` in order; returns how far it got (never raises for a
    failed delivery or an interruption: see :class:`ReplayReport`).

    ``pace``: None (as fast as the target answers), events per second, or ``"original"`` (the
    original gaps, each at most ``max_gap`` seconds, divided by ``speed``). ``source`` names
    where the events come from in the ``x-receiver-replay`` header (default: each record's
    endpoint). ``send`` replaces the HTTP delivery (e.g. in-process to an ASGI app).
    """
    every = list(records)
    skip = resume_point(every, start_after)
    chosen = every[skip:]
    target.check()
    if speed <= 0 or not math.isfinite(speed):
        raise ValueError("speed must be a positive number")
    if retries < 0:
        raise ValueError("retries must be 0 or more")
    if pace is not None and pace != "original" and (not isinstance(pace, int | float) or pace <= 0):
        raise ValueError("pace must be None, 'original' or a positive rate")
    stop = stop or threading.Event()
    run = _Run(total=len(every), skipped=skip)
    own_client = None
    if send is None:
        if client is None:
            import httpx2

            own_client = client = httpx2.Client(headers={"user-agent": USER_AGENT}, timeout=timeout)
        http = client

        def send(callback: SignedCallback) -> Answer:
            return deliver(callback, to=target.to, client=http)

    gaps = _gaps(chosen, max_gap=max_gap, speed=speed) if pace == "original" else []
    last_tick: dict[bytes, int] = {}
    current: ReplayRecord | None = None
    try:
        # Start on a fresh hwTime tick: nothing sent by an earlier run (one that just stopped,
        # say) shares a signing time with this one, so no body of it is taken as a retry of ours.
        if chosen and _next_tick(target.time_unit, clock, stop):
            run.update(interrupted=True)
            chosen = []
        next_at = time.monotonic()
        for index, record in enumerate(chosen):
            # Pacing: a schedule, not a sleep after each send, so slow answers do not add up.
            if pace == "original":
                next_at += gaps[index]
            elif pace is not None and index:
                next_at += 1.0 / float(pace)
            if stop.wait(max(next_at - time.monotonic(), 0.0)) or stop.is_set():
                run.update(interrupted=True)
                break
            current = record
            outcome, stopped = _send_one(
                record,
                target=target,
                send=send,
                retries=retries,
                stop=stop,
                source=source or record.endpoint,
                clock=clock,
                last_tick=last_tick,
            )
            current = None
            if isinstance(outcome, Answer) and outcome.stored:
                duplicate = outcome.result == "duplicate"
                run.update(
                    sent=run.report.sent + 1,
                    stored=run.report.stored + (0 if duplicate else 1),
                    duplicate=run.report.duplicate + (1 if duplicate else 0),
                    last_event_id=record.event_id,
                )
            elif stopped:  # while waiting to retry: not confirmed, maybe stored (no answer)
                uncertain = record.event_id if isinstance(outcome, Exception) else None
                run.update(interrupted=True, uncertain_event_id=uncertain)
                break
            else:
                answered = isinstance(outcome, Answer)
                problem = _describe(outcome) if outcome is not None else "not sent"
                run.update(
                    sent=run.report.sent + (1 if answered else 0),
                    failed=run.report.failed + 1,
                    failed_event_ids=(*run.report.failed_event_ids, record.event_id),
                    error=f"event {record.event_id}: {problem}",
                )
                if not keep_going:
                    break
            if progress is not None:
                progress(run.report)
    except KeyboardInterrupt:
        uncertain = current.event_id if current is not None else None
        run.update(interrupted=True, uncertain_event_id=uncertain)
    finally:
        if own_client is not None:
            own_client.close()
    run.update()
    return run.report


def _describe(outcome: Answer | Exception) -> str:
    if isinstance(outcome, Exception):
        return mask_secrets_in(f"no answer ({type(outcome).__name__}: {outcome})")
    detail = outcome.json.get("error_msg") if isinstance(outcome.json, dict) else None
    code = outcome.json.get("error_code") if isinstance(outcome.json, dict) else None
    if detail is None:
        detail = outcome.text[:200]
    return f"answered {outcome.status}" + (f" {code}" if code else "") + f": {detail}"


def _send_one(
    record: ReplayRecord,
    *,
    target: ReplayTarget,
    send: Send,
    retries: int,
    stop: threading.Event,
    source: str,
    clock: Callable[[], float],
    last_tick: dict[bytes, int],
) -> tuple[Answer | Exception | None, bool]:
    """Deliver one record, retrying what may succeed later: (last outcome, stopped). The outcome
    is None when the run was stopped before anything was sent."""
    import httpx2

    digest = hashlib.sha256(record.body).digest()
    outcome: Answer | Exception | None = None
    callback: SignedCallback | None = None
    signed = 0.0
    for attempt in range(retries + 1):
        if attempt and stop.wait(RETRY_BACKOFF[min(attempt - 1, len(RETRY_BACKOFF) - 1)]):
            return outcome, True
        if callback is None or clock() - signed > RESIGN_AFTER_SECONDS:
            callback, signed = _sign_fresh(record, target, source, clock, last_tick, digest, stop)
            if callback is None:
                return outcome, True
        try:
            outcome = send(callback)
        except httpx2.TransportError as exc:
            outcome = exc
            continue
        if outcome.stored or outcome.status not in RETRY_STATUSES:
            break
    return outcome, False


def _next_tick(unit: TimeUnit | str, clock: Callable[[], float], stop: threading.Event) -> bool:
    """Wait until the hwTime tick (second or millisecond) changes; True if stopped first."""
    step = 0.001 if unit == TimeUnit.MILLISECONDS else 1.0
    start = _tick(clock(), unit)
    while True:
        now = clock()
        if _tick(now, unit) != start:
            return False
        if stop.wait(max((start + 1) * step - now, 0.0) + 0.0005):
            return True


def _sign_fresh(
    record: ReplayRecord,
    target: ReplayTarget,
    source: str,
    clock: Callable[[], float],
    last_tick: dict[bytes, int],
    digest: bytes,
    stop: threading.Event,
) -> tuple[SignedCallback | None, float]:
    """Sign ``record`` now. The receiver takes the same body with the same signing time for the
    same delivery, so an identical body already sent in this hwTime tick waits for the next."""
    now = clock()
    if last_tick.get(digest) == _tick(now, target.time_unit):
        if _next_tick(target.time_unit, clock, stop):
            return None, now
        now = clock()
    last_tick[digest] = _tick(now, target.time_unit)
    return target.sign(record, when=now, source=source), now

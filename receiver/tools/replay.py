"""Deliver stored or exported events again, in order, re-signed for another receiver.

This is the run itself: the records (read by :mod:`receiver.tools.replay_records`) are sent
each with its ORIGINAL body bytes, signed for the :class:`ReplayTarget` at send time (a fresh
hwTime, so the target's tolerance window holds however old the event is) and marked with
``x-receiver-replay: <source>:<original event id>``, at the pace planned by
:mod:`receiver.tools.replay_plan`; :class:`ReplayReport` says how far it got.

A run stops at the first delivery that still fails after a few retries (unless ``keep_going``),
and on ``stop`` / Ctrl-C between two deliveries, so ``last_event_id`` -- the last one the target
confirmed -- is an exact resume point: ``start_after=last_event_id`` sends each event once.

Retries reuse the signed request, so a delivery that was stored although its answer was lost is
answered ``duplicate`` (the receiver deduplicates on endpoint, signing time and body) and is not
stored twice. For the same reason two identical bodies are never sent with the same hwTime.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from receiver.protocol.signing import AuthType, SignedUri, TimeUnit, mask_secrets_in
from receiver.tools.replay_plan import MAX_GAP_SECONDS, gaps
from receiver.tools.replay_records import ReplayRecord, resume_point
from receiver.tools.sender import (
    REPLAY_HEADER,
    USER_AGENT,
    Answer,
    SignedCallback,
    build_callback,
    deliver,
)

if TYPE_CHECKING:
    import httpx2

RETRIES = 3
RETRY_BACKOFF = (0.5, 1.0, 2.0, 4.0)
# A signed request older than this is signed again before a retry (MetaStudio documents a
# one-minute validity for the same signature on its custom platform API).
RESIGN_AFTER_SECONDS = 30.0
# Answers worth retrying: the receiver could not store it now (503), or no answer came.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


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

    waits = gaps(chosen, max_gap=max_gap, speed=speed) if pace == "original" else []
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
                next_at += waits[index]
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

"""Cross-check rules: pure functions of (what was received, what MetaStudio lists, now).

MSS_A signs the URL and the time, not the body (signing-notes.md): a captured signature can carry
any body while its time window is open. What MetaStudio's own job query API says about a room
(metastudio-list-smart-live-jobs.txt, Table 6) is what tells a real event from a forged one and a
healthy livestream from a broken one. Each rule turns a disagreement into a ``Draft`` finding;
``receiver.crosscheck.run`` stores them, one per condition, and resolves those that cleared.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from receiver.config import EndpointSettings
from receiver.protocol.events import KNOWN_EVENT_TYPES
from receiver.protocol.ids import id_key, optional_key, same_id

# Finding kinds (the ``kind`` filter of GET /v1/findings).
UNKNOWN_JOB = "unknown_job"
OUTSIDE_JOB_WINDOW = "event_outside_job_window"
STREAM_ENDED_JOB_RUNNING = "stream_ended_job_running"
JOB_ENDED_STREAM_CONNECTED = "job_ended_stream_connected"
JOB_FAILED = "job_failed"
JOB_BLOCKED = "job_blocked"
CALLBACK_URL_MISMATCH = "callback_url_mismatch"
CALLBACK_AUTH_MISMATCH = "callback_auth_type_mismatch"
CALLBACK_EVENTS_MISSING = "callback_event_types_missing"
METASTUDIO_UNREACHABLE = "metastudio_unreachable"
METASTUDIO_UNAUTHORIZED = "metastudio_unauthorized"
METASTUDIO_BAD_REQUEST = "metastudio_bad_request"
SIGNATURE_REUSED = "signature_reused"

JOB_RULE_KINDS = (
    UNKNOWN_JOB,
    OUTSIDE_JOB_WINDOW,
    STREAM_ENDED_JOB_RUNNING,
    JOB_ENDED_STREAM_CONNECTED,
    JOB_FAILED,
    JOB_BLOCKED,
    CALLBACK_URL_MISMATCH,
    CALLBACK_AUTH_MISMATCH,
    CALLBACK_EVENTS_MISSING,
)
API_KINDS = (METASTUDIO_UNREACHABLE, METASTUDIO_UNAUTHORIZED, METASTUDIO_BAD_REQUEST)
DELIVERY_KINDS = (SIGNATURE_REUSED,)
"""Facts about what was stored, not states MetaStudio can change: no later run clears them."""
ALL_KINDS = JOB_RULE_KINDS + API_KINDS + DELIVERY_KINDS

RUNNING_STATES = frozenset({"WAITING", "PROCESSING"})
ENDED_STATES = frozenset({"SUCCEED", "FAILED", "BLOCKED"})


@dataclass(frozen=True, slots=True)
class Policy:
    window_skew: timedelta = timedelta(seconds=120)
    """Events up to this long before start_time or after end_time are not flagged."""
    grace: timedelta = timedelta(seconds=300)
    """How long a stream/job state disagreement may last before it is a finding."""
    reuse_spread: timedelta = timedelta(seconds=10)
    """Different bodies under one signature arriving at most this far apart are taken for
    MetaStudio's own callbacks of one second (see ``reused_signatures``)."""


@dataclass(frozen=True, slots=True)
class JobActivity:
    """What the receiver stored for one job (aggregated from its events)."""

    job_id: str
    room_id: str
    endpoints: frozenset[str]
    event_count: int
    first_at: datetime
    last_at: datetime
    first_event_id: int
    last_event_id: int
    event_types: frozenset[str] = frozenset()
    rtmp_state: str | None = None
    rtmp_at: datetime | None = None
    rtmp_event_id: int | None = None


@dataclass(frozen=True, slots=True)
class Draft:
    kind: str
    room_id: str | None
    job_id: str | None
    detail: str
    endpoint: str | None = None
    event_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    scope: str | None = None
    """What else tells one condition from another of the same kind (a signing time)."""

    @property
    def room_key(self) -> str | None:
        return optional_key(self.room_id)

    @property
    def job_key(self) -> str | None:
        return optional_key(self.job_id)

    @property
    def fingerprint(self) -> str:
        """One finding per condition: the same kind for the same job/room/endpoint is one row,
        whichever spelling of the ids (``receiver.protocol.ids``) the condition was seen under."""
        parts: tuple[str, ...] = (
            self.kind,
            self.room_key or "",
            self.job_key or "",
            self.endpoint or "",
        )
        if self.scope is not None:  # only then: stored findings keep their fingerprints
            parts += (self.scope,)
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time from a SmartLiveJob field; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None or not _EARLIEST <= parsed <= _LATEST:
        # Years 1 and 9999 are readable but leave no room for the window's skew and grace
        # (timedelta arithmetic on them overflows): such a time is as good as absent.
        return None
    return parsed


_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def evaluate_room(
    *,
    room_id: str,
    jobs: Sequence[Mapping[str, Any]],
    activity: Iterable[JobActivity],
    endpoints: Mapping[str, EndpointSettings],
    now: datetime,
    policy: Policy | None = None,
    complete: bool = True,
) -> list[Draft]:
    """Every finding for one room, given the jobs MetaStudio lists there.

    Jobs are matched to events by ``id_key``: MetaStudio lists a job as a dashed UUID and its
    callbacks name it with 32 hex digits (``receiver.protocol.ids``).

    ``complete`` False (paging stopped before MetaStudio's count) means a job missing from
    ``jobs`` is no evidence that MetaStudio does not know it: no unknown-job findings then.
    """
    policy = policy or Policy()
    by_id = {id_key(str(job.get("job_id"))): job for job in jobs if job.get("job_id")}
    drafts: list[Draft] = []
    for act in activity:
        job = by_id.get(id_key(act.job_id))
        if job is None:
            if complete:
                drafts.append(_unknown_job(act))
            continue
        drafts.extend(_window(act, job, policy))
        drafts.extend(_stream_vs_job(act, job, now, policy))
        drafts.extend(_callback_config(act, job, endpoints))
    for job in by_id.values():
        drafts.extend(_job_outcome(room_id, job))
    return drafts


def _unknown_job(act: JobActivity) -> Draft:
    return Draft(
        kind=UNKNOWN_JOB,
        room_id=act.room_id,
        job_id=act.job_id,
        event_id=act.first_event_id,
        detail=(
            f"{act.event_count} event(s) name job {act.job_id} but MetaStudio lists no such job "
            f"in room {act.room_id}: forged, or sent to the wrong receiver"
        ),
        data={"event_count": act.event_count, "endpoints": sorted(act.endpoints)},
    )


def _window(act: JobActivity, job: Mapping[str, Any], policy: Policy) -> list[Draft]:
    start = parse_time(job.get("start_time"))
    end = parse_time(job.get("end_time"))
    problems = []
    if start is not None and act.first_at < start - policy.window_skew:
        problems.append(
            f"the first event ({_iso(act.first_at)}) is before start_time {_iso(start)}"
        )
    if end is not None and act.last_at > end + policy.window_skew:
        problems.append(f"the last event ({_iso(act.last_at)}) is after end_time {_iso(end)}")
    if not problems:
        return []
    return [
        Draft(
            kind=OUTSIDE_JOB_WINDOW,
            room_id=act.room_id,
            job_id=act.job_id,
            event_id=act.first_event_id if act.first_at < (start or act.first_at) else None,
            detail="; ".join(problems)
            + f" (allowed skew {int(policy.window_skew.total_seconds())} s)",
            data={
                "start_time": job.get("start_time"),
                "end_time": job.get("end_time"),
                "first_event_at": _iso(act.first_at),
                "last_event_at": _iso(act.last_at),
            },
        )
    ]


def _stream_vs_job(
    act: JobActivity, job: Mapping[str, Any], now: datetime, policy: Policy
) -> list[Draft]:
    state = job.get("state")
    if act.rtmp_state is None or act.rtmp_at is None:
        return []
    data = {"job_state": state, "rtmp_state": act.rtmp_state, "rtmp_at": _iso(act.rtmp_at)}
    if act.rtmp_state == "END" and state in RUNNING_STATES and now - act.rtmp_at > policy.grace:
        return [
            Draft(
                kind=STREAM_ENDED_JOB_RUNNING,
                room_id=act.room_id,
                job_id=act.job_id,
                event_id=act.rtmp_event_id,
                detail=f"the stream ENDed at {_iso(act.rtmp_at)} but MetaStudio still says the "
                f"job is {state}",
                data=data,
            )
        ]
    ended_at = parse_time(job.get("end_time")) or parse_time(job.get("lastupdate_time"))
    if (
        act.rtmp_state == "CONNECTED"
        and state in ENDED_STATES
        and now - max(act.rtmp_at, ended_at or act.rtmp_at) > policy.grace
    ):
        return [
            Draft(
                kind=JOB_ENDED_STREAM_CONNECTED,
                room_id=act.room_id,
                job_id=act.job_id,
                event_id=act.rtmp_event_id,
                detail=f"MetaStudio says the job is {state} but the stream was last seen "
                f"CONNECTED ({_iso(act.rtmp_at)}) and never ENDed",
                data=data,
            )
        ]
    return []


def _job_outcome(room_id: str, job: Mapping[str, Any]) -> list[Draft]:
    state = job.get("state")
    job_id = str(job.get("job_id"))
    listed_room = job.get("room_id")
    if isinstance(listed_room, str) and same_id(listed_room, room_id):
        room_id = listed_room  # MetaStudio's own spelling, as for job_id
    if state == "FAILED":
        error = job.get("error_info") or {}
        if not isinstance(error, Mapping):
            error = {"error_msg": str(error)}
        return [
            Draft(
                kind=JOB_FAILED,
                room_id=room_id,
                job_id=job_id,
                detail=f"the job FAILED: {error.get('error_code') or '?'} "
                f"{error.get('error_msg') or ''}".strip(),
                data={"error_info": dict(error)},
            )
        ]
    if state == "BLOCKED":
        reason = job.get("block_reason")
        return [
            Draft(
                kind=JOB_BLOCKED,
                room_id=room_id,
                job_id=job_id,
                detail=f"the live room was BLOCKED: {reason or 'no reason given'}",
                data={"block_reason": reason},
            )
        ]
    return []


def _callback_config(
    act: JobActivity, job: Mapping[str, Any], endpoints: Mapping[str, EndpointSettings]
) -> list[Draft]:
    config = job.get("live_event_callback_config")
    if not isinstance(config, Mapping):
        return []
    drafts = []
    url = config.get("live_event_type_callback_url")
    auth = str(config.get("auth_type") or "").upper()
    listed = config.get("callback_event_type")
    for name in sorted(act.endpoints):
        endpoint = endpoints.get(name)
        if endpoint is None:
            continue
        if url != endpoint.registered_url:
            drafts.append(
                Draft(
                    kind=CALLBACK_URL_MISMATCH,
                    room_id=act.room_id,
                    job_id=act.job_id,
                    endpoint=name,
                    detail=f"the job's live_event_type_callback_url is {_url(url)}, not endpoint "
                    f"{name}'s registered_url {_url(endpoint.registered_url)}",
                    data={
                        "callback_url": _url(url),
                        "registered_url": _url(endpoint.registered_url),
                    },
                )
            )
        if auth and auth != endpoint.auth_type.value:
            drafts.append(
                Draft(
                    kind=CALLBACK_AUTH_MISMATCH,
                    room_id=act.room_id,
                    job_id=act.job_id,
                    endpoint=name,
                    detail=f"the job's callbacks use auth_type {auth}, endpoint {name} expects "
                    f"{endpoint.auth_type.value}",
                    data={"job_auth_type": auth, "endpoint_auth_type": endpoint.auth_type.value},
                )
            )
    if isinstance(listed, list):
        missing = sorted(KNOWN_EVENT_TYPES - {str(t) for t in listed})
        if missing:
            drafts.append(
                Draft(
                    kind=CALLBACK_EVENTS_MISSING,
                    room_id=act.room_id,
                    job_id=act.job_id,
                    detail="the job's callback_event_type omits " + ", ".join(missing),
                    data={"callback_event_type": [str(t) for t in listed], "missing": missing},
                )
            )
    return drafts


def api_problem(kind: str, room_id: str | None, detail: str) -> Draft:
    """MetaStudio unreachable, refusing our credentials or the query: visible, never fatal."""
    return Draft(kind=kind, room_id=room_id, job_id=None, detail=detail[:1000])


@dataclass(frozen=True, slots=True)
class SignedDelivery:
    """A stored (or undecodable) delivery that came with an MSS_A / MSS_A_HEAD signature."""

    delivery_id: int
    endpoint: str
    signed_at: datetime
    time_unit: str | None
    key_index: int | None
    body_sha256: str
    received_at: datetime
    event_id: int | None = None
    room_id: str | None = None
    job_id: str | None = None


def reused_signatures(
    deliveries: Iterable[SignedDelivery], policy: Policy | None = None
) -> list[Draft]:
    """One finding per signature that carried different bodies at different moments.

    The signature is hmac(key, URI(registered_url) + hwTime) (signing-notes.md): for one endpoint
    it is a function of the key and the hwTime text alone, and verification appends hwTime
    exactly as received, so a replay must repeat it. Endpoint, signing time, time unit (the same
    instant in seconds and in milliseconds is two different hwTime texts) and key index are
    therefore the signature without reading or keeping it. A body that came twice counts once:
    a retry of the same body is no forgery (the store keeps it as a ``duplicate``).

    MetaStudio itself signs every callback of one second (hwTime in seconds) alike: several
    jobs, or one job starting (CONNECTING, CONNECTED, the first SHOOT_SCRIPT_SWITCH), send
    different bodies under one signature all the time. Reporting every such pair would bury the
    one replay in MetaStudio's own traffic, so the rule considers *when* the bodies came: those
    MetaStudio sends in one second arrive together, a body posted to a captured URL later
    arrives later. Different bodies first seen more than ``policy.reuse_spread`` apart are a
    finding; closer together they look like MetaStudio's own and are not (a replay within that
    many seconds of the original is not caught here; the job rules still judge its content).
    A MetaStudio retry that reuses the signature of a callback that first failed is the one
    innocent cause left; the finding says so.
    """
    policy = policy or Policy()
    groups: dict[tuple[str, datetime, str, int], list[SignedDelivery]] = defaultdict(list)
    for d in deliveries:
        key_index = -1 if d.key_index is None else d.key_index
        groups[(d.endpoint, d.signed_at, d.time_unit or "", key_index)].append(d)
    drafts = []
    for (endpoint, signed_at, unit, key_index), members in sorted(groups.items()):
        first_of_body: dict[str, SignedDelivery] = {}
        for delivery in sorted(members, key=lambda d: (d.received_at, d.delivery_id)):
            first_of_body.setdefault(delivery.body_sha256, delivery)
        bodies = list(first_of_body.values())
        if len(bodies) < 2:
            continue
        spread = bodies[-1].received_at - bodies[0].received_at
        if spread <= policy.reuse_spread:
            continue
        late = [d for d in bodies if d.received_at - bodies[0].received_at > policy.reuse_spread]
        drafts.append(_reuse_draft(endpoint, signed_at, unit, key_index, bodies, late, policy))
    return drafts


def _reuse_draft(
    endpoint: str,
    signed_at: datetime,
    unit: str,
    key_index: int,
    bodies: list[SignedDelivery],
    late: list[SignedDelivery],
    policy: Policy,
) -> Draft:
    spread = (bodies[-1].received_at - bodies[0].received_at).total_seconds()
    within = policy.reuse_spread.total_seconds()
    second = "millisecond" if unit == "milliseconds" else "second"
    # Delivery and event ids, rooms and jobs: never the signature, the hwTime text or a key.
    detail = (
        f"{len(bodies)} different bodies came to endpoint {endpoint} under one signature "
        f"(signed {_iso(signed_at)}, hwTime in {unit or 'an unknown unit'}), first seen "
        f"{spread:.0f} s apart: {_ids(bodies)}. MSS_A signs the URL and the time, not the "
        f"body: {_ids(late)} may be a captured signed URL posted again with another body inside "
        f"the tolerance window, or a MetaStudio retry of a callback that first failed. "
        f"MetaStudio signs all its callbacks of one {second} alike, but those arrive together "
        f"(within {within:g} s) and are not reported."
    )
    return Draft(
        kind=SIGNATURE_REUSED,
        room_id=None,
        job_id=None,
        endpoint=endpoint,
        event_id=late[0].event_id,
        detail=detail,
        scope=f"{_iso(signed_at)}|{unit}|{key_index}",
        data={
            "signed_at": _iso(signed_at),
            "time_unit": unit or None,
            "spread_seconds": round(spread, 3),
            "delivery_ids": [d.delivery_id for d in bodies],
            "event_ids": [d.event_id for d in bodies],
            "late_delivery_ids": [d.delivery_id for d in late],
            "received_at": [_iso(d.received_at) for d in bodies],
            "room_ids": sorted({d.room_id for d in bodies if d.room_id}),
            "job_ids": sorted({d.job_id for d in bodies if d.job_id}),
        },
    )


def _ids(deliveries: Sequence[SignedDelivery], shown: int = 10) -> str:
    """'deliveries 4, 9 (events 3, -)' ('-': the body did not decode); at most ``shown``."""
    head = deliveries[:shown]
    more = f" and {len(deliveries) - shown} more" if len(deliveries) > shown else ""
    noun = "delivery" if len(deliveries) == 1 else "deliveries"
    events = ", ".join("-" if d.event_id is None else str(d.event_id) for d in head)
    return (
        f"{noun} {', '.join(str(d.delivery_id) for d in head)}{more} "
        f"(event{'' if len(head) == 1 else 's'} {events})"
    )


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _url(value: Any) -> str:
    """A callback URL for a finding: its query values (credentials for NONE) are masked."""
    text = str(value or "")
    base, sep, query = text.partition("?")
    if not sep:
        return text
    names = [piece.split("=", 1)[0] for piece in query.split("&") if piece]
    return base + "?" + "&".join(f"{n}=****" for n in names)

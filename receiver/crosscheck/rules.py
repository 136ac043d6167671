"""Cross-check rules: pure functions of (what was received, what MetaStudio lists, now).

MSS_A signs the URL and the time, not the body (signing-notes.md): a captured signature can carry
any body while its time window is open. What MetaStudio's own job query API says about a room
(metastudio-list-smart-live-jobs.txt, Table 6) is what tells a real event from a forged one and a
healthy livestream from a broken one. Each rule turns a disagreement into a ``Draft`` finding;
``receiver.crosscheck.run`` stores them, one per condition, and resolves those that cleared.

Here: the finding kinds, ``Policy``, ``Draft``, and the job rules (one room's jobs against what
its events say). The rule on deliveries alone (a signature reused) is ``signature_reuse``.
"""

from __future__ import annotations

import hashlib
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
        problems.append(f"the first event ({iso(act.first_at)}) is before start_time {iso(start)}")
    if end is not None and act.last_at > end + policy.window_skew:
        problems.append(f"the last event ({iso(act.last_at)}) is after end_time {iso(end)}")
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
                "first_event_at": iso(act.first_at),
                "last_event_at": iso(act.last_at),
            },
        )
    ]


def _stream_vs_job(
    act: JobActivity, job: Mapping[str, Any], now: datetime, policy: Policy
) -> list[Draft]:
    state = job.get("state")
    if act.rtmp_state is None or act.rtmp_at is None:
        return []
    ended_at = parse_time(job.get("end_time")) or parse_time(job.get("lastupdate_time"))
    if act.rtmp_state == "END" and state in RUNNING_STATES and now - act.rtmp_at > policy.grace:
        kind = STREAM_ENDED_JOB_RUNNING
        detail = (
            f"the stream ENDed at {iso(act.rtmp_at)} but MetaStudio still says the job is {state}"
        )
    elif (
        act.rtmp_state == "CONNECTED"
        and state in ENDED_STATES
        and now - max(act.rtmp_at, ended_at or act.rtmp_at) > policy.grace
    ):
        kind = JOB_ENDED_STREAM_CONNECTED
        detail = (
            f"MetaStudio says the job is {state} but the stream was last seen "
            f"CONNECTED ({iso(act.rtmp_at)}) and never ENDed"
        )
    else:
        return []
    return [
        Draft(
            kind=kind,
            room_id=act.room_id,
            job_id=act.job_id,
            event_id=act.rtmp_event_id,
            detail=detail,
            data={"job_state": state, "rtmp_state": act.rtmp_state, "rtmp_at": iso(act.rtmp_at)},
        )
    ]


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


def iso(value: datetime) -> str:
    """A finding's time: RFC 3339 in UTC with a Z."""
    return value.isoformat().replace("+00:00", "Z")


def _url(value: Any) -> str:
    """A callback URL for a finding: its query values (credentials for NONE) are masked."""
    text = str(value or "")
    base, sep, query = text.partition("?")
    if not sep:
        return text
    names = [piece.split("=", 1)[0] for piece in query.split("&") if piece]
    return base + "?" + "&".join(f"{n}=****" for n in names)

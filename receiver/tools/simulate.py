"""Play a realistic MetaStudio live job against a receiver, with faults on request.

The job is registered in a fake MetaStudio (an in-process ``FakeMetaStudio`` or the admin routes
``PUT/PATCH /_fake/jobs/{id}`` of a running ``fake-metastudio``) and moves WAITING → PROCESSING →
SUCCEED there, ``start_time`` / ``end_time`` set as it goes (Table 6). Its
``live_event_callback_config`` (Table 10) points at the receiver's registered URL with the
endpoint's auth type and all three event types. The callbacks are those Table 10 documents:
script paragraph switches (``shoot_script_sequence_no`` as a string, as in its example), RTMP
state changes with a reconnect, reply completions and the END of the stream, each signed by
``receiver.tools.sender`` and ``message`` sent as JSON text, as MetaStudio does.

Faults (``Fault``):

- ``forge_body``: a body for another job, sent with the URL and time of a real event (the
  signature covers URL and time, not the body: signing-notes.md). The receiver stores it; the
  cross-check flags it ``unknown_job``.
- ``stale``: an event signed an hour ago: 401.
- ``unknown_job``: a correctly signed event for a job MetaStudio does not list: stored, flagged.
- ``duplicate``: one event delivered twice: the second answer is ``duplicate``.

Signing times: with ``interval`` >= 1 s the events are signed when they are sent. Faster, they are
signed one second apart, ending just before the simulation started (a realistic spacing, all well
inside the receiver's tolerance), because two deliveries of an identical body in the same second
are one delivery to the receiver (its duplicate rule: endpoint, body and signing time).
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from receiver.errors import ConfigError, MetaStudioError, MetaStudioUnavailable
from receiver.protocol.events import EventType, RtmpState, encode
from receiver.protocol.ids import api_form
from receiver.protocol.signing import AuthType, SignedUri, TimeUnit, mask_secrets_in
from receiver.tools import sender

if TYPE_CHECKING:
    import httpx2

    from receiver.fake_metastudio.server import FakeMetaStudio


class Fault(StrEnum):
    FORGE_BODY = "forge_body"
    STALE = "stale"
    UNKNOWN_JOB = "unknown_job"
    DUPLICATE = "duplicate"


ALL_FAULTS: tuple[Fault, ...] = tuple(Fault)
STALE_AGE_SECONDS = 3600.0
REALISTIC_INTERVAL = 10.0
"""Seconds between events at ``speed`` 1 (a paragraph of a real script lasts minutes)."""
CALLBACK_EVENT_TYPES = [t.value for t in EventType]
SCENE = "Spring sale"
SCRIPT = (
    "Welcome and today's agenda",
    "Product 1: what it does",
    "Product 1: price and offer",
    "Viewer questions",
    "Wrap-up and goodbye",
)


@dataclass(frozen=True, slots=True)
class Sent:
    """One delivery and what the receiver answered."""

    index: int
    label: str
    event_type: str
    job_id: str
    fault: Fault | None
    signed_at: datetime | None
    expected: str
    """``stored``, ``duplicate`` or ``401``."""
    status: int
    """0 when the receiver did not answer at all."""
    result: str | None
    """``stored`` / ``duplicate``, or the error_code of a refusal."""
    detail: str
    event_id: int | None = None

    @property
    def ok(self) -> bool:
        if self.expected == "401":
            return self.status == 401
        return self.status == 200 and self.result == self.expected

    @property
    def answer(self) -> str:
        if self.status == 0:
            return f"no answer ({self.detail})"
        text = f"{self.status} {self.result or ''}".strip()
        if self.event_id is not None:
            text += f" (event {self.event_id})"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "event_type": self.event_type,
            "job_id": self.job_id,
            "fault": self.fault.value if self.fault else None,
            "signed_at": _iso(self.signed_at) if self.signed_at else None,
            "expected": self.expected,
            "status": self.status,
            "result": self.result,
            "event_id": self.event_id,
            "detail": self.detail,
            "ok": self.ok,
        }


@dataclass
class SimulationReport:
    room_id: str
    job_id: str
    receiver_url: str
    registered_url: str
    auth_type: AuthType
    signed_uri: SignedUri
    faults: tuple[Fault, ...]
    forged_job_id: str | None = None
    unknown_job_id: str | None = None
    sent: list[Sent] = field(default_factory=list)
    job_states: list[tuple[str, datetime]] = field(default_factory=list)
    """The job's states in the fake MetaStudio, with when each was set."""
    aborted: str | None = None

    @property
    def ok(self) -> bool:
        return self.aborted is None and all(s.ok for s in self.sent)

    @property
    def flagged_job_ids(self) -> list[str]:
        """Jobs a cross-check should flag ``unknown_job``."""
        return [j for j in (self.forged_job_id, self.unknown_job_id) if j is not None]

    def stored_for_job(self) -> list[Sent]:
        """The deliveries of the simulated job that the receiver should hold, in order."""
        return [s for s in self.sent if s.job_id == self.job_id and s.expected == "stored"]

    @property
    def listed_job_id(self) -> str:
        """The job's id as MetaStudio's job query API lists it
        (``receiver.protocol.ids.api_form``)."""
        return api_form(self.job_id)

    @property
    def listed_room_id(self) -> str:
        return api_form(self.room_id)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "room_id": self.room_id,
            "job_id": self.job_id,
            "listed_room_id": self.listed_room_id,
            "listed_job_id": self.listed_job_id,
            "receiver_url": self.receiver_url,
            "registered_url": self.registered_url,
            "auth_type": self.auth_type.value,
            "signed_uri": self.signed_uri.value,
            "faults": [f.value for f in self.faults],
            "forged_job_id": self.forged_job_id,
            "unknown_job_id": self.unknown_job_id,
            "job_states": [{"state": s, "at": _iso(at)} for s, at in self.job_states],
            "sent": [s.as_json() for s in self.sent],
            "aborted": self.aborted,
        }

    def render(self) -> str:
        lines = [
            f"simulated live job {self.job_id} in room {self.room_id}",
            f"  (callbacks spell the ids so; MetaStudio's job query lists job "
            f"{self.listed_job_id} in room {self.listed_room_id})",
            f"  sent to {self.receiver_url}, signed for {self.registered_url} "
            f"({self.auth_type.value}, signed_uri={self.signed_uri.value})",
        ]
        rows = [
            (
                str(s.index),
                _iso(s.signed_at) if s.signed_at else "-",
                s.label,
                s.fault.value if s.fault else "-",
                s.expected,
                s.answer,
                "ok" if s.ok else "UNEXPECTED",
            )
            for s in self.sent
        ]
        header = ("#", "SIGNED AT", "EVENT", "FAULT", "EXPECTED", "ANSWER", "")
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
        for row in (header, *rows):
            cells = (v.ljust(w) for v, w in zip(row, widths, strict=True))
            lines.append("  " + "  ".join(cells).rstrip())
        if self.job_states:
            states = " → ".join(f"{s} ({_iso(at)})" for s, at in self.job_states)
            lines.append(f"  job in the fake MetaStudio: {states}")
        if self.aborted:
            lines.append(f"  ABORTED: {self.aborted}")
        bad = [s for s in self.sent if not s.ok]
        if not bad and not self.aborted:
            lines.append(f"  all {len(self.sent)} answers as expected")
        else:
            lines.append(f"  {len(bad)} of {len(self.sent)} answers not as expected")
        return "\n".join(lines) + "\n"


# --- The fake MetaStudio, in process or over its admin routes ------------------------------------


class JobRegistry(Protocol):
    def put(self, job: Mapping[str, Any]) -> None: ...

    def patch(self, job_id: str, fields: Mapping[str, Any]) -> None: ...


class _InProcess:
    def __init__(self, fake: FakeMetaStudio) -> None:
        self.fake = fake

    def put(self, job: Mapping[str, Any]) -> None:
        self.fake.add_job(job)

    def patch(self, job_id: str, fields: Mapping[str, Any]) -> None:
        self.fake.update_job(job_id, **fields)


class _OverHttp:
    """``PUT`` / ``PATCH /_fake/jobs/{id}`` of a running ``metastudio-receiver fake-metastudio``."""

    def __init__(self, admin_url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(admin_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"fake: must be the fake's http(s) base URL, not {admin_url!r}")
        self.base = admin_url.rstrip("/")
        self.timeout = timeout

    def put(self, job: Mapping[str, Any]) -> None:
        self._send("PUT", str(job["job_id"]), job)

    def patch(self, job_id: str, fields: Mapping[str, Any]) -> None:
        self._send("PATCH", job_id, fields)

    def _send(self, method: str, job_id: str, payload: Mapping[str, Any]) -> None:
        import httpx2

        url = f"{self.base}/_fake/jobs/{job_id}"
        try:
            response = httpx2.request(method, url, json=dict(payload), timeout=self.timeout)
        except httpx2.TransportError as exc:
            raise MetaStudioUnavailable(
                f"the fake MetaStudio at {self.base} did not answer: {type(exc).__name__}"
            ) from None
        if response.status_code not in (200, 201):
            raise MetaStudioError(
                f"the fake MetaStudio answered {response.status_code} to {method} {url}: "
                f"{response.text[:200]}"
            )


class _NoRegistry:
    def put(self, job: Mapping[str, Any]) -> None:
        return None

    def patch(self, job_id: str, fields: Mapping[str, Any]) -> None:
        return None


def _registry(fake: FakeMetaStudio | str | None) -> JobRegistry:
    if fake is None:
        return _NoRegistry()
    if isinstance(fake, str):
        return _OverHttp(fake)
    return _InProcess(fake)


# --- The plan ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Step:
    label: str
    event_type: str
    message: dict[str, Any]
    fault: Fault | None = None
    job_state: str | None = None
    """The job state to set in the fake just before (PROCESSING) or after (SUCCEED) sending."""


def _plan(
    *,
    room_id: str,
    job_id: str,
    faults: Iterable[Fault] = (),
    forged_job_id: str = "",
    unknown_job_id: str = "",
) -> list[_Step]:
    """The callbacks of one live job, in order, with the faults in their places."""
    chosen = set(faults)
    ids = {"room_id": room_id, "job_id": job_id}
    stream = {
        "output_url": "rtmp://live-push.example.com/live",
        "stream_key": "sk_" + secrets.token_hex(12),
    }

    def rtmp(state: RtmpState, **extra: Any) -> _Step:
        message = {**ids, **stream, "state": state.value}
        return _Step(f"RTMP {state.value}", EventType.RTMP_STREAM_STATE_CHANGE, message, **extra)

    def script(number: int) -> _Step:
        message = {
            **ids,
            "scene_script_name": SCENE,
            "shoot_script_sequence_no": str(number),  # a string, as in Table 10's example
            "shoot_script_title": SCRIPT[number - 1],
        }
        return _Step(
            f"script #{number} {SCRIPT[number - 1]}", EventType.SHOOT_SCRIPT_SWITCH, message
        )

    def reply() -> _Step:
        reply_id = secrets.token_hex(16)
        message = {**ids, "reply_id": reply_id}
        return _Step(f"reply {reply_id[:8]} finished", EventType.REPLY_COMMAND_FINISH, message)

    def other_job(step: _Step, new_job_id: str, fault: Fault) -> _Step:
        message = {**step.message, "job_id": new_job_id}
        return _Step(f"{step.label} (job {new_job_id[:8]})", step.event_type, message, fault)

    steps: list[_Step] = [
        rtmp(RtmpState.CONNECTING, job_state="PROCESSING"),
        rtmp(RtmpState.CONNECTED),
        script(1),
    ]
    if Fault.DUPLICATE in chosen:
        steps.append(
            _Step(
                steps[-1].label + " again", steps[-1].event_type, steps[-1].message, Fault.DUPLICATE
            )
        )
    steps.append(script(2))
    if Fault.FORGE_BODY in chosen:
        steps.append(other_job(steps[-1], forged_job_id, Fault.FORGE_BODY))
    steps.append(reply())
    if Fault.STALE in chosen:
        steps.append(
            _Step(
                steps[-1].label + ", signed 1 h ago",
                steps[-1].event_type,
                steps[-1].message,
                Fault.STALE,
            )
        )
    steps += [
        script(3),
        rtmp(RtmpState.DISCONNECTED),
        rtmp(RtmpState.RECONNECTING),
        rtmp(RtmpState.CONNECTED),
        script(4),
        reply(),
    ]
    if Fault.UNKNOWN_JOB in chosen:
        steps.append(other_job(script(4), unknown_job_id, Fault.UNKNOWN_JOB))
    steps += [script(5), rtmp(RtmpState.END, job_state="SUCCEED")]
    return steps


# --- Running it ----------------------------------------------------------------------------------


def simulate_job(
    *,
    receiver_url: str,
    registered_url: str,
    auth_type: AuthType | str = AuthType.MSS_A,
    key: str = "",
    signed_uri: SignedUri | str = SignedUri.HOST_PATH_QUERY,
    time_unit: TimeUnit | str = TimeUnit.SECONDS,
    fake: FakeMetaStudio | str | None = None,
    room_id: str | None = None,
    job_id: str | None = None,
    faults: Iterable[Fault | str] = (),
    interval: float = 0.0,
    now: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    client: httpx2.Client | None = None,
    timeout: float = 10.0,
    on_sent: Callable[[Sent], None] | None = None,
) -> SimulationReport:
    """Register a job in ``fake`` and play its callbacks to ``receiver_url``.

    ``receiver_url``: where the receiver's endpoint listens, e.g.
    ``http://127.0.0.1:8080/callbacks/shop-a`` (the registered URL's query and the signature are
    added); a bare base URL (``http://127.0.0.1:8080``) keeps the registered URL's path.
    ``fake``: a ``FakeMetaStudio``, the base URL of a running ``fake-metastudio``, or None (no
    job is registered: the cross-check will then flag the job too). ``client``: an
    ``httpx2.Client`` to send with (e.g. one over a ``MockTransport``); default: a fresh one.
    """
    auth = _choice(AuthType, str(auth_type).upper(), "auth_type")
    form = _choice(SignedUri, signed_uri, "signed_uri")
    # "auto" is how a receiver reads hwTime; MetaStudio documents seconds (signing-notes.md).
    unit = _choice(TimeUnit, time_unit, "time_unit")
    if unit == TimeUnit.AUTO:
        unit = TimeUnit.SECONDS
    chosen = tuple(dict.fromkeys(_choice(Fault, f, "fault") for f in faults))
    if auth == AuthType.NONE and Fault.STALE in chosen:
        raise ConfigError("fault stale: auth_type NONE carries no signing time to be stale")
    if auth != AuthType.NONE and not key:
        raise ConfigError(f"key: auth_type {auth.value} needs the endpoint's key")
    if not interval >= 0:
        raise ConfigError("interval: must be 0 or more seconds")
    target = _target(receiver_url)
    registry = _registry(fake)
    # As MetaStudio does (metastudio-list-smart-live-jobs.txt): callbacks name room and job
    # with 32 hex digits, the job query API lists the same ids as dashed UUIDs (see _job).
    room_id = room_id or uuid.uuid4().hex
    job_id = job_id or uuid.uuid4().hex
    report = SimulationReport(
        room_id=room_id,
        job_id=job_id,
        receiver_url=receiver_url,
        registered_url=registered_url,
        auth_type=auth,
        signed_uri=form,
        faults=chosen,
        forged_job_id=uuid.uuid4().hex if Fault.FORGE_BODY in chosen else None,
        unknown_job_id=uuid.uuid4().hex if Fault.UNKNOWN_JOB in chosen else None,
    )
    steps = _plan(
        room_id=room_id,
        job_id=job_id,
        faults=chosen,
        forged_job_id=report.forged_job_id or "",
        unknown_job_id=report.unknown_job_id or "",
    )
    real_time = interval >= 1.0
    start = now() - len(steps) - 1  # virtual clock: one second per event, ending in the past

    def clock(index: int) -> float:
        return now() if real_time else start + index

    created = clock(0) - 60
    job = _job(room_id, job_id, registered_url, auth, key, created)
    registry.put(job)
    report.job_states.append(("WAITING", _utc(created)))

    last: sender.SignedCallback | None = None
    last_signed: float | None = None
    started_at = clock(0)
    for index, step in enumerate(steps):
        if index and interval > 0:
            sleep(interval)
        when = clock(index)
        if step.job_state == "PROCESSING":
            started_at = when
            registry.patch(
                api_form(job_id),
                {
                    "state": "PROCESSING",
                    "start_time": _rfc3339(when),
                    "lastupdate_time": _rfc3339(when),
                },
            )
            report.job_states.append(("PROCESSING", _utc(when)))
        signed_at: float | None = when
        expected = "stored"
        if step.fault == Fault.DUPLICATE and last is not None:
            callback, signed_at = last, last_signed
            expected = "stored" if auth == AuthType.NONE else "duplicate"
        elif step.fault == Fault.FORGE_BODY and last is not None:
            # The URL and time of the previous, real event; a body of the attacker's choosing.
            body = encode(step.event_type, step.message)
            callback = sender.SignedCallback(url=last.url, headers=dict(last.headers), body=body)
            signed_at = last_signed
        else:
            if step.fault == Fault.STALE:
                signed_at = when - STALE_AGE_SECONDS
                expected = "401"
            callback = sender.build_callback(
                event_type=step.event_type,
                message=step.message,
                registered_url=registered_url,
                auth_type=auth,
                key=key,
                when=signed_at,
                signed_uri=form,
                time_unit=unit,
            )
        if auth == AuthType.NONE:
            signed_at = None
        sent = _send(
            callback,
            target=target,
            client=client,
            timeout=timeout,
            index=index + 1,
            step=step,
            signed_at=signed_at,
            expected=expected,
        )
        report.sent.append(sent)
        if on_sent is not None:
            on_sent(sent)
        if sent.status == 0:
            report.aborted = f"the receiver did not answer: {sent.detail}"
            break
        if step.fault is None:
            last, last_signed = callback, signed_at
        if step.job_state == "SUCCEED":
            ended = max(when, now()) if real_time else when
            registry.patch(
                api_form(job_id),
                {
                    "state": "SUCCEED",
                    "end_time": _rfc3339(ended, up=True),
                    "lastupdate_time": _rfc3339(ended + 1, up=True),
                    "duration": round(ended - started_at, 3),
                    "stream_duration": round(max(ended - started_at - 1, 0), 3),
                },
            )
            report.job_states.append(("SUCCEED", _utc(ended)))
    return report


def _send(
    callback: sender.SignedCallback,
    *,
    target: Callable[[str], str],
    client: httpx2.Client | None,
    timeout: float,
    index: int,
    step: _Step,
    signed_at: float | None,
    expected: str,
) -> Sent:
    import httpx2

    aimed = sender.SignedCallback(
        url=target(callback.url), headers=callback.headers, body=callback.body
    )
    common: dict[str, Any] = {
        "index": index,
        "label": step.label,
        "event_type": str(step.event_type),
        "job_id": str(step.message.get("job_id")),
        "fault": step.fault,
        "signed_at": _utc(signed_at) if signed_at is not None else None,
        "expected": expected,
    }
    try:
        answer = sender.deliver(aimed, client=client, timeout=timeout)
    except httpx2.TransportError as exc:
        detail = mask_secrets_in(f"{type(exc).__name__}: {exc}")[:200]
        return Sent(**common, status=0, result=None, detail=detail)
    data = answer.json if isinstance(answer.json, dict) else {}
    result = data.get("result") if answer.status == 200 else data.get("error_code")
    event_id = data.get("event_id") if answer.status == 200 else None
    return Sent(
        **common,
        status=answer.status,
        result=result if isinstance(result, str) else None,
        detail=str(data.get("error_msg") or "")[:300] if answer.status != 200 else "",
        event_id=event_id if isinstance(event_id, int) else None,
    )


def _target(receiver_url: str) -> Callable[[str], str]:
    """Where a callback signed for the registered URL is really sent."""
    parts = urlsplit(receiver_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"receiver_url: must be an http(s) URL like http://127.0.0.1:8080/callbacks/NAME, "
            f"not {receiver_url!r}"
        )
    if parts.path in ("", "/"):
        return lambda url: sender.retarget(url, receiver_url)

    def aim(url: str) -> str:
        query = "&".join(q for q in (parts.query, urlsplit(url).query) if q)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))

    return aim


def _job(
    room_id: str, job_id: str, registered_url: str, auth: AuthType, key: str, created: float
) -> dict[str, Any]:
    from receiver.fake_metastudio.server import fake_job

    job = fake_job(
        job_id=api_form(job_id),
        room_id=api_form(room_id),
        room_name="Simulated live room",
        state="WAITING",
        create_time=_rfc3339(created),
        lastupdate_time=_rfc3339(created),
        live_event_callback_config={
            "live_event_type_callback_url": registered_url,
            "auth_type": auth.value,
            "key": key,
            "callback_event_type": list(CALLBACK_EVENT_TYPES),
        },
    )
    for name in ("start_time", "end_time", "duration", "stream_duration"):
        job.pop(name, None)  # not yet known while the job is WAITING
    return job


_E = TypeVar("_E", AuthType, SignedUri, TimeUnit, Fault)


def _choice(kind: type[_E], value: str, name: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise ConfigError(f"{name}: must be one of {allowed}, not {value!r}") from None


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _rfc3339(seconds: float, *, up: bool = False) -> str:
    whole = int(seconds) + (1 if up and seconds != int(seconds) else 0)
    return _utc(whole).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")

"""Play a realistic MetaStudio live job against a receiver, with faults on request.

The job is registered in a fake MetaStudio (``receiver.tools.simulate_registry``: an in-process
``FakeMetaStudio`` or the admin routes of a running ``fake-metastudio``) and moves WAITING →
PROCESSING → SUCCEED there. Its ``live_event_callback_config`` (Table 10) points at the
receiver's registered URL with the endpoint's auth type and all three event types. The
callbacks and the faults are planned by ``receiver.tools.simulate_plan``; each is signed by
``receiver.tools.sender`` and ``message`` sent as JSON text, as MetaStudio does, and what the
receiver answered goes into a ``receiver.tools.simulate_report.SimulationReport``.

Signing times: with ``interval`` >= 1 s the events are signed when they are sent. Faster, they are
signed one second apart, ending just before the simulation started (a realistic spacing, all well
inside the receiver's tolerance), because two deliveries of an identical body in the same second
are one delivery to the receiver (its duplicate rule: endpoint, body and signing time).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from receiver.errors import ConfigError
from receiver.protocol.events import encode
from receiver.protocol.ids import api_form
from receiver.protocol.signing import AuthType, SignedUri, TimeUnit, mask_secrets_in
from receiver.tools import sender
from receiver.tools.simulate_plan import Fault, Step, plan
from receiver.tools.simulate_registry import (
    ended_fields,
    job_record,
    job_registry,
    started_fields,
)
from receiver.tools.simulate_report import Sent, SimulationReport

if TYPE_CHECKING:
    import httpx2

    from receiver.fake_metastudio.state import FakeMetaStudio

STALE_AGE_SECONDS = 3600.0
REALISTIC_INTERVAL = 10.0
"""Seconds between events at ``speed`` 1 (a paragraph of a real script lasts minutes)."""


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
    registry = job_registry(fake)
    # As MetaStudio does (metastudio-list-smart-live-jobs.txt): callbacks name room and job
    # with 32 hex digits, the job query API lists the same ids as dashed UUIDs (see job_record).
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
    steps = plan(
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
    job = job_record(room_id, job_id, registered_url, auth, key, created)
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
            registry.patch(api_form(job_id), started_fields(when))
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
            registry.patch(api_form(job_id), ended_fields(started=started_at, ended=ended))
            report.job_states.append(("SUCCEED", _utc(ended)))
    return report


def _send(
    callback: sender.SignedCallback,
    *,
    target: Callable[[str], str],
    client: httpx2.Client | None,
    timeout: float,
    index: int,
    step: Step,
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


_E = TypeVar("_E", AuthType, SignedUri, TimeUnit, Fault)


def _choice(kind: type[_E], value: str, name: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise ConfigError(f"{name}: must be one of {allowed}, not {value!r}") from None


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)

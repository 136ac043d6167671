"""The simulated job in a fake MetaStudio: its record (Table 6, with the
``live_event_callback_config`` of Table 10) and its state changes, registered in an in-process
``FakeMetaStudio``, over the admin routes ``PUT/PATCH /_fake/jobs/{id}`` of a running
``fake-metastudio``, or nowhere.

The job moves WAITING → PROCESSING → SUCCEED, ``start_time`` / ``end_time`` set as it goes, in
the API's id spelling (``receiver.protocol.ids.api_form``) and RFC 3339 times to the second.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from receiver.errors import ConfigError, MetaStudioError, MetaStudioUnavailable
from receiver.protocol.events import EventType
from receiver.protocol.ids import api_form
from receiver.protocol.signing import AuthType

if TYPE_CHECKING:
    from receiver.fake_metastudio.state import FakeMetaStudio

CALLBACK_EVENT_TYPES = [t.value for t in EventType]


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


def job_registry(fake: FakeMetaStudio | str | None) -> JobRegistry:
    """Where the job goes: ``fake`` itself, the fake at that base URL, or nowhere (None)."""
    if fake is None:
        return _NoRegistry()
    if isinstance(fake, str):
        return _OverHttp(fake)
    return _InProcess(fake)


def job_record(
    room_id: str, job_id: str, registered_url: str, auth: AuthType, key: str, created: float
) -> dict[str, Any]:
    """The job as the fake lists it while it is WAITING, created at ``created``."""
    from receiver.fake_metastudio.sample import fake_job

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


def started_fields(when: float) -> dict[str, Any]:
    """What changes when the job starts streaming at ``when``."""
    return {
        "state": "PROCESSING",
        "start_time": _rfc3339(when),
        "lastupdate_time": _rfc3339(when),
    }


def ended_fields(*, started: float, ended: float) -> dict[str, Any]:
    """What changes when the job ends at ``ended``, having started at ``started``."""
    return {
        "state": "SUCCEED",
        "end_time": _rfc3339(ended, up=True),
        "lastupdate_time": _rfc3339(ended + 1, up=True),
        "duration": round(ended - started, 3),
        "stream_duration": round(max(ended - started - 1, 0), 3),
    }


def _rfc3339(seconds: float, *, up: bool = False) -> str:
    whole = int(seconds) + (1 if up and seconds != int(seconds) else 0)
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

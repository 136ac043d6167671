"""The world a cross-check test runs in (a pytest plugin, loaded by conftest.py): a migrated
database of each kind with the receiver's intake on it, and the fake MetaStudio on loopback that
the official SDK really talks to. Helpers build SmartLiveJobs and the events of a job.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import KEY, REGISTERED, endpoint_table
from starlette.testclient import TestClient

from receiver import fake_metastudio as fm
from receiver.config import Settings, settings_from_mapping
from receiver.crosscheck.metastudio import MetaStudioJobs
from receiver.crosscheck.run import CrossChecker, RunReport
from receiver.protocol.ids import api_form
from receiver.protocol.signing import AuthType
from receiver.store import queries
from receiver.store.models import JobSnapshot
from receiver.store.writer import create_engine_for
from receiver.testing import encode, sign_request
from receiver.web.app import build_crosschecker, create_app

HOST = "https://hooks.example.com"
ENV = {"HUAWEICLOUD_SDK_AK": fm.DEFAULT_AK, "HUAWEICLOUD_SDK_SK": fm.DEFAULT_SK}
SNAPSHOTS = JobSnapshot.__table__  # type: ignore[attr-defined]
STREAM_KEY = "live-stream-key-must-stay-secret"
ALL_TYPES = ["SHOOT_SCRIPT_SWITCH", "RTMP_STREAM_STATE_CHANGE", "REPLY_COMMAND_FINISH"]


def hex_id(text: str) -> str:
    """A 32-hex-character id, as MetaStudio's room and job ids are."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


ROOM = hex_id("room-1")
JOB = hex_id("job-1")


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def when(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def job(
    job_id: str = JOB,
    room_id: str = ROOM,
    *,
    start: datetime,
    end: datetime | None = None,
    state: str = "PROCESSING",
    **fields: Any,
) -> dict[str, Any]:
    """A SmartLiveJob (every Table 6 field) whose callbacks point at this receiver's shop-a."""
    data = fm.fake_job(
        job_id=job_id,
        room_id=room_id,
        state=state,
        create_time=rfc3339(start - timedelta(minutes=5)),
        start_time=rfc3339(start),
        lastupdate_time=rfc3339(end or start),
        **fields,
    )
    if end is None:
        del data["end_time"]  # a job still running has no end time yet
    else:
        data["end_time"] = rfc3339(end)
    return data


def script(job_id: str = JOB, room_id: str = ROOM, n: int = 1) -> tuple[str, dict[str, Any]]:
    return "SHOOT_SCRIPT_SWITCH", {
        "room_id": room_id,
        "job_id": job_id,
        "scene_script_name": "Spring sale",
        "shoot_script_sequence_no": str(n),
        "shoot_script_title": f"Product {n}",
    }


def reply(job_id: str = JOB, room_id: str = ROOM, n: int = 1) -> tuple[str, dict[str, Any]]:
    return "REPLY_COMMAND_FINISH", {"room_id": room_id, "job_id": job_id, "reply_id": f"r-{n}"}


def rtmp(state: str, job_id: str = JOB, room_id: str = ROOM) -> tuple[str, dict[str, Any]]:
    return "RTMP_STREAM_STATE_CHANGE", {
        "room_id": room_id,
        "job_id": job_id,
        "state": state,
        "output_url": "rtmp://push.example.com/live",
        "stream_key": STREAM_KEY,
    }


# -- the world a test runs in ------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[fm.FakeMetaStudio, str]]:
    fake = fm.FakeMetaStudio(credentials={fm.DEFAULT_AK: fm.DEFAULT_SK}, max_hang_seconds=1.0)
    with fm.serve_fake(fake) as url:
        yield fake, url


@dataclass
class World:
    """A migrated database, the receiver's intake on it, and the fake MetaStudio."""

    url: str
    fake: fm.FakeMetaStudio
    base_url: str
    client: TestClient
    engine: sa.Engine
    # Whole seconds, so times read back from the store compare equal.
    t0: datetime = field(default_factory=lambda: datetime.fromtimestamp(int(time.time()), UTC))
    sources: list[MetaStudioJobs] = field(default_factory=list)

    def settings(self, environ: dict[str, str] | None = None, **metastudio: Any) -> Settings:
        table: dict[str, Any] = {
            "endpoint": self.base_url,
            "project_id": fm.DEFAULT_PROJECT_ID,
            "crosscheck_interval_seconds": 0,
            # Every run asks again, so a change made in the fake is seen by the next run.
            "cache_seconds": 0,
            "timeout_seconds": 5,
        }
        table.update(metastudio)
        data = {
            "database_url": self.url,
            "api_tokens": ["test-token"],
            "endpoints": [endpoint_table(tolerance_seconds=86400)],
            "metastudio": table,
        }
        return settings_from_mapping(data, environ=ENV if environ is None else environ)

    def checker(self, environ: dict[str, str] | None = None, **metastudio: Any) -> CrossChecker:
        checker, source = build_crosschecker(self.settings(environ, **metastudio), self.engine)
        self.sources.append(source)
        return checker

    def send(
        self, event: tuple[str, dict[str, Any]], *, at: datetime, url: str | None = None
    ) -> int:
        """Deliver one callback signed at ``at`` (or to a URL signed earlier); its event id."""
        if url is None:
            url = signed_url(at)
        answer = self.client.post(url.removeprefix(HOST), content=encode(*event))
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"] == "stored"
        event_id: int = answer.json()["event_id"]
        return event_id

    def run(self, checker: CrossChecker, *, after: float = 0, **kwargs: Any) -> RunReport:
        """One cross-check at t0 + ``after`` seconds."""
        report = asyncio.run(checker.run(now=self.t0 + timedelta(seconds=after), **kwargs))
        assert report.skipped is None, report.skipped
        assert report.started_at == self.t0 + timedelta(seconds=after)
        assert report.finished_at is not None and report.finished_at >= report.started_at
        return report

    def at(self, seconds: float) -> datetime:
        return self.t0 + timedelta(seconds=seconds)

    def findings(self, **filters: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return queries.list_findings(conn, limit=1000, **filters).items

    def finding(self, kind: str, **filters: Any) -> dict[str, Any]:
        found = self.findings(kind=kind, **filters)
        assert len(found) == 1, found
        return found[0]

    def open_kinds(self, **filters: Any) -> list[str]:
        return sorted(f["kind"] for f in self.findings(status="open", **filters))

    def snapshots(self, job_id: str | None = None) -> list[Any]:
        query = sa.select(SNAPSHOTS).order_by(SNAPSHOTS.c.id)
        if job_id is not None:
            query = query.where(SNAPSHOTS.c.job_id == job_id)
        with self.engine.connect() as conn:
            return list(conn.execute(query))


def signed_url(at: datetime) -> str:
    url, _ = sign_request(
        registered_url=REGISTERED, auth_type=AuthType.MSS_A, key=KEY, when=at.timestamp()
    )
    return url


@pytest.fixture
def world(migrated_url: str, served: tuple[fm.FakeMetaStudio, str]) -> Iterator[World]:
    fake, base_url = served
    fake.reset()
    engine = create_engine_for(migrated_url)
    intake = settings_from_mapping(
        {
            "database_url": migrated_url,
            "api_tokens": ["test-token"],
            "endpoints": [endpoint_table(tolerance_seconds=86400)],
        },
        environ={},
    )
    with TestClient(create_app(intake)) as client:
        w = World(url=migrated_url, fake=fake, base_url=base_url, client=client, engine=engine)
        try:
            yield w
        finally:
            for source in w.sources:
                source.close()
            engine.dispose()
            fake.reset()


def list_calls(fake: fm.FakeMetaStudio, room_id: str | None = None) -> list[fm.RequestRecord]:
    """The job queries the fake received (of one room: asked in MetaStudio's dashed spelling)."""
    return [
        r
        for r in fake.requests
        if r.path.endswith("/smart-live-jobs")
        and (room_id is None or f"/smart-live-rooms/{api_form(room_id)}/" in r.path)
    ]

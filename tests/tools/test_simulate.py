"""receiver.tools.simulate: a live job played into a real receiver, with faults, then
cross-checked."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from conftest import KEY, REGISTERED, free_port

from receiver.cli.demo import serve_app
from receiver.config import Settings, settings_from_mapping
from receiver.errors import ConfigError, MetaStudioUnavailable
from receiver.fake_metastudio import (
    DEFAULT_AK,
    DEFAULT_PROJECT_ID,
    DEFAULT_SK,
    FakeMetaStudio,
    serve_fake,
)
from receiver.tools.simulate import STALE_AGE_SECONDS, simulate_job
from receiver.tools.simulate_plan import ALL_FAULTS, Fault
from receiver.web.app import create_app

TOKEN = "simulate-test-token"
ENVIRON = {"HUAWEICLOUD_SDK_AK": DEFAULT_AK, "HUAWEICLOUD_SDK_SK": DEFAULT_SK}
NOW = 1_760_000_000.0

# What the receiver should hold for the simulated job, in order (Table 10's event types).
EXPECTED = [
    ("RTMP_STREAM_STATE_CHANGE", "CONNECTING"),
    ("RTMP_STREAM_STATE_CHANGE", "CONNECTED"),
    ("SHOOT_SCRIPT_SWITCH", 1),
    ("SHOOT_SCRIPT_SWITCH", 2),
    ("REPLY_COMMAND_FINISH", None),
    ("SHOOT_SCRIPT_SWITCH", 3),
    ("RTMP_STREAM_STATE_CHANGE", "DISCONNECTED"),
    ("RTMP_STREAM_STATE_CHANGE", "RECONNECTING"),
    ("RTMP_STREAM_STATE_CHANGE", "CONNECTED"),
    ("SHOOT_SCRIPT_SWITCH", 4),
    ("REPLY_COMMAND_FINISH", None),
    ("SHOOT_SCRIPT_SWITCH", 5),
    ("RTMP_STREAM_STATE_CHANGE", "END"),
]


def settings_for(database_url: str, fake_url: str, **endpoint: Any) -> Settings:
    table = {"name": "shop-a", "registered_url": REGISTERED, "auth_type": "MSS_A", "keys": [KEY]}
    table.update(endpoint)
    return settings_from_mapping(
        {
            "database_url": database_url,
            "api_tokens": [TOKEN],
            "endpoints": [table],
            "metastudio": {
                "endpoint": fake_url,
                "project_id": DEFAULT_PROJECT_ID,
                "crosscheck_interval_seconds": 0,
                "cache_seconds": 0,
            },
        },
        environ=ENVIRON,
    )


@dataclass
class Stack:
    fake: FakeMetaStudio
    fake_url: str
    base_url: str
    api: httpx2.Client

    @property
    def endpoint_url(self) -> str:
        return f"{self.base_url}/callbacks/shop-a"

    def get(self, path: str, **params: str) -> Any:
        response = self.api.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()


@contextlib.contextmanager
def running(database_url: str, **endpoint: Any) -> Iterator[Stack]:
    fake = FakeMetaStudio(credentials={DEFAULT_AK: DEFAULT_SK})
    with (
        serve_fake(fake) as fake_url,
        serve_app(create_app(settings_for(database_url, fake_url, **endpoint))) as base_url,
        httpx2.Client(
            base_url=base_url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as api,
    ):
        yield Stack(fake, fake_url, base_url, api)


def summary(event: dict[str, Any]) -> tuple[str, Any]:
    message = event["message"]
    if event["event_type"] == "RTMP_STREAM_STATE_CHANGE":
        return event["event_type"], message["state"]
    if event["event_type"] == "SHOOT_SCRIPT_SWITCH":
        return event["event_type"], message["shoot_script_sequence_no"]
    return event["event_type"], None


@pytest.mark.slow
def test_a_simulated_job_is_stored_and_its_faults_found(migrated_url: str) -> None:
    with running(migrated_url) as stack:
        report = simulate_job(
            receiver_url=stack.endpoint_url,
            registered_url=REGISTERED,
            auth_type="MSS_A",
            key=KEY,
            fake=stack.fake,
            faults=ALL_FAULTS,
        )
        assert report.ok, report.render()
        assert not report.aborted

        by_fault = {s.fault: s for s in report.sent if s.fault is not None}
        assert set(by_fault) == set(Fault)
        assert (by_fault[Fault.STALE].status, by_fault[Fault.STALE].result) == (
            401,
            "RCV.SIGNATURE_EXPIRED",
        )
        duplicate = by_fault[Fault.DUPLICATE]
        original = report.sent[duplicate.index - 2]
        assert (duplicate.status, duplicate.result) == (200, "duplicate")
        assert duplicate.event_id == original.event_id
        assert duplicate.signed_at == original.signed_at
        forged = by_fault[Fault.FORGE_BODY]
        assert (forged.status, forged.result, forged.job_id) == (
            200,
            "stored",
            report.forged_job_id,
        )
        # Same URL and time as the real event just before it: the signature cannot tell.
        assert forged.signed_at == report.sent[forged.index - 2].signed_at
        assert by_fault[Fault.UNKNOWN_JOB].result == "stored"

        events = stack.get("/v1/events", job_id=report.job_id, limit="1000")["events"]
        assert [summary(e) for e in events] == EXPECTED
        assert [e["id"] for e in events] == [s.event_id for s in report.stored_for_job()]
        rtmp = [e for e in events if e["event_type"] == "RTMP_STREAM_STATE_CHANGE"]
        assert all(e["message"]["stream_key"].startswith("****") for e in rtmp)
        assert all(e["room_id"] == report.room_id for e in events)
        everything = stack.get("/v1/events", limit="1000")["events"]
        assert len(everything) == len(EXPECTED) + 2  # + the forged body and the unknown job

        rejections = stack.get("/v1/rejections")["rejections"]
        assert [r["reason"] for r in rejections] == ["signature_expired"]
        assert rejections[0]["clock_skew_seconds"] >= STALE_AGE_SECONDS

        check = stack.api.post("/v1/crosscheck", json={"room_id": report.room_id})
        assert check.status_code == 200, check.text
        assert check.json()["rooms_failed"] == 0

        unknown = stack.get("/v1/findings", kind="unknown_job")["findings"]
        assert {f["job_id"] for f in unknown} == {report.forged_job_id, report.unknown_job_id}
        assert all(f["room_id"] == report.room_id for f in unknown)
        assert stack.get("/v1/findings", job_id=report.job_id)["findings"] == []

        job = stack.get(f"/v1/jobs/{report.job_id}")
        assert job["metastudio"]["state"] == "SUCCEED"
        assert job["rtmp"]["state"] == "END"
        assert job["script"]["shoot_script_sequence_no"] == 5
        assert job["replies"]["finished"] == 2
        assert job["metastudio"]["job"]["live_event_callback_config"]["key"] == "****"

    in_fake = stack.fake.get_job(report.job_id)
    assert in_fake is not None
    assert in_fake["state"] == "SUCCEED"
    assert in_fake["create_time"] < in_fake["start_time"] <= in_fake["end_time"]
    assert [state for state, _ in report.job_states] == ["WAITING", "PROCESSING", "SUCCEED"]
    config = in_fake["live_event_callback_config"]
    assert config["live_event_type_callback_url"] == REGISTERED
    assert config["auth_type"] == "MSS_A"
    assert sorted(config["callback_event_type"]) == [
        "REPLY_COMMAND_FINISH",
        "RTMP_STREAM_STATE_CHANGE",
        "SHOOT_SCRIPT_SWITCH",
    ]


@pytest.mark.slow
def test_simulate_through_the_fake_admin_url_with_headers_and_milliseconds(
    sqlite_url: str,
) -> None:
    from receiver.store.migrate import upgrade

    upgrade(sqlite_url)
    endpoint = {"auth_type": "MSS_A_HEAD", "signed_uri": "full_url", "time_unit": "milliseconds"}
    with running(sqlite_url, **endpoint) as stack:
        report = simulate_job(
            receiver_url=stack.endpoint_url,
            registered_url=REGISTERED,
            auth_type="MSS_A_HEAD",
            key=KEY,
            signed_uri="full_url",
            time_unit="milliseconds",
            fake=stack.fake_url,  # over PUT/PATCH /_fake/jobs/{id}
            faults=["duplicate", "unknown_job"],
            room_id="room-over-http",
            job_id="job-over-http",
        )
        assert report.ok, report.render()
        assert (report.room_id, report.job_id) == ("room-over-http", "job-over-http")
        assert [s.fault for s in report.sent if s.fault] == [Fault.DUPLICATE, Fault.UNKNOWN_JOB]
        assert stack.api.post("/v1/crosscheck").status_code == 200
        findings = stack.get("/v1/findings")["findings"]
        assert [(f["kind"], f["job_id"]) for f in findings] == [
            ("unknown_job", report.unknown_job_id)
        ]
        in_fake = stack.fake.get_job("job-over-http")
        assert in_fake is not None and in_fake["state"] == "SUCCEED"
        assert in_fake["live_event_callback_config"]["auth_type"] == "MSS_A_HEAD"


# --- Without a receiver: what is sent, and when ---------------------------------------------------


class Recorder:
    """An httpx2 transport that answers like a receiver and keeps every request."""

    def __init__(self) -> None:
        self.requests: list[httpx2.Request] = []
        self.seen: dict[bytes, int] = {}

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if request.url.params.get("hwTime") and int(request.url.params["hwTime"], 16) < NOW - 600:
            return httpx2.Response(401, json={"error_code": "RCV.SIGNATURE_EXPIRED"})
        key = str(request.url).encode() + request.content
        if key in self.seen:
            return httpx2.Response(200, json={"result": "duplicate", "event_id": self.seen[key]})
        self.seen[key] = len(self.seen) + 1
        return httpx2.Response(200, json={"result": "stored", "event_id": self.seen[key]})


def recorded(**kwargs: Any) -> tuple[Any, Recorder]:
    recorder = Recorder()
    options: dict[str, Any] = {
        "receiver_url": "http://127.0.0.1:9/callbacks/shop-a",
        "registered_url": REGISTERED + "?tenant=a",
        "key": KEY,
        "now": lambda: NOW,
    }
    options.update(kwargs)
    with httpx2.Client(transport=httpx2.MockTransport(recorder)) as client:
        report = simulate_job(client=client, **options)
    return report, recorder


def test_bodies_are_what_metastudio_sends() -> None:
    report, recorder = recorded(faults=ALL_FAULTS)
    assert report.ok, report.render()
    assert len(recorder.requests) == 17
    for request in recorder.requests:
        assert request.url.path == "/callbacks/shop-a"
        assert request.url.params["tenant"] == "a"  # the registered query travels along
        assert request.headers["content-type"] == "application/json"
        body = json.loads(request.content)
        assert set(body) == {"event_type", "message"}
        assert isinstance(body["message"], str)  # JSON text inside JSON, as Table 10 shows
        message = json.loads(body["message"])
        assert message["room_id"] == report.room_id
        if body["event_type"] == "SHOOT_SCRIPT_SWITCH":
            assert isinstance(message["shoot_script_sequence_no"], str)
            assert message["shoot_script_title"]
    forged = next(s for s in report.sent if s.fault == Fault.FORGE_BODY)
    real, fake = recorder.requests[forged.index - 2], recorder.requests[forged.index - 1]
    assert real.url == fake.url and real.content != fake.content
    assert json.loads(json.loads(fake.content)["message"])["job_id"] == report.forged_job_id


def test_signing_times_are_a_second_apart_and_in_the_past() -> None:
    report, _ = recorded()
    times = [s.signed_at.timestamp() for s in report.sent if s.signed_at is not None]
    assert len(times) == 13
    assert all(b - a == 1 for a, b in itertools.pairwise(times))
    assert times[-1] < NOW


def test_stale_is_signed_an_hour_before() -> None:
    report, _ = recorded(faults=["stale"])
    stale = next(s for s in report.sent if s.fault == Fault.STALE)
    previous = report.sent[stale.index - 2]
    assert stale.signed_at is not None and previous.signed_at is not None
    assert (previous.signed_at - stale.signed_at).total_seconds() == pytest.approx(
        STALE_AGE_SECONDS - 1
    )
    assert stale.status == 401 and stale.ok


def test_interval_paces_the_events_in_real_time() -> None:
    clock = [NOW]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        clock[0] += seconds

    report, _ = recorded(interval=2.0, now=lambda: clock[0], sleep=sleep)
    assert pauses == [2.0] * 12
    assert [s.signed_at.timestamp() for s in report.sent if s.signed_at] == [
        NOW + 2 * i for i in range(13)
    ]


def test_none_auth_sends_the_registered_url_as_is() -> None:
    report, recorder = recorded(
        auth_type="NONE", key="", registered_url=REGISTERED + "?token=abc", faults=["duplicate"]
    )
    assert all(r.url.params["token"] == "abc" for r in recorder.requests)
    assert all("hwSecret" not in r.url.params for r in recorder.requests)
    # Without a signing time nothing tells a retry from a new event: both are stored.
    duplicate = next(s for s in report.sent if s.fault == Fault.DUPLICATE)
    assert duplicate.expected == "stored"


def test_a_bare_base_url_keeps_the_registered_path() -> None:
    _, recorder = recorded(receiver_url="http://127.0.0.1:9")
    assert {r.url.path for r in recorder.requests} == {"/callbacks/shop-a"}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"key": ""}, "needs the endpoint's key"),
        ({"auth_type": "NONE", "key": "", "faults": ["stale"]}, "stale"),
        ({"faults": ["explode"]}, "fault"),
        ({"auth_type": "MEITUAN_DEFAULT"}, "auth_type"),
        ({"signed_uri": "whole"}, "signed_uri"),
        ({"time_unit": "hours"}, "time_unit"),
        ({"interval": -1.0}, "interval"),
        ({"receiver_url": "ftp://x/callbacks/a"}, "receiver_url"),
        ({"fake": "not-a-url"}, "fake"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        recorded(**kwargs)


def test_an_unreachable_receiver_stops_the_simulation() -> None:
    report = simulate_job(
        receiver_url=f"http://127.0.0.1:{free_port()}/callbacks/shop-a",
        registered_url=REGISTERED,
        key=KEY,
        timeout=2,
    )
    assert not report.ok
    assert report.aborted and "did not answer" in report.aborted
    assert len(report.sent) == 1 and report.sent[0].status == 0
    assert "ABORTED" in report.render()


def test_an_unreachable_fake_is_a_metastudio_error() -> None:
    with pytest.raises(MetaStudioUnavailable, match="did not answer"):
        recorded(fake=f"http://127.0.0.1:{free_port()}")

"""The fake MetaStudio job API answers as metastudio-list-smart-live-jobs.txt says.

Raw requests go through httpx2; AK/SK requests are signed by the official SDK (its client, or its
``Signer`` directly when a test needs a chosen ``X-Sdk-Date``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from conftest import fake_metastudio_fixtures
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from huaweicloudsdkmetastudio.v1 import ListSmartLiveRequest, MetaStudioClient

from receiver.errors import ConfigError
from receiver.fake_metastudio import (
    DEFAULT_LIMIT,
    FakeMetaStudio,
    RequestRecord,
    fake_job,
    serve_fake,
)

PROJECT = "70b76aa4d3e44e5a8e9c5f0a1b2c3d4e"
TOKEN = "token-for-the-fake"
AK = "AKFORTHEFAKE00000001"
SK = "sk-for-the-fake-0123456789abcdefghijklmn"
ROOM = "24bad716-87b1-45e5-8912-6102f7693265"
T0 = datetime(2024, 7, 1, 8, 0, 0, tzinfo=UTC)
HEX32 = re.compile(r"[0-9a-f]{32}")

TABLE_6 = {
    "job_id": str,
    "room_id": str,
    "room_name": str,
    "state": str,
    "duration": float,
    "start_time": str,
    "end_time": str,
    "error_info": dict,
    "create_time": str,
    "lastupdate_time": str,
    "rtc_room_info": dict,
    "live_event_report_url": str,
    "live_event_callback_config": dict,
    "rtc_callback_config": dict,
    "stream_duration": float,
    "block_reason": str,
    "cover_url": str,
    "co_streamer_config": dict,
    "live_job_log": dict,
}


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def job_at(minutes: int, **fields: Any) -> dict[str, Any]:
    return fake_job(room_id=ROOM, create_time=rfc3339(T0 + timedelta(minutes=minutes)), **fields)


# One server for the module; ``fake`` resets it for each test.
served, fake, base_url = fake_metastudio_fixtures(
    project_id=PROJECT, tokens={TOKEN}, credentials={AK: SK}
)


@pytest.fixture
def api(base_url: str) -> Iterator[httpx.Client]:
    """A raw client that authenticates with the token."""
    with httpx.Client(base_url=base_url, headers={"X-Auth-Token": TOKEN}, timeout=10) as client:
        yield client


def jobs_path(project: str = PROJECT, room: str = ROOM) -> str:
    return f"/v1/{project}/smart-live-rooms/{room}/smart-live-jobs"


def sdk_client(base_url: str, *, ak: str = AK, sk: str = SK) -> Any:
    return (
        MetaStudioClient.new_builder()
        .with_http_config(HttpConfig(timeout=(2, 5), retry_times=0))
        .with_credentials(BasicCredentials(ak=ak, sk=sk, project_id=PROJECT))
        .with_endpoint(base_url)
        .build()
    )


def signed(
    base_url: str, query: list[tuple[str, str]], *, sk: str = SK, at: datetime | None = None
) -> tuple[str, dict[str, str]]:
    """(url, headers) of a GET signed by the SDK's Signer, with the given X-Sdk-Date."""
    host = base_url.split("://", 1)[1]
    request = SdkRequest(
        method="GET",
        schema="http",
        host=host,
        resource_path=jobs_path(),
        query_params=list(query),
        header_params={
            "X-Sdk-Date": (at or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ"),
            "X-Project-Id": PROJECT,
        },
    )
    Signer(BasicCredentials(ak=AK, sk=sk)).sign(request)
    return base_url + request.uri, dict(request.header_params)


# -- the answer ------------------------------------------------------------------------------


def test_fake_job_has_every_table_6_field_with_its_type() -> None:
    job = fake_job()
    assert set(job) == set(TABLE_6)
    for name, kind in TABLE_6.items():
        assert isinstance(job[name], kind), name
    assert set(job["error_info"]) == {"error_code", "error_msg"}
    assert set(job["live_event_callback_config"]) == {
        "live_event_type_callback_url",
        "auth_type",
        "key",
        "callback_event_type",
    }
    assert isinstance(job["live_event_callback_config"]["callback_event_type"], list)
    assert set(job["rtc_room_info"]) == {"app_id", "room_id", "users"}
    assert set(job["co_streamer_config"]["voice_config"]) == {
        "voice_asset_id",
        "speed",
        "pitch",
        "volume",
    }
    for name in ("start_time", "end_time", "create_time", "lastupdate_time"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", job[name])
    assert fake_job()["job_id"] != job["job_id"]
    assert fake_job(state="FAILED", extra=1)["state"] == "FAILED"


def test_lists_jobs_exactly_as_stored(fake: FakeMetaStudio, api: httpx.Client) -> None:
    job = job_at(0, future_field={"kept": True})
    fake.add_job(job)
    answer = api.get(jobs_path())
    assert answer.status_code == 200
    assert answer.json() == {"count": 1, "smart_live_jobs": [job]}
    assert HEX32.fullmatch(answer.headers["X-Request-Id"])


def test_every_answer_has_a_fresh_request_id(fake: FakeMetaStudio, base_url: str) -> None:
    with httpx.Client(base_url=base_url) as raw:
        answers = [
            raw.get(jobs_path(), headers={"X-Auth-Token": TOKEN}),
            raw.get(jobs_path(), headers={"X-Auth-Token": TOKEN}),
            raw.get(jobs_path() + "?limit=0", headers={"X-Auth-Token": TOKEN}),
            raw.get(jobs_path()),
            raw.get("/no/such/route"),
            raw.get("/_fake/requests"),
        ]
        fake.set_mode("error")
        answers.append(raw.get(jobs_path(), headers={"X-Auth-Token": TOKEN}))
    assert [a.status_code for a in answers] == [200, 200, 400, 401, 404, 200, 500]
    ids = [a.headers["X-Request-Id"] for a in answers]
    assert all(HEX32.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_room_lists_only_its_own_jobs(fake: FakeMetaStudio, api: httpx.Client) -> None:
    fake.add_job(job_at(0))
    fake.add_job(fake_job(room_id="another-room"))
    assert api.get(jobs_path()).json()["count"] == 1
    assert api.get(jobs_path(room="empty-room")).json() == {"count": 0, "smart_live_jobs": []}


# -- paging ----------------------------------------------------------------------------------


def test_offset_and_limit_page_and_count_is_the_total(
    fake: FakeMetaStudio, api: httpx.Client
) -> None:
    jobs = [job_at(i) for i in range(25)]
    for job in reversed(jobs):
        fake.add_job(job)
    ids = [job["job_id"] for job in jobs]

    def page(**params: Any) -> tuple[int, list[str]]:
        body = api.get(jobs_path(), params=params).json()
        return body["count"], [job["job_id"] for job in body["smart_live_jobs"]]

    assert page() == (25, ids[:DEFAULT_LIMIT])
    assert page(offset=10, limit=10) == (25, ids[10:20])
    assert page(offset=20, limit=10) == (25, ids[20:])
    assert page(offset=25) == (25, [])
    assert page(offset=1000, limit=100) == (25, [])
    assert page(limit=100) == (25, ids)
    assert page(limit=1, offset=3) == (25, ids[3:4])


@pytest.mark.parametrize(
    "query",
    [
        "offset=-1",
        "offset=abc",
        "offset=1.5",
        "offset=",
        "offset=%201",
        "limit=0",
        "limit=101",
        "limit=ten",
        "limit=",
        "state=RUNNING",
        "state=waiting",
        "state=",
        "state=SUCCEED,",
        "state=SUCCEED%2C%2CFAILED",
        "sort_key=start_time",
        "sort_key=",
        "sort_dir=up",
        "sort_dir=ASC",
        "create_since=2021-01-10",
        "create_since=2021-01-10T08:43:17",
        "create_since=2021-01-10%2008:43:17Z",
        "create_since=20210110T084317Z",
        "create_until=yesterday",
        "create_until=2021-13-10T08:43:17Z",
        "offset=1&offset=2",
    ],
)
def test_bad_parameters_are_400_invalid_parameter(api: httpx.Client, query: str) -> None:
    answer = api.get(jobs_path() + "?" + query)
    assert answer.status_code == 400
    assert answer.json() == {"error_code": "MSS.00000003", "error_msg": "Invalid parameter"}
    assert HEX32.fullmatch(answer.headers["X-Request-Id"])


def test_unknown_project_is_400(fake: FakeMetaStudio, api: httpx.Client) -> None:
    fake.add_job(job_at(0))
    answer = api.get(jobs_path(project="someone-elses-project"))
    assert answer.status_code == 400
    assert answer.json()["error_code"] == "MSS.00000003"


def test_unknown_parameters_are_ignored(fake: FakeMetaStudio, api: httpx.Client) -> None:
    fake.add_job(job_at(0))
    assert api.get(jobs_path(), params={"colour": "blue"}).json()["count"] == 1


# -- filters and order -----------------------------------------------------------------------


def test_state_takes_comma_separated_states(fake: FakeMetaStudio, api: httpx.Client) -> None:
    for minute, state in enumerate(["WAITING", "PROCESSING", "SUCCEED", "FAILED", "BLOCKED"]):
        fake.add_job(job_at(minute, state=state))

    def states(value: str) -> list[str]:
        body = api.get(jobs_path(), params={"state": value}).json()
        assert body["count"] == len(body["smart_live_jobs"])
        return [job["state"] for job in body["smart_live_jobs"]]

    assert states("FAILED") == ["FAILED"]
    assert states("FAILED,BLOCKED") == ["FAILED", "BLOCKED"]
    assert states("BLOCKED,WAITING,FAILED") == ["WAITING", "FAILED", "BLOCKED"]
    assert len(states("WAITING,PROCESSING,SUCCEED,FAILED,BLOCKED")) == 5
    assert api.get(jobs_path()).json()["count"] == 5


def test_sorted_by_create_time_ascending_by_default(
    fake: FakeMetaStudio, api: httpx.Client
) -> None:
    for minute in (3, 1, 4, 0, 2):
        fake.add_job(job_at(minute, room_name=f"m{minute}"))

    def order(**params: Any) -> list[str]:
        body = api.get(jobs_path(), params=params).json()
        return [job["room_name"] for job in body["smart_live_jobs"]]

    ascending = ["m0", "m1", "m2", "m3", "m4"]
    assert order() == ascending
    assert order(sort_dir="asc") == ascending
    assert order(sort_key="create_time") == ascending
    assert order(sort_key="create_time", sort_dir="desc") == ascending[::-1]
    assert order(sort_dir="desc", offset=1, limit=2) == ["m3", "m2"]


def test_create_since_and_until_are_inclusive(fake: FakeMetaStudio, api: httpx.Client) -> None:
    for minute in range(5):
        fake.add_job(job_at(minute, room_name=f"m{minute}"))

    def names(**params: str) -> list[str]:
        body = api.get(jobs_path(), params=params).json()
        assert body["count"] == len(body["smart_live_jobs"])
        return [job["room_name"] for job in body["smart_live_jobs"]]

    at = [rfc3339(T0 + timedelta(minutes=m)) for m in range(5)]
    assert names(create_since=at[1]) == ["m1", "m2", "m3", "m4"]
    assert names(create_until=at[3]) == ["m0", "m1", "m2", "m3"]
    assert names(create_since=at[1], create_until=at[3]) == ["m1", "m2", "m3"]
    assert names(create_since=at[2], create_until=at[2]) == ["m2"]
    assert names(create_since=at[3], create_until=at[1]) == []
    # The same instants written with an offset and a fraction.
    assert names(
        create_since="2024-07-01T16:01:00+08:00", create_until="2024-07-01T08:02:59.9Z"
    ) == [
        "m1",
        "m2",
    ]


# -- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Auth-Token": "not-the-token"},
        {"X-Auth-Token": ""},
        {"Authorization": "Bearer " + TOKEN},
        {"Authorization": "SDK-HMAC-SHA256 Access=AK, SignedHeaders=host, Signature=00"},
    ],
)
def test_without_valid_credentials_401(
    fake: FakeMetaStudio, base_url: str, headers: dict[str, str]
) -> None:
    fake.add_job(job_at(0))
    answer = httpx.get(base_url + jobs_path(), headers=headers)
    assert answer.status_code == 401
    assert answer.json() == {"error_code": "MSS.00000001", "error_msg": "Unauthorized"}
    assert HEX32.fullmatch(answer.headers["X-Request-Id"])


def test_token_is_accepted(fake: FakeMetaStudio, api: httpx.Client) -> None:
    assert api.get(jobs_path()).status_code == 200
    fake.add_token("second-token")
    second = api.get(jobs_path(), headers={"X-Auth-Token": "second-token"})
    assert second.status_code == 200
    assert [entry.auth for entry in fake.requests] == ["token", "token"]


def test_aksk_signed_by_the_sdk_client_is_accepted(fake: FakeMetaStudio, base_url: str) -> None:
    for minute in range(3):
        fake.add_job(job_at(minute, state="FAILED" if minute else "SUCCEED"))
    client = sdk_client(base_url)
    try:
        answer = client.list_smart_live(
            ListSmartLiveRequest(
                room_id=ROOM,
                offset=1,
                limit=5,
                state="FAILED,SUCCEED",
                sort_key="create_time",
                sort_dir="desc",
                create_since=rfc3339(T0),
                create_until=rfc3339(T0 + timedelta(hours=1)),
            )
        )
    finally:
        client.close()
    assert answer.status_code == 200
    assert answer.count == 3
    assert len(answer.smart_live_jobs) == 2
    assert HEX32.fullmatch(answer.x_request_id)
    (entry,) = fake.requests
    assert entry.auth == "aksk"
    assert entry.query["state"] == "FAILED,SUCCEED"


def test_aksk_with_the_wrong_sk_or_unknown_ak_is_401(fake: FakeMetaStudio, base_url: str) -> None:
    for ak, sk in ((AK, "wrong-secret"), ("UNKNOWNAK", SK)):
        client = sdk_client(base_url, ak=ak, sk=sk)
        try:
            with pytest.raises(ClientRequestException) as caught:
                client.list_smart_live(ListSmartLiveRequest(room_id=ROOM))
        finally:
            client.close()
        assert caught.value.status_code == 401
        assert caught.value.error_code == "MSS.00000001"
    assert [entry.auth for entry in fake.requests] == ["invalid", "invalid"]


def test_a_hand_signed_request_verifies_and_any_change_breaks_it(base_url: str) -> None:
    query = [("limit", "5"), ("state", "FAILED")]
    url, headers = signed(base_url, query)
    assert httpx.get(url, headers=headers).status_code == 200
    # Tampered query, path, signed header, or a missing X-Project-Id: 401.
    assert httpx.get(url.replace("limit=5", "limit=6"), headers=headers).status_code == 401
    assert httpx.get(url + "&offset=1", headers=headers).status_code == 401
    other_room = url.replace(ROOM, "other-room")
    assert httpx.get(other_room, headers=headers).status_code == 401
    changed = {**headers, "X-Project-Id": "x" + PROJECT}
    assert httpx.get(url, headers=changed).status_code == 401
    missing = {k: v for k, v in headers.items() if k != "X-Project-Id"}
    assert httpx.get(url, headers=missing).status_code == 401


def test_stale_or_future_x_sdk_date_is_401(base_url: str) -> None:
    now = datetime.now(UTC)
    for skew in (timedelta(minutes=-16), timedelta(minutes=16), timedelta(days=-1)):
        url, headers = signed(base_url, [], at=now + skew)
        assert httpx.get(url, headers=headers).status_code == 401, skew
    for skew in (timedelta(minutes=-14), timedelta(minutes=14)):
        url, headers = signed(base_url, [], at=now + skew)
        assert httpx.get(url, headers=headers).status_code == 200, skew


def test_the_skew_window_follows_the_injected_clock() -> None:
    fake = FakeMetaStudio(
        project_id=PROJECT, credentials={AK: SK}, now=lambda: datetime(2030, 1, 1, tzinfo=UTC)
    )
    with serve_fake(fake) as url:
        client = sdk_client(url)
        try:
            with pytest.raises(ClientRequestException) as caught:
                client.list_smart_live(ListSmartLiveRequest(room_id=ROOM))
        finally:
            client.close()
    assert caught.value.status_code == 401


def test_wrong_sk_signature_by_hand_is_401(base_url: str) -> None:
    url, headers = signed(base_url, [], sk="not-the-sk")
    assert httpx.get(url, headers=headers).status_code == 401


# -- modes -----------------------------------------------------------------------------------


def test_error_mode_answers_500_after_authentication(
    fake: FakeMetaStudio, base_url: str, api: httpx.Client
) -> None:
    fake.set_mode("error")
    answer = api.get(jobs_path())
    assert answer.status_code == 500
    assert answer.json() == {"error_code": "MSS.00000004", "error_msg": "Internal Error"}
    assert httpx.get(base_url + jobs_path()).status_code == 401
    fake.set_mode("ok")
    assert api.get(jobs_path()).status_code == 200


def test_hang_mode_does_not_answer_until_the_mode_changes(
    fake: FakeMetaStudio, api: httpx.Client
) -> None:
    fake.set_mode("hang")
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        api.get(jobs_path(), timeout=0.3)
    assert time.monotonic() - started < 2
    fake.set_mode("ok")
    assert api.get(jobs_path(), timeout=2).status_code == 200


def test_hang_is_bounded(fake: FakeMetaStudio, api: httpx.Client) -> None:
    fake.max_hang_seconds = 0.3
    fake.set_mode("hang")
    started = time.monotonic()
    assert api.get(jobs_path(), timeout=5).status_code == 200
    assert 0.25 < time.monotonic() - started < 3


def test_set_mode_refuses_unknown_modes(fake: FakeMetaStudio) -> None:
    with pytest.raises(ValueError, match="mode"):
        fake.set_mode("slow")


# -- admin routes, request log, jobs file -----------------------------------------------------


def test_admin_routes_change_jobs_while_running(
    fake: FakeMetaStudio, base_url: str, api: httpx.Client
) -> None:
    job = job_at(0)
    with httpx.Client(base_url=base_url) as admin:  # no credentials: /_fake is unauthenticated
        assert admin.put(f"/_fake/jobs/{job['job_id']}", json=job).status_code == 201
        assert api.get(jobs_path()).json()["smart_live_jobs"] == [job]
        replaced = {**job, "state": "PROCESSING"}
        assert admin.put(f"/_fake/jobs/{job['job_id']}", json=replaced).status_code == 200
        patched = admin.patch(
            f"/_fake/jobs/{job['job_id']}", json={"state": "FAILED", "job_id": "ignored"}
        )
        assert patched.status_code == 200
        assert (patched.json()["state"], patched.json()["job_id"]) == ("FAILED", job["job_id"])
        assert api.get(jobs_path(), params={"state": "FAILED"}).json()["count"] == 1
        assert admin.get("/_fake/jobs", params={"room_id": ROOM}).json()["jobs"][0]["state"] == (
            "FAILED"
        )
        assert admin.delete(f"/_fake/jobs/{job['job_id']}").status_code == 204
        assert api.get(jobs_path()).json()["count"] == 0
        assert admin.delete(f"/_fake/jobs/{job['job_id']}").status_code == 404
        assert admin.patch("/_fake/jobs/nope", json={"state": "FAILED"}).status_code == 404
        assert admin.put("/_fake/jobs/x", json={"state": "FAILED"}).status_code == 400
        assert admin.put("/_fake/jobs/x", content=b"[1]").status_code == 400
        assert admin.post("/_fake/mode", json={"mode": "error"}).json() == {"mode": "error"}
        assert fake.mode == "error"
        assert admin.post("/_fake/mode", json={"mode": "broken"}).status_code == 400
        assert admin.post("/_fake/mode", content=b"not json").status_code == 400
        assert admin.post("/_fake/mode", json={"mode": "ok"}).status_code == 200


def test_request_log_counts_api_calls(fake: FakeMetaStudio, base_url: str) -> None:
    with httpx.Client(base_url=base_url) as raw:
        raw.get(jobs_path(), params={"limit": "5"}, headers={"X-Auth-Token": TOKEN})
        raw.get(jobs_path())
        raw.get(jobs_path(), headers={"X-Auth-Token": "wrong"})
        raw.get("/_fake/jobs")
        logged = raw.get("/_fake/requests").json()["requests"]
        assert fake.requests == [
            RequestRecord("GET", jobs_path(), {"limit": "5"}, "token"),
            RequestRecord("GET", jobs_path(), {}, "none"),
            RequestRecord("GET", jobs_path(), {}, "invalid"),
        ]
        assert logged[0] == {
            "method": "GET",
            "path": jobs_path(),
            "query": {"limit": "5"},
            "auth": "token",
        }
        assert raw.delete("/_fake/requests").status_code == 204
    assert fake.requests == []


def test_load_jobs_from_a_file(fake: FakeMetaStudio, tmp_path: Path) -> None:
    listed = tmp_path / "jobs.json"
    listed.write_text(json.dumps([job_at(0), job_at(1)]))
    assert fake.load_jobs(listed) == 2
    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps({"count": 1, "smart_live_jobs": [job_at(2)]}))
    assert fake.load_jobs(answer) == 1
    assert len(fake.jobs(ROOM)) == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{", "not JSON"),
        ('{"jobs": []}', "JSON list"),
        ("[1]", "item 0 is not an object"),
        ('[{"job_id": "j"}]', "room_id"),
    ],
)
def test_a_bad_jobs_file_is_a_config_error(
    fake: FakeMetaStudio, tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "jobs.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        fake.load_jobs(path)


def test_update_and_remove_jobs_in_process(fake: FakeMetaStudio) -> None:
    job = fake.add_job(job_at(0))
    assert fake.update_job(job["job_id"], state="BLOCKED", block_reason="policy")["state"] == (
        "BLOCKED"
    )
    assert fake.get_job(job["job_id"])["block_reason"] == "policy"  # type: ignore[index]
    with pytest.raises(KeyError):
        fake.update_job("missing", state="FAILED")
    assert fake.remove_job(job["job_id"]) is True
    assert fake.remove_job(job["job_id"]) is False
    with pytest.raises(ValueError, match="room_id"):
        fake.add_job({"job_id": "j"})


def test_reset_restores_a_fresh_fake(fake: FakeMetaStudio, api: httpx.Client) -> None:
    fake.add_job(job_at(0))
    fake.add_token("extra")
    fake.set_mode("error")
    fake.max_hang_seconds = 1
    api.get(jobs_path())
    fake.reset()
    assert (fake.jobs(), fake.requests, fake.mode, fake.max_hang_seconds) == ([], [], "ok", 30.0)
    assert api.get(jobs_path(), headers={"X-Auth-Token": "extra"}).status_code == 401
    assert api.get(jobs_path()).status_code == 200

"""The job-query client: the official SDK, really talking HTTP to the fake MetaStudio."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from conftest import fake_metastudio_fixtures

from receiver.config import MetaStudioSettings
from receiver.crosscheck.metastudio import MetaStudioJobs, RoomJobs
from receiver.errors import (
    ConfigError,
    MetaStudioAuthError,
    MetaStudioBadRequest,
    MetaStudioError,
    MetaStudioUnavailable,
)
from receiver.fake_metastudio import FakeMetaStudio, JobQuery, fake_job

PROJECT = "70b76aa4d3e44e5a8e9c5f0a1b2c3d4e"
TOKEN = "iam-token-that-must-stay-secret"
AK = "AKMUSTSTAYSECRET0001"
SK = "sk-that-must-stay-secret-0123456789abcdef"
ROOM = "24bad716-87b1-45e5-8912-6102f7693265"
T0 = datetime(2024, 7, 1, 8, 0, 0, tzinfo=UTC)
HEX32 = re.compile(r"[0-9a-f]{32}")


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def job_at(minutes: int, **fields: Any) -> dict[str, Any]:
    return fake_job(room_id=ROOM, create_time=rfc3339(T0 + timedelta(minutes=minutes)), **fields)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 7, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


# One server for the module; ``fake`` resets it for each test.
served, fake, base_url = fake_metastudio_fixtures(
    project_id=PROJECT, tokens={TOKEN}, credentials={AK: SK}
)


@pytest.fixture
def make_jobs(base_url: str) -> Iterator[Callable[..., MetaStudioJobs]]:
    """``make_jobs(**options)``: a client of the fake (AK/SK unless ``token=`` is given)."""
    made: list[MetaStudioJobs] = []

    def factory(**options: Any) -> MetaStudioJobs:
        settings: dict[str, Any] = {
            "endpoint": base_url,
            "project_id": PROJECT,
            "timeout": 5.0,
            "backoff": 0.01,
        }
        if "token" not in options:
            settings.update(ak=AK, sk=SK)
        settings.update(options)
        client = MetaStudioJobs(**settings)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


def api_calls(fake: FakeMetaStudio) -> int:
    return len(fake.requests)


def assert_no_secrets(error: MetaStudioError) -> None:
    for secret in (AK, SK, TOKEN):
        assert secret not in str(error)
        assert secret not in error.message
        assert secret not in repr(error)


# -- paging and fields -----------------------------------------------------------------------


def test_pages_until_count_is_reached(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    jobs = [job_at(i) for i in range(250)]
    for job in reversed(jobs):
        fake.add_job(job)
    client = make_jobs()
    answer = asyncio.run(client.list_room_jobs(ROOM))
    assert [job["job_id"] for job in answer.jobs] == [job["job_id"] for job in jobs]
    assert (answer.count, answer.pages, answer.complete, answer.room_id) == (250, 3, True, ROOM)
    assert client.calls == 3 == api_calls(fake)
    assert [(e.query["offset"], e.query["limit"]) for e in fake.requests] == [
        ("0", "100"),
        ("100", "100"),
        ("200", "100"),
    ]
    assert all(e.query["sort_key"] == "create_time" for e in fake.requests)
    assert {e.auth for e in fake.requests} == {"aksk"}
    assert len(answer.request_ids) == 3
    assert all(HEX32.fullmatch(rid) for rid in answer.request_ids)
    assert answer.fetched_at.tzinfo is not None


def test_jobs_come_back_exactly_as_sent(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    job = job_at(0, relation_live_platform_info={"platform": "x"}, not_in_any_sdk=[1, 2.5])
    job["live_event_callback_config"]["future_key"] = "kept"
    fake.add_job(job)
    answer = asyncio.run(make_jobs().list_room_jobs(ROOM))
    assert answer.jobs == (job,)
    assert isinstance(answer.jobs[0]["duration"], float)


def test_an_empty_room(fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]) -> None:
    answer = asyncio.run(make_jobs().list_room_jobs("no-jobs-here"))
    assert (answer.jobs, answer.count, answer.complete, answer.pages) == ((), 0, True, 1)


def test_token_authentication(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    fake.add_job(job_at(0))
    answer = asyncio.run(make_jobs(token=TOKEN).list_room_jobs(ROOM))
    assert answer.count == 1
    assert [e.auth for e in fake.requests] == ["token"]


def test_a_count_that_lies_stops_on_an_empty_page(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs], monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(150):
        fake.add_job(job_at(i))
    honest = fake.query

    def inflated(room_id: str, query: JobQuery) -> tuple[int, list[dict[str, Any]]]:
        count, page = honest(room_id, query)
        return count + 500, page

    monkeypatch.setattr(fake, "query", inflated)
    answer = asyncio.run(make_jobs().list_room_jobs(ROOM))
    assert (len(answer.jobs), answer.count, answer.complete, answer.pages) == (150, 650, False, 3)


def test_pages_are_bounded_and_repeats_dropped(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs], monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(100):
        fake.add_job(job_at(i))
    honest = fake.query

    def ignores_offset(room_id: str, query: JobQuery) -> tuple[int, list[dict[str, Any]]]:
        count, page = honest(room_id, JobQuery(limit=query.limit))
        return count + 10_000, page

    monkeypatch.setattr(fake, "query", ignores_offset)
    answer = asyncio.run(make_jobs(max_pages=4).list_room_jobs(ROOM))
    assert (len(answer.jobs), answer.complete, answer.pages) == (100, False, 4)
    assert api_calls(fake) == 4


# -- filters ---------------------------------------------------------------------------------


def test_states_narrow_the_query(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    for minute, state in enumerate(["WAITING", "PROCESSING", "SUCCEED", "FAILED", "BLOCKED"] * 3):
        fake.add_job(job_at(minute, state=state))
    client = make_jobs()
    answer = asyncio.run(client.list_room_jobs(ROOM, states=["FAILED", "BLOCKED"]))
    assert {job["state"] for job in answer.jobs} == {"FAILED", "BLOCKED"}
    assert answer.count == 6
    assert fake.requests[-1].query["state"] == "BLOCKED,FAILED"
    one = asyncio.run(client.list_room_jobs(ROOM, states="SUCCEED"))
    assert [job["state"] for job in one.jobs] == ["SUCCEED"] * 3
    everything = asyncio.run(client.list_room_jobs(ROOM, states=[]))
    assert everything.count == 15
    assert "state" not in fake.requests[-1].query


def test_creation_window_is_inclusive_and_sent_as_rfc3339_z(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    for minute in range(6):
        fake.add_job(job_at(minute, room_name=f"m{minute}"))
    client = make_jobs()

    def names(
        create_since: datetime | None = None, create_until: datetime | None = None
    ) -> list[str]:
        call = client.list_room_jobs(ROOM, create_since=create_since, create_until=create_until)
        answer = asyncio.run(call)
        return [job["room_name"] for job in answer.jobs]

    at = [T0 + timedelta(minutes=m) for m in range(6)]
    assert names(create_since=at[2]) == ["m2", "m3", "m4", "m5"]
    assert fake.requests[-1].query["create_since"] == "2024-07-01T08:02:00Z"
    assert names(create_until=at[1]) == ["m0", "m1"]
    assert names(create_since=at[1], create_until=at[3]) == ["m1", "m2", "m3"]
    # Another offset, same instants; fractions round inwards (since up, until down).
    plus8 = timezone_plus8()
    assert names(
        create_since=at[1].astimezone(plus8) + timedelta(milliseconds=1),
        create_until=at[4] + timedelta(milliseconds=999),
    ) == ["m2", "m3", "m4"]
    assert fake.requests[-1].query["create_since"] == "2024-07-01T08:01:01Z"
    assert fake.requests[-1].query["create_until"] == "2024-07-01T08:04:00Z"


def timezone_plus8() -> timezone:
    return timezone(timedelta(hours=8))


@pytest.mark.parametrize(
    "call",
    [
        {"room_id": ""},
        {"room_id": ROOM, "states": ["FAILED", ""]},
        {"room_id": ROOM, "states": ["FAILED,BLOCKED"]},
        {"room_id": ROOM, "create_since": datetime(2024, 7, 1)},
        {"room_id": ROOM, "create_until": "2024-07-01T00:00:00Z"},
    ],
)
def test_bad_arguments_are_refused_before_any_call(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs], call: dict[str, Any]
) -> None:
    client = make_jobs()
    with pytest.raises(MetaStudioBadRequest):
        asyncio.run(client.list_room_jobs(**call))
    assert client.calls == 0 == api_calls(fake)


# -- failures --------------------------------------------------------------------------------


def test_wrong_sk_is_an_auth_error_without_retries(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    client = make_jobs(sk="not-the-right-secret-key")
    with pytest.raises(MetaStudioAuthError) as caught:
        asyncio.run(client.list_room_jobs(ROOM))
    assert "HTTP 401" in caught.value.message
    assert "MSS.00000001" in caught.value.message
    assert re.search(r"request id [0-9a-f]{32}", caught.value.message)
    assert api_calls(fake) == 1 == client.calls
    assert "not-the-right-secret-key" not in str(caught.value)
    assert_no_secrets(caught.value)


def test_wrong_token_is_an_auth_error(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    with pytest.raises(MetaStudioAuthError) as caught:
        asyncio.run(make_jobs(token="stolen-" + TOKEN).list_room_jobs(ROOM))
    assert TOKEN not in str(caught.value)
    assert [e.auth for e in fake.requests] == ["invalid"]


def test_400_is_a_bad_request_without_retries(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    client = make_jobs()
    with pytest.raises(MetaStudioBadRequest) as caught:
        asyncio.run(client.list_room_jobs(ROOM, states=["RUNNING"]))
    assert "HTTP 400" in caught.value.message
    assert "MSS.00000003" in caught.value.message
    assert re.search(r"request id [0-9a-f]{32}", caught.value.message)
    assert api_calls(fake) == 1
    assert_no_secrets(caught.value)
    with pytest.raises(MetaStudioBadRequest):
        asyncio.run(make_jobs(project_id="another-project").list_room_jobs(ROOM))


def test_500_is_retried_then_unavailable(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    fake.set_mode("error")
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    client = make_jobs(retries=2, backoff=0.2, sleep=sleep)
    with pytest.raises(MetaStudioUnavailable) as caught:
        asyncio.run(client.list_room_jobs(ROOM))
    assert api_calls(fake) == 3 == client.calls
    assert pauses == [0.2, 0.4]
    message = caught.value.message
    assert "after 3 attempts" in message
    assert "HTTP 500" in message
    assert "MSS.00000004" in message
    assert re.search(r"request id [0-9a-f]{32}", message)
    assert_no_secrets(caught.value)


def test_backoff_is_capped_and_real_sleeps_are_short(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    fake.set_mode("error")
    client = make_jobs(retries=4, backoff=0.02, backoff_max=0.05)
    started = time.monotonic()
    with pytest.raises(MetaStudioUnavailable):
        asyncio.run(client.list_room_jobs(ROOM))
    assert api_calls(fake) == 5
    assert time.monotonic() - started < 3  # 0.02 + 0.04 + 0.05 + 0.05 s of back-off


def test_500_then_recovery_within_the_retries(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    fake.add_job(job_at(0))
    fake.set_mode("error")

    async def sleep(seconds: float) -> None:
        fake.set_mode("ok")  # MetaStudio recovers while we back off

    client = make_jobs(retries=2, sleep=sleep)
    answer = asyncio.run(client.list_room_jobs(ROOM))
    assert answer.count == 1
    assert api_calls(fake) == 2 == client.calls


def test_a_hang_times_out_as_unavailable_in_bounded_time(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    fake.set_mode("hang")
    client = make_jobs(timeout=1.0, retries=0)
    started = time.monotonic()
    with pytest.raises(MetaStudioUnavailable) as caught:
        asyncio.run(client.list_room_jobs(ROOM))
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 3
    assert "no answer within 1 s" in caught.value.message
    assert api_calls(fake) == 1
    assert_no_secrets(caught.value)


def test_the_deadline_bounds_retries_of_a_hang(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    fake.set_mode("hang")
    client = make_jobs(timeout=0.5, retries=10, backoff=0.1, deadline=1.2)
    started = time.monotonic()
    with pytest.raises(MetaStudioUnavailable):
        asyncio.run(client.list_room_jobs(ROOM))
    assert time.monotonic() - started < 2.5
    assert 2 <= client.calls <= 3


def test_the_event_loop_keeps_running_while_the_sdk_waits(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    fake.set_mode("hang")
    client = make_jobs(timeout=0.6, retries=0)

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        running = asyncio.create_task(ticker())
        with pytest.raises(MetaStudioUnavailable):
            await client.list_room_jobs(ROOM)
        running.cancel()
        return ticks

    assert asyncio.run(main()) >= 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("auth", [{"ak": AK, "sk": SK}, {"token": TOKEN}])
def test_an_unreachable_endpoint_is_unavailable(auth: dict[str, Any]) -> None:
    client = MetaStudioJobs(
        endpoint=f"http://127.0.0.1:{free_port()}",
        project_id=PROJECT,
        timeout=1.0,
        retries=2,
        backoff=0.01,
        **auth,
    )
    try:
        with pytest.raises(MetaStudioUnavailable) as caught:
            asyncio.run(client.list_room_jobs(ROOM))
    finally:
        client.close()
    assert "cannot reach http://127.0.0.1:" in caught.value.message
    assert "after 3 attempts" in caught.value.message
    assert client.calls == 3
    assert_no_secrets(caught.value)


def test_environment_proxies_are_not_used(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs], monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    fake.add_job(job_at(0))
    assert asyncio.run(make_jobs(retries=0).list_room_jobs(ROOM)).count == 1


def test_an_answer_that_is_not_a_job_list_is_unavailable(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake, "query", lambda room_id, query: (-1, []))
    with pytest.raises(MetaStudioUnavailable, match="not a job list"):
        asyncio.run(make_jobs().list_room_jobs(ROOM))


# -- cache and single-flight -----------------------------------------------------------------


def test_cached_within_the_ttl_and_fetched_again_after(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    fake.add_job(job_at(0))
    clock = Clock()
    client = make_jobs(now=clock, cache_ttl=10.0)

    async def main() -> list[RoomJobs]:
        first = await client.list_room_jobs(ROOM)
        clock.now += timedelta(seconds=9.9)
        second = await client.list_room_jobs(ROOM)
        fake.add_job(job_at(1))
        clock.now += timedelta(seconds=0.1)
        third = await client.list_room_jobs(ROOM)
        return [first, second, third]

    first, second, third = asyncio.run(main())
    assert second is first
    assert (first.count, third.count) == (1, 2)
    assert api_calls(fake) == 2 == client.queries
    assert first.fetched_at == datetime(2024, 7, 1, 12, 0, 0, tzinfo=UTC)


def test_the_cache_key_includes_the_filters(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    client = make_jobs(now=Clock())

    async def main() -> None:
        await client.list_room_jobs(ROOM)
        await client.list_room_jobs(ROOM, states=["FAILED"])
        await client.list_room_jobs(ROOM, states=["FAILED", "BLOCKED"])
        await client.list_room_jobs(ROOM, states=["BLOCKED", "FAILED", "BLOCKED"])  # same key
        await client.list_room_jobs(ROOM, create_since=T0)
        await client.list_room_jobs(ROOM, create_since=T0, create_until=T0)
        await client.list_room_jobs("another-room")
        await client.list_room_jobs(ROOM)

    asyncio.run(main())
    assert api_calls(fake) == 6


def test_invalidate_drops_cached_answers(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    client = make_jobs(now=Clock())

    async def main() -> None:
        await client.list_room_jobs(ROOM)
        await client.list_room_jobs("other")
        client.invalidate(ROOM)
        await client.list_room_jobs(ROOM)
        await client.list_room_jobs("other")
        client.invalidate()
        await client.list_room_jobs(ROOM)
        await client.list_room_jobs("other")

    asyncio.run(main())
    assert [e.path.split("/")[4] for e in fake.requests] == [ROOM, "other", ROOM, ROOM, "other"]


def test_an_answer_from_before_invalidate_is_not_cached(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    fake.set_mode("hang")
    client = make_jobs(now=Clock())

    async def main() -> tuple[RoomJobs, RoomJobs, RoomJobs]:
        early = asyncio.create_task(client.list_room_jobs(ROOM))
        other = asyncio.create_task(client.list_room_jobs("other"))
        await asyncio.sleep(0.2)
        client.invalidate(ROOM)  # e.g. a callback said the room changed
        fake.add_job(job_at(0))
        late = asyncio.create_task(client.list_room_jobs(ROOM))
        await asyncio.sleep(0.1)
        fake.set_mode("ok")
        return await early, await late, await other

    early, late, _ = asyncio.run(main())
    assert early is not late
    assert late.count == 1
    assert api_calls(fake) == 3
    assert asyncio.run(client.list_room_jobs(ROOM)) is late
    assert api_calls(fake) == 3
    asyncio.run(client.list_room_jobs("other"))  # not invalidated: its answer was cached
    assert api_calls(fake) == 3


def test_errors_are_not_cached(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    client = make_jobs(now=Clock(), retries=0)
    fake.set_mode("error")
    with pytest.raises(MetaStudioUnavailable):
        asyncio.run(client.list_room_jobs(ROOM))
    fake.set_mode("ok")
    assert asyncio.run(client.list_room_jobs(ROOM)).count == 0
    assert api_calls(fake) == 2


def test_concurrent_callers_share_one_query(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    for i in range(3):
        fake.add_job(job_at(i))
    client = make_jobs()

    async def main() -> list[RoomJobs]:
        return await asyncio.gather(*(client.list_room_jobs(ROOM) for _ in range(20)))

    answers = asyncio.run(main())
    assert api_calls(fake) == 1 == client.calls
    assert all(answer is answers[0] for answer in answers)
    assert answers[0].count == 3


def test_concurrent_callers_share_one_failure(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    fake.set_mode("error")
    client = make_jobs(retries=2)

    async def main() -> list[BaseException | RoomJobs]:
        calls = (client.list_room_jobs(ROOM) for _ in range(20))
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(outcome, MetaStudioUnavailable) for outcome in outcomes)
    assert api_calls(fake) == 3


def test_a_caller_that_gives_up_does_not_cancel_the_others(
    fake: FakeMetaStudio, make_jobs: Callable[..., MetaStudioJobs]
) -> None:
    fake.set_mode("hang")
    fake.add_job(job_at(0))
    client = make_jobs(timeout=5.0)

    async def main() -> RoomJobs:
        impatient = asyncio.create_task(client.list_room_jobs(ROOM))
        patient = asyncio.create_task(client.list_room_jobs(ROOM))
        await asyncio.sleep(0.2)
        impatient.cancel()
        await asyncio.sleep(0.05)
        fake.set_mode("ok")
        return await patient

    assert asyncio.run(main()).count == 1
    assert api_calls(fake) == 1


# -- construction ----------------------------------------------------------------------------


def test_from_settings_reads_credentials_from_the_environment(
    fake: FakeMetaStudio, base_url: str
) -> None:
    fake.add_job(job_at(0))
    aksk = MetaStudioSettings(endpoint=base_url, project_id=PROJECT)
    client = MetaStudioJobs.from_settings(
        aksk, environ={"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK}, retries=0
    )
    token = MetaStudioJobs.from_settings(
        MetaStudioSettings(endpoint=base_url, project_id=PROJECT, token_env="MS_TOKEN"),
        environ={"MS_TOKEN": TOKEN},
    )
    try:
        assert asyncio.run(client.list_room_jobs(ROOM)).count == 1
        assert asyncio.run(token.list_room_jobs(ROOM)).count == 1
    finally:
        client.close()
        token.close()
    assert [e.auth for e in fake.requests] == ["aksk", "token"]
    assert client.retries == 0


@pytest.mark.parametrize(
    ("settings", "environ", "message"),
    [
        (MetaStudioSettings("http://m", "p"), {}, "metastudio.ak_env: .*HUAWEICLOUD_SDK_AK"),
        (
            MetaStudioSettings("http://m", "p"),
            {"HUAWEICLOUD_SDK_AK": AK},
            "metastudio.sk_env: .*HUAWEICLOUD_SDK_SK",
        ),
        (MetaStudioSettings("http://m", "p", token_env="T"), {}, "metastudio.token_env: .*T"),
        (
            MetaStudioSettings("ftp://m", "p"),
            {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK},
            "metastudio.endpoint",
        ),
    ],
)
def test_from_settings_names_what_is_missing(
    settings: MetaStudioSettings, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        MetaStudioJobs.from_settings(settings, environ=environ)
    assert SK not in str(caught.value)


def test_credentials_are_required() -> None:
    with pytest.raises(ConfigError, match="token"):
        MetaStudioJobs(endpoint="http://127.0.0.1:1", project_id=PROJECT, ak=AK)

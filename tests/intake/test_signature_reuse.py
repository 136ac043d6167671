"""A captured signed URL posted again with another body, against a real ``serve`` process, on
SQLite and PostgreSQL.

MSS_A signs the registered URL and hwTime, not the body (signing-notes.md, "Consequences"). Inside
the endpoint's tolerance window the receiver cannot tell a second body under a captured signature
from MetaStudio's own: it answers ``stored`` and keeps both. The cross-check then flags the
signature (``signature_reused``), naming both deliveries. The same body again is a ``duplicate``
and no finding. Once the window has closed, the same URL is refused (401, expired) and nothing
more is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from conftest import KEY, REGISTERED, ServerProcess, endpoint_table

from receiver import fake_metastudio as fm
from receiver.config import settings_from_mapping
from receiver.crosscheck import rules
from receiver.crosscheck.run import CrossChecker, RunReport
from receiver.protocol.signing import AuthType
from receiver.store.models import DeliveryStatus
from receiver.store.writer import DELIVERIES, create_engine_for
from receiver.testing import encode, sign_request
from receiver.web.app import build_crosschecker

pytestmark = pytest.mark.slow

HOST = "https://hooks.example.com"
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"HUAWEICLOUD_SDK_AK": fm.DEFAULT_AK, "HUAWEICLOUD_SDK_SK": fm.DEFAULT_SK}
# Bodies first seen this far apart are a finding for the checker the tests build; the default
# (10 s) takes arrivals this close for MetaStudio's own callbacks of one second.
SPREAD = timedelta(seconds=1)


def hex_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


ROOM, JOB = hex_id("room-1"), hex_id("job-1")
FORGED_ROOM, FORGED_JOB = hex_id("a room nobody has"), hex_id("a job nobody runs")
BODY_A = encode(
    "SHOOT_SCRIPT_SWITCH",
    {"room_id": ROOM, "job_id": JOB, "scene_script_name": "Spring sale"},
)
BODY_B = encode(
    "REPLY_COMMAND_FINISH",
    {"room_id": FORGED_ROOM, "job_id": FORGED_JOB, "reply_id": "r-forged"},
)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[fm.FakeMetaStudio, str]]:
    fake = fm.FakeMetaStudio(credentials={fm.DEFAULT_AK: fm.DEFAULT_SK}, max_hang_seconds=1.0)
    with fm.serve_fake(fake) as url:
        yield fake, url


def signed_path(when: float) -> tuple[str, str]:
    """(path and query to POST to, the hwSecret in it) for shop-a signed at ``when``."""
    url, _ = sign_request(registered_url=REGISTERED, auth_type=AuthType.MSS_A, key=KEY, when=when)
    secret = url.partition("hwSecret=")[2].partition("&")[0]
    assert len(secret) == 64
    return url.removeprefix(HOST), secret


def post(server: ServerProcess, path: str, body: bytes) -> httpx.Response:
    return httpx.post(server.base_url + path, content=body, timeout=10)


def stored(answer: httpx.Response, result: str = "stored") -> int:
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"] == result, answer.text
    delivery_id: int = answer.json()["delivery_id"]
    return delivery_id


def checkers(
    db_url: str, base_url: str, endpoint: dict[str, Any]
) -> tuple[CrossChecker, CrossChecker, Callable[[], None]]:
    """(the checker [metastudio] configures by default, one configured with
    reuse_spread_seconds = SPREAD, close both)."""

    def settings(**metastudio: Any) -> Any:
        return settings_from_mapping(
            {
                "database_url": db_url,
                "api_tokens": [TOKEN],
                "endpoints": [endpoint],
                "metastudio": {
                    "endpoint": base_url,
                    "project_id": fm.DEFAULT_PROJECT_ID,
                    "crosscheck_interval_seconds": 0,
                    "cache_seconds": 0,
                    "timeout_seconds": 5,
                    **metastudio,
                },
            },
            environ=ENV,
        )

    engine = create_engine_for(db_url)
    default, source = build_crosschecker(settings(), engine)
    strict, strict_source = build_crosschecker(
        settings(reuse_spread_seconds=SPREAD.total_seconds()), engine
    )
    assert strict.policy.reuse_spread == SPREAD

    def close() -> None:
        source.close()
        strict_source.close()
        engine.dispose()

    return default, strict, close


def run(checker: CrossChecker) -> RunReport:
    report = asyncio.run(asyncio.wait_for(checker.run(), timeout=60))
    assert report.skipped is None, report.skipped
    return report


def reuse_findings(server: ServerProcess) -> list[dict[str, Any]]:
    answer = httpx.get(
        server.base_url + "/v1/findings",
        params={"kind": rules.SIGNATURE_REUSED},
        headers=AUTH,
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["findings"]
    return found


def deliveries(db_url: str) -> list[Any]:
    engine = create_engine_for(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(DELIVERIES).order_by(DELIVERIES.c.id)))
    finally:
        engine.dispose()


def test_another_body_inside_the_window_is_stored_and_the_crosscheck_flags_it_once(
    db_url: str,
    server_factory: Callable[..., ServerProcess],
    served: tuple[fm.FakeMetaStudio, str],
) -> None:
    fake, base_url = served
    fake.reset()
    fake.add_job(fm.fake_job(job_id=JOB, room_id=ROOM, state="PROCESSING"))
    endpoint = endpoint_table()  # tolerance_seconds 300
    server = server_factory(db_url, endpoint, api_tokens=[TOKEN])
    path, secret = signed_path(time.time())

    first = stored(post(server, path, BODY_A))
    assert stored(post(server, path, BODY_A), "duplicate") == first  # a retry: no new body
    time.sleep(SPREAD.total_seconds() + 0.5)
    # The same signed URL, inside the window, with another body: accepted, it cannot be told.
    second = stored(post(server, path, BODY_B))
    assert second != first
    assert stored(post(server, path, BODY_B), "duplicate") == second

    rows = deliveries(db_url)
    kept = [r for r in rows if r.status == DeliveryStatus.STORED]
    assert [r.id for r in kept] == [first, second]
    assert [r.body for r in kept] == [BODY_A, BODY_B]
    assert kept[0].signed_at == kept[1].signed_at and kept[0].key_index == kept[1].key_index
    assert sorted(r.duplicate_of for r in rows if r.status == DeliveryStatus.DUPLICATE) == [
        first,
        second,
    ]

    default, strict, close = checkers(db_url, base_url, endpoint)
    try:
        # Arriving 1.5 s apart is what MetaStudio's own callbacks of one second look like to the
        # default reuse_spread (10 s): no finding. The forged room is flagged by its content.
        run(default)
        assert reuse_findings(server) == []
        unknown = httpx.get(
            server.base_url + "/v1/findings",
            params={"kind": rules.UNKNOWN_JOB, "room_id": FORGED_ROOM},
            headers=AUTH,
            timeout=10,
        ).json()["findings"]
        assert [f["job_id"] for f in unknown] == [FORGED_JOB]

        report = run(strict)
        [found] = reuse_findings(server)
        assert found["endpoint"] == "shop-a" and found["status"] == "open"
        assert (found["room_id"], found["job_id"]) == (None, None)
        assert found["data"]["delivery_ids"] == [first, second]
        assert found["data"]["late_delivery_ids"] == [second]
        events = found["data"]["event_ids"]
        assert len(events) == 2 and None not in events and found["event_id"] == events[1]
        assert found["data"]["room_ids"] == sorted([ROOM, FORGED_ROOM])
        assert f"deliveries {first}, {second} (events {events[0]}, {events[1]})" in found["detail"]
        assert "one second alike" in found["detail"]
        assert secret not in str(found) and KEY not in str(found)
        assert found["id"] in [f["id"] for f in report.open_findings]

        # Seen again, it stays open (nothing clears a reused signature) and stays one row.
        again = run(strict)
        assert again.findings_resolved == 0
        [row] = reuse_findings(server)
        assert row["id"] == found["id"] and row["status"] == "open"
    finally:
        close()


def test_the_same_url_after_the_window_is_refused_and_nothing_is_stored(
    db_url: str,
    server_factory: Callable[..., ServerProcess],
    served: tuple[fm.FakeMetaStudio, str],
) -> None:
    fake, base_url = served
    fake.reset()
    tolerance = 3
    endpoint = endpoint_table(tolerance_seconds=tolerance)
    server = server_factory(db_url, endpoint, api_tokens=[TOKEN])
    when = time.time()
    path, secret = signed_path(when)
    first = stored(post(server, path, BODY_A))

    # hwTime is whole seconds: the window closes ``tolerance`` s after int(when).
    time.sleep(max(0.0, int(when) + tolerance + 1.5 - time.time()))
    for body in (BODY_B, BODY_A):  # another body, and even a retry of the first
        refused = post(server, path, body)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error_code"] == "RCV.SIGNATURE_EXPIRED"
        assert secret not in refused.text
    assert [(r.id, r.status) for r in deliveries(db_url)] == [(first, DeliveryStatus.STORED)]

    answer = httpx.get(server.base_url + "/v1/rejections", headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    reasons = [r["error_code"] for r in answer.json()["rejections"]]
    assert reasons == ["RCV.SIGNATURE_EXPIRED"] * 2

    _, strict, close = checkers(db_url, base_url, endpoint)
    try:
        run(strict)
        assert reuse_findings(server) == []
    finally:
        close()

"""The cross-check from outside, on SQLite and PostgreSQL: POST /v1/crosscheck, GET /v1/findings
(filters, status, cursors), the MetaStudio snapshot and findings in GET /v1/jobs/{job_id}, and
``metastudio-receiver crosscheck`` as a real process. The official SDK talks HTTP to the fake
MetaStudio on loopback; every answer is checked against the OpenAPI document."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from conftest import KEY, REGISTERED, endpoint_table, fake_metastudio_fixtures, make_settings
from starlette.testclient import TestClient

from receiver import fake_metastudio as fm
from receiver.config import settings_from_mapping
from receiver.protocol.ids import api_form
from receiver.protocol.signing import AuthType
from receiver.testing import encode, sign_request
from receiver.web.app import create_app
from receiver.web.openapi import document

AUTH = {"Authorization": "Bearer test-token"}
HOST = "https://hooks.example.com"
ENV = {"HUAWEICLOUD_SDK_AK": fm.DEFAULT_AK, "HUAWEICLOUD_SDK_SK": fm.DEFAULT_SK}
SCHEMA = schemathesis.openapi.from_dict(document())
STREAM_KEY = "live-stream-key-must-stay-secret"


def hex_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


ROOM_A, ROOM_B = hex_id("room-a"), hex_id("room-b")
KNOWN, UNKNOWN, FAILED, BLOCKED = (hex_id(n) for n in ("known", "unknown", "failed", "blocked"))


served, fake, base_url = fake_metastudio_fixtures(credentials={fm.DEFAULT_AK: fm.DEFAULT_SK})


def metastudio_table(base_url: str) -> dict[str, Any]:
    return {
        "endpoint": base_url,
        "project_id": fm.DEFAULT_PROJECT_ID,
        "crosscheck_interval_seconds": 0,
        "cache_seconds": 0,
        "timeout_seconds": 5,
    }


@pytest.fixture
def client(
    migrated_url: str, fake: fm.FakeMetaStudio, served: tuple[fm.FakeMetaStudio, str]
) -> Iterator[TestClient]:
    """The receiver with cross-checking against the fake MetaStudio."""
    data = {
        "database_url": migrated_url,
        "api_tokens": ["test-token"],
        "endpoints": [endpoint_table()],
        "metastudio": metastudio_table(served[1]),
    }
    with TestClient(create_app(settings_from_mapping(data, environ=ENV))) as test_client:
        yield test_client


def send(client: TestClient, event_type: str, message: dict[str, Any]) -> int:
    url, _ = sign_request(
        registered_url=REGISTERED, auth_type=AuthType.MSS_A, key=KEY, when=time.time()
    )
    answer = client.post(url.removeprefix(HOST), content=encode(event_type, message))
    assert answer.status_code == 200, answer.text
    event_id: int = answer.json()["event_id"]
    return event_id


def event(client: TestClient, job_id: str, room_id: str, n: int = 1) -> int:
    message = {"room_id": room_id, "job_id": job_id, "reply_id": f"reply-{n}"}
    return send(client, "REPLY_COMMAND_FINISH", message)


def crosscheck(client: TestClient, body: Any = None, *, status: int = 200) -> Any:
    content = None if body is None else body if isinstance(body, bytes) else json.dumps(body)
    answer = client.post("/v1/crosscheck", content=content, headers=AUTH)
    assert answer.status_code == status, answer.text
    SCHEMA["/v1/crosscheck"]["POST"].validate_response(answer)
    return answer.json()


def get(client: TestClient, path: str, params: Any = None, *, status: int = 200) -> Any:
    answer = client.get(path, params=params, headers=AUTH)
    assert answer.status_code == status, answer.text
    template = "/v1/jobs/{job_id}" if path.startswith("/v1/jobs/") else path
    SCHEMA[template]["GET"].validate_response(answer)
    return answer.json()


def findings(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    page = get(client, "/v1/findings", {"limit": 1000, **params})
    assert page["next_cursor"] is None
    items: list[dict[str, Any]] = page["findings"]
    return items


def stage(client: TestClient, fake: fm.FakeMetaStudio) -> None:
    """Room A: a known job, events for a job MetaStudio does not list, a FAILED job.
    Room B: a BLOCKED job. MetaStudio's jobs point their callbacks at shop-a."""
    # fake_job starts the job half an hour ago; no end_time: the events (now) are inside it.
    fake.add_job(fm.fake_job(job_id=KNOWN, room_id=ROOM_A, state="PROCESSING", end_time=""))
    error = {"error_code": "MSS.00000100", "error_msg": "push stream failed"}
    fake.add_job(fm.fake_job(job_id=FAILED, room_id=ROOM_A, state="FAILED", error_info=error))
    fake.add_job(
        fm.fake_job(
            job_id=BLOCKED, room_id=ROOM_B, state="BLOCKED", block_reason="violation", end_time=""
        )
    )
    event(client, KNOWN, ROOM_A)
    message = {
        "room_id": ROOM_A,
        "job_id": KNOWN,
        "state": "CONNECTED",
        "output_url": "rtmp://push.example.com/live",
        "stream_key": STREAM_KEY,
    }
    send(client, "RTMP_STREAM_STATE_CHANGE", message)
    event(client, UNKNOWN, ROOM_A)
    event(client, UNKNOWN, ROOM_A, 2)
    event(client, BLOCKED, ROOM_B)


# -- POST /v1/crosscheck -----------------------------------------------------------------------


def test_crosscheck_every_room_then_one_room(client: TestClient, fake: fm.FakeMetaStudio) -> None:
    stage(client, fake)
    fake.clear_requests()
    report = crosscheck(client)
    assert report["skipped"] is None and report["finished_at"] is not None
    assert (report["rooms_checked"], report["rooms_failed"], report["jobs_seen"]) == (2, 0, 3)
    assert report["findings_opened"] == 3
    opened = sorted((f["kind"], f["job_id"]) for f in report["open_findings"])
    assert opened == sorted(
        [("unknown_job", UNKNOWN), ("job_failed", FAILED), ("job_blocked", BLOCKED)]
    )
    assert len(fake.requests) == 2

    fake.clear_requests()
    only_b = crosscheck(client, {"room_id": ROOM_B})
    assert (only_b["rooms_checked"], only_b["jobs_seen"], only_b["findings_opened"]) == (1, 1, 0)
    assert [(f["kind"], f["room_id"]) for f in only_b["open_findings"]] == [("job_blocked", ROOM_B)]
    # Asked in the job query API's own spelling of the room id, a dashed UUID.
    assert [r.path.split("/")[-2] for r in fake.requests] == [api_form(ROOM_B)]

    for body in (b"", b"  \n", {}, {"room_id": None}):  # no room named: every room
        assert crosscheck(client, body)["rooms_checked"] == 2

    # MetaStudio failing is a 200 report that says so, not an error answer.
    fake.set_mode("error")
    failed = crosscheck(client, {"room_id": ROOM_A})
    assert (failed["rooms_checked"], failed["rooms_failed"]) == (0, 1)
    assert "metastudio_unreachable" in [f["kind"] for f in failed["open_findings"]]


def test_bad_bodies_are_400_in_the_error_shape(client: TestClient) -> None:
    bodies = [
        b"not json",
        b"\xff\xfe{",
        b"[]",
        b'"room"',
        b"null",
        b"1e999",
        b'{"room_id": 5}',
        b'{"room_id": ["a"]}',
        b'{"room_id": {"x": 1}}',
        b'{"room": "x"}',
        b'{"room_id": "a", "more": 1}',
        b'{"room_id": ""}',
        json.dumps({"room_id": "x" * 300}).encode(),
        b'{"room_id": "a"',
    ]
    for body in bodies:
        answer = crosscheck(client, body, status=400)
        assert set(answer) == {"error_code", "error_msg"}, body
        assert answer["error_code"] == "RCV.BAD_PARAMETER", body
        assert answer["error_msg"], body


def test_without_metastudio_409_and_without_a_token_401(
    migrated_url: str, client: TestClient
) -> None:
    with TestClient(create_app(make_settings(migrated_url))) as plain:
        answer = plain.post("/v1/crosscheck", headers=AUTH)
        assert answer.status_code == 409
        assert answer.json()["error_code"] == "RCV.NOT_CONFIGURED"
        assert "[metastudio]" in answer.json()["error_msg"]
        SCHEMA["/v1/crosscheck"]["POST"].validate_response(answer)
        assert plain.post("/v1/crosscheck").status_code == 401
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-token"}):
        for answer in (
            client.post("/v1/crosscheck", headers=headers),
            client.get("/v1/findings", headers=headers),
        ):
            assert answer.status_code == 401
            assert answer.json()["error_code"] == "RCV.API_UNAUTHORIZED"


# -- GET /v1/findings --------------------------------------------------------------------------


def test_findings_filters_status_and_cursor(client: TestClient, fake: fm.FakeMetaStudio) -> None:
    stage(client, fake)
    crosscheck(client)
    fake.add_job(fm.fake_job(job_id=UNKNOWN, room_id=ROOM_A, state="PROCESSING", end_time=""))
    assert crosscheck(client)["findings_resolved"] == 1

    every = findings(client)
    assert [f["id"] for f in every] == sorted(f["id"] for f in every)
    assert sorted(f["kind"] for f in every) == ["job_blocked", "job_failed", "unknown_job"]
    assert findings(client, status="all") == every

    def kinds(**params: Any) -> list[str]:
        return sorted(f["kind"] for f in findings(client, **params))

    assert kinds(room_id=ROOM_A) == ["job_failed", "unknown_job"]
    assert kinds(room_id=ROOM_B) == ["job_blocked"]
    assert kinds(job_id=FAILED) == ["job_failed"]
    assert kinds(kind="unknown_job") == ["unknown_job"]
    assert kinds(status="open") == ["job_blocked", "job_failed"]
    assert kinds(status="resolved") == ["unknown_job"]
    assert kinds(room_id=ROOM_A, status="open") == ["job_failed"]
    assert kinds(room_id=ROOM_B, kind="unknown_job") == []
    assert kinds(job_id="no-such-job") == []
    [resolved] = findings(client, status="resolved")
    assert resolved["resolved_at"] is not None and resolved["occurrences"] == 1
    assert resolved["data"] == {"event_count": 2, "endpoints": ["shop-a"]}
    [failed] = findings(client, kind="job_failed")
    assert failed["data"]["error_info"]["error_code"] == "MSS.00000100"
    assert failed["occurrences"] == 2 and failed["status"] == "open"

    # Pages of one, following next_cursor: each finding once, in id order.
    seen, cursor = [], None
    while True:
        page = get(client, "/v1/findings", {"limit": 1, **({"cursor": cursor} if cursor else {})})
        seen += page["findings"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["findings"]) == 1
    assert seen == every
    first = get(client, "/v1/findings", {"limit": 1, "status": "open"})
    rest = get(client, "/v1/findings", {"status": "open", "cursor": first["next_cursor"]})
    assert first["findings"] + rest["findings"] == findings(client, status="open")

    for params, expected in [
        ({"status": "closed"}, "status"),
        ({"kind": ""}, "kind"),
        ({"limit": "0"}, "limit"),
        ({"severity": "high"}, "unknown parameter"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": first["next_cursor"], "status": "resolved"}, "other filters"),
    ]:
        answer = get(client, "/v1/findings", params, status=400)
        assert answer["error_code"] == "RCV.BAD_PARAMETER"
        assert expected in answer["error_msg"], (params, answer)


# -- GET /v1/jobs/{job_id} ---------------------------------------------------------------------


def test_job_view_shows_the_metastudio_snapshot_with_the_key_masked_and_findings(
    client: TestClient, fake: fm.FakeMetaStudio
) -> None:
    stage(client, fake)
    before = get(client, f"/v1/jobs/{KNOWN}")
    assert before["metastudio"] is None and before["findings"] == []

    crosscheck(client)
    answer = client.get(f"/v1/jobs/{KNOWN}", headers=AUTH)
    assert KEY not in answer.text and STREAM_KEY not in answer.text
    view = get(client, f"/v1/jobs/{KNOWN}")
    snapshot = view["metastudio"]
    listed = fake.get_job(KNOWN)
    assert listed is not None and listed["live_event_callback_config"]["key"] == KEY
    assert (snapshot["job_id"], snapshot["room_id"], snapshot["state"]) == (
        KNOWN,
        ROOM_A,
        "PROCESSING",
    )
    masked = {**listed["live_event_callback_config"], "key": "****"}
    assert snapshot["job"] == {**listed, "live_event_callback_config": masked}
    assert snapshot["fetched_at"] == snapshot["first_fetched_at"]
    assert view["findings"] == []

    unknown = get(client, f"/v1/jobs/{UNKNOWN}")
    assert unknown["metastudio"] is None
    assert [f["kind"] for f in unknown["findings"]] == ["unknown_job"]
    assert unknown["findings"][0]["job_id"] == UNKNOWN

    # A job with no events that MetaStudio lists (and that FAILED) has a view too.
    failed = get(client, f"/v1/jobs/{FAILED}")
    assert (failed["room_id"], failed["event_count"], failed["timeline"]) == (ROOM_A, 0, [])
    assert failed["metastudio"]["state"] == "FAILED"
    assert [f["kind"] for f in failed["findings"]] == ["job_failed"]
    assert get(client, f"/v1/jobs/{hex_id('nothing')}", status=404)["error_code"] == (
        "RCV.NOT_FOUND"
    )

    # The job changes in MetaStudio: the view shows the newest snapshot.
    fake.update_job(KNOWN, state="SUCCEED", end_time=fm.fake_job()["lastupdate_time"])
    crosscheck(client)
    assert get(client, f"/v1/jobs/{KNOWN}")["metastudio"]["state"] == "SUCCEED"


# -- metastudio-receiver crosscheck ------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def test_cli_prints_the_report_and_exits_1_when_rooms_failed(
    tmp_path: Path,
    migrated_url: str,
    client: TestClient,
    fake: fm.FakeMetaStudio,
    served: tuple[fm.FakeMetaStudio, str],
) -> None:
    stage(client, fake)
    lines = [f"database_url = {_toml(migrated_url)}", "[[endpoints]]"]
    lines += [f"{k} = {_toml(v)}" for k, v in endpoint_table().items()]
    lines += ["[metastudio]"] + [
        f"{k} = {_toml(v)}" for k, v in metastudio_table(served[1]).items()
    ]
    config = tmp_path / "receiver.toml"
    config.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "HUAWEICLOUD"))}
    env.update(ENV)

    def cli(*extra: str) -> tuple[int, dict[str, Any], str]:
        done = subprocess.run(
            [sys.executable, "-m", "receiver", "crosscheck", "--config", str(config), *extra],
            env=env,
            capture_output=True,
            timeout=60,
        )
        out, err = done.stdout.decode(), done.stderr.decode()
        for secret in (fm.DEFAULT_SK, KEY):
            assert secret not in out and secret not in err
        return done.returncode, json.loads(out), err

    code, report, _ = cli()
    assert code == 0
    assert (report["rooms_checked"], report["rooms_failed"], report["jobs_seen"]) == (2, 0, 3)
    assert sorted(f["kind"] for f in report["open_findings"]) == [
        "job_blocked",
        "job_failed",
        "unknown_job",
    ]
    assert findings(client, status="open") == report["open_findings"]

    fake.set_mode("error")
    code, report, err = cli("--room-id", ROOM_B)
    assert code == 1
    assert (report["rooms_checked"], report["rooms_failed"]) == (0, 1)
    assert [f["kind"] for f in report["open_findings"]] == ["job_blocked", "metastudio_unreachable"]
    assert "HTTP 500" in err  # the warning names what MetaStudio answered


def test_an_oversized_crosscheck_body_is_refused_unread(migrated_url: str) -> None:
    """The body holds at most a room_id; a large one is a 413, not read into memory."""
    with TestClient(create_app(make_settings(migrated_url))) as client:
        answer = client.post("/v1/crosscheck", content=b"{" + b" " * 10_000 + b"}", headers=AUTH)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error_code"] == "RCV.BODY_TOO_LARGE"


def test_a_credential_revoked_a_moment_ago_is_named_by_the_run_asked_for(
    migrated_url: str, fake: fm.FakeMetaStudio, served: tuple[fm.FakeMetaStudio, str]
) -> None:
    """POST /v1/crosscheck asks MetaStudio afresh, whatever its answers' cache holds: a
    credential revoked just now shows in the run that was asked for."""
    data = {
        "database_url": migrated_url,
        "api_tokens": ["test-token"],
        "endpoints": [endpoint_table()],
        "metastudio": {**metastudio_table(served[1]), "cache_seconds": 60},
    }
    with TestClient(create_app(settings_from_mapping(data, environ=ENV))) as client:
        fake.add_job(fm.fake_job(job_id=KNOWN, room_id=ROOM_A, state="PROCESSING", end_time=""))
        event(client, KNOWN, ROOM_A)
        assert crosscheck(client)["rooms_failed"] == 0  # the answer is cached for 60 s now
        fake.revoke(ak=fm.DEFAULT_AK)
        report = crosscheck(client)
        assert (report["rooms_checked"], report["rooms_failed"]) == (0, 1)
        (finding,) = [f for f in report["open_findings"] if f["kind"] == "metastudio_unauthorized"]
        assert "401" in finding["detail"]

"""receiver.tools.sender and ``metastudio-receiver send``: what is built verifies at a real
receiver.

Every auth type x signed_uri x time unit built by ``build_callback`` is delivered to a receiver
configured the same way and must be stored (in-process on both databases; over real HTTP to a
``serve`` process for the CLI). Refusals (wrong key, stale time) must say so in the exit status.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from conftest import KEY, ServerProcess, endpoint_table, run_cli, write_config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from receiver.protocol.events import decode
from receiver.protocol.signing import SECRET_HEADER, TIME_HEADER
from receiver.store.models import Delivery, Event
from receiver.tools.sender import (
    REPLAY_HEADER,
    SignedCallback,
    answer_from,
    build_callback,
    deliver,
    deliver_async,
    retarget,
)

EVENTS = Event.__table__  # type: ignore[attr-defined]
DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
HOOKS = "https://hooks.example.com/callbacks/"
SWITCH = {
    "room_id": "room-1",
    "job_id": "job-1",
    "scene_script_name": "scene",
    "shoot_script_sequence_no": "2",
    "shoot_script_title": "Opening",
}
SIGNED_FORMS = ["host_path_query", "full_url", "path_query"]
UNITS = ["seconds", "milliseconds"]


def _name(auth: str, form: str, unit: str) -> str:
    return f"{auth}-{form}-{unit}".lower().replace("_", "-")


# -- every combination verifies at a receiver configured the same way ---------------------------


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("form", SIGNED_FORMS)
@pytest.mark.parametrize("auth", ["MSS_A", "MSS_A_HEAD"])
def test_every_signed_form_is_stored(
    app_client: Callable[..., TestClient], migrated_url: str, auth: str, form: str, unit: str
) -> None:
    name = _name(auth, form, unit)
    # A port and a query of its own in the registered URL: both are part of what is signed.
    registered = f"https://hooks.example.com:8443/callbacks/{name}?tenant=t1&b=2"
    client = app_client(
        endpoint_table(
            name=name,
            registered_url=registered,
            auth_type=auth,
            keys=[KEY],
            signed_uri=form,
            time_unit=unit,
        )
    )
    callback = build_callback(
        event_type="SHOOT_SCRIPT_SWITCH",
        message=SWITCH,
        registered_url=registered,
        auth_type=auth,
        key=KEY,
        signed_uri=form,
        time_unit=unit,
    )
    if auth == "MSS_A":
        assert "hwSecret=" in callback.url and "hwTime=" in callback.url
        assert SECRET_HEADER not in callback.headers
    else:
        assert callback.url == registered
        assert set(callback.headers) >= {SECRET_HEADER, TIME_HEADER}
    answer = deliver(callback, client=client)
    assert answer.status == 200, answer.text
    assert answer.stored and answer.result == "stored"

    engine = sa.create_engine(migrated_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.select(EVENTS).where(EVENTS.c.endpoint == name)).one()
            delivery = conn.execute(sa.select(DELIVERIES)).one()
    finally:
        engine.dispose()
    assert row.event_type == "SHOOT_SCRIPT_SWITCH"
    assert row.message["shoot_script_sequence_no"] == 2
    assert delivery.time_unit == unit
    assert bytes(delivery.body) == callback.body


@pytest.mark.parametrize("message_as", ["string", "object"])
def test_auth_type_none_and_both_message_encodings(
    app_client: Callable[..., TestClient], message_as: str
) -> None:
    registered = HOOKS + "plain?token=url-credential-123"
    table = endpoint_table(name="plain", registered_url=registered, auth_type="NONE")
    del table["keys"]
    client = app_client(table)
    message = {"room_id": "r", "job_id": "j", "state": "CONNECTED"}
    callback = build_callback(
        event_type="RTMP_STREAM_STATE_CHANGE",
        message=message,
        registered_url=registered,
        auth_type="NONE",
        message_as=message_as,
    )
    assert callback.url == registered and set(callback.headers) == {"content-type"}
    assert decode(callback.body).message_encoding == message_as
    answer = deliver(callback, client=client)
    assert answer.stored, answer.text


def test_wrong_key_and_stale_time_are_refused(app_client: Callable[..., TestClient]) -> None:
    client = app_client(endpoint_table(keys=[KEY], tolerance_seconds=60))

    def reply(**changes: Any) -> SignedCallback:
        return build_callback(
            event_type="REPLY_COMMAND_FINISH",
            message={"room_id": "r", "job_id": "j", "reply_id": "reply-1"},
            registered_url=HOOKS + "shop-a",
            **changes,
        )

    wrong = reply(key="not-the-key")
    stale = reply(key=KEY, when=time.time() - 3600)
    for callback, code in ((wrong, "RCV.SIGNATURE_MISMATCH"), (stale, "RCV.SIGNATURE_EXPIRED")):
        answer = deliver(callback, client=client)
        assert answer.status == 401 and not answer.stored
        assert answer.json["error_code"] == code
    assert deliver(reply(key=KEY), client=client).stored


def test_build_callback_body_and_headers() -> None:
    raw = b'{"event_type":"X","message":"{}"}'
    callback = build_callback(
        event_type="ignored",
        message={"ignored": True},
        body=raw,
        registered_url=HOOKS + "a",
        auth_type="mss_a_head",  # case does not matter
        key=KEY,
        when=0x66DF9308,
        extra_headers={"X-Receiver-Replay": "src:1"},
    )
    assert callback.body == raw
    assert callback.headers[TIME_HEADER] == "66df9308"
    assert callback.headers[REPLAY_HEADER] == "src:1"
    assert callback.headers["content-type"] == "application/json"
    # Huawei's worked example (signing-notes.md) reproduces through the builder.
    example = build_callback(
        event_type="X",
        registered_url="https://api.example.com/v1/products?live_id=111&limit=10&offset=0",
        auth_type="MSS_A_HEAD",
        key="GCTbw44s6MPLh4GqgDpnfuFHgy25Enly",
        when=0x66DF9308,
    )
    assert example.headers[SECRET_HEADER] == (
        "5e7fe8869a12a87ea966d9edbc02e38cd4ce62c73b8b05c638f15835e78902d7"
    )
    ms = build_callback(
        event_type="X", registered_url=HOOKS + "a", key=KEY, when=1.5, time_unit="milliseconds"
    )
    assert ms.url.endswith("hwTime=5dc")


@pytest.mark.parametrize(
    "changes",
    [
        {"auth_type": "MEITUAN_DEFAULT"},
        {"signed_uri": "scheme_only"},
        {"time_unit": "auto"},
        {"key": ""},
    ],
)
def test_build_callback_refuses_what_it_cannot_sign(changes: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"event_type": "X", "registered_url": HOOKS + "a", "key": KEY}
    with pytest.raises(ValueError):
        build_callback(**{**arguments, **changes})


def test_retarget_keeps_path_and_query() -> None:
    url = "https://hooks.example.com:8443/callbacks/a?b=1&hwSecret=ab&hwTime=5"
    assert retarget(url, None) == url
    assert retarget(url, "http://127.0.0.1:9000") == (
        "http://127.0.0.1:9000/callbacks/a?b=1&hwSecret=ab&hwTime=5"
    )
    assert retarget(url, "http://127.0.0.1:9000/prefix/") == (
        "http://127.0.0.1:9000/prefix/callbacks/a?b=1&hwSecret=ab&hwTime=5"
    )
    with pytest.raises(ValueError):
        retarget(url, "127.0.0.1:9000")


def test_answer_from_non_json_and_error_answers() -> None:
    assert answer_from(502, b"<html>bad gateway</html>", "<html>bad gateway</html>").json is None
    refused = answer_from(401, b'{"error_code":"E","error_msg":"m"}', "")
    assert not refused.stored and refused.result is None
    # Only 200 + stored/duplicate counts: an undecodable body is kept but answered 400.
    kept = answer_from(400, b'{"result":"stored","error_code":"E"}', "")
    assert not kept.stored


# -- real HTTP ---------------------------------------------------------------------------------


def test_deliver_and_deliver_async_to_a_real_server(
    sqlite_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    registered = "https://hooks.example.com/callbacks/shop-a?tenant=t1"
    server = server_factory(
        sqlite_url,
        endpoint_table(
            registered_url=registered, auth_type="MSS_A_HEAD", keys=[KEY], signed_uri="full_url"
        ),
    )

    def callback(sequence: int) -> SignedCallback:
        return build_callback(
            event_type="SHOOT_SCRIPT_SWITCH",
            message={**SWITCH, "shoot_script_sequence_no": sequence},
            registered_url=registered,
            auth_type="MSS_A_HEAD",
            key=KEY,
            signed_uri="full_url",
        )

    first = callback(1)
    answer = deliver(first, to=server.base_url)
    assert answer.stored and answer.result == "stored"
    again = deliver(first, to=server.base_url)  # same body, same signing time
    assert again.stored and again.result == "duplicate"
    with httpx2.Client() as client:
        assert deliver(callback(2), to=server.base_url, client=client).result == "stored"

    async def both() -> tuple[Any, Any]:
        own = await deliver_async(callback(3), to=server.base_url)
        async with httpx2.AsyncClient() as client:
            shared = await deliver_async(callback(4), to=server.base_url, client=client)
        return own, shared

    own, shared = asyncio.run(both())
    assert own.result == shared.result == "stored"
    with pytest.raises(httpx2.TransportError):
        deliver(callback(5), to="http://127.0.0.1:9", timeout=2)


def test_deliver_async_in_process_to_an_asgi_app() -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def endpoint(request: Request) -> JSONResponse:
        seen.append((str(request.url), dict(request.headers), await request.body()))
        return JSONResponse({"result": "stored", "delivery_id": 1, "event_id": 1})

    app = Starlette(routes=[Route("/callbacks/{name}", endpoint, methods=["POST"])])
    callback = build_callback(
        event_type="X", message={"a": 1}, registered_url=HOOKS + "shop-a", key=KEY
    )
    answer = asyncio.run(deliver_async(callback, app=app))
    assert answer.stored
    url, headers, body = seen[0]
    assert url == callback.url and body == callback.body
    assert headers["content-type"] == "application/json"


# -- the send command ---------------------------------------------------------------------------


@pytest.fixture
def mss_a_server(
    db_url: str, server_factory: Callable[..., ServerProcess]
) -> tuple[ServerProcess, str]:
    registered = HOOKS + "shop-a"
    server = server_factory(
        db_url, endpoint_table(registered_url=registered, keys=[KEY], tolerance_seconds=120)
    )
    return server, registered


def test_send_command_stores_and_prints_the_answer(
    tmp_path: Path, mss_a_server: tuple[ServerProcess, str], db_url: str
) -> None:
    server, registered = mss_a_server
    common = ["--url", registered, "--to", server.base_url, "--key-env", "SEND_KEY"]
    done = run_cli(
        "send",
        *common,
        "--event-type",
        "SHOOT_SCRIPT_SWITCH",
        "--message",
        json.dumps(SWITCH),
        cwd=tmp_path,
        env={"SEND_KEY": KEY},
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["result"] == "stored" and answer["event_id"]
    assert done.stderr.startswith("200 stored")
    assert KEY not in done.stdout + done.stderr

    # --file: an event JSON with the message as an object, sent with the message as an object
    event_file = tmp_path / "event.json"
    event_file.write_text(
        json.dumps(
            {
                "event_type": "RTMP_STREAM_STATE_CHANGE",
                "message": {"room_id": "room-1", "job_id": "job-1", "state": "CONNECTED"},
            }
        )
    )
    done = run_cli(
        "send",
        *common,
        "--file",
        str(event_file),
        "--message-as",
        "object",
        cwd=tmp_path,
        env={"SEND_KEY": KEY},
    )
    assert done.returncode == 0, done.stderr
    # --file with an export record: its original bytes are sent
    original = b'{"event_type":"CUSTOM_EVENT","message":"{\\"room_id\\":\\"room-9\\"}"}'
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"event_id": 1, "body_b64": base64.b64encode(original).decode()}))
    done = run_cli("send", *common, "--file", str(record), cwd=tmp_path, env={"SEND_KEY": KEY})
    assert done.returncode == 0, done.stderr

    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(EVENTS).order_by(EVENTS.c.id)).all()
            bodies = conn.execute(sa.select(DELIVERIES.c.body).order_by(DELIVERIES.c.id)).all()
    finally:
        engine.dispose()
    assert [r.event_type for r in rows] == [
        "SHOOT_SCRIPT_SWITCH",
        "RTMP_STREAM_STATE_CHANGE",
        "CUSTOM_EVENT",
    ]
    assert rows[1].message_encoding == "object"
    assert bytes(bodies[2].body) == original


def test_send_command_exit_status_on_refusal(
    tmp_path: Path, mss_a_server: tuple[ServerProcess, str]
) -> None:
    server, registered = mss_a_server
    base = ["send", "--url", registered, "--to", server.base_url, "--event-type", "X"]
    wrong = run_cli(*base, "--key", "wrong-key", cwd=tmp_path)
    assert wrong.returncode == 1
    assert json.loads(wrong.stdout)["error_code"] == "RCV.SIGNATURE_MISMATCH"
    assert wrong.stderr.startswith("401 not stored")

    stale = run_cli(*base, "--key", KEY, "--at", "2024-09-10T00:30:00Z", cwd=tmp_path)
    assert stale.returncode == 1
    assert json.loads(stale.stdout)["error_code"] == "RCV.SIGNATURE_EXPIRED"
    future = run_cli(*base, "--key", KEY, "--at", str(time.time() + 3600), cwd=tmp_path)
    assert future.returncode == 1 and "in the future" in future.stdout
    fresh = run_cli(*base, "--key", KEY, "--at", str(time.time() - 30), cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr


def test_send_command_from_a_config_endpoint(tmp_path: Path, sqlite_url: str) -> None:
    # No receiver needed to check the wiring: nothing listens on port 9, so no answer comes.
    table = endpoint_table(auth_type="MSS_A_HEAD", keys_env="SHOP_KEYS")
    del table["keys"]
    config = write_config(tmp_path / "r.toml", sqlite_url, table)
    done = run_cli(
        "send",
        "--config",
        str(config),
        "--to",
        "http://127.0.0.1:9",
        "--event-type",
        "X",
        "--timeout",
        "2",
        cwd=tmp_path,
        env={"SHOP_KEYS": KEY},
    )
    # Nothing answering is a wrong --to or a receiver not started: exit 2, as a usage problem.
    assert done.returncode == 2
    assert "no answer from http://127.0.0.1:9/callbacks/shop-a" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert KEY not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--event-type", "X"], "--url"),
        (["--url", HOOKS + "a", "--event-type", "X"], "--key"),
        (["--url", HOOKS + "a", "--key", KEY], "--event-type"),
        (["--url", HOOKS + "a", "--key-env", "NOPE", "--event-type", "X"], "NOPE"),
        (["--url", HOOKS + "a", "--key", KEY, "--event-type", "X", "--message", "[1]"], "object"),
        (["--url", HOOKS + "a", "--key", KEY, "--event-type", "X", "--at", "soon"], "--at"),
    ],
)
def test_send_command_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    done = run_cli("send", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr

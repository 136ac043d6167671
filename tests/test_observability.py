"""Request ids, Prometheus metrics and logs: every answer carries X-Request-Id, /metrics says what
happened, JSON logs are one object per line with the request id, and no log line of a real server
shows a key, a signature, a URL credential, an API token or a stream key."""

from __future__ import annotations

import gc
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import pytest
from conftest import KEY, OLD_KEY, REGISTERED, endpoint_table, make_settings
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from receiver.observability import RedactingFormatter, RequestIdFilter
from receiver.protocol.signing import AuthType
from receiver.testing import encode, sign_request
from receiver.web.app import create_app

AUTH = {"Authorization": "Bearer test-token"}
HOST = "https://hooks.example.com"
# A new id: plain (it could be echoed back itself) and long enough to be unique.
FRESH_ID = re.compile(r"^[A-Za-z0-9._:-]{16,64}$")

Client = Callable[..., TestClient]


def signed(body: bytes, *, when: float | None = None, endpoint: str = "shop-a") -> dict[str, Any]:
    url, headers = sign_request(
        registered_url=f"{HOST}/callbacks/{endpoint}",
        auth_type=AuthType.MSS_A,
        key=KEY,
        when=time.time() if when is None else when,
    )
    return {"url": url.removeprefix(HOST), "content": body, "headers": headers}


def reply_body(n: int = 1) -> bytes:
    return encode(
        "REPLY_COMMAND_FINISH", {"room_id": "room-1", "job_id": "job-1", "reply_id": f"r{n}"}
    )


# -- X-Request-Id --------------------------------------------------------------------------------


def test_every_answer_has_a_request_id(app_client: Client) -> None:
    client = app_client(max_body_bytes=1024)
    answers = {
        "callback 200": client.post(**signed(reply_body())),
        "callback 200 duplicate": client.post(**signed(reply_body(), when=time.time() // 1)),
        "callback 400": client.post(**signed(b"nope")),
        "callback 401": client.post("/callbacks/shop-a", content=reply_body()),
        "callback 404": client.post("/callbacks/nobody", content=reply_body()),
        "callback 405": client.get("/callbacks/shop-a"),
        "callback 413": client.post(**signed(b"x" * 2000)),
        "/v1 200": client.get("/v1/events", headers=AUTH),
        "/v1 400": client.get("/v1/events?limit=0", headers=AUTH),
        "/v1 401": client.get("/v1/events"),
        "/v1 404": client.get("/v1/events/999", headers=AUTH),
        "/healthz": client.get("/healthz"),
        "/readyz": client.get("/readyz"),
        "/metrics": client.get("/metrics"),
        "/openapi.json": client.get("/openapi.json"),
        "no such route": client.get("/nowhere"),
        "HEAD": client.head("/healthz"),
    }
    seen = set()
    for what, answer in answers.items():
        rid = answer.headers.get("x-request-id")
        assert rid is not None and FRESH_ID.match(rid), (what, answer.headers)
        assert len(answer.headers.get_list("x-request-id")) == 1, what
        seen.add(rid)
    assert len(seen) == len(answers)  # one per request


def test_a_plain_incoming_request_id_is_echoed(app_client: Client) -> None:
    client = app_client()
    for given in ("abc-123", "0f8fad5b-d9cb-469f-a165-70867728950e", "req.1:2_3", "x" * 64):
        for answer in (
            client.get("/healthz", headers={"X-Request-Id": given}),
            client.get("/v1/events", headers={**AUTH, "x-request-id": given}),
            client.post("/callbacks/nobody", headers={"X-Request-Id": given}),
        ):
            assert answer.headers["x-request-id"] == given


@pytest.mark.parametrize(
    "given",
    ["has spaces in it", "x" * 200, "x" * 65, "", "a/b", "new\\nline", "<script>", "caf\xe9"],
)
def test_a_weird_incoming_request_id_is_replaced(app_client: Client, given: str) -> None:
    client = app_client()
    for answer in (
        client.get("/healthz", headers={"X-Request-Id": given.encode("latin-1")}),
        client.post(
            **{**signed(reply_body()), "headers": {"X-Request-Id": given.encode("latin-1")}}
        ),
    ):
        rid = answer.headers["x-request-id"]
        assert rid != given and FRESH_ID.match(rid), rid


class BrokenReader:
    """A read engine that fails in a way nothing expects: the answer is a 500."""

    def connect(self) -> Any:
        raise RuntimeError("injected fault")


def test_an_unexpected_error_keeps_its_request_id(
    migrated_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 500 is where a request id matters most: on the answer and on the logged traceback."""
    caplog.handler.addFilter(RequestIdFilter())
    app = create_app(make_settings(migrated_url))
    with TestClient(app, raise_server_exceptions=False) as client:
        app.state.runtime.reader = BrokenReader()
        answer = client.get("/v1/events", headers={**AUTH, "X-Request-Id": "trace-500"})
    assert answer.status_code == 500
    assert answer.json()["error_code"] == "RCV.INTERNAL_ERROR"
    logged = [r for r in caplog.records if r.getMessage().startswith("unexpected error")]
    assert [getattr(r, "request_id", None) for r in logged] == ["trace-500"]
    assert answer.headers.get("x-request-id") == "trace-500"


# -- /metrics ------------------------------------------------------------------------------------


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_say_what_happened(app_client: Client) -> None:
    client = app_client(max_body_bytes=1024)
    for n in range(3):
        assert client.post(**signed(reply_body(n))).status_code == 200
    when = time.time() // 1
    client.post(**signed(reply_body(9), when=when))
    assert client.post(**signed(reply_body(9), when=when)).json()["result"] == "duplicate"
    assert client.post(**signed(b"{")).status_code == 400
    assert client.post("/callbacks/shop-a", content=b"{}").status_code == 401
    assert client.post("/callbacks/shop-a?hwSecret=1&hwTime=1").status_code == 401
    assert client.post(**signed(reply_body(), when=time.time() - 1000)).status_code == 401
    assert client.post("/callbacks/nobody", content=b"{}").status_code == 404
    assert client.post(**signed(b"x" * 2000)).status_code == 413
    found = samples(client)

    def value(name: str, **labels: str) -> float:
        return found.get((name, tuple(sorted(labels.items()))), 0.0)

    deliveries = "receiver_deliveries_total"
    assert value(deliveries, endpoint="shop-a", result="stored") == 4
    assert value(deliveries, endpoint="shop-a", result="duplicate") == 1
    assert value(deliveries, endpoint="shop-a", result="undecodable") == 1
    assert value(deliveries, endpoint="shop-a", result="rejected") == 4
    assert value(deliveries, endpoint="(unknown)", result="rejected") == 1
    rejections = "receiver_rejections_total"
    assert value(rejections, reason="signature_missing") == 1
    assert value(rejections, reason="signature_malformed") == 1
    assert value(rejections, reason="signature_expired") == 1
    assert value(rejections, reason="unknown_endpoint") == 1
    assert value(rejections, reason="body_too_large") == 1
    assert value(rejections, reason="undecodable") == 1
    assert value("receiver_intake_seconds_count") == 5  # the answered 200s
    assert value("receiver_intake_seconds_bucket", le="+Inf") == 5
    assert value("receiver_intake_seconds_sum") > 0
    # Every verified callback: stored, duplicate, undecodable (an expired one is not verified).
    assert value("receiver_clock_skew_seconds_count") == 6
    assert value("receiver_clock_skew_seconds_bucket", le="-1.0") == 0
    assert value("receiver_clock_skew_seconds_bucket", le="300.0") == 6
    assert value("receiver_rejections_unlogged_total") == 0


# -- logs of a real server -----------------------------------------------------------------------

API_TOKEN = "api-token-d41d8cd98f00b204"
URL_TOKEN = "url-token-9e107d9d372bb682"
STREAM_KEY = "stream-key-e4d909c290d0fb1c"


def _endpoints() -> list[dict[str, Any]]:
    return [
        endpoint_table(),  # MSS_A: hwSecret in the query
        endpoint_table(
            name="shop-h", registered_url=f"{HOST}/callbacks/shop-h", auth_type="MSS_A_HEAD"
        ),
        endpoint_table(
            name="shop-n",
            registered_url=f"{HOST}/callbacks/shop-n?token={URL_TOKEN}&shop=n",
            auth_type="NONE",
            keys=[],
        ),
    ]


def _traffic(base: str) -> list[str]:
    """Signed and refused callbacks to every kind of endpoint, RTMP events with a stream key, and
    /v1 calls with the API token. Returns the secrets sent (the signatures among them)."""
    secrets = [KEY, OLD_KEY, API_TOKEN, URL_TOKEN, STREAM_KEY]
    rtmp = {"room_id": "room-1", "job_id": "job-1", "output_url": "rtmp://push/live"}
    with httpx.Client(base_url=base, timeout=10) as client:
        for n, state in enumerate(["CONNECTING", "CONNECTED", "DISCONNECTED"]):
            body = encode(
                "RTMP_STREAM_STATE_CHANGE", {**rtmp, "state": state, "stream_key": STREAM_KEY}
            )
            for name, auth, key, status in (
                ("shop-a", AuthType.MSS_A, KEY, 200 if n < 2 else 401),
                ("shop-h", AuthType.MSS_A_HEAD, OLD_KEY, 200 if n < 2 else 401),
                ("shop-a", AuthType.MSS_A, "a-wrong-key", 401),
                ("shop-h", AuthType.MSS_A_HEAD, "another-wrong-key", 401),
            ):
                url, headers = sign_request(
                    registered_url=f"{HOST}/callbacks/{name}",
                    auth_type=auth,
                    key=key,
                    when=time.time() - 400 * (n == 2),
                )
                secrets += re.findall(r"hwSecret=([0-9a-f]{64})", url) + list(headers.values())[:1]
                headers["x-request-id"] = f"req-{name}-{n}"
                answer = client.post(url.removeprefix(HOST), content=body, headers=headers)
                assert answer.status_code == status, (name, key, n)
            for url, status in (
                (f"/callbacks/shop-n?token={URL_TOKEN}&shop=n", 200),
                (f"/callbacks/shop-n?shop=n&token={URL_TOKEN}", 200),
                (f"/callbacks/shop-n?token={URL_TOKEN}x&shop=n", 401),
                ("/callbacks/shop-n?shop=n", 401),
                (f"/callbacks/nobody?token={URL_TOKEN}&hwSecret={'a' * 64}", 404),
            ):
                assert client.post(url, content=body).status_code == status, url
            # Undecodable (a duplicate key), signed: kept, refused and logged.
            bad = (
                b'{"event_type":"X","message":{"stream_key":"'
                + STREAM_KEY.encode()
                + b'","stream_key":1}}'
            )
            url, _ = sign_request(
                registered_url=REGISTERED, auth_type=AuthType.MSS_A, key=KEY, when=time.time()
            )
            secrets += re.findall(r"hwSecret=([0-9a-f]{64})", url)
            assert client.post(url.removeprefix(HOST), content=bad).status_code == 400
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        for path in (
            "/v1/events",
            "/v1/deliveries",
            "/v1/rejections",
            "/v1/jobs/job-1",
            "/v1/events/1",
        ):
            assert client.get(path, headers=auth).status_code == 200, path
        assert (
            client.get("/v1/events", headers={"Authorization": f"Bearer {API_TOKEN}x"}).status_code
            == 401
        )
        assert client.get("/metrics").status_code == 200
    assert len(secrets) > 10
    return secrets


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_logs_never_show_secrets(
    server_factory: Callable[..., Any], sqlite_url: str, log_format: str
) -> None:
    server = server_factory(
        sqlite_url, *_endpoints(), api_tokens=[API_TOKEN], log_format=log_format, log_level="DEBUG"
    )
    secrets = _traffic(server.base_url)
    server.stop()
    output = server.output()
    assert "refused callback" in output  # the refusals were logged, at least
    for secret in secrets:
        assert secret not in output, secret
        assert secret[:16] not in output, secret


@pytest.mark.slow
def test_logs_never_show_secrets_on_postgresql(
    server_factory: Callable[..., Any], pg_url: str
) -> None:
    server = server_factory(
        pg_url, *_endpoints(), api_tokens=[API_TOKEN], log_format="json", log_level="DEBUG"
    )
    secrets = _traffic(server.base_url)
    server.stop()
    output = server.output()
    for secret in secrets:
        assert secret not in output, secret


@pytest.mark.slow
def test_json_logs_are_one_object_per_line_with_the_request_id(
    server_factory: Callable[..., Any], sqlite_url: str
) -> None:
    server = server_factory(sqlite_url, endpoint_table(), log_format="json", log_level="DEBUG")
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        answer = client.post(
            "/callbacks/shop-a", content=b"{}", headers={"X-Request-Id": "trace-me-1"}
        )
        assert answer.status_code == 401 and answer.headers["x-request-id"] == "trace-me-1"
        answer = client.post("/callbacks/nobody", content=b"{}")
        generated = answer.headers["x-request-id"]
    server.stop()
    lines = server.output().splitlines()
    assert lines
    entries = []
    for line in lines:
        entry = json.loads(line)  # every line, uvicorn's and alembic's too
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message", "request_id"} <= set(entry), line
        entries.append(entry)
    by_id = {entry["request_id"] for entry in entries}
    assert "trace-me-1" in by_id and generated in by_id
    traced = [e for e in entries if e["request_id"] == "trace-me-1"]
    assert any("refused callback" in e["message"] for e in traced)
    assert all(e["request_id"] == "-" for e in entries if "Started server" in e["message"])


# -- what a stop leaves behind -------------------------------------------------------------------


def test_a_stop_leaves_no_database_connection_open(migrated_url: str) -> None:
    """Stopping right after a start cancels background work (the store figures, the stream
    rules) whose threads may still hold a connection: the engines are disposed only once those
    are returned, so no connection is left for the garbage collector to find open."""
    left: list[str] = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: left.append(repr(unraisable.exc_value))
    try:
        for _ in range(8):
            settings = make_settings(
                migrated_url, endpoint_table(), rules={"stream_down_seconds": 30}
            )
            with TestClient(create_app(settings)) as client:
                assert client.get("/healthz").status_code == 200
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert left == []


def test_the_database_password_never_reaches_a_log_line() -> None:
    """A database error may quote its connection URL; the server's log masks its password."""
    password = "db-pass-5f3a9c"
    url = f"postgresql+psycopg://receiver:{password}@127.0.0.1:1/receiver"
    create_app(make_settings(url, endpoint_table()))  # not started: nothing connects
    record = logging.LogRecord(
        "receiver.prune", logging.ERROR, __file__, 1, "the prune failed (%s)", (url,), None
    )
    line = RedactingFormatter(logging.Formatter("%(message)s")).format(record)
    assert password not in line and "receiver:****@127.0.0.1" in line

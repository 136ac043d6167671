"""GET /openapi.json: a valid OpenAPI document that lists exactly the app's routes, and that the
app keeps (a schemathesis run against the in-process app, on SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from conftest import KEY, REGISTERED, endpoint_table, make_settings
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.routing import Route
from starlette.testclient import TestClient

from receiver.protocol.signing import AuthType
from receiver.store.models import DeliveryStatus
from receiver.store.queries import MAX_LIMIT, MAX_TIMELINE
from receiver.store.rejections import _REASONS
from receiver.testing import encode, sign_request
from receiver.web.app import create_app
from receiver.web.openapi import DOCUMENT, document

AUTH = {"Authorization": "Bearer test-token"}
METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "trace"}


def test_document_is_valid_openapi() -> None:
    validate(document())


def test_document_is_a_fresh_copy_each_time() -> None:
    first = document()
    first["paths"].clear()
    assert document() == DOCUMENT
    assert document()["paths"]


def test_document_lists_exactly_the_apps_routes(sqlite_url: str) -> None:
    app = create_app(make_settings(sqlite_url))  # not started: its routes are enough
    assert app.routes and all(isinstance(route, Route) for route in app.routes)
    routes = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        # The web console's HTML pages and assets are not part of the API (README: Web console).
        and not route.path.startswith(("/ui", "/static/"))
        for method in route.methods or ()
        if method != "HEAD"  # Starlette answers HEAD for every GET route by itself
    }
    documented = {
        (path, method)
        for path, item in document()["paths"].items()
        for method in item
        if method in METHODS
    }
    assert documented == routes


def test_every_operation_answers_in_the_error_shape_and_names_its_security() -> None:
    for path, item in document()["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            assert "200" in responses, (method, path)
            for status, response in responses.items():
                assert "X-Request-Id" in response["headers"], (method, path, status)
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema["$ref"].endswith(("/Error", "/UndecodableError"))
            secured = op.get("security") == [{"bearerAuth": []}]
            assert secured == path.startswith("/v1/"), path
            if secured:
                assert {"400", "401", "503"} <= set(responses), path


def test_bounds_and_enums_match_the_code() -> None:
    paths = document()["paths"]

    def param(path: str, name: str) -> dict[str, Any]:
        found = [p for p in paths[path]["get"]["parameters"] if p["name"] == name]
        assert len(found) == 1
        schema: dict[str, Any] = found[0]["schema"]
        return schema

    for path in ("/v1/events", "/v1/deliveries", "/v1/rejections"):
        assert param(path, "limit")["maximum"] == MAX_LIMIT
        assert param(path, "limit")["minimum"] == 1
    assert param("/v1/jobs/{job_id}", "limit")["maximum"] == MAX_TIMELINE
    assert param("/v1/deliveries", "status")["enum"] == list(DeliveryStatus.ALL)
    schemas = document()["components"]["schemas"]
    reasons = schemas["Rejection"]["properties"]["reason"]["enum"]
    assert sorted(reasons) == sorted([reason for _, reason in _REASONS] + ["refused"])


def _post(
    client: TestClient, body: bytes, *, when: float | None = None, name: str = "shop-a"
) -> Any:
    url, _ = sign_request(
        registered_url=REGISTERED, auth_type=AuthType.MSS_A, key=KEY, when=when or time.time()
    )
    return client.post(
        url.replace("https://hooks.example.com/callbacks/shop-a", f"/callbacks/{name}"),
        content=body,
    )


def _seed(client: TestClient) -> None:
    """One of each kind of thing the API shows: events of every type, a duplicate, an undecodable
    delivery, and rejections of several reasons."""
    ids = {"room_id": "room-1", "job_id": "job-1"}
    when = time.time()
    bodies = [
        encode(
            "SHOOT_SCRIPT_SWITCH",
            {
                **ids,
                "scene_script_name": "s",
                "shoot_script_sequence_no": "2",
                "shoot_script_title": "t",
            },
        ),
        encode(
            "RTMP_STREAM_STATE_CHANGE",
            {
                **ids,
                "state": "CONNECTED",
                "output_url": "rtmp://x/live",
                "stream_key": "secret-stream-key-1234",
            },
        ),
        encode(
            "REPLY_COMMAND_FINISH", {**ids, "reply_id": "r1"}, message_as="object", extra={"x": 1}
        ),
        encode("SOMETHING_NEW", {"a": [1, {"stream_key": "nested-secret-key"}]}),
    ]
    for body in bodies:
        assert _post(client, body).status_code == 200
    assert _post(client, bodies[0], when=when).json()["result"] in ("stored", "duplicate")
    assert _post(client, bodies[0], when=when).json()["result"] == "duplicate"
    assert _post(client, b"not json", when=when).status_code == 400
    assert _post(client, b"not json", when=when).status_code == 400  # an undecodable duplicate
    assert _post(client, bodies[1], when=when - 1000).status_code == 401
    assert _post(client, bodies[1], name="nobody").status_code == 404
    assert client.post("/callbacks/shop-a?hwSecret=00&hwTime=zz", content=b"{}").status_code == 401
    assert _post(client, b"x" * 5000).status_code == 413


def _operation(path: str, method: str = "GET") -> Any:
    return SCHEMA[path][method]


# A destination nothing answers for: the forwarding routes have one to show, failing.
NOWHERE = {
    "name": "app",
    "kind": "redis",
    "url": "redis://127.0.0.1:1",
    "retry_seconds": [0.1],
    "timeout_seconds": 0.5,
}


def test_real_answers_match_their_schemas(app_client: Any) -> None:
    """Answers with data in them (schemathesis, below, mostly sees an empty store)."""
    client = app_client(max_body_bytes=4096, destinations=[NOWHERE])
    _seed(client)
    deadline = time.monotonic() + 10
    while not client.get("/v1/destinations/app/attempts", headers=AUTH).json()["attempts"]:
        assert time.monotonic() < deadline, "the destination was not tried"
        time.sleep(0.05)
    for path, method, template, body in [
        ("/v1/destinations", "GET", "/v1/destinations", None),
        ("/v1/destinations/{name}", "GET", "/v1/destinations/app", None),
        ("/v1/destinations/{name}", "GET", "/v1/destinations/nope", None),
        ("/v1/destinations/{name}/attempts", "GET", "/v1/destinations/app/attempts?limit=1", None),
        ("/v1/destinations/{name}/messages", "GET", "/v1/destinations/app/messages", None),
        (
            "/v1/destinations/{name}/resend",
            "POST",
            "/v1/destinations/app/resend",
            {"event_ids": [1]},
        ),
        ("/v1/destinations/{name}/resend", "POST", "/v1/destinations/app/resend", {}),
        (
            "/v1/destinations/{name}/disable",
            "POST",
            "/v1/destinations/app/disable",
            {"reason": "x"},
        ),
        ("/v1/destinations/{name}/enable", "POST", "/v1/destinations/app/enable", None),
    ]:
        answer = client.request(method, template, headers=AUTH, json=body)
        _operation(path, method).validate_response(answer)
    assert client.get("/v1/destinations/app", headers=AUTH).json()["state"] in (
        "active",
        "retrying",
    )
    for path, template in [
        ("/v1/events", "/v1/events?limit=2"),
        ("/v1/events", "/v1/events?event_type=RTMP_STREAM_STATE_CHANGE,NOPE"),
        ("/v1/events/{event_id}", "/v1/events/2"),
        ("/v1/events/{event_id}", "/v1/events/999"),
        ("/v1/events/{event_id}", "/v1/events/x"),
        ("/v1/jobs/{job_id}", "/v1/jobs/job-1"),
        ("/v1/jobs/{job_id}", "/v1/jobs/job-1?limit=1"),
        ("/v1/jobs/{job_id}", "/v1/jobs/nope"),
        ("/v1/deliveries", "/v1/deliveries"),
        ("/v1/deliveries", "/v1/deliveries?status=bad"),
        ("/v1/rejections", "/v1/rejections"),
        ("/v1/rejections", "/v1/rejections?limit=0"),
        ("/v1/findings", "/v1/findings?status=open"),
        ("/v1/findings", "/v1/findings?status=nope"),
        ("/healthz", "/healthz"),
        ("/readyz", "/readyz"),
        ("/metrics", "/metrics"),
        ("/openapi.json", "/openapi.json"),
    ]:
        answer = client.get(template, headers=AUTH)
        _operation(path).validate_response(answer)
        no_token = client.get(template)
        _operation(path).validate_response(no_token)
    assert client.get("/openapi.json").json() == DOCUMENT
    callback = _operation("/callbacks/{name}", "POST")
    for answer in [
        _post(
            client, encode("REPLY_COMMAND_FINISH", {"room_id": "r", "job_id": "j", "reply_id": "z"})
        ),
        _post(client, b"[]"),
        _post(client, b"{}", when=1),
        _post(client, b"{}", name="nobody"),
        _post(client, b"y" * 5000),
    ]:
        callback.validate_response(answer)
    crosscheck = _operation("/v1/crosscheck", "POST")
    crosscheck.validate_response(client.post("/v1/crosscheck", headers=AUTH))  # not configured
    crosscheck.validate_response(client.post("/v1/crosscheck"))


# -- schemathesis --------------------------------------------------------------------------------
# The schema is the document itself, and its app a stand-in that each test points at an app of its
# own: the lazy ``schemathesis.pytest.from_fixture`` loader does not run under pytest 9.2 (it sets
# ``Function._nodeid``, which pytest 9.2 no longer has), and an app passed to ``call_and_validate``
# alone is not used by the ``ignored_auth`` check's probe.


class CurrentApp:
    """An ASGI app that forwards to ``target`` (lifespan included)."""

    target: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.target(scope, receive, send)


CURRENT = CurrentApp()
# The token as schemathesis's own auth setting (not a header added to each call): then it knows
# the operations are authenticated, and its negative cases without a token stay without one.
CONFIG = SchemathesisConfig.from_dict(
    {"auth": {"openapi": {"bearerAuth": {"bearer": "test-token"}}}}
)
# The event stream never ends by itself, which a fuzzer cannot read to the end: it has tests of
# its own (tests/web/test_console.py), against a real server.
SCHEMA = schemathesis.openapi.from_dict(document(), config=CONFIG).exclude(path="/v1/events/stream")
SCHEMA.app = CURRENT


@pytest.fixture
def fuzzed_app(migrated_url: str) -> Iterator[None]:
    config = make_settings(
        migrated_url, endpoint_table(), max_body_bytes=4096, destinations=[NOWHERE]
    )
    with TestClient(create_app(config)) as client:
        _seed(client)  # so that answers have data in them, not only empty pages
    CURRENT.target = create_app(config)
    try:
        yield
    finally:
        shutdown_lifespans()  # the app's lifespan, which schemathesis started on its first call
        CURRENT.target = None


@SCHEMA.parametrize()
# One app (and store) for all the examples of an operation, on purpose: hence the health check.
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_app_keeps_its_document(case: Any, fuzzed_app: None) -> None:
    # The cursor is opaque: a well-formed string that this API did not issue is rightly refused.
    forged_cursor = bool(case.query and "cursor" in case.query)
    excluded = [positive_data_acceptance] if forged_cursor else []
    case.call_and_validate(excluded_checks=excluded)

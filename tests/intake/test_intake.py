"""POST /callbacks/{name}: verify -> decode -> store, on SQLite and PostgreSQL.

Most tests run the app in-process (``app_client``); the ``real HTTP`` ones run ``serve`` on loopback
(``server_factory``). What was stored is always read back from the database itself.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx2
import pytest
import sqlalchemy as sa
from conftest import KEY, OLD_KEY, REGISTERED, endpoint_table, make_settings
from starlette.testclient import TestClient

from receiver.protocol.signing import (
    SECRET_HEADER,
    TIME_HEADER,
    AuthType,
    SignedUri,
    TimeUnit,
)
from receiver.store.models import Delivery, Event
from receiver.testing import encode, sign_request
from receiver.web.app import create_app

DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
EVENTS = Event.__table__  # type: ignore[attr-defined]

HOOKS = "https://hooks.example.com/callbacks/"
TOKEN = "s3cret-url-token"
SWITCH = {
    "room_id": "room-1",
    "job_id": "job-1",
    "scene_script_name": "scene",
    "shoot_script_sequence_no": "2",
    "shoot_script_title": "Opening",
}

Client = Callable[..., TestClient]


# --- helpers


@dataclass
class Db:
    """Reads what the receiver stored, straight from the tables."""

    engine: sa.Engine

    def counts(self) -> tuple[int, int]:
        with self.engine.connect() as conn:
            deliveries = conn.execute(sa.select(sa.func.count()).select_from(DELIVERIES)).scalar()
            events = conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar()
        return int(deliveries or 0), int(events or 0)

    def deliveries(self, **where: Any) -> list[sa.RowMapping]:
        query = sa.select(DELIVERIES).order_by(DELIVERIES.c.id)
        for column, value in where.items():
            query = query.where(DELIVERIES.c[column] == value)
        with self.engine.connect() as conn:
            return list(conn.execute(query).mappings())

    def delivery(self, delivery_id: int) -> sa.RowMapping:
        (row,) = self.deliveries(id=delivery_id)
        return row

    def events(self, **where: Any) -> list[sa.RowMapping]:
        query = sa.select(EVENTS).order_by(EVENTS.c.id)
        for column, value in where.items():
            query = query.where(EVENTS.c[column] == value)
        with self.engine.connect() as conn:
            return list(conn.execute(query).mappings())


@pytest.fixture
def db(migrated_url: str) -> Iterator[Db]:
    # One pooled connection: reading the tables after every request must stay cheap.
    engine = sa.create_engine(migrated_url, pool_size=1, max_overflow=0)
    yield Db(engine)
    engine.dispose()


def target_of(url: str, name: str) -> str:
    """Where the request really goes: /callbacks/{name} with the query MetaStudio appended."""
    query = urlsplit(url).query
    return f"/callbacks/{name}" + (f"?{query}" if query else "")


@dataclass
class Signed:
    target: str
    headers: dict[str, str]
    hw_time: str
    secret: str


def signed(
    registered: str = REGISTERED,
    *,
    name: str = "shop-a",
    auth: AuthType = AuthType.MSS_A,
    key: str = KEY,
    when: float | None = None,
    form: SignedUri = SignedUri.HOST_PATH_QUERY,
    unit: TimeUnit = TimeUnit.SECONDS,
) -> Signed:
    url, headers = sign_request(
        registered_url=registered,
        auth_type=auth,
        key=key,
        when=time.time() if when is None else when,
        form=form,
        unit=unit,
    )
    if auth is AuthType.MSS_A:
        pairs = dict(parse_qsl(urlsplit(url).query))
        secret, hw_time = pairs["hwSecret"], pairs["hwTime"]
    else:
        secret, hw_time = headers.get(SECRET_HEADER, ""), headers.get(TIME_HEADER, "")
    return Signed(target_of(url, name), headers, hw_time, secret)


def post(client: TestClient | httpx2.Client, request: Signed, body: bytes) -> Any:
    return client.post(request.target, content=body, headers=request.headers)


def switch(**changes: Any) -> bytes:
    return encode("SHOOT_SCRIPT_SWITCH", SWITCH | changes)


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    data: dict[str, Any] = response.json()
    assert isinstance(data.get("error_code"), str) and data["error_code"], data
    assert isinstance(data.get("error_msg"), str) and data["error_msg"], data
    if code is not None:
        assert data["error_code"] == code, data
    return data


def assert_stored(response: Any, result: str = "stored") -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    data: dict[str, Any] = response.json()
    assert data["result"] == result, data
    assert isinstance(data["delivery_id"], int)
    return data


def expected_signed_at(when: float, unit: TimeUnit) -> datetime:
    if unit is TimeUnit.SECONDS:
        return datetime.fromtimestamp(int(when), UTC)
    return datetime.fromtimestamp(round(when * 1000) / 1000, UTC)


def assert_no_secret_kept(row: sa.RowMapping, *secrets: str) -> None:
    kept = json.dumps(row["headers"]) + json.dumps(row["query"]) + str(row["error"])
    for secret in secrets:
        assert secret not in kept, f"{secret!r} was stored in {kept}"
    assert "hwSecret" not in [name for name, _ in row["query"]]
    assert SECRET_HEADER not in {name.lower() for name in row["headers"]}


# --- every signed-URI form and time unit


class Problems:
    """Collects the failing cases of a loop, so one test reports every one of them."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def check(self, case: str, run: Callable[..., object], *args: Any) -> None:
        try:
            run(*args)
        except AssertionError as exc:
            self.found.append(f"{case}: {exc}".splitlines()[0][:400])

    def assert_none(self) -> None:
        assert not self.found, "\n".join(self.found)


# --- every signed-URI form and time unit

UNITS = [TimeUnit.SECONDS, TimeUnit.MILLISECONDS, TimeUnit.AUTO]


@pytest.mark.parametrize("auth", [AuthType.MSS_A, AuthType.MSS_A_HEAD])
def test_every_signed_uri_form_and_time_unit(app_client: Client, db: Db, auth: AuthType) -> None:
    def name_of(form: SignedUri, unit: TimeUnit) -> str:
        return f"{form.value}-{unit.value}".replace("_", "-")

    client = app_client(
        *(
            endpoint_table(
                name=name_of(form, unit),
                registered_url=HOOKS + name_of(form, unit),
                auth_type=auth.value,
                signed_uri=form.value,
                time_unit=unit.value,
            )
            for form in SignedUri
            for unit in UNITS
        )
    )
    problems = Problems()
    for form in SignedUri:
        for configured in UNITS:
            name = name_of(form, configured)
            for sent in (TimeUnit.SECONDS, TimeUnit.MILLISECONDS):
                problems.check(
                    f"{name} sent in {sent}",
                    _one_form,
                    client,
                    db,
                    auth,
                    form,
                    name,
                    configured,
                    sent,
                )
    problems.assert_none()


def _one_form(
    client: TestClient,
    db: Db,
    auth: AuthType,
    form: SignedUri,
    name: str,
    configured: TimeUnit,
    sent: TimeUnit,
) -> None:
    when = time.time() - 1.5
    request = signed(HOOKS + name, name=name, auth=auth, form=form, unit=sent, when=when)
    if auth is AuthType.MSS_A_HEAD:
        # Header names are case-insensitive, hex too (signing-notes.md).
        request.headers = {
            "X-Hw-Mss-Secret": request.secret.upper(),
            "X-HW-MSS-TIME": request.hw_time,
        }
    body = switch(shoot_script_title=f"{name} {sent}")
    before = db.counts()
    response = post(client, request, body)
    if configured not in (TimeUnit.AUTO, sent):
        # Read in the other unit the time is decades away: refused, nothing stored.
        assert_error(response, 401, "RCV.SIGNATURE_EXPIRED")
        assert db.counts() == before
        return
    data = assert_stored(response)
    assert db.counts() == (before[0] + 1, before[1] + 1)
    row = db.delivery(data["delivery_id"])
    assert row["endpoint"] == name
    assert row["status"] == "stored"
    assert row["body"] == body, "the raw bytes are kept exactly"
    assert row["body_size"] == len(body)
    assert row["key_index"] == 0
    assert row["time_unit"] == sent.value
    assert abs(row["signed_at"] - expected_signed_at(when, sent)).total_seconds() < 0.002
    assert_no_secret_kept(row, request.secret, request.secret.upper())
    if auth is AuthType.MSS_A:
        assert row["query"] == [["hwTime", request.hw_time]]
    else:
        assert row["query"] == []
        assert row["headers"][TIME_HEADER] == request.hw_time
    (event,) = db.events(delivery_id=data["delivery_id"])
    assert event["id"] == data["event_id"]
    assert event["signed_at"] == row["signed_at"]


# --- what is stored


def test_stored_events_are_decoded_and_typed(app_client: Client, db: Db) -> None:
    client = app_client()
    now = time.time()

    # The documented shape; "numbers may arrive as strings" (PRODUCT.md).
    body = switch()
    data = assert_stored(post(client, signed(when=now - 1), body))
    (event,) = db.events(delivery_id=data["delivery_id"])
    assert event["id"] == data["event_id"]
    assert event["endpoint"] == "shop-a"
    assert event["event_type"] == "SHOOT_SCRIPT_SWITCH"
    assert (event["room_id"], event["job_id"]) == ("room-1", "job-1")
    assert event["message_encoding"] == "string"
    assert event["message"]["shoot_script_sequence_no"] == 2
    assert event["message"]["shoot_script_title"] == "Opening"
    assert event["extra"] == {}
    row = db.delivery(data["delivery_id"])
    assert row["body"] == body
    assert row["remote_addr"]
    assert event["received_at"] == row["received_at"]
    assert abs((datetime.now(UTC) - row["received_at"]).total_seconds()) < 60

    # message as an object.
    body = encode(
        "RTMP_STREAM_STATE_CHANGE",
        {"room_id": "r", "job_id": "j", "state": "CONNECTED", "stream_key": "sk-123456789"},
        message_as="object",
    )
    data = assert_stored(post(client, signed(when=now - 2), body))
    (event,) = db.events(delivery_id=data["delivery_id"])
    assert event["message_encoding"] == "object"
    assert event["message"]["state"] == "CONNECTED"
    assert db.delivery(data["delivery_id"])["body"] == body

    # An unknown event type with unknown fields and extra top-level fields.
    body = encode(
        "AVATAR_MOOD_CHANGE",
        {"room_id": "r-9", "job_id": 77, "mood": "happy", "nested": {"a": [1, 2.5, None]}},
        extra={"trace_id": "abc", "version": 3},
    )
    data = assert_stored(post(client, signed(when=now - 3), body))
    (event,) = db.events(delivery_id=data["delivery_id"])
    assert event["event_type"] == "AVATAR_MOOD_CHANGE"
    assert (event["room_id"], event["job_id"]) == ("r-9", "77")
    assert event["message"]["mood"] == "happy"
    assert event["message"]["nested"] == {"a": [1, 2.5, None]}
    assert event["extra"] == {"trace_id": "abc", "version": 3}

    # Unknown fields of a known event are kept beside the typed ones.
    body = encode("REPLY_COMMAND_FINISH", {"room_id": "r", "job_id": "j", "reply_id": 5, "x": "y"})
    data = assert_stored(post(client, signed(when=now - 4), body))
    (event,) = db.events(delivery_id=data["delivery_id"])
    assert event["message"]["reply_id"] == "5"
    assert event["message"]["x"] == "y"
    assert db.counts() == (4, 4)


def test_escaped_nul_inside_the_message_string_is_stored(app_client: Client, db: Db) -> None:
    # JSON text inside JSON: the outer document writes the inner backslash as \u005c, so the
    # inner text holds the escape \u0000 (U+0000) while the raw body holds no "\u0000" itself.
    # PostgreSQL text/JSONB cannot hold U+0000; the delivery must still be stored, not refused.
    client = app_client()
    body = (
        b'{"event_type":"SHOOT_SCRIPT_SWITCH","message":"{\\"room_id\\":\\"r\\",'
        b'\\"job_id\\":\\"j\\",\\"shoot_script_title\\":\\"a\\u005cu0000b\\"}"}'
    )
    data = assert_stored(post(client, signed(), body))
    assert db.delivery(data["delivery_id"])["body"] == body
    (event,) = db.events()
    assert event["message"]["shoot_script_title"] in ("a\x00b", "a\ufffdb")


# --- the registered URL decides what is signed


def test_registered_url_with_its_own_query(app_client: Client, db: Db) -> None:
    client = app_client(
        endpoint_table(name="shop-q", registered_url=f"{HOOKS}shop-q?tenant=acme&v=2"),
        endpoint_table(
            name="shop-qh", registered_url=f"{HOOKS}shop-qh?tenant=acme&v=2", auth_type="MSS_A_HEAD"
        ),
    )
    for name, auth in (("shop-q", AuthType.MSS_A), ("shop-qh", AuthType.MSS_A_HEAD)):
        request = signed(f"{HOOKS}{name}?tenant=acme&v=2", name=name, auth=auth)
        assert_stored(post(client, request, switch(shoot_script_title=f"{name} as sent")))
        pairs = parse_qsl(urlsplit(request.target).query)

        def variant(
            new_pairs: list[tuple[str, str]], request: Signed = request, name: str = name
        ) -> Signed:
            target = f"/callbacks/{name}?" + urlencode(new_pairs)
            return Signed(target, request.headers, request.hw_time, request.secret)

        # The same parameters in another order still verify (they are signed sorted by name).
        reordered = variant(list(reversed(pairs)))
        assert_stored(post(client, reordered, switch(shoot_script_title=f"{name} reordered")))
        changed = [(k, "3" if k == "v" else v) for k, v in pairs]
        missing = [(k, v) for k, v in pairs if k != "tenant"]
        extra = [*pairs, ("debug", "1")]
        doubled = [*pairs, ("v", "2")]
        for bad in (changed, missing, extra, doubled):
            body = switch(shoot_script_title=f"{name} {bad}")
            assert_error(post(client, variant(bad), body), 401, "RCV.SIGNATURE_MISMATCH")
        for row in db.deliveries(endpoint=name):
            assert ["tenant", "acme"] in row["query"] and ["v", "2"] in row["query"]
            assert_no_secret_kept(row, request.secret)
    assert db.counts() == (4, 4)


def test_behind_a_proxy_and_with_a_rotated_key(app_client: Client, db: Db) -> None:
    # The request arrives at http://testserver/callbacks/shop-a, registered as https://hooks...
    client = app_client()
    now = time.time()
    request = signed(when=now - 1)
    request.headers = {
        "x-forwarded-proto": "http",
        "x-forwarded-host": "internal.lb:8443",
        "x-forwarded-for": "203.0.113.7",
    }
    data = assert_stored(post(client, request, switch()))
    row = db.delivery(data["delivery_id"])
    assert row["key_index"] == 0
    assert row["headers"]["x-forwarded-host"] == "internal.lb:8443"
    assert row["headers"]["x-forwarded-for"] == "203.0.113.7"
    # The previous key still verifies, and the delivery says which key it was.
    old = assert_stored(post(client, signed(key=OLD_KEY, when=now - 2), switch()))
    assert db.delivery(old["delivery_id"])["key_index"] == 1


# --- refusals


def _query_without(request: Signed, name: str) -> Signed:
    pairs = [(k, v) for k, v in parse_qsl(urlsplit(request.target).query) if k != name]
    return Signed("/callbacks/shop-a?" + urlencode(pairs), {}, request.hw_time, request.secret)


def _query_with(request: Signed, **values: str) -> Signed:
    pairs = [(k, values.get(k, v)) for k, v in parse_qsl(urlsplit(request.target).query)]
    return Signed("/callbacks/shop-a?" + urlencode(pairs), {}, request.hw_time, request.secret)


def _with_headers(request: Signed, make: Callable[[Signed], dict[str, str]]) -> Signed:
    return Signed(request.target, make(request), request.hw_time, request.secret)


def _head() -> Signed:
    return signed(f"{HOOKS}shop-h", name="shop-h", auth=AuthType.MSS_A_HEAD)


REFUSED: list[tuple[str, Callable[[], Signed], str]] = [
    ("wrong key", lambda: signed(key="not-the-key"), "RCV.SIGNATURE_MISMATCH"),
    ("stale", lambda: signed(when=time.time() - 400), "RCV.SIGNATURE_EXPIRED"),
    ("future", lambda: signed(when=time.time() + 400), "RCV.SIGNATURE_EXPIRED"),
    (
        "stale, in milliseconds",
        lambda: signed(when=time.time() - 400, unit=TimeUnit.MILLISECONDS),
        "RCV.SIGNATURE_EXPIRED",
    ),
    ("missing hwSecret", lambda: _query_without(signed(), "hwSecret"), "RCV.SIGNATURE_MISSING"),
    ("missing hwTime", lambda: _query_without(signed(), "hwTime"), "RCV.SIGNATURE_MISSING"),
    ("no query at all", lambda: Signed("/callbacks/shop-a", {}, "", ""), "RCV.SIGNATURE_MISSING"),
    (
        "secret not hex",
        lambda: _query_with(r := signed(), hwSecret="z" + r.secret[1:]),
        "RCV.SIGNATURE_MALFORMED",
    ),
    (
        "secret too short",
        lambda: _query_with(r := signed(), hwSecret=r.secret[:-1]),
        "RCV.SIGNATURE_MALFORMED",
    ),
    ("time not hex", lambda: _query_with(signed(), hwTime="66df93zz"), "RCV.SIGNATURE_MALFORMED"),
    ("time empty", lambda: _query_with(signed(), hwTime=""), "RCV.SIGNATURE_MALFORMED"),
    ("time too long", lambda: _query_with(signed(), hwTime="f" * 40), "RCV.SIGNATURE_MALFORMED"),
    (
        "time changed by one",
        lambda: _query_with(r := signed(), hwTime=format(int(r.hw_time, 16) - 1, "x")),
        "RCV.SIGNATURE_MISMATCH",
    ),
    (
        "hwSecret twice",
        lambda: Signed((r := signed()).target + f"&hwSecret={r.secret}", {}, r.hw_time, r.secret),
        "RCV.SIGNATURE_MALFORMED",
    ),
    (
        "signed for another host",
        lambda: signed("https://hooks.example.org/callbacks/shop-a"),
        "RCV.SIGNATURE_MISMATCH",
    ),
    (
        "signed for another path",
        lambda: signed(f"{HOOKS}shop-b"),
        "RCV.SIGNATURE_MISMATCH",
    ),
    (
        "signed for another port",
        lambda: signed("https://hooks.example.com:8443/callbacks/shop-a"),
        "RCV.SIGNATURE_MISMATCH",
    ),
    (
        "signed in the full_url form",
        lambda: signed(form=SignedUri.FULL_URL),
        "RCV.SIGNATURE_MISMATCH",
    ),
    (
        "headers sent to a query endpoint",
        lambda: signed(auth=AuthType.MSS_A_HEAD),
        "RCV.SIGNATURE_MISSING",
    ),
    # MSS_A_HEAD endpoint shop-h
    ("head: no headers", lambda: _with_headers(_head(), lambda r: {}), "RCV.SIGNATURE_MISSING"),
    (
        "head: no secret",
        lambda: _with_headers(_head(), lambda r: {TIME_HEADER: r.hw_time}),
        "RCV.SIGNATURE_MISSING",
    ),
    (
        "head: no time",
        lambda: _with_headers(_head(), lambda r: {SECRET_HEADER: r.secret}),
        "RCV.SIGNATURE_MISSING",
    ),
    (
        "head: secret not hex",
        lambda: _with_headers(_head(), lambda r: {SECRET_HEADER: "g" * 64, TIME_HEADER: r.hw_time}),
        "RCV.SIGNATURE_MALFORMED",
    ),
    (
        "head: time not hex",
        lambda: _with_headers(_head(), lambda r: {SECRET_HEADER: r.secret, TIME_HEADER: "0x66"}),
        "RCV.SIGNATURE_MALFORMED",
    ),
    (
        "head: wrong secret",
        lambda: _with_headers(_head(), lambda r: {SECRET_HEADER: "0" * 64, TIME_HEADER: r.hw_time}),
        "RCV.SIGNATURE_MISMATCH",
    ),
    (
        "head: in the query instead",
        lambda: signed(f"{HOOKS}shop-h", name="shop-h", auth=AuthType.MSS_A),
        "RCV.SIGNATURE_MISSING",
    ),
]


def test_bad_signatures_are_refused_and_nothing_is_stored(app_client: Client, db: Db) -> None:
    client = app_client(
        endpoint_table(),
        endpoint_table(name="shop-h", registered_url=f"{HOOKS}shop-h", auth_type="MSS_A_HEAD"),
    )
    problems = Problems()

    def refused(make: Callable[[], Signed], code: str) -> None:
        request = make()
        data = assert_error(post(client, request, switch()), 401, code)
        for secret in (KEY, OLD_KEY, request.secret):
            assert not secret or secret not in data["error_msg"], data
        assert db.counts() == (0, 0), "a refused callback was stored"

    for case, make, code in REFUSED:
        problems.check(case, refused, make, code)
    problems.assert_none()


# --- auth_type NONE


def test_auth_type_none(app_client: Client, db: Db) -> None:
    client = app_client(
        endpoint_table(
            name="shop-n", auth_type="NONE", keys=[], registered_url=f"{HOOKS}shop-n?token={TOKEN}"
        ),
        endpoint_table(
            name="open",
            auth_type="NONE",
            keys=[],
            registered_url=f"{HOOKS}open",
            allow_unauthenticated=True,
        ),
    )
    # The token of the registered URL is the credential.
    data = assert_stored(client.post(f"/callbacks/shop-n?token={TOKEN}", content=switch()))
    assert_stored(client.post(f"/callbacks/shop-n?page=2&token={TOKEN}", content=switch(x=1)))
    assert db.counts() == (2, 2)
    for target in (
        "/callbacks/shop-n",
        "/callbacks/shop-n?token=wrong",
        f"/callbacks/shop-n?token={TOKEN}x",
        f"/callbacks/shop-n?Token={TOKEN}",
        "/callbacks/shop-n?token=",
        f"/callbacks/shop-n?tok={TOKEN}",
    ):
        assert_error(client.post(target, content=switch()), 401)
    assert db.counts() == (2, 2)
    row = db.delivery(data["delivery_id"])
    assert row["signed_at"] is None and row["key_index"] is None
    stored = db.deliveries(endpoint="shop-n")
    for row in stored:
        assert_no_secret_kept(row, TOKEN)
    assert ["page", "2"] in stored[1]["query"]

    # allow_unauthenticated: anyone, with any query.
    data = assert_stored(client.post("/callbacks/open?anything=1", content=switch()))
    (event,) = db.events(delivery_id=data["delivery_id"])
    assert event["endpoint"] == "open"
    assert db.delivery(data["delivery_id"])["query"] == [["anything", "1"]]
    assert_stored(client.post("/callbacks/open", content=switch(y=2)))
    assert db.counts() == (4, 4)


def test_none_credential_with_an_encoded_name_is_not_stored(app_client: Client, db: Db) -> None:
    # The registered URL spells the credential's name percent-encoded: auth[token]=...
    registered = f"{HOOKS}shop-n?auth%5Btoken%5D={TOKEN}"
    client = app_client(
        endpoint_table(name="shop-n", auth_type="NONE", keys=[], registered_url=registered)
    )
    data = assert_stored(
        client.post(f"/callbacks/shop-n?auth%5Btoken%5D={TOKEN}", content=switch())
    )
    assert_no_secret_kept(db.delivery(data["delivery_id"]), TOKEN)


# --- duplicates


def test_duplicates(app_client: Client, db: Db) -> None:
    client = app_client(
        endpoint_table(), endpoint_table(name="shop-b", registered_url=f"{HOOKS}shop-b")
    )
    now = time.time()
    body = switch()
    first = assert_stored(post(client, signed(when=now), body))
    # Retries: same body, same hwTime (the signature may come from the other key).
    second = assert_stored(post(client, signed(when=now, key=OLD_KEY), body), "duplicate")
    third = assert_stored(post(client, signed(when=now), body), "duplicate")
    for answer in (second, third):
        assert answer["delivery_id"] == first["delivery_id"]
        assert answer["event_id"] == first["event_id"]
    assert len(db.events()) == 1
    (original,) = db.deliveries(status="stored")
    assert original["id"] == first["delivery_id"] and original["body"] == body
    receipts = db.deliveries(status="duplicate")
    assert len(receipts) == 2
    for receipt in receipts:
        assert receipt["duplicate_of"] == first["delivery_id"]
        assert receipt["body"] is None
    assert db.counts() == (3, 1)

    # The same body signed at another time is another delivery.
    later = assert_stored(post(client, signed(when=now - 5), body))
    assert later["delivery_id"] != first["delivery_id"]
    assert later["event_id"] != first["event_id"]
    # ... and so is the same body at the same time on another endpoint.
    other = assert_stored(post(client, signed(f"{HOOKS}shop-b", name="shop-b", when=now), body))
    assert other["delivery_id"] not in (first["delivery_id"], later["delivery_id"])
    assert db.counts() == (5, 3)
    assert len(db.deliveries(status="stored")) == 3


# --- undecodable bodies

UNDECODABLE = [
    b"",
    b"\xff\xfe\x00garbage",
    b"not json",
    b"[1, 2]",
    b'{"event_type": "SHOOT_SCRIPT_SWITCH"}',
    b'{"event_type": "", "message": "{}"}',
    b'{"event_type": "RTMP_STREAM_STATE_CHANGE", "message": "{\\"room_id\\": \\"r\\"}"}',
    b'{"event_type": "X", "message": "{not json"}',
    b'{"event_type": "X", "message": 5}',
    b'{"event_type": "X", "event_type": "Y", "message": {}}',
    b'{"event_type": "X", "message": {"a": 1e999}}',
    b'{"event_type":"X","message":' + b"[" * 300 + b"]" * 300 + b"}",
]


def test_correctly_signed_undecodable_body_is_kept(app_client: Client, db: Db) -> None:
    client = app_client()
    now = time.time()
    problems = Problems()

    def kept(index: int, body: bytes) -> None:
        before = db.counts()
        response = post(client, signed(when=now - index), body)
        data = assert_error(response, 400, "RCV.BODY_UNDECODABLE")
        assert db.counts() == (before[0] + 1, before[1])
        (row,) = db.deliveries(status="undecodable", id=data["delivery_id"])
        assert row["body"] == body, "the exact bytes are kept"
        assert row["body_size"] == len(body)
        assert row["error"]
        assert row["signed_at"] is not None

    for index, body in enumerate(UNDECODABLE):
        problems.check(repr(body[:40]), kept, index, body)
    problems.assert_none()
    assert db.events() == []

    # The same undecodable delivery again: refused again, kept once, plus a duplicate receipt.
    when = now - len(UNDECODABLE)
    first = assert_error(post(client, signed(when=when), b"\x00\x01"), 400, "RCV.BODY_UNDECODABLE")
    again = assert_error(post(client, signed(when=when), b"\x00\x01"), 400, "RCV.BODY_UNDECODABLE")
    assert again.get("delivery_id") == first["delivery_id"]
    assert len(db.deliveries(status="undecodable", body=b"\x00\x01")) == 1
    (receipt,) = db.deliveries(status="duplicate")
    assert receipt["duplicate_of"] == first["delivery_id"]
    assert db.counts() == (len(UNDECODABLE) + 2, 0)


# --- routing, methods, sizes


def test_routes_methods_and_health(app_client: Client, db: Db) -> None:
    client = app_client()
    request = signed(f"{HOOKS}shop-z", name="shop-z")
    assert_error(post(client, request, switch()), 404, "RCV.UNKNOWN_ENDPOINT")
    assert_error(client.post("/callbacks/%C3%A9t%C3%A9", content=b"x"), 404, "RCV.UNKNOWN_ENDPOINT")
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        response = client.request(
            method, signed().target, content=b"{}" if method != "GET" else None
        )
        assert_error(response, 405)
        assert "POST" in response.headers.get("allow", "")
    for method, path in (
        ("GET", "/"),
        ("GET", "/nope"),
        ("POST", "/callbacks"),
        ("POST", "/callbacks/shop-a/extra"),
        ("GET", "/v0/events"),
    ):
        assert_error(client.request(method, path), 404)
    assert db.counts() == (0, 0)
    for path in ("/healthz", "/readyz"):
        response = client.get(path)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert isinstance(response.json(), dict)


def test_trailing_slash_is_not_redirected(app_client: Client, db: Db) -> None:
    # A sender does not follow redirects reliably (and a proxied redirect names the inner host):
    # /callbacks/shop-a/ is an unknown route, answered in JSON like every other.
    client = app_client()
    request = signed()
    path, _, query = request.target.partition("?")
    response = client.post(f"{path}/?{query}", content=switch(), follow_redirects=False)
    assert_error(response, 404)
    assert db.counts() == (0, 0)


def test_body_over_max_body_bytes_is_413(app_client: Client, db: Db) -> None:
    client = app_client(max_body_bytes=256)
    now = time.time()
    at_limit = encode("X", {"pad": ""})
    at_limit = encode("X", {"pad": "p" * (256 - len(at_limit))})
    assert len(at_limit) == 256
    assert_stored(post(client, signed(when=now - 1), at_limit))

    over = at_limit + b" "
    # With Content-Length.
    assert_error(post(client, signed(when=now - 2), over), 413, "RCV.BODY_TOO_LARGE")

    # Chunked, without Content-Length: the limit holds while the body streams in.
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(over), 50):
            yield over[start : start + 50]

    request = signed(when=now - 3)
    response = client.post(request.target, content=chunks(), headers=request.headers)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "RCV.BODY_TOO_LARGE")

    def endless() -> Iterator[bytes]:
        for _ in range(1000):
            yield b"x" * 1024

    response = client.post(request.target, content=endless(), headers=request.headers)
    assert_error(response, 413, "RCV.BODY_TOO_LARGE")
    # Unsigned and too large: 413 too, and nothing is stored.
    assert_error(client.post("/callbacks/shop-a", content=over), 413)
    assert db.counts() == (1, 1)


def test_absurd_content_length_is_not_a_500(migrated_url: str, db: Db) -> None:
    app = create_app(make_settings(migrated_url, max_body_bytes=256))
    with TestClient(app, raise_server_exceptions=False) as client:
        for declared in ("9" * 5000, "99999999999999999999999"):
            response = client.post(
                "/callbacks/shop-a", content=b"{}", headers={"content-length": declared}
            )
            assert response.status_code != 500, (declared[:30], response.text)
            assert_error(response, response.status_code)
    assert db.counts() == (0, 0)


def test_every_refusal_reaches_the_rejection_log(migrated_url: str, db: Db) -> None:
    # GET /v1/rejections is where users learn why callbacks fail (PRODUCT.md): odd refusals
    # (a NUL in the endpoint name, an absurd declared length) must not take the log down with them.
    from receiver.store.models import Rejection

    app = create_app(make_settings(migrated_url))
    with TestClient(app) as client:
        assert_error(post(client, signed(key="wrong"), switch()), 401)
        assert_error(client.post("/callbacks/%00x", content=b"{}"), 404)
        too_long = {"content-length": "99999999999"}
        assert_error(client.post("/callbacks/shop-a", content=b"{}", headers=too_long), 413)
        assert_error(post(client, signed(when=time.time() - 1000), switch()), 401)
    # Leaving the client stops the app, which writes what the log still holds.
    table = Rejection.__table__  # type: ignore[attr-defined]
    with db.engine.connect() as conn:
        reasons = conn.execute(sa.select(table.c.reason).order_by(table.c.id)).scalars().all()
    assert sorted(reasons) == sorted(
        ["signature_mismatch", "unknown_endpoint", "body_too_large", "signature_expired"]
    )
    assert db.counts() == (0, 0)


# --- over real HTTP on loopback


def test_real_http_intake(server_factory: Callable[..., Any], db_url: str) -> None:
    server = server_factory(
        db_url,
        endpoint_table(),
        endpoint_table(name="shop-h", registered_url=f"{HOOKS}shop-h", auth_type="MSS_A_HEAD"),
        max_body_bytes=1024,
    )
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    store = Db(engine)
    try:
        with httpx2.Client(base_url=server.base_url, timeout=10) as client:
            # Behind a proxy: http://127.0.0.1:PORT here, https://hooks.example.com registered.
            body = switch()
            data = assert_stored(post(client, signed(), body))
            head = signed(f"{HOOKS}shop-h", name="shop-h", auth=AuthType.MSS_A_HEAD)
            head.headers = {"X-HW-MSS-Secret": head.secret, "X-Hw-Mss-Time": head.hw_time}
            data_h = assert_stored(post(client, head, switch(shoot_script_title="h")))
            assert_stored(post(client, signed(key=OLD_KEY), switch(shoot_script_title="o")))
            assert_error(post(client, signed(key="wrong"), switch()), 401)
            assert_error(client.post("/callbacks/shop-a", content=body), 401)
            assert_error(client.get("/callbacks/shop-a"), 405)
            assert_error(client.post("/callbacks/nope", content=body), 404)
            assert_error(client.get("/nope"), 404)
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 200
            assert_error(post(client, signed(), b"{" * 1025), 413)

            def chunks() -> Iterator[bytes]:
                for _ in range(40):
                    yield b"x" * 100

            response = client.post("/callbacks/shop-a", content=chunks())
            assert_error(response, 413)
        row = store.delivery(data["delivery_id"])
        assert row["body"] == body
        assert row["remote_addr"] == "127.0.0.1"
        assert store.delivery(data_h["delivery_id"])["headers"][TIME_HEADER] == head.hw_time
        assert store.counts() == (3, 3)
    finally:
        engine.dispose()


def _raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_real_http_garbage_framing_is_not_a_500(
    server_factory: Callable[..., Any], db_url: str
) -> None:
    server = server_factory(db_url, max_body_bytes=1024)
    for head in (
        b"POST /callbacks/shop-a HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + b"9" * 5000
        + b"\r\n\r\n",
        b"POST /callbacks/shop-a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{}",
        b"POST /callbacks/shop-a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ):
        answer = _raw_request(server.port, head)
        status_line = answer.split(b"\r\n", 1)[0]
        assert not status_line.startswith(b"HTTP/1.1 5"), answer[:300]
    with httpx2.Client(base_url=server.base_url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
    # A sender that goes away in the middle of its body is not an internal error of ours.
    output = server.output()
    assert "unexpected error" not in output and "Traceback" not in output, output[-1500:]

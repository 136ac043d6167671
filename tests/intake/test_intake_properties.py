"""Properties of POST /callbacks/{name} for any request a client can send, on SQLite and PostgreSQL.

- The answer is never a 500; every answer other than 200 is JSON ``{"error_code", "error_msg"}``.
- Nothing reaches ``deliveries`` or ``events`` unless the request was correctly signed (or went to
  an endpoint that accepts anyone).
- A correctly signed request is stored whatever its body: 200 when the body decodes, 400 (and kept
  as ``undecodable``) when it does not, with the exact bytes either way.

Hypothesis runs inside each test (an inner ``@given``), against one app and one database per test,
so the database accumulates rows across examples: every check is on what one request changed, and
a final check holds every stored row to the requests that were allowed to store it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import pytest
import sqlalchemy as sa
from conftest import KEY, OLD_KEY, REGISTERED, endpoint_table
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from receiver.errors import DecodeError
from receiver.protocol.events import decode
from receiver.protocol.signing import (
    SECRET_HEADER,
    TIME_HEADER,
    AuthType,
    SignedUri,
    TimeUnit,
)
from receiver.store.models import Delivery, Event
from receiver.testing import sign_request, strategies
from receiver.testing.strategies import (
    arbitrary_headers,
    deep_bodies,
    event_bodies,
    mutated_bodies,
    no_surrogates,
    query_names,
    query_values,
    valid_event_bodies,
)

DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
EVENTS = Event.__table__  # type: ignore[attr-defined]

HOOKS = "https://hooks.example.com/callbacks/"
TOKEN = "s3cret-url-token"
LIMIT = 4096
EXAMPLES = 200
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


@dataclass(frozen=True)
class Endpoint:
    name: str
    registered: str
    auth: AuthType
    form: SignedUri = SignedUri.HOST_PATH_QUERY
    unit: TimeUnit = TimeUnit.AUTO
    open: bool = False

    def table(self) -> dict[str, Any]:
        table = endpoint_table(
            name=self.name,
            registered_url=self.registered,
            auth_type=self.auth.value,
            signed_uri=self.form.value,
            time_unit=self.unit.value,
        )
        if self.auth is AuthType.NONE:
            table.update(keys=[], allow_unauthenticated=self.open)
        return table


ENDPOINTS = [
    Endpoint("shop-a", REGISTERED, AuthType.MSS_A),
    Endpoint("shop-h", f"{HOOKS}shop-h?tenant=acme", AuthType.MSS_A_HEAD, SignedUri.FULL_URL),
    Endpoint(
        "shop-p", f"{HOOKS}shop-p?b=2&a=1", AuthType.MSS_A, SignedUri.PATH_QUERY, TimeUnit.SECONDS
    ),
    Endpoint("shop-n", f"{HOOKS}shop-n?token={TOKEN}", AuthType.NONE),
    Endpoint("open", f"{HOOKS}open", AuthType.NONE, open=True),
]
BY_NAME = {endpoint.name: endpoint for endpoint in ENDPOINTS}
# Headers that frame the request itself: a client cannot send arbitrary values for them and still
# have a request (they are exercised on their own in test_intake.py).
FRAMING = {"host", "content-length", "transfer-encoding", "connection", "expect", "te", "upgrade"}


# --- strategies: bodies (receiver.testing.strategies), query strings, headers, names

bodies = st.one_of(
    valid_event_bodies(),
    st.binary(max_size=300),
    event_bodies(),
    deep_bodies(),
    mutated_bodies(),
    st.sampled_from([b"", b"{}", b"null", b"\xef\xbb\xbf{}", b"\x00" * 8]),
    st.integers(min_value=LIMIT - 2, max_value=LIMIT + 2).map(lambda n: b"x" * n),
)
# Near-misses of the NONE endpoint's URL credential among the query values.
CREDENTIAL_MISSES = [TOKEN[:-1] + "X", TOKEN.upper()]
values_in_query = query_values(CREDENTIAL_MISSES)
arbitrary_queries = strategies.arbitrary_queries(CREDENTIAL_MISSES)

endpoint_names = st.one_of(
    st.sampled_from([e.name for e in ENDPOINTS]),
    st.sampled_from(["SHOP-A", "shop-a ", "shop%2Da", "open.", "%00", "\x00", "é"]),
    st.text(no_surrogates, min_size=1, max_size=80),
).filter(lambda name: "/" not in name and name not in (".", ".."))


@dataclass
class Attempt:
    name: str
    target: str
    body: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@st.composite
def arbitrary_requests(draw: st.DrawFn) -> Attempt:
    name = draw(endpoint_names)
    query = draw(arbitrary_queries)
    target = f"/callbacks/{quote(name, safe='')}" + (f"?{query}" if query else "")
    return Attempt(name, target, draw(bodies), draw(arbitrary_headers))


@dataclass
class SignedAttempt(Attempt):
    endpoint: Endpoint = ENDPOINTS[0]
    key: str = KEY
    offset: float = 0.0
    unit: TimeUnit = TimeUnit.SECONDS
    header_case: tuple[str, str] = (SECRET_HEADER, TIME_HEADER)
    extra_pairs: list[tuple[str, str]] = field(default_factory=list)
    open_query: str = ""


def mixed_case(name: str, flips: list[bool]) -> str:
    padded = flips + [False] * len(name)
    return "".join(c.upper() if flip else c for c, flip in zip(name, padded, strict=False))


@st.composite
def signed_requests(draw: st.DrawFn) -> SignedAttempt:
    endpoint = draw(st.sampled_from(ENDPOINTS))
    units = [TimeUnit.SECONDS, TimeUnit.MILLISECONDS]
    unit = TimeUnit.SECONDS if endpoint.unit is TimeUnit.SECONDS else draw(st.sampled_from(units))
    flips = draw(st.lists(st.booleans(), min_size=16, max_size=16))
    harmless = arbitrary_headers.map(
        lambda pairs: [(n, v) for n, v in pairs if n.lower() not in (SECRET_HEADER, TIME_HEADER)]
    )
    extra = st.lists(
        st.tuples(query_names.filter(lambda n: n != "token"), values_in_query), max_size=4
    )
    return SignedAttempt(
        name=endpoint.name,
        target="",
        body=draw(st.one_of(valid_event_bodies(), bodies)),
        headers=draw(harmless),
        endpoint=endpoint,
        key=draw(st.sampled_from([KEY, OLD_KEY])),
        offset=draw(st.floats(min_value=-200, max_value=200)),
        unit=unit,
        header_case=(mixed_case(SECRET_HEADER, flips), mixed_case(TIME_HEADER, flips[::-1])),
        extra_pairs=draw(extra),
        open_query=draw(arbitrary_queries),
    )


VALID_BODY = json.dumps(
    {
        "event_type": "SHOOT_SCRIPT_SWITCH",
        "message": json.dumps({"room_id": "r", "job_id": "j", "shoot_script_sequence_no": "2"}),
    }
).encode()


def signed_example(
    name: str, body: bytes, *, key: str = KEY, unit: TimeUnit = TimeUnit.SECONDS
) -> SignedAttempt:
    return SignedAttempt(
        name=name, target="", body=body, endpoint=BY_NAME[name], key=key, unit=unit
    )


def prepare(attempt: SignedAttempt) -> tuple[str, list[tuple[str, bytes]]]:
    """The target and headers of a correctly signed request, signed now."""
    endpoint = attempt.endpoint
    headers = list(attempt.headers)
    if endpoint.auth is AuthType.NONE:
        if endpoint.open:
            query = attempt.open_query
        else:
            query = urlencode([*attempt.extra_pairs, ("token", TOKEN)])
        return f"/callbacks/{endpoint.name}" + (f"?{query}" if query else ""), headers
    url, signature = sign_request(
        registered_url=endpoint.registered,
        auth_type=endpoint.auth,
        key=attempt.key,
        when=time.time() + attempt.offset,
        form=endpoint.form,
        unit=attempt.unit,
    )
    query = urlsplit(url).query
    secret_name, time_name = attempt.header_case
    if endpoint.auth is AuthType.MSS_A_HEAD:
        headers += [
            (secret_name, signature[SECRET_HEADER].encode()),
            (time_name, signature[TIME_HEADER].encode()),
        ]
    return f"/callbacks/{endpoint.name}" + (f"?{query}" if query else ""), headers


def _pairs(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


def _bump(hw_time: str) -> str:
    return format(int(hw_time, 16) + 1, "x")


def _flip(secret: str, position: int) -> str:
    i = position % len(secret)
    return secret[:i] + ("0" if secret[i] != "0" else "1") + secret[i + 1 :]


def _map_header(
    headers: list[tuple[str, bytes]], name: str, change: Callable[[str], str]
) -> list[tuple[str, bytes]]:
    return [(n, change(v.decode()).encode() if n.lower() == name else v) for n, v in headers]


# --- checks


class Rows:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def counts(self) -> tuple[int, int]:
        with self.engine.connect() as conn:
            deliveries = conn.execute(sa.select(sa.func.count()).select_from(DELIVERIES)).scalar()
            events = conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar()
        return int(deliveries or 0), int(events or 0)

    def delivery(self, delivery_id: int) -> sa.RowMapping:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(DELIVERIES).where(DELIVERIES.c.id == delivery_id))
            return row.mappings().one()

    def event_of(self, delivery_id: int) -> sa.RowMapping | None:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(EVENTS).where(EVENTS.c.delivery_id == delivery_id))
            return rows.mappings().one_or_none()

    def originals(self) -> list[tuple[str, str, str]]:
        with self.engine.connect() as conn:
            query = sa.select(DELIVERIES.c.endpoint, DELIVERIES.c.status, DELIVERIES.c.body_sha256)
            rows = conn.execute(query.where(DELIVERIES.c.status != "duplicate")).all()
        return [(endpoint, status, digest) for endpoint, status, digest in rows]


@pytest.fixture
def rows(migrated_url: str) -> Any:
    # One pooled connection: the tables are read after every example.
    engine = sa.create_engine(migrated_url, pool_size=1, max_overflow=0)
    yield Rows(engine)
    engine.dispose()


def assert_answer_shape(response: Any) -> dict[str, Any]:
    assert response.status_code != 500, response.text
    assert response.headers.get("content-type", "").startswith("application/json"), response
    data: dict[str, Any] = response.json()
    if response.status_code != 200:
        assert isinstance(data.get("error_code"), str) and data["error_code"], data
        assert isinstance(data.get("error_msg"), str) and data["error_msg"], data
    return data


def decodes(body: bytes) -> bool:
    try:
        decode(body)
    except DecodeError:
        return False
    return True


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


Client = Callable[..., TestClient]


# --- properties


def test_arbitrary_requests_never_500_and_unsigned_ones_are_never_stored(
    app_client: Client, rows: Rows
) -> None:
    client = app_client(*(e.table() for e in ENDPOINTS), max_body_bytes=LIMIT)
    allowed: set[tuple[str, str]] = set()  # (endpoint, body sha256) a request could store
    seen: Counter[int] = Counter()

    @PROPERTY
    @given(attempt=arbitrary_requests())
    @example(attempt=Attempt("open", "/callbacks/open?a=1", VALID_BODY))
    @example(attempt=Attempt("open", "/callbacks/open", b"\xff"))
    @example(attempt=Attempt("shop-a", "/callbacks/shop-a", b"x" * (LIMIT + 1)))
    @example(attempt=Attempt("nope", "/callbacks/nope", VALID_BODY))
    @example(attempt=Attempt("shop-n", f"/callbacks/shop-n?token={TOKEN}x", VALID_BODY))
    def run(attempt: Attempt) -> None:
        before = rows.counts()
        response = client.post(attempt.target, content=attempt.body, headers=attempt.headers)
        seen[response.status_code] += 1
        data = assert_answer_shape(response)
        after = rows.counts()
        # Only the endpoint that accepts anyone may store a request nobody signed.
        if attempt.name == "open" and len(attempt.body) <= LIMIT:
            allowed.add(("open", sha(attempt.body)))
            assert response.status_code in (200, 400), data
            assert after[0] == before[0] + 1
            return
        assert after == before, f"an unsigned request was stored: {data}"
        if len(attempt.body) > LIMIT and attempt.name in BY_NAME:
            assert response.status_code == 413, data
        else:
            assert response.status_code in (401, 404, 413), data

    run()
    # The strategies reach every kind of answer, not only the easy ones.
    assert sum(seen.values()) >= EXAMPLES
    assert {200, 400, 401, 404, 413} <= set(seen), seen
    for endpoint, _status, digest in rows.originals():
        assert (endpoint, digest) in allowed


def test_correctly_signed_requests_are_stored_whatever_the_body(
    app_client: Client, rows: Rows
) -> None:
    client = app_client(*(e.table() for e in ENDPOINTS), max_body_bytes=LIMIT)
    allowed: set[tuple[str, str]] = set()
    seen: Counter[tuple[str, int]] = Counter()

    @PROPERTY
    @given(attempt=signed_requests())
    @example(attempt=signed_example("shop-a", VALID_BODY))
    @example(attempt=signed_example("shop-h", b"[]", unit=TimeUnit.MILLISECONDS))
    @example(attempt=signed_example("shop-p", VALID_BODY, key=OLD_KEY))
    @example(attempt=signed_example("shop-n", b""))
    @example(attempt=signed_example("open", VALID_BODY))
    def run(attempt: SignedAttempt) -> None:
        target, headers = prepare(attempt)
        before = rows.counts()
        response = client.post(target, content=attempt.body, headers=headers)
        seen[attempt.name, response.status_code] += 1
        data = assert_answer_shape(response)
        after = rows.counts()
        if len(attempt.body) > LIMIT:
            assert response.status_code == 413, data
            assert after == before
            return
        allowed.add((attempt.name, sha(attempt.body)))
        assert after[0] == before[0] + 1, "one delivery row: the original or a duplicate receipt"
        if decodes(attempt.body):
            assert response.status_code == 200, data
            assert data["result"] in ("stored", "duplicate")
            created = 1 if data["result"] == "stored" else 0
            assert after[1] == before[1] + created
            event = rows.event_of(data["delivery_id"])
            assert event is not None and event["id"] == data["event_id"]
            assert event["endpoint"] == attempt.name
        else:
            assert response.status_code == 400, data
            assert data["error_code"] == "RCV.BODY_UNDECODABLE", data
            assert after[1] == before[1]
        stored = rows.delivery(data["delivery_id"])
        assert stored["body"] == attempt.body, "the exact bytes are kept"
        assert stored["endpoint"] == attempt.name
        assert stored["status"] == ("stored" if decodes(attempt.body) else "undecodable")
        if attempt.name == "shop-n":
            assert TOKEN not in json.dumps(stored["query"]), "the URL's credential is not kept"
        assert SECRET_HEADER not in {name.lower() for name in stored["headers"]}
        assert "hwSecret" not in [name for name, _ in stored["query"]]

    run()
    assert sum(seen.values()) >= EXAMPLES
    assert {name for name, _ in seen} == set(BY_NAME), seen
    assert {status for _, status in seen} >= {200, 400}, seen
    for endpoint, _status, digest in rows.originals():
        assert (endpoint, digest) in allowed


def test_signed_requests_that_are_tampered_with_are_never_stored(
    app_client: Client, rows: Rows
) -> None:
    """A correct signature with one thing changed: another endpoint, query, time or header."""
    client = app_client(*(e.table() for e in ENDPOINTS), max_body_bytes=LIMIT)
    signed_only = [e for e in ENDPOINTS if e.auth is not AuthType.NONE]
    seen: Counter[str] = Counter()

    @PROPERTY
    @given(
        attempt=signed_requests().filter(lambda a: a.endpoint.auth is not AuthType.NONE),
        how=st.sampled_from(["endpoint", "query", "time", "secret", "drop", "stale"]),
        other=st.sampled_from(signed_only),
        junk=st.tuples(query_names, values_in_query),
        position=st.integers(min_value=0, max_value=63),
    )
    @example(signed_example("shop-a", VALID_BODY), "endpoint", BY_NAME["shop-p"], ("a", "1"), 0)
    @example(signed_example("shop-h", VALID_BODY), "query", BY_NAME["shop-a"], ("v", "2"), 1)
    @example(signed_example("shop-p", VALID_BODY), "time", BY_NAME["shop-a"], ("a", "1"), 2)
    @example(signed_example("shop-h", VALID_BODY), "secret", BY_NAME["shop-a"], ("a", "1"), 63)
    @example(signed_example("shop-a", VALID_BODY), "drop", BY_NAME["shop-a"], ("a", "1"), 1)
    @example(signed_example("shop-h", VALID_BODY), "stale", BY_NAME["shop-a"], ("a", "1"), 0)
    def run(
        attempt: SignedAttempt,
        how: str,
        other: Endpoint,
        junk: tuple[str, str],
        position: int,
    ) -> None:
        if how == "stale":
            # Well past the 300-second window, even after the truncation to whole seconds.
            attempt.offset = 310 if attempt.offset >= 0 else -310 - abs(attempt.offset)
        target, headers = prepare(attempt)
        path, _, query = target.partition("?")
        if how == "endpoint":
            if other.name == attempt.name:
                other = signed_only[(signed_only.index(other) + 1) % len(signed_only)]
            path = f"/callbacks/{other.name}"
            if other.auth is not attempt.endpoint.auth:
                signature = (SECRET_HEADER, TIME_HEADER)
                headers = [(n, v) for n, v in headers if n.lower() not in signature]
        elif how == "query":
            if junk[0] in ("hwSecret", "hwTime"):
                junk = ("x" + junk[0], junk[1])
            query = "&".join(filter(None, [query, urlencode([junk])]))
        elif how == "time":
            if attempt.endpoint.auth is AuthType.MSS_A:
                query = urlencode([(k, _bump(v) if k == "hwTime" else v) for k, v in _pairs(query)])
            else:
                headers = _map_header(headers, TIME_HEADER, _bump)
        elif how == "secret":
            if attempt.endpoint.auth is AuthType.MSS_A:
                pairs = [
                    (k, _flip(v, position) if k == "hwSecret" else v) for k, v in _pairs(query)
                ]
                query = urlencode(pairs)
            else:
                headers = _map_header(headers, SECRET_HEADER, lambda v: _flip(v, position))
        elif how == "drop":
            drop = "hwSecret" if position % 2 else "hwTime"
            if attempt.endpoint.auth is AuthType.MSS_A:
                query = urlencode([(k, v) for k, v in _pairs(query) if k != drop])
            else:
                header = SECRET_HEADER if drop == "hwSecret" else TIME_HEADER
                headers = [(n, v) for n, v in headers if n.lower() != header]
        before = rows.counts()
        response = client.post(
            path + (f"?{query}" if query else ""), content=attempt.body, headers=headers
        )
        seen[how] += 1
        data = assert_answer_shape(response)
        assert rows.counts() == before, f"a tampered request was stored ({how}): {data}"
        expected = (401, 413) if len(attempt.body) > LIMIT else (401,)
        assert response.status_code in expected, data

    run()
    assert rows.counts() == (0, 0)
    assert sum(seen.values()) >= EXAMPLES
    assert len(seen) == 6, seen

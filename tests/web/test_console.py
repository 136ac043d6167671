"""The web console's HTTP side, on both stores: login and the session cookie, pages only with a
session, acknowledging and muting findings (CSRF for the cookie, none for a bearer token), and
the live event stream resumed with Last-Event-ID on a real server.

The pages in a real browser: tests/web/test_console_browser.py.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx2 as httpx
import orjson
import pytest
import sqlalchemy as sa
from conftest import ServerProcess, make_settings, signed_path
from starlette.testclient import TestClient

from receiver.store.models import Finding
from receiver.store.writer import create_engine_for
from receiver.testing import encode
from receiver.web.app import create_app
from receiver.web.console.sessions import COOKIE, check_session, make_session

TOKEN = "test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
STREAM_KEY = "sk-0123456789-very-secret"
ROOM = "26f065244f754b3aa853b649a21aaf66"
JOB = "e87104f76d7546ce8a46ac6b04c49c3c"
FINDINGS = Finding.__table__  # type: ignore[attr-defined]


def rtmp(state: str, job: str = JOB) -> bytes:
    message = {"room_id": ROOM, "job_id": job, "state": state, "stream_key": STREAM_KEY}
    return encode("RTMP_STREAM_STATE_CHANGE", message)


@pytest.fixture
def console(migrated_url: str) -> Iterator[TestClient]:
    # https: the session cookie is Secure, so a client only sends it back over https.
    with TestClient(create_app(make_settings(migrated_url)), base_url="https://testserver") as c:
        yield c


def add_finding(url: str, kind: str = "signature_reused", job: str | None = JOB) -> int:
    engine = create_engine_for(url)
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            result = conn.execute(
                sa.insert(FINDINGS).values(
                    fingerprint=f"{kind}-{job}-{time.monotonic_ns()}",
                    kind=kind,
                    room_id=ROOM,
                    job_id=job,
                    room_key=ROOM,
                    job_key=job,
                    detail="one signature carried two different bodies",
                    data={},
                    first_seen_at=now,
                    last_seen_at=now,
                    occurrences=1,
                )
            )
            (finding_id,) = result.inserted_primary_key
    finally:
        engine.dispose()
    return int(finding_id)


def log_in(client: TestClient, token: str = TOKEN) -> str:
    answer = client.post("/ui/login", data={"token": token, "next": "/ui/"}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return answer.headers["set-cookie"]


def csrf_of(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', page)
    assert found, page[:500]
    return found[1]


# --- Sessions ------------------------------------------------------------------------------------


def test_without_a_session_pages_redirect_to_login_and_the_api_says_401(
    console: TestClient,
) -> None:
    for path in ("/ui/", f"/ui/jobs/{JOB}"):
        answer = console.get(path, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/ui/login?next=")
    assert console.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
    assert console.get("/ui/login").status_code == 200
    for path in ("/v1/events", "/v1/events/stream", "/v1/findings"):
        answer = console.get(path)
        assert answer.status_code == 401
        assert answer.json()["error_code"] == "RCV.API_UNAUTHORIZED"
    assert console.post("/v1/findings/1/ack", json={"reason": "x"}).status_code == 401


def test_login_sets_a_secure_httponly_strict_cookie_that_holds_no_token(
    console: TestClient,
) -> None:
    wrong = console.post("/ui/login", data={"token": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401
    assert "set-cookie" not in wrong.headers
    assert "not one of the receiver" in wrong.text
    cookie = log_in(console)
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= attributes
    assert "SameSite=Strict" in cookie
    assert TOKEN not in cookie
    page = console.get("/ui/")
    assert page.status_code == 200
    assert "content-security-policy" in page.headers
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_a_session_is_tied_to_its_token_and_expires() -> None:
    value = make_session("token-a", now=1000.0)
    assert check_session(value, ["token-a"], now=1001.0) == "token-a"
    assert check_session(value, ["token-b"], now=1001.0) is None  # the token was dropped
    assert check_session(value, ["token-a"], now=1000.0 + 13 * 3600) is None  # expired
    tid, expiry, mac = value.split(".")
    forged = f"{tid}.{int(expiry) + 3600}.{mac}"  # a longer life, same mac
    assert check_session(forged, ["token-a"], now=1001.0) is None


def test_open_redirects_are_refused(console: TestClient) -> None:
    for target in ("https://evil.example/", "//evil.example/ui/", "/v1/events"):
        answer = console.post(
            "/ui/login", data={"token": TOKEN, "next": target}, follow_redirects=False
        )
        assert answer.headers["location"] == "/ui/"


def test_a_forged_cookie_is_refused(console: TestClient) -> None:
    log_in(console)
    good = console.cookies.get(COOKIE)
    assert good
    tid, expiry, _mac = good.split(".")
    console.cookies.clear()
    console.cookies.set(COOKIE, f"{tid}.{expiry}.{'0' * 64}")
    assert console.get("/ui/", follow_redirects=False).status_code == 303
    assert console.get("/v1/events").status_code == 401


# --- Pages ---------------------------------------------------------------------------------------


def test_overview_and_job_page_show_the_job_with_stream_keys_masked(
    console: TestClient, migrated_url: str
) -> None:
    for state in ("CONNECTING", "CONNECTED", "END"):
        assert console.post(signed_path(), content=rtmp(state)).status_code == 200
    add_finding(migrated_url)
    log_in(console)
    overview = console.get("/ui/").text
    assert JOB in overview and ROOM in overview
    assert '<span class="badge open">1</span>' in overview
    # Either spelling of the job id finds the page (receiver.protocol.ids).
    dashed = f"{JOB[:8]}-{JOB[8:12]}-{JOB[12:16]}-{JOB[16:20]}-{JOB[20:]}"
    for spelling in (JOB, dashed.upper()):
        page = console.get(f"/ui/jobs/{spelling}")
        assert page.status_code == 200
        text = page.text
        assert text.count('<rect class="segment"') == 3
        assert 'data-state="CONNECTED"' in text
        assert "signature_reused" in text
        assert STREAM_KEY not in text
    assert console.get("/ui/jobs/ffffffffffffffffffffffffffffffff").status_code == 404


def test_pages_escape_what_callbacks_carry(console: TestClient) -> None:
    evil = "<script>alert(1)</script>"
    body = encode("RTMP_STREAM_STATE_CHANGE", {"room_id": evil, "job_id": JOB, "state": evil})
    assert console.post(signed_path(), content=body).status_code == 200
    log_in(console)
    for page in (console.get("/ui/").text, console.get(f"/ui/jobs/{JOB}").text):
        assert evil not in page
        assert "&lt;script&gt;" in page


# --- Acknowledging -------------------------------------------------------------------------------


def test_ack_through_the_console_needs_its_csrf_token(
    console: TestClient, migrated_url: str
) -> None:
    assert console.post(signed_path(), content=rtmp("CONNECTED")).status_code == 200
    finding = add_finding(migrated_url)
    log_in(console)
    page = console.get(f"/ui/jobs/{JOB}").text
    csrf = csrf_of(page)
    body = {"action": "ack", "reason": "rotated the key", "by": "ops"}
    forged = console.post(f"/v1/findings/{finding}/ack", json=body)
    assert forged.status_code == 403
    assert forged.json()["error_code"] == "RCV.CSRF_REFUSED"
    wrong = console.post(
        f"/v1/findings/{finding}/ack", json=body, headers={"x-csrf-token": "0" * 64}
    )
    assert wrong.status_code == 403
    done = console.post(f"/v1/findings/{finding}/ack", json=body, headers={"x-csrf-token": csrf})
    assert done.status_code == 200, done.text
    answer = done.json()
    assert answer["status"] == "acknowledged"
    ack = answer["acknowledgement"]
    assert ack["action"] == "ack" and ack["reason"] == "rotated the key"
    assert ack["by"].startswith("ops (token ") and TOKEN not in ack["by"]
    assert ack["at"].endswith("Z")
    # No longer open: not in the open list, not in the overview's counts.
    opened = console.get("/v1/findings", params={"status": "open"}, headers=AUTH).json()
    assert [f["id"] for f in opened["findings"]] == []
    listed = console.get("/v1/findings", params={"status": "acknowledged"}, headers=AUTH).json()
    assert [f["id"] for f in listed["findings"]] == [finding]
    assert '<span class="badge open">' not in console.get("/ui/").text


def test_ack_and_mute_with_a_bearer_token_and_bad_requests(
    app_client: Callable[..., TestClient], migrated_url: str
) -> None:
    client = app_client()
    first, second = add_finding(migrated_url), add_finding(migrated_url, kind="unknown_job")
    muted = client.post(
        f"/v1/findings/{second}/ack", json={"action": "mute", "reason": "test room"}, headers=AUTH
    )
    assert muted.status_code == 200
    assert muted.json()["status"] == "muted"
    assert muted.json()["acknowledgement"]["by"].startswith("token ")
    bad: list[tuple[Any, int]] = [
        ({"action": "delete", "reason": "x"}, 400),
        ({"action": "ack"}, 400),
        ({"action": "ack", "reason": " "}, 400),
        ({"action": "ack", "reason": "x" * 501}, 400),
        ({"action": "ack", "reason": "x", "by": "<b>"}, 400),
        ({"action": "ack", "reason": "x", "extra": 1}, 400),
        ([1, 2], 400),
    ]
    for body, status in bad:
        answer = client.post(f"/v1/findings/{first}/ack", json=body, headers=AUTH)
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["error_code"] == "RCV.BAD_PARAMETER"
    for missing in ("999999", "abc"):
        answer = client.post(f"/v1/findings/{missing}/ack", json={"reason": "x"}, headers=AUTH)
        assert answer.status_code == 404
    statuses = {
        f["id"]: f["status"] for f in client.get("/v1/findings", headers=AUTH).json()["findings"]
    }
    assert statuses == {first: "open", second: "muted"}


# --- The live stream -----------------------------------------------------------------------------


class Reader:
    """Reads ``/v1/events/stream`` on a thread of its own, keeping the ids and the last id."""

    def __init__(self, base_url: str, headers: dict[str, str], query: str = "") -> None:
        self.ids: list[int] = []
        self.types: list[str] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self._answer: httpx.Response | None = None
        self._thread = threading.Thread(
            target=self._run, args=(base_url + "/v1/events/stream" + query, headers), daemon=True
        )
        self._thread.start()
        assert self.ready.wait(10), "the stream did not open"

    def _run(self, url: str, headers: dict[str, str]) -> None:
        try:
            with httpx.stream("GET", url, headers=headers, timeout=30) as answer:
                assert answer.status_code == 200, answer.read()
                assert answer.headers["content-type"].startswith("text/event-stream")
                self._answer = answer
                self.ready.set()
                for line in answer.iter_lines():
                    if self.stop.is_set():
                        return
                    if line.startswith("id: "):
                        self.ids.append(int(line[4:]))
                    elif line.startswith("data: "):
                        self.types.append(orjson.loads(line[6:])["event_type"])
        except BaseException as exc:  # reported by wait_for(); expected once close() cuts in
            if not self.stop.is_set():
                self.failure = exc
            self.ready.set()

    def wait_for(self, count: int, seconds: float = 15) -> None:
        deadline = time.monotonic() + seconds
        while len(self.ids) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.ids) >= count, (len(self.ids), count, self.failure)

    def close(self) -> None:
        """Disconnect: nothing read after this counts."""
        self.stop.set()
        if self._answer is not None:
            self._answer.close()
        self._thread.join(timeout=1)  # a read blocked until the next keepalive ends later


@pytest.mark.slow
def test_a_stream_resumed_with_last_event_id_sees_every_event_once(
    db_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(db_url, api_tokens=[TOKEN])
    states = ["CONNECTING", "CONNECTED", "RECONNECTING", "CONNECTED", "DISCONNECTED"]

    def send(count: int, start: int) -> list[int]:
        ids = []
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            for n in range(start, start + count):
                answer = client.post(signed_path(), content=rtmp(states[n % 5], f"{n:032x}"))
                assert answer.status_code == 200
                ids.append(answer.json()["event_id"])
        return ids

    before = send(3, 0)  # before anyone listens: replayed only on request (?after=0)
    first = Reader(server.base_url, AUTH, "?after=0")
    during = send(5, 3)
    first.wait_for(8)
    first.close()
    assert first.ids == before + during
    assert set(first.types) == {"RTMP_STREAM_STATE_CHANGE"}

    # Disconnected: events committed meanwhile are not lost.
    missed = send(7, 8)
    resumed = Reader(server.base_url, {**AUTH, "last-event-id": str(first.ids[-1])})
    more = send(4, 15)
    resumed.wait_for(11)
    resumed.close()
    assert resumed.ids == missed + more
    seen = first.ids + resumed.ids
    assert seen == sorted(set(seen)), "every event once, in order"

    # Without Last-Event-ID and ?after: only what commits from now on; filters by job apply.
    fresh = Reader(server.base_url, AUTH, f"?job_id={20:032x}")
    newest = send(3, 19)  # jobs 19, 20, 21: only job 20's event
    fresh.wait_for(1)
    time.sleep(1.2)  # room for anything that should not come
    fresh.close()
    assert fresh.ids == [newest[1]]

    for query, header in (("?after=x", {}), ("", {"last-event-id": "12a"})):
        bad = httpx.get(
            server.base_url + "/v1/events/stream" + query, headers={**AUTH, **header}, timeout=10
        )
        assert bad.status_code == 400, bad.text
        assert bad.json()["error_code"] == "RCV.BAD_PARAMETER"


def test_an_acknowledged_finding_reopens_when_it_comes_back_and_a_muted_one_does_not(
    migrated_url: str,
) -> None:
    """ack: handled, news again if the condition clears and returns; mute: out of the open list
    however often it recurs (the cross-check's upsert, receiver.crosscheck.run_store)."""
    from receiver.crosscheck.rules import Draft
    from receiver.crosscheck.run_store import upsert_findings as _upsert_findings
    from receiver.store import queries

    drafts = [
        Draft(kind="unknown_job", room_id=ROOM, job_id=JOB, detail="acked"),
        Draft(kind="unknown_job", room_id=ROOM, job_id=JOB[::-1], detail="muted"),
    ]
    engine = create_engine_for(migrated_url)
    try:
        with engine.begin() as conn:
            assert _upsert_findings(conn, drafts, datetime.now(UTC)) == 2
            ids = {row.detail: row.id for row in conn.execute(sa.select(FINDINGS))}
            now = datetime.now(UTC)
            for detail, action in (("acked", "ack"), ("muted", "mute")):
                queries.acknowledge_finding(
                    conn, ids[detail], action=action, reason="r", by="token x", now=now
                )
            # Seen again while still unresolved: both stay acknowledged / muted.
            _upsert_findings(conn, drafts, datetime.now(UTC))
            conn.execute(sa.update(FINDINGS).values(resolved_at=datetime.now(UTC)))  # cleared
            assert _upsert_findings(conn, drafts, datetime.now(UTC)) == 2  # and back
            statuses = {
                f["detail"]: f["status"] for f in queries.list_findings(conn, status="all").items
            }
    finally:
        engine.dispose()
    assert statuses == {"acked": "open", "muted": "muted"}


def test_logout_needs_the_page_csrf_token_and_clears_the_cookie(console: TestClient) -> None:
    log_in(console)
    csrf = csrf_of(console.get("/ui/").text)
    forged = console.post("/ui/logout", data={"csrf": "0" * 64}, follow_redirects=False)
    assert forged.status_code == 403
    assert console.get("/ui/", follow_redirects=False).status_code == 200  # still logged in
    done = console.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303
    assert "Max-Age=0" in done.headers["set-cookie"]
    assert console.get("/ui/", follow_redirects=False).status_code == 303


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param("abc." + "9" * 5000 + "." + "0" * 64, id="expiry of 5000 digits"),
        pytest.param("é" * 12 + ".99999999999." + "0" * 64, id="non-ASCII token id"),
        pytest.param("abcdef123456.99999999999." + "é" * 64, id="non-ASCII mac"),
        pytest.param("...", id="dots"),
    ],
)
def test_whatever_cookie_a_client_sends_is_refused_not_a_500(
    console: TestClient, cookie: str
) -> None:
    raw = {b"cookie": f"{COOKIE}={cookie}".encode("latin-1")}  # bytes as a client may send them
    assert console.get("/ui/", headers=raw, follow_redirects=False).status_code == 303
    answer = console.get("/v1/events", headers=raw)
    assert answer.status_code == 401, answer.text
    assert answer.json()["error_code"] == "RCV.API_UNAUTHORIZED"

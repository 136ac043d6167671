"""The store goes away under a running server: 503 (never a 200 that was not stored, never a
500), /readyz 503, and the server recovers by itself when the store comes back.

PRODUCT.md, "Callback intake": 503 store unavailable (never a 200 that was not stored); no 500
for any input a client can send. Every case runs a real ``serve`` process on loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest
from conftest import (
    ServerProcess,
    free_port,
    signed_path,
    stored_bodies,
    write_config,
)
from sqlalchemy.engine import make_url
from tcp_proxy import TcpProxy

from receiver.testing import encode

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]  # stops the shared PostgreSQL

STORE_TIMEOUT = 3.0  # store_timeout_seconds of every server here: a 503 comes within this
API_TOKEN = "outage-token"


class Sender:
    """Signs and posts new deliveries; remembers what each answer said."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.client = httpx.Client(timeout=STORE_TIMEOUT + 10)
        self.number = 0
        self.acked: dict[tuple[str, bytes], int] = {}  # (path, body) -> delivery id
        self.refused: list[tuple[str, bytes]] = []  # answered 503
        self.statuses: list[int] = []

    def close(self) -> None:
        self.client.close()

    def new(self) -> tuple[str, bytes]:
        self.number += 1
        body = encode(
            "RTMP_STREAM_STATE_CHANGE",
            {"room_id": "room-1", "job_id": "job-1", "state": "CONNECTED", "n": self.number},
        )
        return signed_path(), body

    def post(self, delivery: tuple[str, bytes] | None = None) -> tuple[httpx.Response, float]:
        delivery = delivery or self.new()
        started = time.monotonic()
        response = self.client.post(
            self.server.base_url + delivery[0],
            content=delivery[1],
            headers={"content-type": "application/json"},
        )
        elapsed = time.monotonic() - started
        self.statuses.append(response.status_code)
        assert response.status_code in (200, 503), response.text
        if response.status_code == 200:
            delivery_id = response.json()["delivery_id"]
            assert self.acked.setdefault(delivery, delivery_id) == delivery_id
        else:
            self.refused.append(delivery)
        return response, elapsed

    def readyz(self) -> httpx.Response:
        response = self.client.get(self.server.base_url + "/readyz")
        assert response.status_code in (200, 503), response.text
        return response

    def expect_unavailable(self, count: int = 3) -> None:
        """Every delivery is refused with 503 in MetaStudio's error shape, within the timeout."""
        for _ in range(count):
            response, elapsed = self.post()
            assert response.status_code == 503, response.text
            assert response.json()["error_code"] == "RCV.STORE_UNAVAILABLE"
            assert response.json()["error_msg"]
            assert response.headers.get("retry-after")
            assert elapsed < STORE_TIMEOUT + 2
        ready = self.readyz()
        assert ready.status_code == 503
        assert ready.json()["error_code"] == "RCV.STORE_UNAVAILABLE"

    def expect_recovered(self, within: float = 10.0) -> None:
        """Deliveries are stored again (without a restart), and /readyz says so."""
        deadline = time.monotonic() + within
        while True:
            response, _ = self.post()
            if response.status_code == 200:
                break
            assert time.monotonic() < deadline, "the server did not recover"
            time.sleep(0.2)
        for _ in range(3):
            response, _ = self.post()
            assert response.status_code == 200, response.text
            assert response.json()["result"] == "stored"
        assert self.readyz().status_code == 200
        # The sender's retries of what was refused: all accepted now, none lost.
        for delivery in list(self.refused):
            response, _ = self.post(delivery)
            assert response.status_code == 200, response.text

    def check_stored(self, url: str) -> None:
        """Every delivery answered 200 is in the store, once, with the id it was given."""
        assert 500 not in self.statuses
        stored = stored_bodies(url)
        for (_, body), delivery_id in self.acked.items():
            assert stored.get(body) == [delivery_id]
        assert all(len(ids) == 1 for ids in stored.values())


@pytest.fixture
def sqlite_server(
    sqlite_url: str, server_factory: Callable[..., ServerProcess]
) -> Iterator[tuple[ServerProcess, Sender, Path]]:
    server = server_factory(sqlite_url, store_timeout_seconds=STORE_TIMEOUT, api_tokens=[API_TOKEN])
    sender = Sender(server)
    path = Path(make_url(sqlite_url).database or "")
    try:
        for _ in range(3):
            response, _ = sender.post()
            assert response.status_code == 200
        assert sender.readyz().status_code == 200
        yield server, sender, path
    finally:
        sender.close()
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            subprocess.run(["chattr", "-i", str(name)], capture_output=True, check=False)
            if name.exists():
                name.chmod(0o644)


# --- SQLite -------------------------------------------------------------------------------------


def test_sqlite_read_only_file(
    sqlite_server: tuple[ServerProcess, Sender, Path], sqlite_url: str
) -> None:
    server, sender, path = sqlite_server
    path.chmod(0o444)  # the store treats a file without write bits as read-only (even for root)
    sender.expect_unavailable()
    path.chmod(0o644)
    sender.expect_recovered()
    sender.check_stored(sqlite_url)
    assert server.proc is not None and server.proc.poll() is None


def _chattr(flag: str, *paths: Path) -> None:
    done = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, check=False)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()
        if flag == "+i" and ("not supported" in message or "not permitted" in message):
            pytest.skip(f"chattr +i does not work here: {message}")
        raise AssertionError(f"chattr {flag} failed: {message}")


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr (e2fsprogs)")
def test_sqlite_immutable_file(
    sqlite_server: tuple[ServerProcess, Sender, Path], sqlite_url: str
) -> None:
    """chattr +i (as root) on the database and its WAL. Writes through the writer's open
    descriptors then fail with EPERM (SQLite: "disk I/O error"), and a new connection opens the
    file read-only; the mode bits do not change, so the store also asks access(2), which sees
    the flag: deliveries and /readyz are 503 before anything is attempted."""
    _, sender, path = sqlite_server
    wal = Path(f"{path}-wal")
    assert wal.exists()
    _chattr("+i", path, wal)
    try:
        sender.expect_unavailable()
    finally:
        _chattr("-i", path, wal)
    sender.expect_recovered()
    sender.check_stored(sqlite_url)


def _read_api(server: ServerProcess, requests: int = 24) -> list[int]:
    """Concurrent GET /v1/events: enough at once that the read pool opens new connections."""

    def get(_: int) -> int:
        with httpx.Client(timeout=STORE_TIMEOUT + 10) as client:
            response = client.get(
                server.base_url + "/v1/events?limit=1",
                headers={"authorization": f"Bearer {API_TOKEN}"},
            )
            return response.status_code

    with ThreadPoolExecutor(12) as pool:
        return list(pool.map(get, range(requests)))


def test_sqlite_file_vanishes(
    sqlite_server: tuple[ServerProcess, Sender, Path], sqlite_url: str
) -> None:
    """The database is renamed away: 503, and no new empty file appears in its place (the
    writer would then find it; reads would be answered from it); renamed back: recovers.
    Reads and the rejection log run meanwhile, as they would in production."""
    server, sender, path = sqlite_server
    away = path.with_name(path.name + ".away")
    os.rename(path, away)
    try:
        sender.expect_unavailable()
        # The read pool has no connection yet: each of these opens one. 503, not a new file.
        assert set(_read_api(server)) == {503}
        forged = sender.client.post(
            server.base_url + "/callbacks/shop-a?hwSecret=" + "0" * 64 + "&hwTime=1",
            content=b"{}",
        )
        assert forged.status_code == 401  # written to the rejection log in the background
        time.sleep(1.0)
        sender.expect_unavailable(count=1)
        assert not path.exists(), "a new database file was created where the old one vanished"
    finally:
        os.rename(away, path)
    sender.expect_recovered()
    sender.check_stored(sqlite_url)
    assert set(_read_api(server)) == {200}


# --- PostgreSQL ---------------------------------------------------------------------------------


def _serve_unreachable(tmp_path: Path) -> tuple[int, str, float]:
    dead_port = free_port()  # nothing listens there
    url = f"postgresql+psycopg://postgres@127.0.0.1:{dead_port}/receiver"
    config = write_config(tmp_path / "unreachable.toml", url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    port = str(free_port())
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "serve", "--config", str(config), "--port", port],
        env=env,
        capture_output=True,
        timeout=60,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    return done.returncode, output, time.monotonic() - started


def test_serve_with_unreachable_postgresql_exits(tmp_path: Path) -> None:
    code, output, elapsed = _serve_unreachable(tmp_path)
    print(f"exit {code} after {elapsed:.1f} s; last line: {output.strip().splitlines()[-1]!r}")
    assert code != 0
    assert elapsed < 30
    assert "Connection refused" in output or "connection" in output.lower()


def test_serve_with_unreachable_postgresql_says_so_in_one_line(tmp_path: Path) -> None:
    code, output, _ = _serve_unreachable(tmp_path)
    assert code != 0
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) <= 3


@pytest.fixture
def proxied_server(
    pg_url: str, server_factory: Callable[..., ServerProcess]
) -> Iterator[tuple[TcpProxy, Sender]]:
    target = make_url(pg_url)
    proxy = TcpProxy(target.port or 5432)
    proxy.start()
    url = target.set(port=proxy.port).render_as_string(hide_password=False)
    try:
        server = server_factory(url, store_timeout_seconds=STORE_TIMEOUT)
        sender = Sender(server)
        try:
            for _ in range(3):
                response, _ = sender.post()
                assert response.status_code == 200
            assert sender.readyz().status_code == 200
            yield proxy, sender
        finally:
            sender.close()
            server.stop()
    finally:
        proxy.stop()
        proxy.join()


def test_postgresql_goes_away_and_comes_back(
    proxied_server: tuple[TcpProxy, Sender], pg_url: str
) -> None:
    proxy, sender = proxied_server
    port = proxy.port
    proxy.stop()  # listener closed, open connections reset
    sender.expect_unavailable(count=4)
    proxy.start()
    assert proxy.port == port
    sender.expect_recovered()
    sender.check_stored(pg_url)  # read directly, not through the proxy


def test_postgresql_stops_answering(proxied_server: tuple[TcpProxy, Sender], pg_url: str) -> None:
    """A network that holds connections open but carries nothing (a frozen host, a dead link
    before TCP gives up): the writer's query hangs; deliveries and /readyz must still be
    answered 503 within the store timeout, and the server recovers when traffic flows again."""
    proxy, sender = proxied_server
    proxy.freeze()
    try:
        sender.expect_unavailable(count=2)
    finally:
        proxy.thaw()
    sender.expect_recovered(within=STORE_TIMEOUT * 3)
    sender.check_stored(pg_url)

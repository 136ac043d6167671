"""Shared fixtures: a fresh database of each kind, settings, an in-process app, a real server.

Storage tests run on SQLite and on PostgreSQL (``db_url`` is parametrised over both). The
PostgreSQL server is named by RECEIVER_TEST_POSTGRES_URL (default: the local one on
127.0.0.1:5432); each test gets a database of its own, dropped afterwards. When the server cannot
be reached the PostgreSQL cases are skipped, unless RECEIVER_REQUIRE_POSTGRES=1 (CI sets it), in
which case they fail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from receiver.config import Settings, settings_from_mapping
from receiver.protocol.signing import AuthType
from receiver.store.migrate import upgrade
from receiver.store.writer import DELIVERIES, create_engine_for
from receiver.testing import sign_request
from receiver.web.app import create_app

# The cross-check world (fake MetaStudio on loopback, intake on a migrated store) and the forwarding
# world (a webhook sink, an app with [[destinations]]) for every module.
pytest_plugins = ["crosscheck_world", "forwarding_world"]

PG_ADMIN_URL = os.environ.get(
    "RECEIVER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_PG = os.environ.get("RECEIVER_REQUIRE_POSTGRES") == "1"

KEY = "GCTbw44s6MPLh4GqgDpnfuFHgy25Enly"
OLD_KEY = "previous-key-0123456789"
REGISTERED = "https://hooks.example.com/callbacks/shop-a"
SERVE = (sys.executable, "-m", "receiver", "serve")


REPORT: list[str] = []
"""Figures that tests measured (the container test's build time, image size and stop time),
printed at the end of the run."""


def pytest_sessionfinish(session: pytest.Session) -> None:
    # An xdist worker hands its figures to the controller, which prints them.
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["report"] = list(REPORT)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    REPORT.extend(getattr(node, "workeroutput", {}).get("report", []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in REPORT:
        terminalreporter.write_line(line)


def _pg_conninfo(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_admin() -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required (RECEIVER_REQUIRE_POSTGRES=1) but: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database of this test's own."""
    name = f"rcv_test_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with _pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'receiver.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind (the test runs once per kind)."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def migrated_url(db_url: str) -> str:
    upgrade(db_url)
    return db_url


def endpoint_table(**overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": "shop-a",
        "registered_url": REGISTERED,
        "auth_type": "MSS_A",
        "keys": [KEY, OLD_KEY],
    }
    table.update(overrides)
    return table


def make_settings(database_url: str, *endpoints: dict[str, Any], **top: Any) -> Settings:
    data: dict[str, Any] = {
        "database_url": database_url,
        "endpoints": list(endpoints) or [endpoint_table()],
        "api_tokens": ["test-token"],
    }
    data.update(top)
    return settings_from_mapping(data, environ={})


@pytest.fixture
def app_client(migrated_url: str) -> Iterator[Callable[..., TestClient]]:
    """In-process client factory: ``app_client(*endpoint_tables, **top_level_keys)``."""
    clients: list[TestClient] = []

    def factory(*endpoints: dict[str, Any], **top: Any) -> TestClient:
        client = TestClient(create_app(make_settings(migrated_url, *endpoints, **top)))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


def signed_path(when: float | None = None) -> str:
    """The path and query MetaStudio posts to for REGISTERED: MSS_A with KEY, signed ``when``
    (now by default), as a server on loopback receives it."""
    url, headers = sign_request(
        registered_url=REGISTERED,
        auth_type=AuthType.MSS_A,
        key=KEY,
        when=time.time() if when is None else when,
    )
    assert not headers
    return url.removeprefix("https://hooks.example.com")


def stored_bodies(url: str) -> dict[bytes, list[int]]:
    """body -> ids of the delivery rows that hold it (originals; duplicate receipts hold none)."""
    engine = create_engine_for(url, pool_size=1)
    try:
        with engine.connect() as conn:
            stored: dict[bytes, list[int]] = {}
            query = sa.select(DELIVERIES.c.body, DELIVERIES.c.id).where(
                DELIVERIES.c.dedup_key.is_not(None)
            )
            for body, delivery_id in conn.execute(query):
                stored.setdefault(bytes(body), []).append(delivery_id)
    finally:
        engine.dispose()
    return stored


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m receiver ARGS`` in ``cwd``, with none of this environment's RECEIVER_*
    variables (only those in ``env``), its output captured as text."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        capture_output=True,
        text=True,
        env=clean,
        cwd=cwd,
        timeout=timeout,
    )


def fake_metastudio_fixtures(**options: Any) -> tuple[Any, Any, Any]:
    """The fixtures of a test module that serves a fake MetaStudio of its own
    (``options`` go to ``FakeMetaStudio``, e.g. ``tokens``, ``credentials``)::

        served, fake, base_url = fake_metastudio_fixtures(project_id=..., tokens={TOKEN}, ...)

    ``served`` is one server for the module, ``(fake, url)``; ``fake`` is its FakeMetaStudio,
    reset before and after each test; ``base_url`` is its URL, the fake reset first.
    """
    from receiver.fake_metastudio import FakeMetaStudio, serve_fake

    @pytest.fixture(scope="module")
    def served() -> Iterator[tuple[FakeMetaStudio, str]]:
        fake = FakeMetaStudio(**options)
        with serve_fake(fake) as url:
            yield fake, url

    @pytest.fixture
    def fake(served: tuple[FakeMetaStudio, str]) -> Iterator[FakeMetaStudio]:
        served[0].reset()
        yield served[0]
        served[0].reset()

    @pytest.fixture
    def base_url(fake: FakeMetaStudio, served: tuple[FakeMetaStudio, str]) -> str:
        return served[1]

    return served, fake, base_url


def write_config(path: Path, database_url: str, *endpoints: dict[str, Any], **top: Any) -> Path:
    """A receiver.toml with the given endpoint tables (values: str, int, float, bool, lists); a
    top-level value that is a dict becomes a table (``rules={...}``), a list of dicts an array of
    tables (``destinations=[...]``)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(t, dict) for t in v)

    lines = [f"database_url = {value(database_url)}"]
    lines += [
        f"{k} = {value(v)}" for k, v in top.items() if not tables(v) and not isinstance(v, dict)
    ]
    for key, table in top.items():
        if isinstance(table, dict):  # e.g. rules={...}: a [rules] table
            lines.append(f"[{key}]")
            lines += [f"{k} = {value(v)}" for k, v in table.items()]
    arrays = {"endpoints": list(endpoints or (endpoint_table(),))}
    arrays.update({k: v for k, v in top.items() if tables(v)})  # e.g. destinations=[{...}]
    for key, items in arrays.items():
        for table in items:
            lines.append(f"[[{key}]]")
            lines += [f"{k} = {value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class ServerProcess:
    """A real ``metastudio-receiver serve`` on loopback."""

    config: Path
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)
    workers: int = 1  # as the config's ``workers`` says; kill() then kills the whole group

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [*SERVE, "--config", str(self.config), "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=self.workers > 1,  # a group of its own, for kill()
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not start:\n{self.log_path.read_text()[-4000:]}")

    def kill(self) -> None:
        """kill -9: no shutdown, no drain; with workers, of the supervisor and every worker at
        once, as when the machine goes down."""
        if self.proc is not None and self.proc.poll() is None:
            if self.workers > 1:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``server_factory(database_url, *endpoint_tables, **top_level_keys)`` -> a started server."""
    servers: list[ServerProcess] = []
    lock = threading.Lock()

    def factory(database_url: str, *endpoints: dict[str, Any], **top: Any) -> ServerProcess:
        # Safe to call from several threads (replicas started together); a server is registered
        # before it starts, so one that fails to come up is still stopped at teardown.
        with lock:
            index = len(servers)
            config = write_config(
                tmp_path / f"receiver-{index}.toml", database_url, *endpoints, **top
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
            server = ServerProcess(
                config=config,
                port=free_port(),
                env=env,
                log_path=tmp_path / f"server-{index}.log",
                workers=int(top.get("workers", 1)),
            )
            servers.append(server)
        server.start()
        return server

    yield factory
    for server in servers:
        server.stop()

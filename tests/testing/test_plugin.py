"""The pytest plugin (``receiver.testing.plugin``), used the way a user's suite uses it.

The inner suites below run in a pytest subprocess of their own (``pytester``), with the plugin
loaded as an installed package loads it (the ``pytest11`` entry point), against ``create_app`` on
a temporary SQLite database.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest import ServerProcess, endpoint_table
from starlette.applications import Starlette

from receiver.store import queries
from receiver.store.writer import create_engine_for
from receiver.testing import CallbackFactory, RunningApp, replay_file

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]


def plugin_args() -> list[str]:
    """Load the plugin the way it is installed; by module name when the entry point is not."""
    installed = importlib.metadata.entry_points(group="pytest11", name="metastudio_receiver")
    return [] if installed else ["-p", "receiver.testing.plugin"]


INI = """
[pytest]
filterwarnings = error
metastudio_registered_url = https://hooks.example.com/callbacks/inner?tenant=t1
metastudio_key = inner-key-0123456789abcdef
metastudio_auth_type = MSS_A_HEAD
metastudio_signed_uri = full_url
"""

HELPERS = """
import json

import httpx2
import pytest
from starlette.testclient import TestClient

from receiver.store import queries
from receiver.web.app import create_app
from receiver.config import settings_from_mapping
from receiver.store.migrate import upgrade
from receiver.store.writer import create_engine_for

AUTH = {"Authorization": "Bearer inner-token"}
SWITCH = {
    "room_id": "room-1",
    "job_id": "job-1",
    "scene_script_name": "spring-sale",
    "shoot_script_sequence_no": "1",
    "shoot_script_title": "Opening",
}


def make_app(tmp_path, name, *endpoints, metastudio=None, environ=None):
    url = f"sqlite:///{tmp_path / name}"
    upgrade(url)
    data = {"database_url": url, "api_tokens": ["inner-token"], "endpoints": list(endpoints)}
    if metastudio is not None:
        data["metastudio"] = metastudio
    return url, create_app(settings_from_mapping(data, environ=environ or {}))


def post(client, callback):
    return client.post(callback.url, content=callback.body, headers=callback.headers)


def export(url, path):
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            lines = [json.dumps(record) for record in queries.export_events(conn)]
    finally:
        engine.dispose()
    path.write_text("\\n".join(lines) + "\\n")
    return path
"""

USER_TESTS = '''
import httpx2
import pytest
from helpers import AUTH, SWITCH, export, make_app, post
from starlette.testclient import TestClient


def test_the_ini_options_bind_the_factory(metastudio_callback):
    assert metastudio_callback.registered_url.endswith("/callbacks/inner?tenant=t1")
    assert metastudio_callback.auth_type == "MSS_A_HEAD"
    callback = metastudio_callback("SHOOT_SCRIPT_SWITCH", SWITCH)
    assert "x-hw-mss-secret" in callback.headers


def test_signed_callbacks_are_stored_and_wrong_ones_refused(tmp_path, metastudio_callback):
    _, app = make_app(tmp_path, "a.db", metastudio_callback.endpoint_table())
    with TestClient(app) as client:
        answer = post(client, metastudio_callback("SHOOT_SCRIPT_SWITCH", SWITCH))
        assert answer.status_code == 200 and answer.json()["result"] == "stored"
        wrong = metastudio_callback("SHOOT_SCRIPT_SWITCH", SWITCH, key="not-the-key")
        assert post(client, wrong).status_code == 401
        stale = metastudio_callback("SHOOT_SCRIPT_SWITCH", SWITCH, when=1725928200)
        assert post(client, stale).json()["error_code"] == "RCV.SIGNATURE_EXPIRED"


def test_fake_metastudio_answers_the_job_query(fake_metastudio):
    job = fake_metastudio.add_job(room_id="room-1")
    answer = httpx2.get(
        f"{fake_metastudio.base_url}/v1/{fake_metastudio.project_id}"
        "/smart-live-rooms/room-1/smart-live-jobs",
        headers={"X-Auth-Token": fake_metastudio.token},
    )
    assert answer.status_code == 200
    assert [j["job_id"] for j in answer.json()["smart_live_jobs"]] == [job["job_id"]]


def test_fake_metastudio_is_fresh_for_every_test(fake_metastudio):
    assert fake_metastudio.fake.jobs() == []
    assert fake_metastudio.fake.requests == []


def test_a_receiver_cross_checks_against_the_fake(tmp_path, fake_metastudio, metastudio_callback):
    fake_metastudio.add_job(room_id="room-1", job_id="job-1", state="PROCESSING")
    _, app = make_app(
        tmp_path,
        "c.db",
        metastudio_callback.endpoint_table(),
        metastudio=fake_metastudio.metastudio_table(),
        environ=fake_metastudio.environ,
    )
    with TestClient(app) as client:
        assert post(client, metastudio_callback("SHOOT_SCRIPT_SWITCH", SWITCH)).status_code == 200
        answer = client.post("/v1/crosscheck", json={"room_id": "room-1"}, headers=AUTH)
        assert answer.status_code == 200, answer.text
    paths = [request.path for request in fake_metastudio.fake.requests]
    assert any(path.endswith("/smart-live-rooms/room-1/smart-live-jobs") for path in paths)


@pytest.fixture
def recorded(tmp_path, metastudio_callback):
    """Events stored by one receiver, exported as metastudio-receiver export writes them."""
    url, app = make_app(tmp_path, "source.db", metastudio_callback.endpoint_table())
    with TestClient(app) as client:
        for number in (1, 2, 3):
            message = {**SWITCH, "shoot_script_sequence_no": number}
            assert post(client, metastudio_callback("SHOOT_SCRIPT_SWITCH", message)).is_success
    return export(url, tmp_path / "export.jsonl")


def test_replay_an_export_into_an_app(tmp_path, recorded, metastudio_callback, metastudio_replay):
    other = metastudio_callback.bind(
        registered_url="https://other.example.com/callbacks/other",
        auth_type="MSS_A",
        key="other-key",
        signed_uri="host_path_query",
    )
    _, app = make_app(tmp_path, "target.db", other.endpoint_table())
    report = metastudio_replay(
        recorded,
        app=app,
        registered_url=other.registered_url,
        auth_type="MSS_A",
        key="other-key",
        signed_uri="host_path_query",
    )
    assert report.ok and report.stored == 3
    with TestClient(app) as client:
        events = client.get("/v1/events", headers=AUTH).json()["events"]
    assert [e["message"]["shoot_script_sequence_no"] for e in events] == [1, 2, 3]


def test_replay_into_a_running_test_client(
    tmp_path, recorded, metastudio_callback, metastudio_replay
):
    _, app = make_app(tmp_path, "target.db", metastudio_callback.endpoint_table())
    with TestClient(app) as client:
        report = metastudio_replay(recorded, client=client)
        assert report.ok and report.stored == 3
        # A second run is signed on a later tick than the first one ended on, so event 3 is a
        # new delivery, not a retry of the first run's (same body and hwTime = "duplicate").
        again = metastudio_replay(recorded, client=client, start_after=2)
        assert again.skipped == 2 and again.stored == 1 and again.ok
        deliveries = client.get("/v1/deliveries", headers=AUTH).json()["deliveries"]
    assert [d["headers"]["x-receiver-replay"] for d in deliveries[:3]] == [
        "inner:1", "inner:2", "inner:3"
    ]
    assert len(deliveries) == 4


def test_my_own_fixture_names_still_work(fake, callback, replay):
    assert (fake, callback, replay) == ("my fake", "my callback", "my replay")
'''

USER_CONFTEST = """
import pytest


@pytest.fixture
def fake():
    return "my fake"


@pytest.fixture
def callback():
    return "my callback"


@pytest.fixture
def replay():
    return "my replay"
"""


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider", *args)


def test_the_fixtures_as_a_user_would_use_them(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(helpers=HELPERS, conftest=USER_CONFTEST, test_user=USER_TESTS)
    result = run_inner(pytester, "-q")
    result.assert_outcomes(passed=8)


def test_a_conftest_can_rebind_the_factory(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def metastudio_callback(metastudio_callback):
            return metastudio_callback.bind(
                registered_url="https://hooks.example.com/callbacks/mine", time_unit="milliseconds"
            )
        """
    )
    pytester.makepyfile(
        """
        from urllib.parse import parse_qs, urlsplit

        def test_rebound(metastudio_callback, metastudio_replay):
            callback = metastudio_callback("X", {"a": 1})
            assert callback.url.startswith("https://hooks.example.com/callbacks/mine?hwSecret=")
            assert len(parse_qs(urlsplit(callback.url).query)["hwTime"][0]) == 11
            assert metastudio_callback.endpoint_table()["name"] == "mine"
        """
    )
    run_inner(pytester, "-q").assert_outcomes(passed=1)


def test_importing_the_plugin_loads_nothing_heavy() -> None:
    code = textwrap.dedent(
        """
        import sys
        import pytest
        before = set(sys.modules)
        import receiver.testing.plugin
        loaded = sorted(set(sys.modules) - before)
        print(",".join(loaded))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = done.stdout.strip().split(",")
    assert sorted(loaded) == ["receiver", "receiver.testing", "receiver.testing.plugin"]


def test_the_entry_point_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"metastudio_receiver": "receiver.testing.plugin"}


def test_the_example_runs() -> None:
    example = "examples/test_replay_example.py"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin_args(), example],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 passed" in done.stdout


# -- the helpers, straight -----------------------------------------------------------------------


def test_replay_file_to_a_real_server(
    tmp_path: Path, sqlite_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    signer = CallbackFactory()
    source_url = f"sqlite:///{tmp_path / 'source.db'}"
    source = server_factory(source_url, signer.endpoint_table())
    for number in range(3):
        callback = signer(
            "REPLY_COMMAND_FINISH", {"room_id": "r", "job_id": "j", "reply_id": number}
        )
        assert signer.deliver(callback, to=source.base_url).stored
    engine = create_engine_for(source_url)
    with engine.connect() as conn:
        lines = [json.dumps(record) for record in queries.export_events(conn)]
    engine.dispose()
    path = tmp_path / "export.jsonl"
    path.write_text("\n".join(lines) + "\n")

    target = CallbackFactory(registered_url="https://t.example.com/callbacks/t", key="t-key")
    server = server_factory(sqlite_url, endpoint_table(**target.endpoint_table()))
    report = replay_file(
        path, base_url=server.base_url, registered_url=target.registered_url, key=target.key
    )
    assert report.ok and report.stored == 3
    bad = replay_file(path, base_url=server.base_url, registered_url=target.registered_url)
    assert bad.failed == 1 and bad.stored == 0 and "401" in (bad.error or "")


def test_running_app_without_a_lifespan() -> None:
    async def app(scope: dict, receive: Callable, send: Callable) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"result": "stored"}'})

    with RunningApp(app) as running:
        answer = running.send(CallbackFactory()("X", {}))
    assert answer.stored


def test_running_app_says_when_the_app_does_not_start() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("the store is not there")
        yield

    expected = "did not start: RuntimeError: the store is not there"
    with pytest.raises(RuntimeError, match=expected), RunningApp(Starlette(lifespan=lifespan)):
        pass


def test_replay_file_needs_one_destination(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        replay_file(tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="exactly one"):
        replay_file(tmp_path / "x.jsonl", base_url="http://127.0.0.1:9", client=object())

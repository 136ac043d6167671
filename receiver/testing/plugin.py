"""The pytest plugin (entry point ``pytest11``: ``metastudio_receiver``).

Fixtures, all prefixed so they do not clash with a suite's own names:

``metastudio_callback``
    A :class:`~receiver.testing.CallbackFactory`: ``metastudio_callback(event_type, message)``
    returns a callback signed as MetaStudio would sign it for one endpoint;
    ``metastudio_callback.endpoint_table()`` is the receiver's matching ``[[endpoints]]`` table.
``fake_metastudio``
    A fake of MetaStudio's job query API on loopback (``.base_url``, ``.fake``, ``.project_id``,
    ``.ak``, ``.sk``, ``.token``, ``.add_job(...)``, ``.metastudio_table()``, ``.environ``),
    reset for every test; the server itself is started once per session.
``metastudio_replay``
    ``metastudio_replay(path, app=... | base_url=... | client=...)`` replays an export file with
    the signing of ``metastudio_callback`` and returns the report.

The endpoint they sign for comes from ini options (``metastudio_registered_url``,
``metastudio_key``, ``metastudio_auth_type``, ``metastudio_signed_uri``,
``metastudio_time_unit``), or override the fixture in a conftest::

    @pytest.fixture
    def metastudio_callback(metastudio_callback):
        return metastudio_callback.bind(registered_url="https://hooks.example.com/callbacks/x")

Importing this module loads nothing but pytest: no database, no server, no SDK.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from receiver.testing import CallbackFactory, FakeMetaStudioServer
    from receiver.tools.replay import ReplayReport

_INI = {
    "metastudio_registered_url": "registered_url",
    "metastudio_key": "key",
    "metastudio_auth_type": "auth_type",
    "metastudio_signed_uri": "signed_uri",
    "metastudio_time_unit": "time_unit",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    for name, field in _INI.items():
        parser.addini(name, f"receiver.testing: {field} the metastudio_* fixtures sign for")


@pytest.fixture
def metastudio_callback(pytestconfig: pytest.Config) -> CallbackFactory:
    """Build signed callbacks for one endpoint: ``metastudio_callback(event_type, message)``."""
    from receiver.testing import CallbackFactory

    configured: dict[str, Any] = {}
    for name, field in _INI.items():
        value = pytestconfig.getini(name)
        if value:
            configured[field] = str(value)
    return CallbackFactory().bind(**configured)


@pytest.fixture(scope="session")
def _metastudio_fake_server() -> Iterator[FakeMetaStudioServer]:
    from receiver import fake_metastudio as fakes
    from receiver.testing import FakeMetaStudioServer

    fake = fakes.FakeMetaStudio(
        project_id=fakes.DEFAULT_PROJECT_ID,
        tokens=[fakes.DEFAULT_TOKEN],
        credentials={fakes.DEFAULT_AK: fakes.DEFAULT_SK},
    )
    with fakes.serve_fake(fake) as base_url:
        yield FakeMetaStudioServer(
            base_url=base_url,
            fake=fake,
            project_id=fake.project_id,
            ak=fakes.DEFAULT_AK,
            sk=fakes.DEFAULT_SK,
            token=fakes.DEFAULT_TOKEN,
        )


@pytest.fixture
def fake_metastudio(
    _metastudio_fake_server: FakeMetaStudioServer,
) -> Iterator[FakeMetaStudioServer]:
    """A fake MetaStudio job query API on loopback, with no jobs and an empty request log."""
    _metastudio_fake_server.fake.reset()
    yield _metastudio_fake_server
    _metastudio_fake_server.fake.reset()


@pytest.fixture
def metastudio_replay(
    metastudio_callback: CallbackFactory,
) -> Callable[..., ReplayReport]:
    """``metastudio_replay(path, app=... | base_url=... | client=..., **options)``: replay an
    export file into a receiver, signed as ``metastudio_callback`` signs."""
    from receiver.testing import replay_file

    def run(path: str | Path, **options: Any) -> ReplayReport:
        signing = {
            "registered_url": metastudio_callback.registered_url,
            "auth_type": metastudio_callback.auth_type,
            "key": metastudio_callback.key,
            "signed_uri": metastudio_callback.signed_uri,
            "time_unit": metastudio_callback.time_unit,
        }
        if options.get("endpoint") is not None:
            signing = {}  # the endpoint's own settings win
        return replay_file(path, **{**signing, **options})

    return run

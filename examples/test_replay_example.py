"""Replay recorded MetaStudio events into your receiver, in a test. Copy this into your suite.

``export-sample.jsonl`` was written by ``metastudio-receiver export`` (made-up ids, a fake stream
key). Use your own: ``metastudio-receiver export --config prod.toml --job-id ... -o events.jsonl``
(an export holds raw bodies, stream keys included: treat it as a secret, or make one like this).

The fixtures come from the pytest plugin that ``pip install metastudio-receiver`` registers:
``metastudio_callback`` signs as MetaStudio would for one endpoint, ``metastudio_replay`` replays
an export signed the same way. Run: ``pytest examples/test_replay_example.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from receiver.config import settings_from_mapping
from receiver.store.migrate import upgrade
from receiver.testing import CallbackFactory
from receiver.web.app import create_app

EXPORT = Path(__file__).with_name("export-sample.jsonl")
JOB_ID = "c81e728d9d4c4f6ab1f3e2d4c5b6a798"
AUTH = {"Authorization": "Bearer example-token"}


@pytest.fixture
def receiver_app(tmp_path: Path, metastudio_callback: CallbackFactory) -> Starlette:
    """A receiver on a fresh SQLite file whose endpoint verifies what the plugin signs."""
    database_url = f"sqlite:///{tmp_path / 'receiver.db'}"
    upgrade(database_url)
    settings = settings_from_mapping(
        {
            "database_url": database_url,
            "api_tokens": ["example-token"],
            "endpoints": [metastudio_callback.endpoint_table()],
        },
        environ={},
    )
    return create_app(settings)


def test_every_recorded_event_is_stored(receiver_app: Starlette, metastudio_replay: Any) -> None:
    report = metastudio_replay(EXPORT, app=receiver_app)
    assert report.ok, report.error
    assert report.stored == 11


def test_the_job_timeline_after_the_replay(receiver_app: Starlette, metastudio_replay: Any) -> None:
    with TestClient(receiver_app) as client:
        report = metastudio_replay(EXPORT, client=client)
        assert report.ok, report.error
        job = client.get(f"/v1/jobs/{JOB_ID}", headers=AUTH).json()

    assert job["event_count"] == 11
    assert job["rtmp"]["state"] == "END"
    assert job["rtmp"]["stream_key"] == "****0001"  # masked in every answer
    assert job["script"]["shoot_script_sequence_no"] == 3
    assert job["replies"]["finished"] == 2

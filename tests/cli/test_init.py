"""``metastudio-receiver init``: PRODUCT.md's "Getting started", as a newcomer runs it.

What init writes serves at once (a real ``serve`` process, nothing exported), the printed key
signs callbacks that are stored, and the printed object is what MetaStudio's SDK takes.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess, free_port, run_cli
from huaweicloudsdkcore.utils.http_utils import sanitize_for_serialization
from huaweicloudsdkmetastudio.v1.model.live_event_call_back_config import (
    LiveEventCallBackConfig,
)

from receiver.cli import main

PUBLIC = "https://hooks.example.com"
SAMPLE = '{"room_id": "r1", "job_id": "j1", "state": "CONNECTED"}'


def init(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["init", *args], {})
    out, err = capsys.readouterr()
    return code, out, err


def secrets_of(folder: Path) -> dict[str, str]:
    lines = (folder / "receiver.secrets").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.parametrize("auth_type", ["MSS_A_HEAD", "MSS_A"])
def test_init_then_serve_stores_a_callback_signed_with_the_printed_key(
    tmp_path: Path, auth_type: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    done = run_cli(
        "init", "--public-url", PUBLIC, "--auth-type", auth_type, "--dir", "mine", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["auth_type"] == auth_type
    config = tmp_path / "mine" / "receiver.toml"
    server = ServerProcess(
        config=config, port=free_port(), env=env, log_path=tmp_path / "serve.log"
    )
    server.start()  # nothing exported: the config names its secrets file
    try:
        sent = run_cli(
            "send",
            "--url",
            printed["live_event_type_callback_url"],
            "--auth-type",
            printed["auth_type"],
            "--key-env",
            "PRINTED_KEY",
            "--to",
            server.base_url,
            "--event-type",
            "RTMP_STREAM_STATE_CHANGE",
            "--message",
            SAMPLE,
            cwd=tmp_path,
            env={"PRINTED_KEY": printed["key"]},
        )
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["result"] == "stored"
        # Read back through the receiver's API, with the token init wrote (found via --config).
        listed = run_cli(
            "events", "--config", str(config), "--url", server.base_url, "--json", cwd=tmp_path
        )
        assert listed.returncode == 0, listed.stderr
        events = json.loads(listed.stdout)["events"]
        assert [(e["endpoint"], e["message"]["state"]) for e in events] == [("live", "CONNECTED")]
    finally:
        server.stop()
    assert printed["key"] not in server.output()


def test_the_printed_object_is_what_the_sdk_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = init(capsys, "--public-url", PUBLIC + "/", "--dir", str(tmp_path))
    assert code == 0, err
    printed: dict[str, Any] = json.loads(out)
    model = LiveEventCallBackConfig(**printed)
    assert model.to_dict() == printed
    assert sanitize_for_serialization(model) == printed  # what the SDK sends in a request
    # Table 10 and the SDK's limits: an HTTPS URL of at most 2048 characters, a key of 32.
    assert printed["live_event_type_callback_url"] == f"{PUBLIC}/callbacks/live"
    assert printed["key"].isascii() and printed["key"].isalnum() and len(printed["key"]) == 32
    assert printed["callback_event_type"] == [
        "SHOOT_SCRIPT_SWITCH",
        "RTMP_STREAM_STATE_CHANGE",
        "REPLY_COMMAND_FINISH",
    ]
    # The key is printed once, for registration; the API token never.
    secrets = secrets_of(tmp_path)
    assert secrets["LIVE_KEYS"] == printed["key"]
    assert printed["key"] not in err
    assert secrets["RECEIVER_API_TOKENS"] not in out + err
    for name in ("receiver.secrets", "receiver.toml"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


def test_init_refuses_to_overwrite_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--public-url", PUBLIC, "--endpoint", "shop-a", "--dir", str(tmp_path)]
    assert init(capsys, *args)[0] == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, out, err = init(capsys, *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--force" in err, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    code, out, err = init(capsys, *args, "--force")
    assert code == 0, err
    assert secrets_of(tmp_path)["SHOP_A_KEYS"] == json.loads(out)["key"]
    assert (tmp_path / "receiver.secrets").read_bytes() != before["receiver.secrets"]
    assert stat.S_IMODE((tmp_path / "receiver.secrets").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["receiver.secrets", "receiver.toml"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--public-url", "http://hooks.example.com"], "https://"),
        (["--public-url", "https://hooks.example.com/?token=1"], "no query"),
        (["--public-url", "https://hooks.example.com:99999"], "not a valid URL"),
        (["--public-url", PUBLIC, "--endpoint", "shop a"], "--endpoint"),
        (["--public-url", PUBLIC + "/" + "p" * 2040], "2048"),
    ],
)
def test_init_refuses_what_metastudio_would_not_take(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    code, out, err = init(capsys, *args, "--dir", str(tmp_path / "d"))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "d").exists()

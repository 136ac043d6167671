"""``metastudio-receiver demo``: the first command of the README, on a machine with nothing else."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from receiver.cli.demo import run_demo
from receiver.config import load_settings
from receiver.errors import ConfigError


@pytest.mark.slow
def test_demo_once_runs_everything_and_exits_0(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "HUAWEICLOUD_"))}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "demo", "--once", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    elapsed = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert elapsed < 60
    assert "Traceback" not in done.stderr

    # The stored events, as a table like `metastudio-receiver events`.
    assert "Stored events" in out
    assert re.search(r"ID\s+RECEIVED_AT\s+ENDPOINT\s+EVENT_TYPE\s+JOB_ID\s+SUMMARY", out)
    for text in ("state=CONNECTING", "state=RECONNECTING", "state=END", "#5 Wrap-up"):
        assert text in out
    # The job's timeline, the findings and the refusals.
    assert "RTMP stream   END" in out
    assert "MetaStudio    SUCCEED" in out
    assert out.count("unknown_job  job ") == 2
    assert "signature_expired" in out
    # Where to look further, with the token.
    token = re.search(r"API token\s+(\S+)", out)
    assert token is not None and f"TOKEN={token[1]}" in out
    base = re.search(r"receiver\s+(http://127\.0\.0\.1:\d+)", out)
    assert base is not None
    for path in ("/v1/events", "/v1/jobs/", "/v1/findings", "/v1/rejections", "/metrics"):
        assert f"{base[1]}{path}" in out
    assert 'curl -H "Authorization: Bearer $TOKEN"' in out
    # The follow-up command starts the program as the demo was started (python -m receiver
    # here), not as a bare metastudio-receiver that may not be on PATH.
    assert re.search(r"\S*python\S* -m receiver events --config \S+/receiver\.toml", out), out
    assert "metastudio-receiver events --config" not in out
    assert "result: everything went as expected" in out

    # Nothing is left behind: the temporary directory is gone, nothing written to the cwd.
    workdir = re.search(r"working directory\s+(\S+)", out)
    assert workdir is not None and not Path(workdir[1]).exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_demo_takes_a_free_port_when_its_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = io.StringIO()
        code = run_demo(port=port, once=True, out=out)
    text = out.getvalue()
    assert code == 0, text
    assert f"(port {port} was taken)" in text
    assert f"127.0.0.1:{port}/" not in text


def test_the_example_config_is_a_valid_deployment() -> None:
    path = Path(__file__).parents[2] / "examples" / "receiver.toml"
    environ = {
        "RECEIVER_API_TOKENS": "token-1,token-2",
        "SHOP_A_KEYS": "current-key,previous-key",
        "SHOP_B_KEYS": "shop-b-key",
        "HUAWEICLOUD_SDK_AK": "ak",
        "HUAWEICLOUD_SDK_SK": "sk",
    }
    settings = load_settings(path=path, environ=environ)
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.api_tokens == ("token-1", "token-2")
    assert [(e.name, e.auth_type.value, len(e.keys)) for e in settings.endpoints] == [
        ("shop-a", "MSS_A", 2),
        ("shop-b", "MSS_A_HEAD", 1),
    ]
    assert settings.metastudio is not None and settings.metastudio.ak == "ak"
    # Secrets come from the environment only: without it, start-up names the missing variable.
    with pytest.raises(ConfigError, match="RECEIVER_API_TOKENS"):
        load_settings(path=path, environ={})

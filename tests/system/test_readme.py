"""README's first screen runs as written (issue 23): its commands are read out of README.md.

The install lines (``python3 -m venv .venv && .venv/bin/pip install ...``) are what ``.ci/run``
itself runs from a clean clone, and ``demo --once`` is ``tests/cli/test_demo.py``'s. Every other
``.venv/bin/metastudio-receiver`` line runs here through bash, exactly as written, from a folder
whose ``.venv/bin/metastudio-receiver`` is this installation's script; only the port differs
(8080 becomes a free one, so parallel runs do not meet), as a second terminal would run them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
from conftest import free_port

README = Path(__file__).parents[2] / "README.md"
PROGRAM = ".venv/bin/metastudio-receiver"


def first_screen_commands() -> list[str]:
    """The lines of the sh blocks before README's first section."""
    screen = README.read_text().split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", screen, flags=re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_the_first_screen_runs_as_written(tmp_path: Path) -> None:
    lines = first_screen_commands()
    assert f"{PROGRAM} demo --once" in lines[0] and "pip install" in lines[0]
    ours = [line for line in lines if line.startswith(PROGRAM + " ")]
    assert [line.split()[1] for line in ours] == ["init", "serve", "send", "events"], ours
    init, serve, send, events = ours
    assert "--to http://127.0.0.1:8080" in send  # signed for the registered URL, sent here

    script = Path(sys.executable).with_name("metastudio-receiver")
    assert script.exists(), "the package is installed in this environment"
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / PROGRAM).symlink_to(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "HUAWEICLOUD_"))}
    # A newcomer's shell, where the program is not on PATH (no activated venv).
    path = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in path if Path(p) != script.parent)
    port = free_port()

    def run(line: str) -> subprocess.CompletedProcess[str]:
        line = line.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        return subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )

    done = run(init)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["live_event_type_callback_url"].startswith("https://")
    assert f"{PROGRAM} serve --config mine/receiver.toml" in done.stderr  # printed as started

    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        ["bash", "-c", f"{serve} --port {port}"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        sent = run(send)
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["result"] == "stored"
        listed = run(events)
        assert listed.returncode == 0, listed.stderr
        assert "RTMP_STREAM_STATE_CHANGE" in listed.stdout and "state=CONNECTED" in listed.stdout
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)
        log.close()

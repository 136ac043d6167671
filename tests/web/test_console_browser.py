"""The web console in a real headless Chromium (Debian's ``chromium``, driven by Playwright),
against ``metastudio-receiver demo`` running as a user would start it.

Log in with the demo's token, open the demo's job and see its timeline and RTMP strip chart,
open a job with a finding and acknowledge it, watch a new event arrive without a reload, see the
demo's webhook destination and its attempts, disable and enable it, and be sent to the login
page without a session; a forged acknowledgement (no CSRF token) is refused.

Needs ``/usr/bin/chromium`` (``.ci/run`` installs it). Without it the test is skipped, except
under CI or with ``RECEIVER_REQUIRE_BROWSER=1``, where it fails. ``RECEIVER_SCREENSHOTS=DIR``
keeps the screenshots (the README's comes from here).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest
from conftest import free_port

from receiver.protocol.signing import AuthType, sign_request
from receiver.testing import encode

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REQUIRED = os.environ.get("CI") == "true" or os.environ.get("RECEIVER_REQUIRE_BROWSER") == "1"


@dataclass
class Demo:
    base_url: str
    token: str
    job_url: str
    directory: Path
    output: list[str]

    def config(self) -> dict[str, object]:
        return tomllib.loads((self.directory / "receiver.toml").read_text())


def _read_until(
    lines: queue.Queue[str | None], pattern: str, seconds: float, seen: list[str]
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line.rstrip("\n"))
        if re.search(pattern, line):
            return
    raise AssertionError("demo did not get there:\n" + "\n".join(seen[-60:]))


@pytest.fixture
def demo() -> Iterator[Demo]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "HUAWEICLOUD"))}
    env["PYTHONUNBUFFERED"] = "1"  # its lines as they come, not when a buffer fills
    proc = subprocess.Popen(
        [sys.executable, "-m", "receiver", "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    output: queue.Queue[str | None] = queue.Queue()

    def pump(stream: IO[str]) -> None:  # a thread: select() cannot see what readline buffered
        for line in stream:
            output.put(line)
        output.put(None)

    threading.Thread(target=pump, args=(proc.stdout,), daemon=True).start()
    lines: list[str] = []
    try:
        _read_until(output, r"^\s+curl .*/openapi\.json", 180, lines)
        text = "\n".join(lines)
        base = re.search(r"^\s+receiver\s+(http://127\.0\.0\.1:\d+)", text, re.MULTILINE)
        token = re.search(r"^\s+API token\s+(\S+)", text, re.MULTILINE)
        job = re.search(r"console: (http://\S+/ui/jobs/\S+)", text)
        directory = re.search(r"working directory\s+(\S+)", text)
        assert base and token and job and directory, text
        assert f"{base[1]}/ui/" in text, "the demo prints the console's URL"
        yield Demo(base[1], token[1], job[1], Path(directory[1]), lines)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        if REQUIRED:
            pytest.fail(f"the browser tests need {CHROMIUM} (apt-get install chromium)")
        pytest.skip(f"no {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _shot(page: object, name: str) -> None:
    folder = os.environ.get("RECEIVER_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)  # type: ignore[attr-defined]


def _send(demo: Demo, body: bytes) -> dict[str, object]:
    config = demo.config()
    endpoint = config["endpoints"][0]  # type: ignore[index]
    url, headers = sign_request(
        registered_url=endpoint["registered_url"],
        auth_type=AuthType(endpoint["auth_type"]),
        key=endpoint["keys"][0],
        when=time.time(),
    )
    parts = urlsplit(url)
    answer = httpx.post(
        f"{demo.base_url}{parts.path}?{parts.query}", content=body, headers=headers, timeout=30
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


def test_console_in_chromium(demo: Demo, browser: object) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    # Not logged in: the console sends the browser to its login page.
    page.goto(demo.job_url)
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.fill("input[name=token]", "not-the-token")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("not one of")
    page.fill("input[name=token]", demo.token)
    page.click("button[type=submit]")
    expect(page).to_have_url(demo.job_url)  # back where it was going
    cookies = {c["name"]: c for c in context.cookies()}
    assert cookies["rcv_session"]["httpOnly"] and cookies["rcv_session"]["secure"]
    assert cookies["rcv_session"]["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == "", "scripts cannot read the session"

    # The demo's job: timeline, strip chart, live.
    expect(page.locator("h1")).to_contain_text("Job")
    expect(page.locator("#timeline-body tr")).to_have_count(13)
    assert page.locator("svg.strip rect.segment").count() >= 4
    expect(page.locator("#live")).to_have_text("live")
    _shot(page, "console-job.png")

    # The overview: rooms and jobs; one of the forged jobs has an open finding.
    page.goto(demo.base_url + "/ui/")
    expect(page.locator("section.room").first).to_be_visible()
    _shot(page, "console-overview.png")
    flagged = page.locator("tr.job", has=page.locator(".badge.open")).first
    flagged.locator("a").click()
    finding = page.locator("li.finding.open").first
    expect(finding).to_contain_text("unknown_job")

    # A forged acknowledgement, without the CSRF token, is refused by the server.
    finding_id = (finding.get_attribute("id") or "").removeprefix("finding-")
    status = page.evaluate(
        """async (id) => (await fetch(`/v1/findings/${id}/ack`, {method: "POST",
            headers: {"content-type": "application/json"},
            body: JSON.stringify({action: "ack", reason: "forged"})})).status""",
        finding_id,
    )
    assert status == 403

    # Acknowledge it through the page.
    finding.locator("input[name=reason]").fill("the demo forges this job on purpose")
    finding.locator("input[name=by]").fill("ci")
    finding.locator("button[type=submit]").click()
    done = page.locator(f"#finding-{finding_id}")
    expect(done).to_have_class(re.compile(r"\backnowledged\b"))
    expect(done).to_contain_text("ack by ci (token")
    expect(done.locator("form.ack")).to_have_count(0)

    # A new event for this job arrives without a reload.
    job_id = page.locator("h1 code").inner_text()
    room_id = page.locator("main > p code").first.inner_text()
    expect(page.locator("#live")).to_have_text("live")
    before = page.locator("#timeline-body tr").count()
    message = {"room_id": room_id, "job_id": job_id, "state": "RECONNECTING"}
    stored = _send(demo, encode("RTMP_STREAM_STATE_CHANGE", message))
    row = page.locator(f"#event-{stored['event_id']}")
    expect(row).to_contain_text("RECONNECTING", timeout=15_000)
    expect(page.locator("#timeline-body tr")).to_have_count(before + 1)
    expect(page.locator("#live-count")).to_have_text("1 new")
    _shot(page, "console-live.png")

    # Forwarding: the demo's webhook destination, its attempts, disabled and enabled again.
    page.click("header nav a:text('Destinations')")
    expect(page).to_have_url(demo.base_url + "/ui/destinations")
    row = page.locator("tr.destination[data-name=demo-app]")
    expect(row.locator(".badge")).to_have_text("active")
    row.locator("a").click()
    expect(page.locator("h1")).to_contain_text("Destination demo-app")
    expect(page.locator("tr.attempt.delivered").first).to_be_visible()
    assert "whsec_" not in page.content()
    _shot(page, "console-destination.png")
    page.click("button:text('Disable')")
    expect(page.locator("#state")).to_have_text("disabled")
    expect(page.locator("p.error")).to_contain_text("disabled in the console (token")
    page.click("button:text('Enable')")
    expect(page.locator("#state")).to_have_text("active")

    # A fresh browser without the cookie is sent to log in; the API says 401.
    other = browser.new_context()  # type: ignore[attr-defined]
    stranger = other.new_page()
    stranger.goto(demo.base_url + "/ui/")
    expect(stranger).to_have_url(re.compile(r"/ui/login"))
    answer = stranger.request.get(demo.base_url + "/v1/findings")
    assert answer.status == 401
    other.close()
    context.close()
    # The browser reports the two refusals this test asked for, and nothing else went wrong.
    expected = [f"the server responded with a status of {code}" for code in (401, 403)]
    assert len(problems) == len(expected), problems
    assert all(e in p for e, p in zip(expected, problems, strict=True)), problems

"""The Dockerfile, built and run: the image a deployment gets is the one these tests start.

Podman (Debian's) builds the Dockerfile as it is, on the base image that
``.ci/container-base.sh`` makes on this machine under the FROM name (no registry is reachable:
a minimal Debian root with Python 3.11 and this machine's CA bundle). pip inside the build is
given the host's pip settings (``pip config list``, files and environment) and the local paths
they name, mounted for the build only, so it reaches the package registries as the host does.
Then the image runs as a deployment runs it, on a published loopback port with a named volume
and a read-only root: ``migrate`` as its own step, then the default command. A callback signed
by ``send`` is stored; the container is stopped with SIGTERM under load, in less than 10 s,
and a new one on the same volume serves every delivery that was acknowledged. The image is
lean (no compiler, no pip, no caches) and its HEALTHCHECK tells a serving container from one
that does not answer.

Needs podman, runc and debootstrap, and root (``.ci/run`` installs them). Without podman the
tests are skipped, except under CI or with ``RECEIVER_REQUIRE_CONTAINER=1``, where they fail.
The base's and the image's size, the build time and the stop time are printed at the end of
the run.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from conftest import (
    KEY,
    OLD_KEY,
    REGISTERED,
    REPORT,
    endpoint_table,
    run_cli,
    signed_path,
    write_config,
)
from containers import (
    BASE,
    Deployment,
    build,
    host_pip_settings,
    image_size,
    limits,
    make_base,
    podman,
)

from receiver.testing import encode

pytestmark = [pytest.mark.slow, pytest.mark.exclusive, pytest.mark.container]  # builds: 2 cores

REQUIRED = os.environ.get("CI") == "true" or os.environ.get("RECEIVER_REQUIRE_CONTAINER") == "1"
TOKEN = "container-test-token"
SECRETS = {"SHOP_A_KEYS": f"{KEY},{OLD_KEY}", "RECEIVER_API_TOKENS": TOKEN}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_IMAGE_MB = 350  # base 129 MB + venv 126 MB here; a compiler toolchain or a pip cache is more
SENDERS = 4
ACKNOWLEDGED_BEFORE_STOP = 60
FIGURES: dict[str, str] = {}


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"the container tests are required here (CI), but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Dockerfile built by podman on the base made here (its tag), removed afterwards."""
    module_started = time.monotonic()
    if shutil.which("podman") is None:
        unavailable("podman is not installed (apt-get install podman buildah runc debootstrap)")
    base = make_base()
    if base.returncode != 0:
        unavailable(f".ci/container-base.sh could not make the base image:\n{base.stderr[-3000:]}")
    FIGURES["base"] = f"{image_size(BASE) / 1e6:.0f} MB"
    tag = f"localhost/metastudio-receiver:test-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    build(tag, host_pip_settings(tmp_path_factory.mktemp("pip")))
    FIGURES["build"] = f"{time.monotonic() - started:.1f} s"
    try:
        yield tag
    finally:
        podman("rmi", "--force", tag, check=False)
        FIGURES["module"] = f"{time.monotonic() - module_started:.0f} s in all"
        REPORT.append("container: " + ", ".join(f"{k} {v}" for k, v in FIGURES.items()))


@pytest.fixture
def deployment(image: str, tmp_path: Path) -> Iterator[Deployment]:
    table = endpoint_table(keys_env="SHOP_A_KEYS")
    del table["keys"]
    config = write_config(
        tmp_path / "receiver.toml",
        "sqlite:////data/receiver.db",
        table,
        api_tokens_env="RECEIVER_API_TOKENS",
    )
    config.chmod(0o644)  # read by the image's user
    deployment = Deployment(image, config, SECRETS)
    deployment.create_volume()
    try:
        yield deployment
    finally:
        deployment.remove()


def message(n: int) -> dict[str, str]:
    return {
        "room_id": "room-container",
        "job_id": "job-container",
        "scene_script_name": f"scene-{n}",
        "shoot_script_sequence_no": str(n),
    }


def stored_scenes(base_url: str) -> dict[int, str]:
    """delivery id -> scene_script_name of every stored event, through the query API."""
    scenes: dict[int, str] = {}
    cursor: str | None = None
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=10) as client:
        while True:
            params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/events", params=params)
            assert page.status_code == 200, page.text
            data = page.json()
            for event in data["events"]:
                scenes[event["delivery_id"]] = event["message"]["scene_script_name"]
            cursor = data["next_cursor"]
            if not cursor:
                return scenes


class Load:
    """SENDERS threads posting new signed callbacks, each with a scene of its own, until
    :meth:`finish`; what the server acknowledged as stored is kept by delivery id."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.acknowledged: dict[int, str] = {}
        self.lock = threading.Lock()
        self.numbers = itertools.count(1)
        self.going = threading.Event()
        self.going.set()
        self.threads = [threading.Thread(target=self.send, daemon=True) for _ in range(SENDERS)]
        for thread in self.threads:
            thread.start()

    def send(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            while self.going.is_set():
                with self.lock:
                    n = next(self.numbers)
                body = encode("SHOOT_SCRIPT_SWITCH", message(n))
                try:
                    answer = client.post(
                        signed_path(), content=body, headers={"content-type": "application/json"}
                    )
                except httpx.TransportError:
                    time.sleep(0.05)  # stopping or stopped: nothing was acknowledged
                    continue
                if answer.status_code == 200 and answer.json()["result"] == "stored":
                    with self.lock:
                        self.acknowledged[answer.json()["delivery_id"]] = f"scene-{n}"

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)

    def finish(self) -> dict[int, str]:
        self.going.clear()
        for thread in self.threads:
            thread.join(timeout=30)
        with self.lock:
            return dict(self.acknowledged)


def test_image_is_lean_non_root_and_has_a_health_check(image: str) -> None:
    (inspected,) = json.loads(podman("image", "inspect", image).stdout)
    size_mb = inspected["Size"] / 1e6
    FIGURES["image"] = f"{size_mb:.0f} MB"
    assert size_mb <= MAX_IMAGE_MB, f"image is {size_mb:.0f} MB"
    config = inspected["Config"]
    assert config["User"] == "receiver"
    health = inspected["Healthcheck"]  # kept by --format=docker
    assert health and "/healthz" in " ".join(health["Test"]), inspected
    # What the final stage holds, seen as root: no compiler, no pip or wheel in the venv (the
    # base's own Python is the base's), no caches or downloaded packages, no package lists.
    script = (
        "for c in gcc cc c++ clang make; do command -v $c; done; "
        "ls /venv/bin | grep -E '^(pip|wheel|easy_install)'; "
        "find / -xdev \\( -name .cache -o -name '*.deb' \\) -print; "
        "find /venv /root /tmp /data -name '*.whl'; "
        "find /var/lib/apt/lists -type f ! -name lock; true"
    )
    found = podman(
        "run", "--rm", *limits(), "--user=0", "--entrypoint=sh", image, "-c", script
    ).stdout.split()  # fmt: skip
    assert found == [], f"the final stage holds: {found}"


def test_health_check_fails_when_the_server_does_not_answer(image: str) -> None:
    name = f"receiver-test-{uuid.uuid4().hex[:12]}"
    podman("run", "--detach", "--name", name, *limits(), "--entrypoint", "sleep",
           image, "60")  # fmt: skip
    try:
        check = podman("healthcheck", "run", name, check=False)
        assert check.returncode == 1 and "unhealthy" in check.stdout, check
    finally:
        podman("rm", "--force", "--volumes", "--time", "0", name, check=False)


def test_stores_stops_on_sigterm_and_a_new_container_serves_the_volume(
    deployment: Deployment, tmp_path: Path
) -> None:
    migrated = deployment.migrate()
    assert "schema is at the latest migration" in migrated.stdout + migrated.stderr
    name, base_url = deployment.serve()
    assert httpx.get(base_url + "/readyz", timeout=5).json() == {"status": "ready"}

    # The serving process is not root, and the root file system is read-only (only /data, the
    # volume, is written: the store).
    status = podman("exec", name, "cat", "/proc/1/status").stdout
    assert re.search(r"^Uid:\s+10001\s", status, re.MULTILINE), status
    write = podman("exec", name, "touch", "/tmp/probe", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write
    health = podman("healthcheck", "run", name, check=False)
    assert health.returncode == 0, health

    sent = run_cli(
        "send", "--url", REGISTERED, "--to", base_url, "--key-env", "SHOP_A_KEYS",
        "--event-type", "SHOOT_SCRIPT_SWITCH", "--message", json.dumps(message(0)),
        cwd=tmp_path, env={"SHOP_A_KEYS": KEY},
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    first = json.loads(sent.stdout)
    assert first["result"] == "stored"

    # SIGTERM while senders keep posting: the container exits by itself (not killed after the
    # 10 s grace), and what it acknowledged is committed.
    load = Load(base_url)
    deadline = time.monotonic() + 60
    while load.count() < ACKNOWLEDGED_BEFORE_STOP and time.monotonic() < deadline:
        time.sleep(0.05)
    assert load.count() >= ACKNOWLEDGED_BEFORE_STOP
    started = time.monotonic()
    podman("stop", "--time", "10", name, timeout=60)
    stop_seconds = time.monotonic() - started
    acknowledged = load.finish()
    FIGURES["stop"] = f"{stop_seconds:.1f} s (SIGTERM under load, {len(acknowledged)} acknowledged)"
    exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    logs = deployment.logs(name)
    assert exit_code == "0", f"exit {exit_code} (137: killed after the grace period)\n{logs}"
    assert stop_seconds < 10
    assert "Finished server process" in logs
    for secret in (KEY, OLD_KEY, TOKEN):
        assert secret not in logs

    # A new container on the same volume: everything acknowledged is served, the first too.
    _, base_url = deployment.serve()
    assert httpx.get(base_url + "/readyz", timeout=5).status_code == 200
    stored = stored_scenes(base_url)
    assert stored[first["delivery_id"]] == "scene-0"
    lost = {i: scene for i, scene in acknowledged.items() if stored.get(i) != scene}
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged deliveries lost"
    assert len(stored) >= len(acknowledged) + 1

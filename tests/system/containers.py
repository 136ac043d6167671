"""Podman, as tests/system/test_container.py uses it: the base image, the build, and
containers of the image on a named volume.

Flags this machine needs, each for a reason found here: runc (the default crun fails on this
kernel's cgroup layout), ``--ulimit`` (podman's default limits exceed what this sandbox lets a
process set), ``--isolation=chroot`` for builds, ``--format=docker`` (an OCI image has no
HEALTHCHECK) and ``--pull=never`` (no registry can be reached).
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx2 as httpx
from conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
BASE = "docker.io/library/python:3.11-slim"  # the Dockerfile's FROM, as podman names it
BASE_SCRIPT = ROOT / ".ci" / "container-base.sh"


def podman(
    *args: str, check: bool = True, timeout: float = 120, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``podman ARGS`` with runc. Secrets go in ``env`` (for ``--env=NAME``), never in ARGS."""
    result = subprocess.run(
        ["podman", "--runtime", "runc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:2])} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def limits() -> list[str]:
    """runc sets the limits asked for, and podman asks by default for more than this sandbox
    allows ('error setting rlimit'); the host's own open-file limit and 4096 processes are."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ["--ulimit", f"nofile={soft}:{hard}", "--ulimit", "nproc=4096:4096"]


def make_base() -> subprocess.CompletedProcess[str]:
    """.ci/container-base.sh: the FROM image made here (about 55 s), or kept (0.1 s)."""
    return subprocess.run(["bash", str(BASE_SCRIPT)], capture_output=True, text=True, timeout=900)


def host_pip_settings(directory: Path) -> list[str]:
    """``podman build`` volume options that give pip in the build the host's pip settings:
    one pip.conf with what ``pip config list`` shows (the environment's PIP_* over the files),
    and every local file or folder those settings name, read-only at the same path. Mounted
    for the build's steps only: nothing of them stays in the image."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    sections: dict[str, dict[str, str]] = {}
    # Environment entries (":env:.name") last, as pip lets them override the files.
    for line in sorted(listing, key=lambda entry: entry.startswith(":env:")):
        match = re.fullmatch(r"(?P<section>[^.]*)\.(?P<key>[^=]+)='(?P<value>.*)'", line)
        if match:
            section = "global" if match["section"] == ":env:" else match["section"]
            sections.setdefault(section, {})[match["key"]] = match["value"]
    config = directory / "pip.conf"
    config.write_text(
        "".join(
            f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
            for name, values in sections.items()
        )
    )
    mounts = ["--volume", f"{config}:/etc/pip.conf:ro"]
    # A local index (file:///x/simple) links to its files beside it (../../files/...): the
    # folder above it is mounted.
    named = {
        str(Path(urlsplit(word).path).parent) if word.startswith("file://") else word
        for values in sections.values()
        for value in values.values()
        for word in value.split()
    }
    for path in sorted(p for p in named if p.startswith("/") and Path(p).exists()):
        mounts += ["--volume", f"{path}:{path}:ro"]
    return mounts


def build(tag: str, pip_settings: list[str]) -> None:
    """The project's Dockerfile, as it is, built by podman as ``tag``."""
    podman(
        "build",
        "--pull=never",  # FROM is the base made here
        "--isolation=chroot",
        "--format=docker",
        "--layers=false",  # every step built anew, and no intermediate images left behind
        *pip_settings,
        "--tag",
        tag,
        str(ROOT),
        timeout=900,
    )


def image_size(name: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout)


@dataclass
class Deployment:
    """Containers of one image on one named volume, as a deployment runs them: a read-only root,
    the config file mounted read-only, the secrets from the environment (``secrets``: name ->
    value, passed by name), a published loopback port."""

    image: str
    config: Path
    secrets: dict[str, str]
    volume: str = field(default_factory=lambda: f"receiver-test-{uuid.uuid4().hex[:12]}")
    containers: list[str] = field(default_factory=list)

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return podman(*args, check=check, env=self.secrets)

    def options(self) -> list[str]:
        return [
            *limits(),
            "--read-only",
            "--read-only-tmpfs=false",  # as Docker's --read-only: no writable /tmp either
            f"--volume={self.volume}:/data",
            f"--volume={self.config}:/config/receiver.toml:ro",
            *(f"--env={name}" for name in self.secrets),
        ]

    def create_volume(self) -> None:
        self.podman("volume", "create", self.volume)

    def migrate(self) -> subprocess.CompletedProcess[str]:
        return self.podman(
            "run", "--rm", *self.options(), self.image,
            "metastudio-receiver", "migrate", "--config", "/config/receiver.toml",
        )  # fmt: skip

    def serve(self) -> tuple[str, str]:
        """A container with the image's own command, on a new loopback port: (name, base URL),
        once it answers /healthz."""
        name = f"{self.volume}-{len(self.containers)}"
        port = free_port()
        self.containers.append(name)
        self.podman("run", "--detach", f"--name={name}", f"--publish=127.0.0.1:{port}:8080",
                    *self.options(), self.image)  # fmt: skip
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(base_url + "/healthz", timeout=1).status_code == 200:
                    return name, base_url
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{name} did not answer /healthz:\n{self.logs(name)}")

    def logs(self, name: str) -> str:
        result = self.podman("logs", name, check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        for name in self.containers:
            self.podman("rm", "--force", "--volumes", "--time=0", name, check=False)
        self.podman("volume", "rm", "--force", self.volume, check=False)

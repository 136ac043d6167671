"""The Dockerfile and examples/deploy/ agree with the code.

The image is built and run by test_container.py; the compose file is not started here (its
postgres and nginx images cannot be pulled without a registry, see README's Deployment section),
so what can drift without it is checked instead: every command they run is one the CLI accepts,
the config they mount loads with the secrets file's variables, the ports and the health check
line up, and the replicas start only after the migration step.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from receiver.cli import build_parser
from receiver.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "examples" / "deploy"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what a container listens on


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined, comments out."""
    joined: list[str] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for line in joined:
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages[-1]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def cli_args(command: list[str]) -> Any:
    assert command[0] == "metastudio-receiver", command
    return build_parser().parse_args(command[1:])


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def example_environ() -> dict[str, str]:
    environ = {}
    for line in (DEPLOY / "secrets.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            environ[name] = value
    return environ


def test_dockerfile_final_stage_is_slim_non_root_with_a_health_check() -> None:
    final = dockerfile_instructions()
    kinds = [kind for kind, _ in final]
    base = final[0][1]
    assert re.fullmatch(r"python:3\.\d+-slim", base), base
    user = dict(final)["USER"]
    assert user not in ("root", "0")
    # The user is switched to before the command runs, and after everything that needs root.
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")
    port = int(dict(final)["EXPOSE"])
    health = dict(final)["HEALTHCHECK"]
    assert f"http://127.0.0.1:{port}/healthz" in health
    args = cli_args(exec_form(dict(final)["CMD"]))
    assert args.command == "serve" and args.port == port and args.host == ALL_INTERFACES
    assert args.no_migrate, "migrations are their own step, not part of serve"


def test_compose_runs_migrations_once_then_the_replicas() -> None:
    services = compose()["services"]
    migrate = services["migrate"]
    assert cli_args(migrate["command"]).command == "migrate"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    receiver = services["receiver"]
    args = cli_args(receiver["command"])
    assert args.command == "serve" and args.no_migrate and args.host == ALL_INTERFACES
    assert receiver["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert receiver["deploy"]["replicas"] >= 2
    assert "healthcheck" in services["postgres"]
    # nginx forwards to the port the replicas listen on, and lets the receiver's own body limit
    # decide (its limit is not below max_body_bytes' default).
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert f"http://receiver:{args.port}" in nginx
    limit = re.search(r"client_max_body_size (\d+)k;", nginx)
    assert limit is not None and int(limit.group(1)) * 1024 >= 65536


@pytest.mark.parametrize("service", ["migrate", "receiver"])
def test_compose_config_loads_with_the_example_secrets(service: str) -> None:
    definition = compose()["services"][service]
    mounted = {
        target.split(":")[0]: source
        for source, _, target in (v.partition(":") for v in definition["volumes"])
    }
    config_path = definition["environment"]["RECEIVER_CONFIG"]
    source = DEPLOY / mounted[config_path]
    environ = {**example_environ(), "RECEIVER_CONFIG": str(source)}
    settings = load_settings(path=None, environ=environ)
    assert settings.database_url.startswith("postgresql+psycopg://receiver:")
    assert settings.database_url.endswith("@postgres:5432/receiver")
    assert [e.name for e in settings.endpoints] == ["shop-a"]
    assert settings.endpoints[0].keys == ("CHANGE-ME-current-key", "CHANGE-ME-previous-key")
    assert settings.metastudio is not None
    # No secret lives in the mounted file itself.
    text = source.read_text()
    for value in example_environ().values():
        for part in value.split(","):
            assert part not in text

"""Every command that reads the store or a server, when it cannot: one line that says what is
wrong and what to do, exit 2, no traceback, and nothing created (issue 23).

The commands run in this process (``receiver.cli.main``: one interpreter for all the cases, the
suite stays quick); one case runs as a real subprocess, the issue's own: ``events`` in an empty
folder with no config at all.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import KEY, REGISTERED, endpoint_table, free_port, run_cli, write_config

from receiver.cli import main
from receiver.cli.demo import serve_app
from receiver.config import settings_from_mapping
from receiver.store.migrate import upgrade
from receiver.web.app import create_app

UNREACHABLE_PG = "postgresql+psycopg://postgres@127.0.0.1:1/receiver"
TOKEN = "the-right-token"
SAMPLE = '{"room_id": "r1", "job_id": "j1", "state": "CONNECTED"}'

# The store a command is pointed at -> what to set up, and the words its line must have.
STORES = {
    "missing": ("no database at", "migrate"),
    "unmigrated": ("is not migrated", "migrate"),
    "unreachable": ("127.0.0.1:1", "database_url"),
}

# Every command that reads the store: its arguments after --config.
STORE_READERS = {
    "events": ["events"],
    "events --json": ["events", "--json", "--event-type", "RTMP_STREAM_STATE_CHANGE"],
    "export": ["export"],
    "export -o": ["export", "-o", "out.jsonl"],
    "replay": ["replay", "--to", REGISTERED, "--key", KEY, "--dry-run"],
    "crosscheck": ["crosscheck"],
    "destinations": ["destinations"],
    "serve --no-migrate": ["serve", "--no-migrate", "--port", "1"],
}
# Commands that create and migrate the store themselves: only a server they cannot reach.
MIGRATORS = {"migrate": ["migrate"], "serve": ["serve", "--port", "1"]}

CASES = [
    pytest.param(args, store, id=f"{name}-{store}")
    for name, args in STORE_READERS.items()
    for store in STORES
] + [
    pytest.param(args, "unreachable", id=f"{name}-unreachable") for name, args in MIGRATORS.items()
]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working folder; the root logger as it was afterwards (serve sets it up)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield work
    root.handlers[:] = handlers
    root.setLevel(level)


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run(
    capsys: pytest.CaptureFixture[str], args: list[str], environ: dict[str, str] | None = None
) -> tuple[int, str]:
    """``main(args)`` in this process -> (exit status, its one stderr line)."""
    code = main(args, environ or {})
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert out == "", out
    return code, lines[0]


def store_config(folder: Path, store: str) -> Path:
    if store == "unreachable":
        url = UNREACHABLE_PG
    else:
        url = f"sqlite:///{folder / 'data' / 'receiver.db'}"
        if store == "unmigrated":
            (folder / "data").mkdir()
            sqlite3.connect(folder / "data" / "receiver.db").close()  # an empty database
    metastudio = ["[metastudio]", 'endpoint = "http://127.0.0.1:9"', 'project_id = "p"']
    path = write_config(folder / "receiver.toml", url, endpoint_table())
    path.write_text(path.read_text() + "\n".join(metastudio) + "\n")
    return path


@pytest.mark.parametrize(("args", "store"), CASES)
def test_a_store_it_cannot_use_is_one_line_and_exit_2(
    folder: Path, capsys: pytest.CaptureFixture[str], args: list[str], store: str
) -> None:
    config = store_config(folder, store)
    before = files_in(folder)
    environ = {"HUAWEICLOUD_SDK_AK": "ak", "HUAWEICLOUD_SDK_SK": "sk"}
    code, line = run(capsys, [*args, "--config", str(config)], environ)
    assert code == 2, line
    assert line.startswith("metastudio-receiver: "), line
    for words in STORES[store]:
        assert words in line, line
    assert files_in(folder) == before, "nothing was created"


@pytest.fixture(scope="module")
def receiver_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A receiver on loopback in this process (migrated SQLite, one endpoint, one token)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('receiver') / 'receiver.db'}"
    upgrade(url)
    data: dict[str, Any] = {
        "database_url": url,
        "api_tokens": [TOKEN],
        "store_writer": "thread",
        "endpoints": [endpoint_table()],
    }
    with serve_app(create_app(settings_from_mapping(data, environ={}))) as base:
        yield base


def nobody() -> str:
    return f"http://127.0.0.1:{free_port()}"


SIMULATE = ["simulate", "--registered-url", REGISTERED, "--key", KEY]

# Commands that call a server: (their arguments, the words their line must have).
SERVER_CASES: dict[str, Callable[[str], tuple[list[str], list[str]]]] = {
    "events, wrong token": lambda base: (
        ["events", "--url", base, "--token-env", "T"],
        ["refused the API token", "401"],
    ),
    "events, nothing listening": lambda base: (
        ["events", "--url", nobody(), "--token-env", "T"],
        ["no answer from", "--url"],
    ),
    "events, not a receiver's URL": lambda base: (
        ["events", "--url", base + "/ui", "--token-env", "T"],
        ["has no /v1/events", "check --url"],
    ),
    "events, no token": lambda base: (["events", "--url", base], ["needs a token"]),
    "send, nothing listening": lambda base: (
        ["send", "--url", REGISTERED, "--key", KEY, "--to", nobody(), "--event-type", "X"],
        ["no answer from", "--to"],
    ),
    "simulate, nothing listening": lambda base: (
        [*SIMULATE, "--to", nobody() + "/callbacks/shop-a"],
        ["no answer from", "--to"],
    ),
    "simulate, no fake MetaStudio": lambda base: (
        [*SIMULATE, "--to", base + "/callbacks/shop-a", "--fake", nobody()],
        ["did not answer", "--fake"],
    ),
}


@pytest.mark.parametrize("case", SERVER_CASES)
def test_a_server_it_cannot_use_is_one_line_and_exit_2(
    folder: Path, capsys: pytest.CaptureFixture[str], receiver_url: str, case: str
) -> None:
    args, words = SERVER_CASES[case](receiver_url)
    code, line = run(capsys, args, {"T": "a-wrong-token"})
    assert code == 2, line
    for word in words:
        assert word in line, line
    assert TOKEN not in line and "a-wrong-token" not in line and KEY not in line
    assert files_in(folder) == set()


def test_the_right_token_lists_what_the_receiver_stored(
    folder: Path, capsys: pytest.CaptureFixture[str], receiver_url: str
) -> None:
    """The same command with the right token works: the cases above fail for their reason."""
    send = ["send", "--url", REGISTERED, "--key", KEY, "--to", receiver_url]
    assert main([*send, "--event-type", "RTMP_STREAM_STATE_CHANGE", "--message", SAMPLE], {}) == 0
    capsys.readouterr()
    assert main(["events", "--url", receiver_url, "--token-env", "T"], {"T": TOKEN}) == 0
    out, _ = capsys.readouterr()
    assert "RTMP_STREAM_STATE_CHANGE" in out and "state=CONNECTED" in out


def test_events_with_no_config_in_an_empty_folder(tmp_path: Path) -> None:
    """The issue's report, as a newcomer ran it: no receiver.db appears, no traceback."""
    done = run_cli("events", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stdout == ""
    line = done.stderr.strip()
    assert "\n" not in line and "no database at" in line and "--config" in line, line
    assert list(tmp_path.iterdir()) == []

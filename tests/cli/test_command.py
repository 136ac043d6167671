"""``invoked_as``: the follow-up commands a command prints start the program as it was started."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from receiver.cli.command import command_line, invoked_as


def _script(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "metastudio-receiver"
    script.write_text("#!/bin/sh\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_a_script_typed_as_a_path_is_printed_as_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _script(tmp_path / ".venv" / "bin")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert invoked_as(".venv/bin/metastudio-receiver") == ".venv/bin/metastudio-receiver"


def test_a_script_found_on_path_is_printed_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _script(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(script.parent))
    assert invoked_as(str(script)) == "metastudio-receiver"


def test_python_m_receiver_is_printed_with_its_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    main = str(Path(__file__).parents[2] / "receiver" / "__main__.py")
    assert invoked_as(main, sys.executable) == f"{sys.executable} -m receiver"
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    name = os.path.basename(sys.executable)
    assert invoked_as(main, sys.executable) == f"{name} -m receiver"


def test_command_line_quotes_what_the_shell_would_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/opt/my tools/metastudio-receiver"])
    monkeypatch.setenv("PATH", "/nonexistent")
    line = command_line("events", config="/etc/my receiver/receiver.toml")
    assert (
        line
        == "'/opt/my tools/metastudio-receiver' events --config '/etc/my receiver/receiver.toml'"
    )

"""``secrets_file``: the file that holds the secrets a config names by variable, beside it.

The config never holds a secret: ``keys_env``, ``api_tokens_env``, ``ak_env``... name environment
variables. ``secrets_file = "receiver.secrets"`` (top level) names a file that supplies those
variables, so a receiver set up by ``metastudio-receiver init`` serves with nothing exported by
hand, and rotating a key is editing one file.

The format is that of systemd's ``EnvironmentFile=`` and docker's ``--env-file``: one
``NAME=VALUE`` a line; blank lines and lines starting with ``#`` are skipped; an ``export `` in
front is allowed (so the file can be sourced by a shell too); the value is everything after the
first ``=``, surrounding spaces removed, and one pair of matching quotes around it removed;
nothing is expanded. A relative path is relative to the config file's folder. A variable set in
the real environment wins over the file, as ``RECEIVER_DATABASE_URL`` wins over ``database_url``.

Errors name the key (``secrets_file: ...``) and a line number, never a line's text: it may hold
a secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from receiver.errors import ConfigError

KEY = "secrets_file"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# A secrets file is a few lines; anything this large is the wrong file.
_MAX_BYTES = 1024 * 1024


def secrets_path(raw: Mapping[str, Any], *, base_dir: Path | None) -> Path | None:
    """The file ``secrets_file`` names, resolved against ``base_dir``; None when not given."""
    if KEY not in raw:
        return None
    value = raw[KEY]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{KEY}: must be the path of a file of NAME=VALUE lines")
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def read_secrets(path: Path) -> dict[str, str]:
    """The variables of the secrets file at ``path``, checked line by line."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{KEY}: file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{KEY}: cannot read {str(path)!r}: {exc.strerror}") from None
    if len(data) > _MAX_BYTES:
        raise ConfigError(f"{KEY}: {str(path)!r} is larger than 1 MiB: not a secrets file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{KEY}: {str(path)!r} is not UTF-8 text") from None
    found: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.removeprefix("export ").partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise ConfigError(
                f"{KEY}: {str(path)!r} line {number} is not NAME=VALUE "
                "(NAME: letters, digits and _, not starting with a digit)"
            )
        if name in found:
            raise ConfigError(
                f"{KEY}: {str(path)!r} line {number}: {name} is set twice "
                f"(first on line {first_line[name]})"
            )
        found[name] = _unquoted(value.strip())
        first_line[name] = number
    return found


def with_secrets(
    raw: Mapping[str, Any], environ: Mapping[str, str], *, base_dir: Path | None
) -> tuple[Mapping[str, str], Path | None]:
    """``environ`` with the secrets file's variables filled in where it has none, and the file's
    path (None without ``secrets_file``)."""
    path = secrets_path(raw, base_dir=base_dir)
    if path is None:
        return environ, None
    return {**read_secrets(path), **environ}, path


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value

"""Every environment variable the config names and the environment lacks, found in one pass.

The readers of each table stop at the first problem, so a config naming five unset variables
would stop start-up five times in a row, one variable at a time. Before they run,
:func:`unset_variables` walks the whole config for keys ending in ``_env`` (``keys_env``,
``api_tokens_env``, ``ak_env``...: each names a variable that must be set) plus the
``[metastudio]`` defaults (``HUAWEICLOUD_SDK_AK`` / ``_SK`` unless ``token_env`` is given), and
:func:`check_environment` reports them all in one line, each with its key. A value of the wrong
type is left to the table's own reader, which says what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from receiver.errors import ConfigError

# [metastudio]'s credentials when the table names none (receiver.config.metastudio).
_METASTUDIO_DEFAULTS = {"ak_env": "HUAWEICLOUD_SDK_AK", "sk_env": "HUAWEICLOUD_SDK_SK"}


def unset_variables(data: Mapping[str, Any], environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """(key, variable) for every ``*_env`` key whose variable is not set, in file order."""
    found: list[tuple[str, str]] = []

    def walk(table: Mapping[str, Any], prefix: str) -> None:
        for key, value in table.items():
            where = f"{prefix}{key}"
            if key.endswith("_env") and isinstance(value, str) and value:
                if environ.get(value) is None:
                    found.append((where, value))
            elif isinstance(value, Mapping):
                walk(value, f"{where}.")
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, Mapping):
                        walk(item, f"{where}[{index}].")

    walk(data, "")
    metastudio = data.get("metastudio")
    if isinstance(metastudio, Mapping) and "token_env" not in metastudio:
        for key, variable in _METASTUDIO_DEFAULTS.items():
            if key not in metastudio and environ.get(variable) is None:
                found.append((f"metastudio.{key}", variable))
    return found


def check_environment(
    data: Mapping[str, Any], environ: Mapping[str, str], *, secrets_file: Path | None
) -> None:
    """Raise one ConfigError naming every unset variable, when more than one is unset (a single
    one is left to its table's reader, whose message says more about that key)."""
    unset = unset_variables(data, environ)
    if len(unset) < 2:
        return
    where = f"secrets_file {str(secrets_file)!r}" if secrets_file else "a secrets_file"
    raise ConfigError(
        "; ".join(f"{key}: environment variable {variable} is not set" for key, variable in unset)
        + f" (set them in the environment or in {where})"
    )

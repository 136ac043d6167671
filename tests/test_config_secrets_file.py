"""``secrets_file`` and the all-at-once report of unset variables (receiver.config.secrets_file,
receiver.config.environment)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import KEY, REGISTERED

from receiver.config import load_settings, settings_from_mapping
from receiver.config.environment import unset_variables
from receiver.config.secrets_file import read_secrets
from receiver.errors import ConfigError

CONFIG = f"""\
secrets_file = "receiver.secrets"
api_tokens_env = "RECEIVER_API_TOKENS"

[[endpoints]]
name = "shop-a"
registered_url = "{REGISTERED}"
auth_type = "MSS_A_HEAD"
keys_env = "SHOP_A_KEYS"
"""


def _write(folder: Path, secrets: str, config: str = CONFIG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "receiver.secrets").write_text(secrets)
    path = folder / "receiver.toml"
    path.write_text(config)
    return path


def test_the_secrets_file_beside_the_config_supplies_its_variables(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "conf",
        f'# comment\n\nRECEIVER_API_TOKENS=token-1,token-2\nexport SHOP_A_KEYS = "{KEY},old-key"\n',
    )
    # Read from another working directory: the relative path is the config's folder's.
    settings = load_settings(path=path, environ={})
    assert settings.api_tokens == ("token-1", "token-2")
    assert settings.endpoints[0].keys == (KEY, "old-key")


def test_the_environment_wins_over_the_secrets_file(tmp_path: Path) -> None:
    path = _write(tmp_path, f"RECEIVER_API_TOKENS=from-file\nSHOP_A_KEYS={KEY}\n")
    settings = load_settings(path=path, environ={"RECEIVER_API_TOKENS": "from-env"})
    assert settings.api_tokens == ("from-env",)
    assert settings.endpoints[0].keys == (KEY,)


def test_an_absolute_secrets_file_and_one_from_a_mapping(tmp_path: Path) -> None:
    secrets = tmp_path / "elsewhere.env"
    secrets.write_text(f"K={KEY}\n")
    data: dict[str, Any] = {
        "secrets_file": str(secrets),
        "endpoints": [{"name": "a", "registered_url": REGISTERED, "keys_env": "K"}],
    }
    assert settings_from_mapping(data, environ={}).endpoints[0].keys == (KEY,)


BAD_FILES = [
    pytest.param(None, "does not exist", id="missing"),
    pytest.param("SHOP_A_KEYS\n", "line 1 is not NAME=VALUE", id="no equals sign"),
    pytest.param("# ok\n1X=a\n", "line 2 is not NAME=VALUE", id="bad name"),
    pytest.param("A=1\nA=2\n", "line 2: A is set twice (first on line 1)", id="twice"),
    pytest.param(b"A=\xff\n", "is not UTF-8", id="not utf-8"),
]


@pytest.mark.parametrize(("content", "problem"), BAD_FILES)
def test_a_bad_secrets_file_is_one_error_naming_the_key(
    tmp_path: Path, content: str | bytes | None, problem: str
) -> None:
    path = _write(tmp_path, "")
    secrets = tmp_path / "receiver.secrets"
    if content is None:
        secrets.unlink()
    elif isinstance(content, bytes):
        secrets.write_bytes(content)
    else:
        secrets.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_settings(path=path, environ={})
    assert caught.value.message.startswith("secrets_file: "), caught.value.message
    assert problem in caught.value.message


def test_a_line_that_does_not_parse_is_not_echoed(tmp_path: Path) -> None:
    path = _write(tmp_path, "my-very-secret-key-without-a-name\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path=path, environ={})
    assert "my-very-secret" not in caught.value.message


@pytest.mark.parametrize("value", ["", 7, ["a"]])
def test_secrets_file_must_be_a_path(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^secrets_file: must be the path"):
        settings_from_mapping({"secrets_file": value}, environ={})


def test_every_unset_variable_is_reported_at_once() -> None:
    """examples/receiver.toml names five variables: one start-up says all five, with their keys."""
    path = Path(__file__).parent.parent / "examples" / "receiver.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path=path, environ={"SHOP_B_KEYS": "k"})
    message = caught.value.message
    assert "\n" not in message
    for key, variable in [
        ("api_tokens_env", "RECEIVER_API_TOKENS"),
        ("endpoints[0].keys_env", "SHOP_A_KEYS"),
        ("metastudio.ak_env", "HUAWEICLOUD_SDK_AK"),
        ("metastudio.sk_env", "HUAWEICLOUD_SDK_SK"),
    ]:
        assert f"{key}: environment variable {variable} is not set" in message, message
    assert "SHOP_B_KEYS" not in message


def test_unset_variables_say_which_secrets_file_was_read(tmp_path: Path) -> None:
    path = _write(tmp_path, "UNRELATED=1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path=path, environ={})
    assert "RECEIVER_API_TOKENS" in caught.value.message
    assert "SHOP_A_KEYS" in caught.value.message
    assert str(tmp_path / "receiver.secrets") in caught.value.message


def test_metastudio_token_env_replaces_the_default_ak_sk() -> None:
    table = {"endpoint": "https://m.example.com", "project_id": "p", "token_env": "T"}
    data = {"metastudio": table}
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(data, environ={})
    assert caught.value.message.startswith("metastudio.token_env: ")
    assert "HUAWEICLOUD_SDK" not in caught.value.message


def test_the_example_config_loads_with_the_example_environment_file() -> None:
    """examples/receiver.env.example sets every variable examples/receiver.toml names (as
    `set -a; . receiver.env`, or as its secrets_file), and nothing it does not read."""
    examples = Path(__file__).parent.parent / "examples"
    environ = read_secrets(examples / "receiver.env.example")
    data = tomllib.loads((examples / "receiver.toml").read_text())
    assert {variable for _, variable in unset_variables(data, {})} == set(environ)
    settings = load_settings(path=examples / "receiver.toml", environ=environ)
    assert [e.name for e in settings.endpoints] == ["shop-a", "shop-b"]
    assert settings.database_url == data["database_url"]  # RECEIVER_DATABASE_URL stays opt-in
    # The same file named as the config's secrets_file: nothing from the environment at all.
    with_file = {**data, "secrets_file": str(examples / "receiver.env.example")}
    assert settings_from_mapping(with_file, environ={}).api_tokens == settings.api_tokens

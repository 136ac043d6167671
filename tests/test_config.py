"""Settings from a mapping / a TOML file plus an injected environment (no database, no network).

Every invalid setting must become one ``ConfigError`` whose message starts with the path of the key
it is about (PRODUCT.md "Configuration": "one clear line naming the key and the problem").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import KEY, OLD_KEY, REGISTERED, endpoint_table, run_cli, write_config

from receiver.config import (
    DEFAULT_DATABASE_URL,
    MAX_KEY_LENGTH,
    Settings,
    load_settings,
    settings_from_mapping,
)
from receiver.errors import ConfigError, ReceiverError
from receiver.protocol.signing import AuthType, SignedUri, TimeUnit

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/receiver"
# AK/SK of [metastudio] come from the environment only (PRODUCT.md "Configuration").
AKSK = {"HUAWEICLOUD_SDK_AK": "ak-DDDD4444", "HUAWEICLOUD_SDK_SK": "sk-EEEE5555"}


def build(data: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    return settings_from_mapping(data, environ=environ or {})


def config_error(data: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        build(data, environ)
    message = caught.value.message
    assert "\n" not in message, "a config error is one line"
    assert str(caught.value) == message
    return message


def one_endpoint(**overrides: Any) -> dict[str, Any]:
    return {"endpoints": [endpoint_table(**overrides)]}


def _without_keys(table: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in table.items() if k != "keys"}


# --- defaults ----------------------------------------------------------------------------------


def test_empty_mapping_gives_the_documented_defaults() -> None:
    settings = build({})
    assert settings.database_url == DEFAULT_DATABASE_URL == "sqlite:///receiver.db"
    assert settings.max_body_bytes == 65536
    assert settings.api_tokens == ()
    assert settings.endpoints == ()
    assert settings.metastudio is None
    assert settings.endpoint("shop-a") is None


def test_endpoint_defaults() -> None:
    settings = build(
        {"endpoints": [{"name": "shop-a", "registered_url": REGISTERED, "keys": [KEY]}]}
    )
    (endpoint,) = settings.endpoints
    assert settings.endpoint("shop-a") is endpoint
    assert endpoint.registered_url == REGISTERED
    assert endpoint.auth_type is AuthType.MSS_A
    assert endpoint.keys == (KEY,)
    assert endpoint.tolerance_seconds == 300
    assert endpoint.signed_uri is SignedUri.HOST_PATH_QUERY
    assert endpoint.time_unit is TimeUnit.AUTO
    assert endpoint.allow_unauthenticated is False


def test_every_documented_value_is_accepted() -> None:
    settings = build(
        {
            "database_url": PG,
            "api_tokens": ["t1", "t2"],
            "max_body_bytes": 1024,
            "endpoints": [
                endpoint_table(
                    auth_type="MSS_A_HEAD",
                    tolerance_seconds=60,
                    signed_uri="full_url",
                    time_unit="milliseconds",
                ),
                endpoint_table(name="b", signed_uri="path_query", time_unit="seconds"),
                endpoint_table(
                    name="n", auth_type="NONE", keys=[], registered_url=REGISTERED + "?token=t"
                ),
                endpoint_table(name="open", auth_type="NONE", keys=[], allow_unauthenticated=True),
            ],
            "metastudio": {"endpoint": "https://metastudio.example.com/", "project_id": "p"},
        },
        environ=AKSK,
    )
    assert settings.database_url == PG
    assert settings.api_tokens == ("t1", "t2")
    assert settings.max_body_bytes == 1024
    a, b, n, open_ = settings.endpoints
    assert (a.auth_type, a.tolerance_seconds, a.signed_uri, a.time_unit) == (
        AuthType.MSS_A_HEAD,
        60,
        SignedUri.FULL_URL,
        TimeUnit.MILLISECONDS,
    )
    assert (b.signed_uri, b.time_unit) == (SignedUri.PATH_QUERY, TimeUnit.SECONDS)
    assert n.auth_type is AuthType.NONE and n.keys == ()
    assert open_.allow_unauthenticated is True
    assert settings.metastudio is not None
    assert settings.metastudio.endpoint == "https://metastudio.example.com"
    assert settings.metastudio.ak_env == "HUAWEICLOUD_SDK_AK"
    assert settings.metastudio.sk_env == "HUAWEICLOUD_SDK_SK"
    assert settings.metastudio.crosscheck_interval_seconds == 60


def test_auth_type_is_case_insensitive() -> None:
    # The English MetaStudio page writes "None"; the SDK enums are upper case (signing-notes.md).
    settings = build(one_endpoint(auth_type="mss_a_head"))
    assert settings.endpoints[0].auth_type is AuthType.MSS_A_HEAD
    settings = build(
        one_endpoint(auth_type="None", keys=[], registered_url=REGISTERED + "?token=x")
    )
    assert settings.endpoints[0].auth_type is AuthType.NONE


def test_key_of_exactly_32_characters_is_accepted() -> None:
    key = "k" * MAX_KEY_LENGTH
    assert MAX_KEY_LENGTH == 32
    assert build(one_endpoint(keys=[key])).endpoints[0].keys == (key,)


# --- environment ---------------------------------------------------------------------------------


def test_keys_env_and_api_tokens_env_are_read_from_the_injected_environ() -> None:
    settings = build(
        {
            "api_tokens_env": "TOKENS",
            "endpoints": [_without_keys(endpoint_table(keys_env="SHOP_KEYS"))],
        },
        environ={"TOKENS": " tok-1 ,tok-2,, ", "SHOP_KEYS": f"{KEY}, {OLD_KEY}"},
    )
    assert settings.api_tokens == ("tok-1", "tok-2")
    assert settings.endpoints[0].keys == (KEY, OLD_KEY)


def test_settings_never_read_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_DATABASE_URL", PG)
    monkeypatch.setenv("SHOP_KEYS", KEY)
    assert build({}).database_url == DEFAULT_DATABASE_URL
    message = config_error({"endpoints": [_without_keys(endpoint_table(keys_env="SHOP_KEYS"))]})
    assert message.startswith("endpoints[0].keys_env: ")


def test_database_url_from_environ_overrides_the_mapping() -> None:
    settings = build({"database_url": "sqlite:///file.db"}, environ={"RECEIVER_DATABASE_URL": PG})
    assert settings.database_url == PG


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:////var/lib/receiver.db", "sqlite:////var/lib/receiver.db"),
    ],
)
def test_database_url_forms(given: str, expected: str) -> None:
    assert build({"database_url": given}).database_url == expected
    assert build({}, environ={"RECEIVER_DATABASE_URL": given}).database_url == expected


def test_load_settings_without_a_file_gives_defaults() -> None:
    assert load_settings(path=None, environ={}) == build({})


def test_load_settings_reads_receiver_config_from_environ(tmp_path: Path) -> None:
    path = write_config(tmp_path / "r.toml", "sqlite:///x.db", endpoint_table(name="from-env"))
    settings = load_settings(path=None, environ={"RECEIVER_CONFIG": str(path)})
    assert settings.database_url == "sqlite:///x.db"
    assert [e.name for e in settings.endpoints] == ["from-env"]
    assert settings.endpoints[0].keys == (KEY, OLD_KEY)


def test_explicit_path_wins_over_receiver_config(tmp_path: Path) -> None:
    chosen = write_config(tmp_path / "a.toml", "sqlite:///a.db", endpoint_table(name="a"))
    other = write_config(tmp_path / "b.toml", "sqlite:///b.db", endpoint_table(name="b"))
    settings = load_settings(path=chosen, environ={"RECEIVER_CONFIG": str(other)})
    assert [e.name for e in settings.endpoints] == ["a"]


def test_receiver_database_url_overrides_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path / "r.toml", "sqlite:///x.db")
    settings = load_settings(path=path, environ={"RECEIVER_DATABASE_URL": PG})
    assert settings.database_url == PG


# --- every invalid setting names its key ---------------------------------------------------

INVALID: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
    # (id, mapping, environ, the message must start with this)
    ("unknown top key", {"databse_url": "sqlite:///x.db"}, {}, "databse_url: unknown key"),
    ("unknown endpoint key", one_endpoint(secret="x"), {}, "endpoints[0].secret: unknown key"),
    (
        "unknown endpoint key in 2nd",
        {"endpoints": [endpoint_table(), endpoint_table(name="b", tolerance=5)]},
        {},
        "endpoints[1].tolerance: unknown key",
    ),
    ("meituan", one_endpoint(auth_type="MEITUAN_DEFAULT"), {}, "endpoints[0].auth_type: "),
    ("bad auth_type", one_endpoint(auth_type="HMAC"), {}, "endpoints[0].auth_type: "),
    ("auth_type not a string", one_endpoint(auth_type=1), {}, "endpoints[0].auth_type: "),
    ("auth_type empty", one_endpoint(auth_type=""), {}, "endpoints[0].auth_type: "),
    ("MSS_A without keys", one_endpoint(keys=[]), {}, "endpoints[0].keys: "),
    (
        "MSS_A_HEAD no keys",
        one_endpoint(auth_type="MSS_A_HEAD", keys=[]),
        {},
        "endpoints[0].keys: ",
    ),
    (
        "MSS_A keys omitted",
        {"endpoints": [{"name": "a", "registered_url": REGISTERED, "auth_type": "MSS_A"}]},
        {},
        "endpoints[0].keys: ",
    ),
    ("key too long", one_endpoint(keys=[KEY, "k" * 33]), {}, "endpoints[0].keys[1]: "),
    ("keys not a list", one_endpoint(keys=KEY), {}, "endpoints[0].keys: "),
    ("empty key", one_endpoint(keys=[""]), {}, "endpoints[0].keys: "),
    ("key not a string", one_endpoint(keys=[123]), {}, "endpoints[0].keys: "),
    (
        "keys and keys_env",
        one_endpoint(keys_env="SHOP_KEYS"),
        {"SHOP_KEYS": KEY},
        "endpoints[0].keys_env: ",
    ),
    (
        "NONE without credential",
        one_endpoint(auth_type="NONE", keys=[]),
        {},
        "endpoints[0].registered_url: ",
    ),
    (
        "NONE with keys",
        one_endpoint(auth_type="NONE", registered_url=REGISTERED + "?token=t"),
        {},
        "endpoints[0].keys: ",
    ),
    (
        "allow_unauthenticated not bool",
        one_endpoint(auth_type="NONE", keys=[], allow_unauthenticated="yes"),
        {},
        "endpoints[0].allow_unauthenticated: ",
    ),
    (
        "duplicate names",
        {"endpoints": [endpoint_table(), endpoint_table(name="b"), endpoint_table(name="b")]},
        {},
        "endpoints[2].name: ",
    ),
    ("name with slash", one_endpoint(name="shop/a"), {}, "endpoints[0].name: "),
    ("name with space", one_endpoint(name="shop a"), {}, "endpoints[0].name: "),
    ("name too long", one_endpoint(name="a" * 65), {}, "endpoints[0].name: "),
    ("name starts with dot", one_endpoint(name=".hidden"), {}, "endpoints[0].name: "),
    ("name empty", one_endpoint(name=""), {}, "endpoints[0].name: "),
    (
        "name missing",
        {"endpoints": [{"registered_url": REGISTERED, "keys": [KEY]}]},
        {},
        "endpoints[0].name: ",
    ),
    (
        "url relative",
        one_endpoint(registered_url="/callbacks/a"),
        {},
        "endpoints[0].registered_url: ",
    ),
    (
        "url ftp",
        one_endpoint(registered_url="ftp://h/callbacks/a"),
        {},
        "endpoints[0].registered_url: ",
    ),
    (
        "url no host",
        one_endpoint(registered_url="https:///callbacks"),
        {},
        "endpoints[0].registered_url: ",
    ),
    ("url not a string", one_endpoint(registered_url=5), {}, "endpoints[0].registered_url: "),
    (
        "url missing",
        {"endpoints": [{"name": "a", "keys": [KEY]}]},
        {},
        "endpoints[0].registered_url: ",
    ),
    (
        "url unparseable",
        one_endpoint(registered_url="https://[hooks.example.com/callbacks/a"),
        {},
        "endpoints[0].registered_url: ",
    ),
    (
        "url port out of range",
        one_endpoint(registered_url="https://hooks.example.com:99999/callbacks/a"),
        {},
        "endpoints[0].registered_url: ",
    ),
    ("bad signed_uri", one_endpoint(signed_uri="host_path"), {}, "endpoints[0].signed_uri: "),
    ("signed_uri list", one_endpoint(signed_uri=["full_url"]), {}, "endpoints[0].signed_uri: "),
    ("bad time_unit", one_endpoint(time_unit="ms"), {}, "endpoints[0].time_unit: "),
    ("time_unit number", one_endpoint(time_unit=1000), {}, "endpoints[0].time_unit: "),
    ("tolerance zero", one_endpoint(tolerance_seconds=0), {}, "endpoints[0].tolerance_seconds: "),
    (
        "tolerance negative",
        one_endpoint(tolerance_seconds=-5),
        {},
        "endpoints[0].tolerance_seconds: ",
    ),
    (
        "tolerance too large",
        one_endpoint(tolerance_seconds=86401),
        {},
        "endpoints[0].tolerance_seconds: ",
    ),
    (
        "tolerance nan",
        one_endpoint(tolerance_seconds=float("nan")),
        {},
        "endpoints[0].tolerance_seconds: ",
    ),
    (
        "tolerance string",
        one_endpoint(tolerance_seconds="300"),
        {},
        "endpoints[0].tolerance_seconds: ",
    ),
    (
        "tolerance bool",
        one_endpoint(tolerance_seconds=True),
        {},
        "endpoints[0].tolerance_seconds: ",
    ),
    ("endpoints not a list", {"endpoints": {"name": "a"}}, {}, "endpoints: "),
    ("endpoint not a table", {"endpoints": ["shop-a"]}, {}, "endpoints[0]: "),
    ("database_url mysql", {"database_url": "mysql://u@h/db"}, {}, "database_url: "),
    ("database_url sqlite relative", {"database_url": "sqlite://x.db"}, {}, "database_url: "),
    ("database_url no scheme", {"database_url": "receiver.db"}, {}, "database_url: "),
    ("database_url not a str", {"database_url": 5}, {}, "database_url: "),
    (
        "database_url from env",
        {},
        {"RECEIVER_DATABASE_URL": "mysql://u@h/db"},
        "database_url: ",
    ),
    ("max_body_bytes small", {"max_body_bytes": 10}, {}, "max_body_bytes: "),
    ("max_body_bytes huge", {"max_body_bytes": 2**40}, {}, "max_body_bytes: "),
    ("max_body_bytes float", {"max_body_bytes": 1024.5}, {}, "max_body_bytes: "),
    ("api_tokens not list", {"api_tokens": "tok"}, {}, "api_tokens: "),
    ("api_tokens_env unset", {"api_tokens_env": "NO_SUCH_VAR"}, {}, "api_tokens_env: "),
    ("api_tokens_env empty", {"api_tokens_env": "TOKENS"}, {"TOKENS": " , "}, "api_tokens_env: "),
    ("api_tokens_env not str", {"api_tokens_env": 3}, {}, "api_tokens_env: "),
    ("log_format", {"log_format": "xml"}, {}, "log_format: "),
    ("log_level", {"log_level": "LOUD"}, {}, "log_level: "),
    ("store_writer", {"store_writer": "fork"}, {}, "store_writer: "),
    ("metastudio not table", {"metastudio": "x"}, AKSK, "metastudio: "),
    (
        "metastudio unknown key",
        {"metastudio": {"endpoint": "https://m", "project_id": "p", "ak": "AK"}},
        AKSK,
        "metastudio.ak: unknown key",
    ),
    (
        "metastudio no endpoint",
        {"metastudio": {"project_id": "p"}},
        AKSK,
        "metastudio.endpoint: ",
    ),
    (
        "metastudio bad endpoint",
        {"metastudio": {"endpoint": "metastudio", "project_id": "p"}},
        AKSK,
        "metastudio.endpoint: ",
    ),
    (
        "metastudio endpoint unparseable",
        {"metastudio": {"endpoint": "https://[metastudio", "project_id": "p"}},
        AKSK,
        "metastudio.endpoint: ",
    ),
    (
        "metastudio no project",
        {"metastudio": {"endpoint": "https://m"}},
        AKSK,
        "metastudio.project_id: ",
    ),
    (
        "metastudio interval",
        {
            "metastudio": {
                "endpoint": "https://m",
                "project_id": "p",
                "crosscheck_interval_seconds": -1,
            }
        },
        AKSK,
        "metastudio.crosscheck_interval_seconds: ",
    ),
    (
        "metastudio AK unset",
        {"metastudio": {"endpoint": "https://m", "project_id": "p"}},
        {"HUAWEICLOUD_SDK_SK": "sk"},
        "metastudio.ak_env: ",
    ),
    (
        "metastudio SK unset",
        {"metastudio": {"endpoint": "https://m", "project_id": "p", "sk_env": "MY_SK"}},
        AKSK,
        "metastudio.sk_env: ",
    ),
    (
        "metastudio token_env unset",
        {"metastudio": {"endpoint": "https://m", "project_id": "p", "token_env": "MS_TOKEN"}},
        AKSK,
        "metastudio.token_env: ",
    ),
]


INVALID += [
    (
        "keys_env unset",
        {"endpoints": [_without_keys(endpoint_table(keys_env="SHOP_KEYS"))]},
        {},
        "endpoints[0].keys_env: ",
    ),
    (
        "keys_env empty",
        {"endpoints": [_without_keys(endpoint_table(keys_env="SHOP_KEYS"))]},
        {"SHOP_KEYS": ""},
        "endpoints[0].keys_env: ",
    ),
    (
        "keys_env key too long",
        {"endpoints": [endpoint_table(), _without_keys(endpoint_table(name="b", keys_env="K"))]},
        {"K": f"{KEY},{'x' * 40}"},
        "endpoints[1].keys[1]: ",
    ),
]


@pytest.mark.parametrize(
    ("data", "environ", "prefix"),
    [pytest.param(d, e, p, id=i) for i, d, e, p in INVALID],
)
def test_invalid_setting_names_its_key(
    data: dict[str, Any], environ: dict[str, str], prefix: str
) -> None:
    message = config_error(data, environ)
    assert message.startswith(prefix), message
    assert len(message) > len(prefix), "the problem is said, not only the key"


def test_meituan_default_is_explained() -> None:
    message = config_error(one_endpoint(auth_type="MEITUAN_DEFAULT"))
    assert message.startswith("endpoints[0].auth_type: MEITUAN_DEFAULT")
    assert "not supported" in message
    assert "MSS_A" in message  # says what to use instead


def test_unset_environment_variable_is_named() -> None:
    table = _without_keys(endpoint_table(keys_env="SHOP_KEYS"))
    message = config_error({"endpoints": [table]})
    assert "SHOP_KEYS" in message and "not set" in message


def test_config_error_is_a_receiver_error() -> None:
    assert issubclass(ConfigError, ReceiverError)


def test_error_about_a_key_never_shows_the_key() -> None:
    secret = "S" * 40
    message = config_error(one_endpoint(keys=[KEY, secret]))
    assert secret not in message and secret[:32] not in message
    message = config_error(
        {"endpoints": [_without_keys(endpoint_table(keys_env="K"))]}, {"K": secret}
    )
    assert secret[:32] not in message


# --- files ---------------------------------------------------------------------------------------


def test_bad_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('database_url = "sqlite:///x.db"\n[[endpoints]\nname = "a"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path=path, environ={})
    assert caught.value.message.startswith("config: ")
    assert str(path) in caught.value.message
    assert "TOML" in caught.value.message
    assert "\n" not in caught.value.message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    for kwargs in (
        {"path": path, "environ": {}},
        {"path": None, "environ": {"RECEIVER_CONFIG": str(path)}},
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings(**kwargs)  # type: ignore[arg-type]
        assert caught.value.message.startswith("config: ")
        assert str(path) in caught.value.message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(path=tmp_path, environ={})
    assert caught.value.message.startswith("config: ")


def test_invalid_key_in_a_file_names_the_key(tmp_path: Path) -> None:
    path = write_config(tmp_path / "r.toml", "sqlite:///x.db", endpoint_table(time_unit="minutes"))
    with pytest.raises(ConfigError) as caught:
        load_settings(path=path, environ={})
    assert caught.value.message.startswith("endpoints[0].time_unit: ")


# --- secrets stay out of repr ---------------------------------------------------------------------


def test_repr_of_settings_shows_no_key_or_token() -> None:
    settings = build(
        {
            "api_tokens": ["api-token-AAAA1111"],
            "endpoints": [
                endpoint_table(keys=[KEY, OLD_KEY]),
                _without_keys(endpoint_table(name="b", keys_env="K")),
            ],
            "metastudio": {"endpoint": "https://m", "project_id": "p"},
        },
        environ={"K": "env-key-BBBB2222", **AKSK},
    )
    text = repr(settings) + str(settings) + "".join(repr(e) for e in settings.endpoints)
    text += repr(settings.metastudio)
    for secret in (KEY, OLD_KEY, "api-token-AAAA1111", "env-key-BBBB2222", *AKSK.values()):
        assert secret not in text
    assert "shop-a" in text  # the repr is still useful


def test_repr_of_settings_shows_no_url_credential_of_a_none_endpoint() -> None:
    # auth_type NONE: "the URL contains authentication" (signing-notes.md): the token in the
    # registered URL's query is the endpoint's credential, as secret as a key.
    token = "url-token-CCCC3333"
    settings = build(
        one_endpoint(auth_type="NONE", keys=[], registered_url=f"{REGISTERED}?token={token}")
    )
    assert token not in repr(settings)
    assert token not in repr(settings.endpoints[0])


# --- the command line stops with one line --------------------------------------------------------


def test_serve_with_bad_config_exits_with_one_line_naming_the_key(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "bad.toml",
        f"sqlite:///{tmp_path / 'r.db'}",
        endpoint_table(auth_type="MEITUAN_DEFAULT"),
    )
    done = run_cli("serve", "--config", str(path), "--port", "1", cwd=tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip("\n").splitlines()
    assert len(lines) == 1, done.stderr
    assert "endpoints[0].auth_type" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r.db").exists(), "nothing is started or created"

"""``[[destinations]]``: every bad table stops start-up with one line naming the key; secrets
and credentials never reach that line, a repr or a log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import endpoint_table, run_cli, write_config

from receiver.config import settings_from_mapping
from receiver.config.destinations import DEFAULT_RETRY_SECONDS, masked_url
from receiver.errors import ConfigError
from receiver.testing import new_secret

SECRET = new_secret()
ENV = {"HOOK_SECRETS": SECRET, "BROKER_URL": "amqp://user:broker-password-1@mq.internal:5672/"}


def build(*tables: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
    data = {"endpoints": [endpoint_table()], "destinations": list(tables)}
    return settings_from_mapping(data, environ=ENV if environ is None else environ)


def http(**overrides: Any) -> dict[str, Any]:
    table = {
        "name": "app",
        "kind": "http",
        "url": "https://app.internal/hooks",
        "secrets_env": "HOOK_SECRETS",
    }
    table.update(overrides)
    return table


def error(*tables: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        build(*tables, environ=environ)
    message = caught.value.message
    assert "\n" not in message
    assert SECRET not in message and "broker-password-1" not in message
    return message


def test_defaults_of_an_http_destination() -> None:
    (app,) = build(http()).destinations
    assert app.kind == "http" and app.secrets == (SECRET,) and app.format == "standard"
    assert (
        app.retry_seconds
        == DEFAULT_RETRY_SECONDS
        == (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    )
    assert app.disable_after_hours == 72 and not app.findings
    assert app.event_types is None and app.endpoints is None
    assert app.wants(endpoint="shop-a", event_type="ANY")
    assert SECRET not in repr(app) and "app.internal" not in repr(app)


def test_filters_and_broker_kinds() -> None:
    settings = build(
        http(event_types=["RTMP_STREAM_STATE_CHANGE"], endpoints=["shop-a"], findings=True),
        {"name": "q", "kind": "rabbitmq", "url_env": "BROKER_URL", "topic": "live.events"},
        {"name": "s", "kind": "redis", "url": "redis://127.0.0.1:6379/2"},
        {"name": "n", "kind": "nats", "url": "nats://127.0.0.1:4222", "retry_seconds": [0.5, 1]},
        {
            "name": "chat",
            "kind": "http",
            "url": "https://hooks.slack.com/services/T0/B0/abcdefghij",
            "format": "slack",
        },
    )
    app, queue, _, subjects, chat = settings.destinations
    assert app.wants(endpoint="shop-a", event_type="RTMP_STREAM_STATE_CHANGE")
    assert not app.wants(endpoint="shop-a", event_type="SHOOT_SCRIPT_SWITCH")
    assert not app.wants(endpoint="shop-b", event_type="RTMP_STREAM_STATE_CHANGE")
    assert app.takes_findings and queue.url.endswith("mq.internal:5672/")
    assert queue.masked_url() == "amqp://user:****@mq.internal:5672/"
    assert "broker-password-1" in queue.credentials()
    assert subjects.retry_seconds == (0.5, 1.0)
    # A chat destination takes findings only, unsigned; its URL's path is its token.
    assert chat.takes_findings and not chat.takes_events and chat.secrets == ()
    assert "abcdefghij" not in chat.masked_url() and "abcdefghij" in chat.credentials()


@pytest.mark.parametrize(
    ("tables", "environ", "expected"),
    [
        (
            [http(kind="kafka")],
            None,
            "destinations[0].kind: must be one of http, redis, nats, rabbitmq, not 'kafka'",
        ),
        (
            [http(url="ftp://x/y")],
            None,
            "destinations[0].url: a http destination needs a http:// or https:// URL",
        ),
        (
            [http(url="https://:99999/")],
            None,
            "destinations[0].url: '****' is not a valid URL (Port out of range",
        ),
        (
            [{"name": "r", "kind": "redis", "url": "http://127.0.0.1:6379"}],
            None,
            "destinations[0].url: a redis destination needs a redis:// or rediss://",
        ),
        (
            [http(secrets_env="MISSING")],
            None,
            "destinations[0].secrets_env: environment variable MISSING is not set",
        ),
        (
            [http(secrets_env=None) | {}],
            None,
            "destinations[0].secrets_env: required for an http destination",
        ),
        (
            [http()],
            {"HOOK_SECRETS": "not-a-secret"},
            "destinations[0].secrets_env: secret 1 of HOOK_SECRETS does not start with whsec_",
        ),
        (
            [http()],
            {"HOOK_SECRETS": "whsec_%%%"},
            "destinations[0].secrets_env: secret 1 of HOOK_SECRETS is not base64",
        ),
        (
            [http()],
            {"HOOK_SECRETS": "whsec_c2hvcnQ="},
            "destinations[0].secrets_env: secret 1 of HOOK_SECRETS holds 5 bytes",
        ),
        ([http(), http()], None, "destinations[1].name: 'app' is used twice"),
        (
            [http(name="App_1")],
            None,
            "destinations[0].name: 'App_1' must be 1-40 of a-z, 0-9 and '-'",
        ),
        (
            [http(endpoints=["shop-z"])],
            None,
            "destinations[0].endpoints: 'shop-z' is not the name of an [[endpoints]]",
        ),
        ([http(event_types=[])], None, "destinations[0].event_types: must be a non-empty list"),
        (
            [http(retry_seconds=[])],
            None,
            "destinations[0].retry_seconds: must be a list of 1 to 50 delays",
        ),
        ([http(retry_seconds=[5, -1])], None, "destinations[0].retry_seconds: must be a list"),
        (
            [http(format="teams")],
            None,
            "destinations[0].format: must be one of standard, slack, feishu, dingtalk, wecom",
        ),
        (
            [{"name": "r", "kind": "redis", "url": "redis://h", "format": "slack"}],
            None,
            "destinations[0].format: slack is for http destinations only",
        ),
        (
            [{"name": "r", "kind": "redis", "url": "redis://h", "secrets_env": "HOOK_SECRETS"}],
            None,
            "destinations[0].secrets_env: a destination of kind redis is not signed",
        ),
        ([http(findings="yes")], None, "destinations[0].findings: must be true or false"),
        (
            [http(max_in_flight=0)],
            None,
            "destinations[0].max_in_flight: must be a whole number from 1 to 256",
        ),
        (
            [http(disable_after_hours="never")],
            None,
            "destinations[0].disable_after_hours: must be a number",
        ),
        ([http(topic="a b")], None, "destinations[0].topic: 'a b' must be 1-200"),
        ([http(colour="blue")], None, "destinations[0].colour: unknown key"),
        (
            [http(url_env="BROKER_URL")],
            None,
            "destinations[0].url_env: give url or url_env, not both",
        ),
    ],
)
def test_bad_tables_name_the_key(
    tables: list[dict[str, Any]], environ: dict[str, str] | None, expected: str
) -> None:
    tables = [{k: v for k, v in t.items() if v is not None} for t in tables]
    assert error(*tables, environ=None if environ is None else {**ENV, **environ}).startswith(
        expected
    )


def test_a_broker_password_never_reaches_the_error() -> None:
    message = error({"name": "q", "kind": "rabbitmq", "url": "redis://u:broker-password-1@h:1"})
    assert "u:****@h:1" in message


def test_masked_url_hides_every_credential() -> None:
    assert masked_url("redis://:pw-123456@cache:6379/0") == "redis://:****@cache:6379/0"
    assert (
        masked_url("https://oapi.dingtalk.com/robot/send?access_token=abc123")
        == "https://oapi.dingtalk.com/robot/send?****"
    )
    assert (
        masked_url("https://open.feishu.cn/open-apis/bot/v2/hook/0a1b2c3d")
        == "https://open.feishu.cn/open-apis/b****"
    )
    assert masked_url("nats://token-only@n:4222") == "nats://****@n:4222"


def test_serve_stops_with_one_line_and_creates_nothing(tmp_path: Path) -> None:
    path = write_config(tmp_path / "bad.toml", f"sqlite:///{tmp_path / 'r.db'}", endpoint_table())
    path.write_text(
        path.read_text()
        + '[[destinations]]\nname = "app"\nkind = "http"\nurl = "https://a/h"\n'
        + 'secrets_env = "NOPE"\n'
    )
    done = run_cli("serve", "--config", str(path), "--port", "1", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "metastudio-receiver: config error: destinations[0].secrets_env: "
        "environment variable NOPE is not set"
    ]
    assert not (tmp_path / "r.db").exists()

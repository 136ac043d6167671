"""receiver.tools.diagnose and the ``diagnose`` command: which form, key and time unit signed it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.errors import ConfigError, ReceiverError, SignatureMalformed, SignatureMissing
from receiver.protocol.signing import SignedUri, TimeUnit
from receiver.tools.diagnose import diagnose_request
from receiver.tools.diagnose_capture import header_lines, parse_capture
from receiver.tools.diagnose_variants import url_variants
from receiver.tools.sender import build_callback, retarget

# The worked example of signing-notes.md (MetaStudio's custom live platform API).
EXAMPLE_KEY = "GCTbw44s6MPLh4GqgDpnfuFHgy25Enly"
EXAMPLE_URL = "https://api.example.com/v1/products?live_id=111&limit=10&offset=0"
EXAMPLE_TIME = "66df9308"
EXAMPLE_SECRET = "5e7fe8869a12a87ea966d9edbc02e38cd4ce62c73b8b05c638f15835e78902d7"
EXAMPLE_SIGNED = "api.example.com/v1/products?limit=10&live_id=111&offset=066df9308"
EXAMPLE_AT = datetime(2024, 9, 10, 0, 30, tzinfo=UTC)
EXAMPLE_NOW = EXAMPLE_AT.timestamp() + 7

KEYS = ["first-key-0123456789", "second-key-abcdefghij", "third-key-ABCDEFGHIJKL"]
REGISTERED = "https://hooks.example.com:8443/callbacks/shop-a?tenant=a&b=2"
WHEN = 1_760_000_000.25


def test_worked_example_with_headers() -> None:
    d = diagnose_request(
        url=EXAMPLE_URL,
        headers={"X-HW-MSS-Secret": EXAMPLE_SECRET, "x-hw-mss-time": EXAMPLE_TIME},
        keys=[EXAMPLE_KEY],
        now=EXAMPLE_NOW,
    )
    assert d.matched
    (match,) = d.matches
    assert match.exact
    assert match.form == SignedUri.HOST_PATH_QUERY
    assert match.key_index == 0
    assert match.unit == TimeUnit.SECONDS
    assert match.signed_string == EXAMPLE_SIGNED
    assert match.signed_at == EXAMPLE_AT
    assert match.skew_seconds == pytest.approx(7)
    assert d.capture.auth_type == "MSS_A_HEAD"
    data = d.as_json()
    assert data["matches"][0]["signed_at"] == "2024-09-10T00:30:00Z"
    assert data["matches"][0]["direction"] == "past"
    assert data["time"]["signed_at"] == "2024-09-10T00:30:00Z"
    text = d.render()
    assert EXAMPLE_SIGNED in text
    assert "2024-09-10T00:30:00Z" in text
    assert "7 s ago" in text
    assert EXAMPLE_KEY not in text + json.dumps(data)
    assert EXAMPLE_SECRET not in text + json.dumps(data)


def test_worked_example_with_the_secret_in_the_url() -> None:
    url = f"{EXAMPLE_URL}&hwSecret={EXAMPLE_SECRET}&hwTime={EXAMPLE_TIME}"
    d = diagnose_request(url=url, keys=["wrong-key-000000", EXAMPLE_KEY], now=EXAMPLE_NOW - 20)
    (match,) = d.matches
    assert (match.form, match.key_index, match.unit) == (
        SignedUri.HOST_PATH_QUERY,
        1,
        TimeUnit.SECONDS,
    )
    assert match.signed_string == EXAMPLE_SIGNED
    assert d.capture.auth_type == "MSS_A"
    assert d.registered_url == EXAMPLE_URL
    assert match.skew_seconds == pytest.approx(-13)
    assert d.as_json()["matches"][0]["direction"] == "future"
    assert "in the future" in d.render()


def test_worked_example_given_separately_and_old() -> None:
    d = diagnose_request(
        url=EXAMPLE_URL,
        secret=EXAMPLE_SECRET.upper(),
        hw_time=EXAMPLE_TIME,
        keys=[EXAMPLE_KEY],
        now=EXAMPLE_AT.timestamp() + 3600,
    )
    assert d.matched
    assert d.capture.carried_in == "arguments"
    # It matches, but a receiver would refuse it as expired: the report says so.
    assert any("401" in hint and "expired" in hint for hint in d.hints)


@pytest.mark.parametrize("auth_type", ["MSS_A", "MSS_A_HEAD"])
@pytest.mark.parametrize("unit", [TimeUnit.SECONDS, TimeUnit.MILLISECONDS])
@pytest.mark.parametrize("form", list(SignedUri))
@pytest.mark.parametrize("key_index", [0, 1, 2])
def test_every_form_unit_and_key_is_identified(
    auth_type: str, unit: TimeUnit, form: SignedUri, key_index: int
) -> None:
    callback = build_callback(
        event_type="SHOOT_SCRIPT_SWITCH",
        message={"room_id": "r", "job_id": "j"},
        registered_url=REGISTERED,
        auth_type=auth_type,
        key=KEYS[key_index],
        when=WHEN,
        signed_uri=form,
        time_unit=unit,
    )
    d = diagnose_request(url=callback.url, headers=callback.headers, keys=KEYS, now=WHEN + 2)
    assert [(m.form, m.key_index, m.unit, m.exact) for m in d.matches] == [
        (form, key_index, unit, True)
    ]
    match = d.matches[0]
    expected_at = int(WHEN) if unit == TimeUnit.SECONDS else round(WHEN * 1000) / 1000
    assert match.signed_at is not None
    assert match.signed_at.timestamp() == pytest.approx(expected_at)
    assert d.registered_url == REGISTERED
    assert d.capture.auth_type == auth_type
    hw_time = callback.headers.get("x-hw-mss-time") or callback.url.rpartition("hwTime=")[2]
    assert match.signed_string.endswith(hw_time)
    # The unit is what auto decides here too, so no hint to pin it.
    assert not any("time_unit" in hint for hint in d.hints)


def test_proxy_changed_host_matches_with_the_registered_url() -> None:
    registered = "https://hooks.example.com/callbacks/shop-a"
    callback = build_callback(
        event_type="RTMP_STREAM_STATE_CHANGE",
        message={"room_id": "r", "job_id": "j", "state": "CONNECTED"},
        registered_url=registered,
        key=KEYS[0],
        when=WHEN,
    )
    captured = retarget(callback.url, "http://127.0.0.1:8080")
    assert captured.startswith("http://127.0.0.1:8080/callbacks/shop-a?hwSecret=")

    alone = diagnose_request(url=captured, keys=KEYS, now=WHEN)
    assert not alone.matched
    assert any("proxy" in hint for hint in alone.hints)
    assert "NO MATCH" in alone.render()

    d = diagnose_request(url=captured, keys=KEYS, now=WHEN, registered_url=registered)
    (match,) = d.matches
    assert match.exact and match.form == SignedUri.HOST_PATH_QUERY and match.key_index == 0
    assert match.signed_string.startswith("hooks.example.com/callbacks/shop-a")
    assert f'registered_url = "{registered}"' in d.render()


@pytest.mark.parametrize(
    ("signed_for", "given_as", "change"),
    [
        ("https://hooks.example.com/cb", "http://hooks.example.com/cb", "http → https"),
        ("https://hooks.example.com:443/cb", "https://hooks.example.com/cb", "with port 443"),
        ("https://hooks.example.com/cb", "https://hooks.example.com:443/cb", "without port 443"),
        ("https://hooks.example.com/cb/", "https://hooks.example.com/cb", "with a trailing slash"),
        ("https://h.example.com/cb?a=1&b=2", "https://h.example.com/cb?b=2&a=1", "sorted"),
    ],
)
def test_common_registered_url_mistakes_are_named(
    signed_for: str, given_as: str, change: str
) -> None:
    callback = build_callback(
        event_type="X", registered_url=signed_for, key=KEYS[1], when=WHEN, signed_uri="full_url"
    )
    d = diagnose_request(url=callback.url, keys=KEYS, now=WHEN, registered_url=given_as)
    assert d.matched
    best = d.matches[0]
    assert not best.exact
    assert best.form == SignedUri.FULL_URL and best.key_index == 1
    assert best.url_change is not None and change in best.url_change
    assert best.registered_url == signed_for
    assert any(signed_for in hint for hint in d.hints)
    assert 'signed_uri = "full_url"' in d.render()


def test_key_with_whitespace_is_pointed_out() -> None:
    d = diagnose_request(
        url=EXAMPLE_URL,
        headers={"x-hw-mss-secret": EXAMPLE_SECRET, "x-hw-mss-time": EXAMPLE_TIME},
        keys=[f" {EXAMPLE_KEY}\t"],
        now=EXAMPLE_NOW,
    )
    (match,) = d.matches
    assert match.key_change == "without surrounding whitespace"
    assert not match.exact


def test_wrong_key_gives_no_match_and_useful_hints() -> None:
    d = diagnose_request(
        url=EXAMPLE_URL,
        headers={"x-hw-mss-secret": EXAMPLE_SECRET, "x-hw-mss-time": EXAMPLE_TIME},
        keys=["not-the-right-key-000", "also-not-it-000000000000000000000000"],
        now=EXAMPLE_NOW,
    )
    assert not d.matched
    assert d.hints[0].startswith("no key (****-000, ****0000)")
    assert "live_event_callback_config.key" in d.hints[0]
    assert any("at most 32" in hint for hint in d.hints)
    assert any("proxy" in hint for hint in d.hints)
    tried = {(a.form, a.signed_string) for a in d.tried if a.url_change is None}
    assert tried == {
        (SignedUri.HOST_PATH_QUERY, EXAMPLE_SIGNED),
        (SignedUri.FULL_URL, EXAMPLE_URL + EXAMPLE_TIME),
        (SignedUri.PATH_QUERY, "/v1/products?limit=10&live_id=111&offset=0" + EXAMPLE_TIME),
    }
    assert len(d.tried) > 3  # the URL variants too
    text = d.render()
    for form in SignedUri:
        assert form.value in text
    assert "likely causes" in text
    assert "not-the-right-key-000" not in text + json.dumps(d.as_json())


def test_query_and_host_differences_are_named() -> None:
    callback = build_callback(
        event_type="X", registered_url="https://a.example.com/cb?t=1", key=KEYS[0], when=WHEN
    )
    captured = retarget(callback.url, "http://10.0.0.5:8080").replace("t=1", "t=2")
    d = diagnose_request(
        url=captured,
        keys=["another-key-0000"],
        now=WHEN,
        registered_url="https://a.example.com/cb?t=1",
    )
    assert not d.matched
    assert any("http://10.0.0.5:8080" in h and "https://a.example.com" in h for h in d.hints)
    assert any("query parameters differ" in h and "'t'" in h for h in d.hints)


def test_milliseconds_read_as_seconds_by_auto_is_pointed_out() -> None:
    # 8 hex digits of milliseconds (early 1970 as seconds would be absurd; as ms it is now-ish?)
    # Use a time whose ms value is below auto's threshold: auto reads seconds, closest is ms.
    now = 50_000_000.0  # 1971: ms value 5e10 < 1e11, so auto says seconds
    callback = build_callback(
        event_type="X", registered_url=EXAMPLE_URL, key=KEYS[0], when=now, time_unit="milliseconds"
    )
    d = diagnose_request(url=callback.url, keys=KEYS, now=now + 1)
    assert d.matches[0].unit == TimeUnit.MILLISECONDS
    assert d.auto_unit == TimeUnit.SECONDS
    assert any('time_unit = "milliseconds"' in hint for hint in d.hints)


def test_url_variants_come_first_as_given_and_never_twice() -> None:
    variants = url_variants("https://h.example.com:8443/cb?b=1&a=2")
    assert variants[0] == (None, "https://h.example.com:8443/cb?b=1&a=2")
    urls = [url for _, url in variants]
    assert len(urls) == len(set(urls))
    assert "http://h.example.com/cb/?a=2&b=1" in urls
    assert url_variants("https://[::1]/cb")[0] == (None, "https://[::1]/cb")


VALID = {"x-hw-mss-secret": EXAMPLE_SECRET, "x-hw-mss-time": EXAMPLE_TIME}


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"url": ""}, SignatureMalformed, "empty"),
        ({"url": "http://[::1/cb"}, SignatureMalformed, "cannot be parsed"),
        ({"url": EXAMPLE_URL, "headers": {}}, SignatureMissing, "no signature found"),
        (
            {"url": EXAMPLE_URL, "headers": {"x-hw-mss-secret": EXAMPLE_SECRET}},
            SignatureMissing,
            "not the signing time",
        ),
        (
            {"url": EXAMPLE_URL, "headers": {"x-hw-mss-time": EXAMPLE_TIME}},
            SignatureMissing,
            "not the signature",
        ),
        (
            {"url": EXAMPLE_URL, "headers": {**VALID, "x-hw-mss-secret": "abc"}},
            SignatureMalformed,
            "64 hex",
        ),
        (
            {"url": EXAMPLE_URL, "headers": {**VALID, "x-hw-mss-secret": "g" * 64}},
            SignatureMalformed,
            "not hex",
        ),
        (
            {"url": EXAMPLE_URL, "headers": {**VALID, "x-hw-mss-time": "0x66df9308"}},
            SignatureMalformed,
            "signing time",
        ),
        (
            {"url": EXAMPLE_URL, "headers": {**VALID, "x-hw-mss-time": "f" * 17}},
            SignatureMalformed,
            "signing time",
        ),
        ({"url": EXAMPLE_URL + "&hwTime=1&hwTime=2"}, SignatureMalformed, "2 times"),
        ({"url": "/callbacks/x", "headers": VALID}, SignatureMalformed, "registered URL"),
        ({"url": "not a url", "headers": VALID}, SignatureMalformed, "registered URL"),
        ({"url": "http://h/\udcff", "headers": VALID}, SignatureMalformed, "UTF-8"),
        ({"url": "http://h/\x00", "headers": VALID}, SignatureMalformed, "control"),
        ({"url": "http://h/" + "a" * 9000, "headers": VALID}, SignatureMalformed, "longer"),
        ({"url": EXAMPLE_URL, "headers": VALID, "keys": []}, ConfigError, "at least one key"),
        ({"url": EXAMPLE_URL, "headers": VALID, "keys": [""]}, ConfigError, "keys[0]"),
        ({"url": EXAMPLE_URL, "headers": VALID, "keys": ["\udcff"]}, ConfigError, "keys[0]"),
        (
            {"url": EXAMPLE_URL, "headers": VALID, "registered_url": "ftp://x/y"},
            ConfigError,
            "registered_url",
        ),
        (
            {"url": EXAMPLE_URL, "headers": VALID, "registered_url": "http://[::1"},
            ConfigError,
            "registered_url",
        ),
    ],
)
def test_garbage_inputs_give_a_clear_error(
    kwargs: dict[str, object], error: type[ReceiverError], words: str
) -> None:
    arguments: dict[str, object] = {"keys": [EXAMPLE_KEY], "now": EXAMPLE_NOW, **kwargs}
    with pytest.raises(error) as raised:
        diagnose_request(**arguments)  # type: ignore[arg-type]
    assert words in raised.value.message


@pytest.mark.parametrize("line", ["no colon here", ": empty name", "two words: x"])
def test_header_lines_without_a_name_are_refused(line: str) -> None:
    with pytest.raises(SignatureMalformed, match="Name: value"):
        header_lines([line])


def test_header_lines_are_case_insensitive() -> None:
    assert header_lines(["X-HW-MSS-Time:  66df9308 "]) == {"x-hw-mss-time": "66df9308"}


@settings(max_examples=300, deadline=None)
@given(
    url=st.text(max_size=80),
    secret=st.one_of(st.none(), st.text(max_size=70)),
    hw_time=st.one_of(st.none(), st.text(max_size=20)),
    key=st.text(max_size=40),
    registered=st.one_of(st.none(), st.text(max_size=60)),
)
def test_any_input_gives_a_diagnosis_or_a_project_error(
    url: str, secret: str | None, hw_time: str | None, key: str, registered: str | None
) -> None:
    try:
        capture = parse_capture(url=url, secret=secret, hw_time=hw_time)
    except ReceiverError:
        return
    with contextlib.suppress(ReceiverError):
        diagnose_request(
            url=capture.url,
            secret=capture.secret,
            hw_time=capture.hw_time,
            keys=[key],
            now=EXAMPLE_NOW,
            registered_url=registered,
        )


# --- The command ---------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", "diagnose", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_cli_worked_example() -> None:
    done = run_cli(
        "--url",
        EXAMPLE_URL,
        "--header",
        f"x-hw-mss-secret: {EXAMPLE_SECRET}",
        "--header",
        f"X-HW-MSS-TIME: {EXAMPLE_TIME}",
        "--key",
        EXAMPLE_KEY,
    )
    assert done.returncode == 0, done.stderr
    assert EXAMPLE_SIGNED in done.stdout
    assert "signed_uri=host_path_query" in done.stdout
    assert "time_unit=seconds" in done.stdout
    assert "2024-09-10T00:30:00Z" in done.stdout
    assert EXAMPLE_KEY not in done.stdout + done.stderr


def test_cli_json_and_key_env() -> None:
    import os

    env = {**os.environ, "DIAG_KEYS": f"wrong-key-0000000, {EXAMPLE_KEY}"}
    done = run_cli(
        "--url",
        f"{EXAMPLE_URL}&hwSecret={EXAMPLE_SECRET}&hwTime={EXAMPLE_TIME}",
        "--key-env",
        "DIAG_KEYS",
        "--json",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["matched"] is True
    assert data["matches"][0]["key_index"] == 1
    assert data["matches"][0]["signed_string"] == EXAMPLE_SIGNED


def test_cli_no_match_exits_1() -> None:
    done = run_cli(
        "--url",
        EXAMPLE_URL,
        "--secret",
        EXAMPLE_SECRET,
        "--time",
        EXAMPLE_TIME,
        "--key",
        "some-other-key-1234",
    )
    assert done.returncode == 1
    assert "NO MATCH" in done.stdout
    assert "some-other-key-1234" not in done.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--url", EXAMPLE_URL, "--key", EXAMPLE_KEY],
        ["--url", EXAMPLE_URL, "--header", "garbage", "--key", EXAMPLE_KEY],
        ["--url", EXAMPLE_URL, "--secret", "xyz", "--time", EXAMPLE_TIME, "--key", EXAMPLE_KEY],
        ["--url", EXAMPLE_URL, "--secret", EXAMPLE_SECRET, "--time", EXAMPLE_TIME],
        ["--url", EXAMPLE_URL, "--secret", EXAMPLE_SECRET, "--time", "T", "--key-env", "NOPE_X"],
    ],
)
def test_cli_garbage_exits_2_without_a_traceback(args: list[str]) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("metastudio-receiver diagnose: ")

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.errors import (
    ConfigError,
    SignatureError,
    SignatureExpired,
    SignatureMalformed,
    SignatureMismatch,
    SignatureMissing,
)
from receiver.protocol.signing import (
    SECRET_HEADER,
    TIME_HEADER,
    AuthType,
    SignedUri,
    TimeUnit,
    Verified,
    VerifyPolicy,
    canonical_uri,
    format_hw_time,
    mask_secret,
    mask_secrets_in,
    parse_hw_time,
    sign,
    sign_request,
    signed_string,
    strip_signature_params,
    verify,
)

# Worked example from MetaStudio's custom live platform API (signing-notes.md).
EXAMPLE_KEY = "GCTbw44s6MPLh4GqgDpnfuFHgy25Enly"
EXAMPLE_URL = "https://api.example.com/v1/products?live_id=111&limit=10&offset=0"
EXAMPLE_TIME = "66df9308"
EXAMPLE_SECRET = "5e7fe8869a12a87ea966d9edbc02e38cd4ce62c73b8b05c638f15835e78902d7"
EXAMPLE_AT = datetime(2024, 9, 10, 0, 30, tzinfo=UTC).timestamp()

URL = "https://hooks.example.com/callbacks/shop-a"
KEY = "current-key-0123456789abcdefghij"
OLD_KEY = "previous-key-0123456789abcdefgh"
NOW = 1_725_928_200.0


def policy(**overrides: object) -> VerifyPolicy:
    fields: dict[str, object] = {"auth_type": AuthType.MSS_A, "registered_url": URL, "keys": (KEY,)}
    fields.update(overrides)
    return VerifyPolicy(**fields)  # type: ignore[arg-type]


def signed_query(
    url: str = URL, key: str = KEY, when: float = NOW, unit: TimeUnit = TimeUnit.SECONDS
) -> str:
    sent, _ = sign_request(
        registered_url=url, auth_type=AuthType.MSS_A, key=key, when=when, unit=unit
    )
    return urlsplit(sent).query


def check(pol: VerifyPolicy, query: str, headers: dict[str, str] | None = None) -> Verified:
    return verify(policy=pol, query_string=query, headers=headers or {}, now=NOW)


# --- the worked example ---------------------------------------------------------------------


def test_worked_example_signed_string_and_secret() -> None:
    form = SignedUri.HOST_PATH_QUERY
    text = signed_string(registered_url=EXAMPLE_URL, hw_time=EXAMPLE_TIME, form=form)
    assert text == "api.example.com/v1/products?limit=10&live_id=111&offset=066df9308"
    secret = sign(key=EXAMPLE_KEY, registered_url=EXAMPLE_URL, hw_time=EXAMPLE_TIME, form=form)
    assert secret == EXAMPLE_SECRET


def test_worked_example_time() -> None:
    seconds, unit = parse_hw_time(EXAMPLE_TIME, TimeUnit.AUTO)
    assert unit is TimeUnit.SECONDS
    assert datetime.fromtimestamp(seconds, tz=UTC) == datetime(2024, 9, 10, 0, 30, tzinfo=UTC)
    assert format_hw_time(seconds, TimeUnit.SECONDS) == EXAMPLE_TIME


def test_worked_example_verifies_from_headers() -> None:
    pol = policy(auth_type=AuthType.MSS_A_HEAD, registered_url=EXAMPLE_URL, keys=(EXAMPLE_KEY,))
    headers = {SECRET_HEADER: EXAMPLE_SECRET, TIME_HEADER: EXAMPLE_TIME}
    query = urlsplit(EXAMPLE_URL).query
    result = verify(policy=pol, query_string=query, headers=headers, now=EXAMPLE_AT + 30)
    assert result == Verified(
        key_index=0,
        signed_at=datetime(2024, 9, 10, 0, 30, tzinfo=UTC),
        time_unit=TimeUnit.SECONDS,
        skew_seconds=30.0,
    )


# --- canonical forms ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "form", "expected"),
    [
        (EXAMPLE_URL, SignedUri.PATH_QUERY, "/v1/products?limit=10&live_id=111&offset=0"),
        (EXAMPLE_URL, SignedUri.FULL_URL, EXAMPLE_URL),
        (URL, SignedUri.HOST_PATH_QUERY, "hooks.example.com/callbacks/shop-a"),
        (
            "https://Hooks.Example.com:8443/cb",
            SignedUri.HOST_PATH_QUERY,
            "Hooks.Example.com:8443/cb",
        ),
        ("https://u:p@h.example.com/cb?b=1", SignedUri.HOST_PATH_QUERY, "h.example.com/cb?b=1"),
        (
            "https://h.example.com/a%20b/%7Ex?q=%2F&a=1",
            SignedUri.HOST_PATH_QUERY,
            "h.example.com/a%20b/%7Ex?a=1&q=%2F",
        ),
        ("https://h.example.com?b=2&&a=1&", SignedUri.HOST_PATH_QUERY, "h.example.com?a=1&b=2"),
        ("https://h.example.com/p?a=2&a=1&ab=0", SignedUri.PATH_QUERY, "/p?a=1&a=2&ab=0"),
        ("https://h.example.com/p?&", SignedUri.PATH_QUERY, "/p"),
        ("https://h.example.com", SignedUri.PATH_QUERY, ""),
        (
            "https://h.example.com/p?b=1&a=2#frag",
            SignedUri.FULL_URL,
            "https://h.example.com/p?b=1&a=2",
        ),
        ("https://h.example.com/p?b=1#frag", SignedUri.HOST_PATH_QUERY, "h.example.com/p?b=1"),
    ],
)
def test_canonical_uri(url: str, form: SignedUri, expected: str) -> None:
    assert canonical_uri(url, form) == expected


def test_unparseable_registered_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        canonical_uri("https://[::1/cb", SignedUri.HOST_PATH_QUERY)


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("auth_type", [AuthType.MSS_A, AuthType.MSS_A_HEAD])
@pytest.mark.parametrize("form", list(SignedUri))
@pytest.mark.parametrize("unit", [TimeUnit.SECONDS, TimeUnit.MILLISECONDS])
@pytest.mark.parametrize("configured", ["same", TimeUnit.AUTO])
@pytest.mark.parametrize(
    "url", [URL, "http://h.example.com:8080/cb%2Dx/?tok=a%20b&z=1#frag", EXAMPLE_URL]
)
def test_round_trip(
    auth_type: AuthType, form: SignedUri, unit: TimeUnit, configured: str, url: str
) -> None:
    when = NOW - 12.25
    sent, headers = sign_request(
        registered_url=url, auth_type=auth_type, key=KEY, when=when, form=form, unit=unit
    )
    time_unit = unit if configured == "same" else TimeUnit.AUTO
    pol = policy(auth_type=auth_type, registered_url=url, signed_uri=form, time_unit=time_unit)
    result = verify(policy=pol, query_string=urlsplit(sent).query, headers=headers, now=NOW)
    assert result.key_index == 0
    assert result.time_unit is unit
    assert result.signed_at is not None and result.signed_at.tzinfo is UTC
    expected_skew = 12.25 if unit is TimeUnit.MILLISECONDS else 13.0  # whole seconds
    assert result.skew_seconds == pytest.approx(expected_skew)
    assert result.signed_at.timestamp() == pytest.approx(NOW - expected_skew)


def test_wrong_form_does_not_verify() -> None:
    sent, _ = sign_request(
        registered_url=URL, auth_type=AuthType.MSS_A, key=KEY, when=NOW, form=SignedUri.FULL_URL
    )
    with pytest.raises(SignatureMismatch, match="host_path_query"):
        check(policy(), urlsplit(sent).query)


# --- time -----------------------------------------------------------------------------------


def test_format_hw_time() -> None:
    assert format_hw_time(NOW + 0.9, TimeUnit.SECONDS) == "66df9308"
    assert format_hw_time(1.5, TimeUnit.MILLISECONDS) == "5dc"
    with pytest.raises(ValueError):
        format_hw_time(NOW, TimeUnit.AUTO)
    with pytest.raises(ValueError):
        format_hw_time(-1.0, TimeUnit.SECONDS)


def test_parse_hw_time_units() -> None:
    assert parse_hw_time("66DF9308", TimeUnit.SECONDS) == (NOW, TimeUnit.SECONDS)
    assert parse_hw_time("3e8", TimeUnit.MILLISECONDS) == (1.0, TimeUnit.MILLISECONDS)
    assert parse_hw_time(format(10**11 - 1, "x"), TimeUnit.AUTO)[1] is TimeUnit.SECONDS
    assert parse_hw_time(format(10**11, "x"), TimeUnit.AUTO) == (1e8, TimeUnit.MILLISECONDS)
    ms = format_hw_time(NOW, TimeUnit.MILLISECONDS)
    assert len(ms) == 11
    assert parse_hw_time(ms, TimeUnit.AUTO) == (NOW, TimeUnit.MILLISECONDS)


@pytest.mark.parametrize("text", ["", "0x1f", "12345678901234567", "g1", " 1", "1_0", "١٢", "-1"])
def test_parse_hw_time_rejects(text: str) -> None:
    with pytest.raises(SignatureMalformed):
        parse_hw_time(text, TimeUnit.AUTO)


@pytest.mark.parametrize("offset", [-300.0, 300.0])
def test_window_boundary_passes(offset: float) -> None:
    result = check(policy(), signed_query(when=NOW + offset))
    assert result.skew_seconds == -offset


@pytest.mark.parametrize(("offset", "direction"), [(-301.0, "past"), (301.0, "future")])
def test_outside_window_expires(offset: float, direction: str) -> None:
    with pytest.raises(SignatureExpired, match=f"301 seconds in the {direction}") as caught:
        check(policy(), signed_query(when=NOW + offset))
    assert caught.value.skew_seconds == -offset


def test_custom_tolerance() -> None:
    assert check(policy(tolerance_seconds=60), signed_query(when=NOW - 60)).key_index == 0
    with pytest.raises(SignatureExpired):
        check(policy(tolerance_seconds=60), signed_query(when=NOW - 61))


def test_configured_unit_is_not_second_guessed() -> None:
    # A seconds-configured endpoint reads an 11-digit millisecond time as seconds: far future.
    with pytest.raises(SignatureExpired, match="future"):
        check(policy(time_unit=TimeUnit.SECONDS), signed_query(unit=TimeUnit.MILLISECONDS))


# --- keys -----------------------------------------------------------------------------------


def test_key_rotation_reports_index() -> None:
    pol = policy(keys=(KEY, OLD_KEY))
    assert check(pol, signed_query(key=KEY)).key_index == 0
    assert check(pol, signed_query(key=OLD_KEY)).key_index == 1


def test_wrong_key_mismatch_message_has_no_secret() -> None:
    query = signed_query(key="someone-else")
    with pytest.raises(SignatureMismatch) as caught:
        check(policy(keys=(KEY, OLD_KEY)), query)
    secret = dict(_pairs(query))["hwSecret"]
    for forbidden in (KEY, OLD_KEY, "someone-else", secret):
        assert forbidden not in str(caught.value)


def test_same_hw_time_again_is_checked_again_not_remembered() -> None:
    """Expected signatures are cached per (keys, URL, form, hwTime); what a request sent is not.
    A good request, then a forged one for the same second, then a rotation."""
    good = signed_query(key=OLD_KEY)
    assert check(policy(keys=(KEY, OLD_KEY)), good).key_index == 1
    forged = good.replace(dict(_pairs(good))["hwSecret"], "0" * 64)
    with pytest.raises(SignatureMismatch):
        check(policy(keys=(KEY, OLD_KEY)), forged)
    assert check(policy(keys=(KEY, OLD_KEY)), good).key_index == 1
    with pytest.raises(SignatureMismatch):  # OLD_KEY rotated out: the same hwTime now fails
        check(policy(keys=(KEY,)), good)
    assert check(policy(keys=(OLD_KEY, KEY)), good).key_index == 0
    with pytest.raises(SignatureMismatch):  # another registered URL, same keys and hwTime
        check(policy(keys=(KEY, OLD_KEY), registered_url=URL + "-b"), good)


def _pairs(query: str) -> list[tuple[str, str]]:
    return [(p.split("=")[0], p.split("=")[1]) for p in query.split("&")]


def test_no_keys_never_verifies() -> None:
    with pytest.raises(SignatureMismatch):
        check(policy(keys=()), signed_query())


def test_upper_case_secret_verifies() -> None:
    query = signed_query()
    name_value = _pairs(query)
    upper = "&".join(f"{k}={v.upper() if k == 'hwSecret' else v}" for k, v in name_value)
    assert upper != query
    assert check(policy(), upper).key_index == 0


def test_signature_is_checked_before_window() -> None:
    with pytest.raises(SignatureMismatch):
        check(policy(), signed_query(key="wrong", when=NOW - 10_000))


# --- missing and duplicated credentials ------------------------------------------------------


def test_missing_secret_and_time_in_query() -> None:
    query = signed_query()
    secret_part, time_part = query.split("&")
    with pytest.raises(SignatureMissing, match="hwSecret"):
        check(policy(), time_part)
    with pytest.raises(SignatureMissing, match="hwTime"):
        check(policy(), secret_part)
    with pytest.raises(SignatureMissing):
        check(policy(), "")


def test_duplicated_params_are_malformed() -> None:
    query = signed_query()
    secret_part, time_part = query.split("&")
    with pytest.raises(SignatureMalformed, match="hwSecret appears 2 times"):
        check(policy(), f"{query}&{secret_part}")
    with pytest.raises(SignatureMalformed, match="hwTime appears 2 times"):
        check(policy(), f"{time_part}&{query}")


def test_missing_headers() -> None:
    _, headers = sign_request(registered_url=URL, auth_type=AuthType.MSS_A_HEAD, key=KEY, when=NOW)
    pol = policy(auth_type=AuthType.MSS_A_HEAD)
    assert check(pol, "", headers).key_index == 0
    for name in (SECRET_HEADER, TIME_HEADER):
        partial = {k: v for k, v in headers.items() if k != name}
        with pytest.raises(SignatureMissing, match=name):
            check(pol, "", partial)
    with pytest.raises(SignatureMissing):
        check(pol, signed_query())  # MSS_A_HEAD does not read the query's credential
    with pytest.raises(SignatureMalformed):
        check(pol, "", {**headers, TIME_HEADER: ""})


def test_head_mode_strips_query_credential() -> None:
    _, headers = sign_request(registered_url=URL, auth_type=AuthType.MSS_A_HEAD, key=KEY, when=NOW)
    result = check(policy(auth_type=AuthType.MSS_A_HEAD), "hwSecret=zz&hwTime=&hwTime=1", headers)
    assert result.key_index == 0


# --- the registered URL's own query ---------------------------------------------------------


def test_registered_query_order_and_encoding_do_not_matter() -> None:
    pol = policy(registered_url=EXAMPLE_URL)
    query = signed_query(url=EXAMPLE_URL)
    assert query.startswith("live_id=111&limit=10&offset=0&")
    reordered = "offset=0&hwSecret=" + query.split("hwSecret=")[1] + "&limit=10&live%5Fid=111"
    assert check(pol, query).key_index == 0
    assert check(pol, reordered).key_index == 0


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (lambda q: q.replace("limit=10", "limit=99"), ["'limit'"]),
        (lambda q: q + "&extra=1", ["'extra'"]),
        (lambda q: q.replace("offset=0&", ""), ["'offset'"]),
        (lambda q: q + "&limit=10", ["'limit'"]),
        (lambda q: q.replace("live_id=111", "live_ID=111"), ["'live_ID'", "'live_id'"]),
    ],
)
def test_registered_query_changes_mismatch(change: object, names: list[str]) -> None:
    query = change(signed_query(url=EXAMPLE_URL))  # type: ignore[operator]
    with pytest.raises(SignatureMismatch, match="query parameters differ") as caught:
        check(policy(registered_url=EXAMPLE_URL), query)
    message = str(caught.value)
    for name in names:
        assert name in message
    assert "99" not in message


def test_registered_url_with_port_and_percent_encoding() -> None:
    url = "https://hooks.example.com:8443/cb/%7Eshop?name=a%20b&tok=%E4%BD%A0"
    pol = policy(registered_url=url)
    query = signed_query(url=url)
    assert check(pol, query).key_index == 0
    assert signed_string(registered_url=url, hw_time="1", form=SignedUri.HOST_PATH_QUERY) == (
        "hooks.example.com:8443/cb/%7Eshop?name=a%20b&tok=%E4%BD%A01"
    )
    # The port is part of the signed string: the same path on another port signs differently.
    with pytest.raises(SignatureMismatch, match="no configured key"):
        check(policy(registered_url=url.replace(":8443", "")), query)
    # So is the encoding as registered: %7E and ~ are the same path but not the same string.
    with pytest.raises(SignatureMismatch, match="no configured key"):
        check(policy(registered_url=url.replace("%7E", "~")), query)


def test_sign_request_shapes() -> None:
    sent, headers = sign_request(
        registered_url=URL + "#x", auth_type=AuthType.MSS_A, key=KEY, when=NOW
    )
    assert sent.startswith(URL + "?hwSecret=") and sent.endswith("&hwTime=66df9308")
    assert headers == {}
    sent, _ = sign_request(registered_url=EXAMPLE_URL, auth_type=AuthType.MSS_A, key=KEY, when=NOW)
    assert sent.startswith(EXAMPLE_URL + "&hwSecret=")
    sent, _ = sign_request(registered_url=URL + "?", auth_type=AuthType.MSS_A, key=KEY, when=NOW)
    assert sent.startswith(URL + "?hwSecret=")
    sent, headers = sign_request(
        registered_url=URL, auth_type=AuthType.MSS_A_HEAD, key=KEY, when=NOW
    )
    assert sent == URL
    assert headers[TIME_HEADER] == "66df9308" and len(headers[SECRET_HEADER]) == 64
    assert sign_request(registered_url=URL, auth_type=AuthType.NONE, key=KEY, when=NOW) == (URL, {})


def test_strip_signature_params_keeps_order_and_other_names() -> None:
    query = "b=2&hwSecret=x&a=%20&hwTime=1&hwsecret=y&a=1&hwTime"
    assert strip_signature_params(query) == [("b", "2"), ("a", " "), ("hwsecret", "y"), ("a", "1")]
    with pytest.raises(SignatureMalformed):
        strip_signature_params("a=%ff")


# --- NONE -----------------------------------------------------------------------------------

TOKEN_URL = "https://hooks.example.com/cb?token=s3cr3t-token-value&tenant=a"


def none_policy(url: str = TOKEN_URL, allow: bool = False) -> VerifyPolicy:
    return policy(auth_type=AuthType.NONE, registered_url=url, keys=(), allow_unauthenticated=allow)


def test_none_token_matches_with_extra_params() -> None:
    expected = Verified(key_index=None, signed_at=None, time_unit=None, skew_seconds=None)
    assert check(none_policy(), "tenant=a&token=s3cr3t-token-value") == expected
    assert check(none_policy(), "x=1&token=s3cr3t%2Dtoken-value&tenant=a&hwTime=1") == expected


def test_none_token_mismatch_names_only() -> None:
    with pytest.raises(SignatureMismatch, match="'token'") as caught:
        check(none_policy(), "tenant=a&token=guess")
    assert "guess" not in str(caught.value) and "s3cr3t" not in str(caught.value)
    with pytest.raises(SignatureMismatch):
        check(none_policy(), "tenant=a&token=guess&token=s3cr3t-token-value")


def test_none_token_missing() -> None:
    with pytest.raises(SignatureMissing, match="'token'") as caught:
        check(none_policy(), "tenant=a")
    assert "s3cr3t" not in str(caught.value)
    with pytest.raises(SignatureMissing):
        check(none_policy(), "")


def test_none_without_credential() -> None:
    assert check(none_policy(URL, allow=True), "anything=1").key_index is None
    with pytest.raises(SignatureMissing, match="unauthenticated"):
        check(none_policy(URL, allow=False), "")
    # allow_unauthenticated does not switch off a credential the URL does carry.
    with pytest.raises(SignatureMismatch):
        check(none_policy(TOKEN_URL, allow=True), "tenant=a&token=no")


# --- masking --------------------------------------------------------------------------------


def test_mask_secret() -> None:
    assert mask_secret("") == ""
    assert mask_secret("short") == "****"
    assert mask_secret("12345678901") == "****"
    assert mask_secret(EXAMPLE_SECRET) == "****02d7"
    assert EXAMPLE_SECRET not in mask_secret(EXAMPLE_SECRET)


# --- garbage never escapes as anything but SignatureError -----------------------------------

_GOOD = signed_query()
_GOOD_SECRET = _GOOD.split("&")[0].split("=")[1]
_HUGE = "a" * 100_000

GARBAGE: list[tuple[AuthType, str, dict[str, str]]] = [
    (AuthType.MSS_A, "", {}),
    (AuthType.MSS_A, "&&&===", {}),
    (AuthType.MSS_A, "hwSecret&hwTime", {}),
    (AuthType.MSS_A, "hwSecret=&hwTime=", {}),
    (AuthType.MSS_A, f"hwSecret={_GOOD_SECRET}&hwTime=", {}),
    (AuthType.MSS_A, f"hwSecret={_GOOD_SECRET}&hwTime=zz", {}),
    (AuthType.MSS_A, f"hwSecret={_GOOD_SECRET}&hwTime=" + "f" * 17, {}),
    (AuthType.MSS_A, f"hwSecret={_GOOD_SECRET}&hwTime=" + "f" * 16, {}),
    (AuthType.MSS_A, f"hwSecret={_GOOD_SECRET}&hwTime=0", {}),
    (AuthType.MSS_A, f"hwSecret={_GOOD_SECRET}&hwTime=%E4%BD%A0", {}),
    (AuthType.MSS_A, f"hwSecret={_GOOD_SECRET}&hwTime=0x66df9308", {}),
    (AuthType.MSS_A, f"hwSecret={_GOOD_SECRET}&hwTime=+66df9308", {}),
    (AuthType.MSS_A, f"hwSecret={_GOOD_SECRET}&hwTime=66df_9308", {}),
    (AuthType.MSS_A, f"hwSecret={_GOOD_SECRET[:-1]}&hwTime=66df9308", {}),
    (AuthType.MSS_A, f"hwSecret={_GOOD_SECRET}0&hwTime=66df9308", {}),
    (AuthType.MSS_A, "hwSecret=" + "g" * 64 + "&hwTime=66df9308", {}),
    (AuthType.MSS_A, "hwSecret=" + "٣" * 64 + "&hwTime=66df9308", {}),
    (AuthType.MSS_A, _GOOD + "&x=%ff", {}),
    (AuthType.MSS_A, _GOOD + "&x=%", {}),
    (AuthType.MSS_A, _GOOD + "&x=%zz%", {}),
    (AuthType.MSS_A, _GOOD + "&%C3=1", {}),
    (AuthType.MSS_A, _GOOD + "&x=" + _HUGE, {}),
    (AuthType.MSS_A, _GOOD + "&x" * 10_000, {}),
    (AuthType.MSS_A, "hwSecret=" + _HUGE + "&hwTime=" + _HUGE, {}),
    (AuthType.MSS_A, "hwSecret=\x00\n\r&hwTime=\u2028", {}),
    (AuthType.MSS_A, "héllo=wörld&hwSecret=☃", {}),
    (AuthType.MSS_A, "hwSecret=\ud800&hwTime=1", {}),
    (AuthType.MSS_A, _GOOD.replace("hwTime=", "hwTime=%36"), {}),
    (AuthType.MSS_A, _GOOD + ";x=1", {}),
    (AuthType.MSS_A_HEAD, "", {}),
    (AuthType.MSS_A_HEAD, "", {SECRET_HEADER: "", TIME_HEADER: ""}),
    (AuthType.MSS_A_HEAD, "", {SECRET_HEADER: _GOOD_SECRET, TIME_HEADER: " 66df9308"}),
    (AuthType.MSS_A_HEAD, "", {SECRET_HEADER: " " + _GOOD_SECRET, TIME_HEADER: "66df9308"}),
    (AuthType.MSS_A_HEAD, "", {SECRET_HEADER: _HUGE, TIME_HEADER: _HUGE}),
    (AuthType.MSS_A_HEAD, "", {SECRET_HEADER: _GOOD_SECRET, TIME_HEADER: "ffffffffffffffff"}),
    (AuthType.MSS_A_HEAD, "", {SECRET_HEADER: _GOOD_SECRET, TIME_HEADER: "\ud800"}),
    (AuthType.MSS_A_HEAD, "a=%ff", {SECRET_HEADER: _GOOD_SECRET, TIME_HEADER: "66df9308"}),
    (AuthType.MSS_A_HEAD, "a=1", {SECRET_HEADER: _GOOD_SECRET, TIME_HEADER: "66df9308"}),
    (AuthType.NONE, "", {}),
    (AuthType.NONE, "token=%ff&tenant=a", {}),
    (AuthType.NONE, "token=\ud800&tenant=a", {}),
    (AuthType.NONE, "token=" + _HUGE + "&tenant=a", {}),
    (AuthType.NONE, "&" * 1000, {}),
    (AuthType.NONE, "token&tenant", {}),
]


@pytest.mark.parametrize(("auth_type", "query", "headers"), GARBAGE)
def test_garbage_raises_signature_error(
    auth_type: AuthType, query: str, headers: dict[str, str]
) -> None:
    pol = policy(
        auth_type=auth_type, registered_url=URL if auth_type != AuthType.NONE else TOKEN_URL
    )
    with pytest.raises(SignatureError) as caught:
        check(pol, query, headers)
    assert KEY not in str(caught.value) and _GOOD_SECRET not in str(caught.value)
    assert len(str(caught.value)) < 400


_hexish = st.text(alphabet="0123456789abcdefABCDEF", max_size=70)
_value = st.one_of(st.text(), _hexish, st.just(_GOOD_SECRET), st.just("66df9308"))


@st.composite
def _queries(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(st.text())
    pieces = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["hwSecret", "hwTime", "token", "tenant", "a", "hw%54ime"]),
                _value,
            ),
            max_size=5,
        )
    )
    return "&".join(f"{name}={value}" for name, value in pieces)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    auth_type=st.sampled_from(list(AuthType)),
    query=_queries(),
    headers=st.dictionaries(st.sampled_from([SECRET_HEADER, TIME_HEADER, "x"]), _value),
    unit=st.sampled_from(list(TimeUnit)),
    form=st.sampled_from(list(SignedUri)),
    now=st.floats(min_value=0, max_value=1e12),
)
def test_random_input_only_raises_signature_errors(
    auth_type: AuthType,
    query: str,
    headers: dict[str, str],
    unit: TimeUnit,
    form: SignedUri,
    now: float,
) -> None:
    url = TOKEN_URL if auth_type == AuthType.NONE else URL
    pol = policy(auth_type=auth_type, registered_url=url, time_unit=unit, signed_uri=form)
    try:
        result = verify(policy=pol, query_string=query, headers=headers, now=now)
    except SignatureError as exc:
        assert KEY not in exc.message
    else:  # only a genuinely matching credential may pass
        assert auth_type == AuthType.NONE or result.key_index == 0


def test_nan_now_is_outside_the_window() -> None:
    with pytest.raises(SignatureExpired):
        verify(policy=policy(), query_string=signed_query(), headers={}, now=float("nan"))


def test_registered_query_that_is_not_utf8_is_a_config_error() -> None:
    bad = policy(registered_url=URL + "?t=%ff")
    with pytest.raises(ConfigError, match="registered_url"):
        check(bad, signed_query(url=URL + "?t=%ff").replace("t=%ff&", ""))


def test_secrets_in_error_texts_are_masked() -> None:
    text = "Invalid URL 'http://h/cb?a=1&hwSecret=5e7fe8869a12&hwTime=66df9308': bad port"
    masked = mask_secrets_in(text)
    assert "5e7fe8869a12" not in masked
    assert "hwSecret=****&hwTime=66df9308" in masked
    assert mask_secrets_in("no secret here") == "no secret here"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    query=st.text(alphabet=st.sampled_from("ab=&;x0 _-.~é/"), max_size=40)
    | st.lists(st.sampled_from(["a=1", "", "b", "=c", "hwSecret=ff", "a=1=2"]), max_size=300).map(
        "&".join
    )
)
def test_the_unquoting_free_query_reader_says_what_parse_qsl_says(query: str) -> None:
    """receiver.protocol.signing._decode_query skips parse_qsl when there is nothing to unquote: the
    same pairs, and the same refusal past 256 fields."""
    from urllib.parse import parse_qsl

    from receiver.protocol.signing import _MAX_QUERY_FIELDS, _decode_query

    try:
        expected = parse_qsl(query, keep_blank_values=True, max_num_fields=_MAX_QUERY_FIELDS)
    except ValueError:
        with pytest.raises(SignatureMalformed):
            _decode_query(query)
        return
    assert _decode_query(query) == expected

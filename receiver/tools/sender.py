"""Build signed callbacks the way MetaStudio sends them, and deliver them to a receiver.

Pure building (:func:`build_callback`) plus delivering over HTTP (:func:`deliver`,
:func:`deliver_async`); no database. Signing goes through
:func:`receiver.protocol.signing.sign_request`,
the one implementation of the scheme, so what is sent here is exactly what the receiver checks.

The URL a callback is signed for is the URL the user *registered* with MetaStudio
(``live_event_type_callback_url``); where the receiver really listens (loopback, behind a proxy)
is often another address. :func:`retarget` moves a request there without touching what is signed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from receiver import __version__
from receiver.protocol.events import encode
from receiver.protocol.signing import AuthType, SignedUri, TimeUnit, sign_request

if TYPE_CHECKING:  # httpx2 is imported when something is delivered, not when this is imported
    import httpx2
    from starlette.types import ASGIApp

REPLAY_HEADER = "x-receiver-replay"
"""Header on replayed deliveries: ``"<source>:<original event id>"`` (kept with the delivery)."""

CONTENT_TYPE = "application/json"
USER_AGENT = f"metastudio-receiver/{__version__} (sender)"
STORED_RESULTS = frozenset({"stored", "duplicate"})


@dataclass(frozen=True, slots=True)
class SignedCallback:
    """One request as MetaStudio would send it."""

    url: str
    """The URL to POST to: the registered URL (with hwSecret/hwTime for MSS_A)."""
    headers: dict[str, str]
    """content-type, x-hw-mss-* for MSS_A_HEAD, and any extra headers."""
    body: bytes


@dataclass(frozen=True, slots=True)
class Answer:
    """What the receiver answered."""

    status: int
    json: Any | None
    """The answer parsed as JSON, or None when it is not JSON."""
    text: str
    stored: bool
    """True only for 200 with result ``stored`` or ``duplicate``: the delivery is in the store."""

    @property
    def result(self) -> str | None:
        value = self.json.get("result") if isinstance(self.json, dict) else None
        return value if isinstance(value, str) else None


def _auth_type(value: AuthType | str) -> AuthType:
    try:
        return AuthType(value.upper() if isinstance(value, str) else value)
    except ValueError:
        allowed = ", ".join(member.value for member in AuthType)
        raise ValueError(f"auth_type must be one of {allowed}, not {value!r}") from None


def _signed_uri(value: SignedUri | str) -> SignedUri:
    try:
        return SignedUri(value)
    except ValueError:
        allowed = ", ".join(member.value for member in SignedUri)
        raise ValueError(f"signed_uri must be one of {allowed}, not {value!r}") from None


def _time_unit(value: TimeUnit | str) -> TimeUnit:
    # "auto" is a way of reading hwTime, not of writing it.
    if value in (TimeUnit.SECONDS, TimeUnit.MILLISECONDS):
        return TimeUnit(value)
    raise ValueError(f"time_unit must be seconds or milliseconds, not {value!r}")


def build_callback(
    *,
    event_type: str,
    message: Mapping[str, Any] | None = None,
    body: bytes | None = None,
    registered_url: str,
    auth_type: AuthType | str = "MSS_A",
    key: str = "",
    when: float | None = None,
    signed_uri: SignedUri | str = "host_path_query",
    time_unit: TimeUnit | str = "seconds",
    message_as: str = "string",
    extra_headers: Mapping[str, str] | None = None,
) -> SignedCallback:
    """Sign one callback for ``registered_url`` as MetaStudio does.

    ``body`` given: sent as it is (``event_type`` and ``message`` are then ignored), e.g. the
    original bytes of a stored event. Otherwise the body is ``events.encode(event_type, message,
    message_as=...)``: ``message`` as JSON text inside JSON, as documented, or as an object.
    ``when`` is the signing time in Unix seconds (default: now); a past or future one tests the
    receiver's tolerance window.
    """
    auth = _auth_type(auth_type)
    form = _signed_uri(signed_uri)
    unit = _time_unit(time_unit)
    if auth != AuthType.NONE and not key:
        raise ValueError(f"auth_type {auth.value} needs a key")
    if body is None:
        body = encode(event_type, message or {}, message_as=message_as)
    url, signing_headers = sign_request(
        registered_url=registered_url,
        auth_type=auth,
        key=key,
        when=time.time() if when is None else when,
        form=form,
        unit=unit,
    )
    headers = {"content-type": CONTENT_TYPE, **signing_headers}
    for name, value in (extra_headers or {}).items():
        headers[name.lower()] = value
    return SignedCallback(url=url, headers=headers, body=body)


def retarget(url: str, base_url: str | None) -> str:
    """``url`` sent to where the receiver really listens: scheme, host and port replaced by
    ``base_url``'s (its path, if any, is a prefix); the path and query of ``url`` are kept, so
    hwSecret/hwTime travel unchanged. ``base_url`` None: ``url`` as it is."""
    if not base_url:
        return url
    base = urlsplit(base_url)
    if base.scheme not in ("http", "https") or not base.netloc:
        raise ValueError(f"base URL must look like http://host:port, not {base_url!r}")
    target = urlsplit(url)
    path = base.path.rstrip("/") + (target.path or "/")
    return urlunsplit((base.scheme, base.netloc, path, target.query, ""))


def answer_from(status: int, content: bytes, text: str) -> Answer:
    """An :class:`Answer` from a raw HTTP answer."""
    parsed: Any | None
    try:
        parsed = json.loads(content) if content else None
    except ValueError:
        parsed = None
    result = parsed.get("result") if isinstance(parsed, dict) else None
    return Answer(
        status=status,
        json=parsed,
        text=text,
        stored=status == 200 and result in STORED_RESULTS,
    )


def deliver(
    callback: SignedCallback,
    *,
    to: str | None = None,
    client: httpx2.Client | None = None,
    timeout: float = 10.0,
) -> Answer:
    """POST ``callback`` (to ``to``, a base URL, when given) and say what the receiver answered.

    Any HTTP answer is an :class:`Answer` (check ``.stored``); no answer at all (connection
    refused, time-out) raises ``httpx2.TransportError``. ``client`` may be any httpx-style client,
    e.g. starlette's ``TestClient``; its own time-out settings apply (``timeout`` is for the
    client made here when none is given).
    """
    url = retarget(callback.url, to)
    if client is None:
        import httpx2

        with httpx2.Client(headers={"user-agent": USER_AGENT}, timeout=timeout) as own:
            response = own.post(url, content=callback.body, headers=callback.headers)
            return answer_from(response.status_code, response.content, response.text)
    response = client.post(url, content=callback.body, headers=callback.headers)
    return answer_from(response.status_code, response.content, response.text)


async def deliver_async(
    callback: SignedCallback,
    *,
    to: str | None = None,
    client: httpx2.AsyncClient | None = None,
    app: ASGIApp | None = None,
    timeout: float = 10.0,
) -> Answer:
    """:func:`deliver` for async code. ``app`` given: delivered in-process to that ASGI app
    (``httpx2.ASGITransport``; the app's lifespan must already be running). A given ``client``
    keeps its own time-out settings."""
    url = retarget(callback.url, to)
    if client is None:
        import httpx2

        transport = None if app is None else httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(
            transport=transport, headers={"user-agent": USER_AGENT}, timeout=timeout
        ) as own:
            response = await own.post(url, content=callback.body, headers=callback.headers)
            return answer_from(response.status_code, response.content, response.text)
    if app is not None:
        raise ValueError("give either client or app, not both")
    response = await client.post(url, content=callback.body, headers=callback.headers)
    return answer_from(response.status_code, response.content, response.text)

"""Who is asking: a bearer token, or the console's session cookie made from one.

The console (``/ui``) logs in with one of ``api_tokens`` and keeps a session in a cookie that is
``HttpOnly`` (no script can read it), ``Secure``, ``SameSite=Strict`` and bound to the path ``/``.
The cookie holds no token: ``<token id>.<expiry>.<mac>``, where the token id is a short hash
naming which token it came from and the mac is HMAC-SHA256 keyed with that token. Every replica
and worker can check it without shared state, and dropping a token from ``api_tokens`` ends its
sessions.

A request authenticated by the cookie must also carry the CSRF token (``X-CSRF-Token``, or the
``csrf`` field of a form) for anything but GET and HEAD: HMAC of the session with the token, so a
page of another site, which can make the browser send the cookie but cannot read the console's
pages, cannot forge an action.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass

COOKIE = "rcv_session"
SESSION_SECONDS = 12 * 3600
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True, slots=True)
class Caller:
    token_id: str  # names the token without revealing it (safe in logs and in "acked_by")
    via: str  # "bearer" | "cookie"
    session: str | None = None  # the cookie's value, when via == "cookie"
    token: str = ""  # the token itself: for signing the CSRF value; never shown

    def csrf(self) -> str:
        return csrf_token(self.token, self.session or "")


def token_id(token: str) -> str:
    return hashlib.sha256(b"receiver-api-token:" + token.encode()).hexdigest()[:12]


def _mac(token: str, message: str) -> str:
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


def make_session(token: str, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + SESSION_SECONDS)
    tid = token_id(token)
    return f"{tid}.{expires}.{_mac(token, f'session:{tid}:{expires}')}"


def check_session(value: str, tokens: Sequence[str], now: float | None = None) -> str | None:
    """The token a session cookie was made from, if the cookie is genuine and not expired."""
    tid, _, rest = value.partition(".")
    expiry, _, mac = rest.partition(".")
    # At most 12 digits: int() of thousands of digits raises, and a cookie is the client's.
    if not (expiry.isascii() and expiry.isdigit() and len(expiry) <= 12) or len(mac) != 64:
        return None
    if int(expiry) < (time.time() if now is None else now):
        return None
    # Compared as bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a
    # 500), and a cookie holds whatever the client put there.
    given_tid, given_mac = tid.encode("utf-8", "replace"), mac.encode("utf-8", "replace")
    for token in tokens:
        if hmac.compare_digest(token_id(token).encode(), given_tid):
            expected = _mac(token, f"session:{tid}:{expiry}")
            if hmac.compare_digest(expected.encode(), given_mac):
                return token
    return None


def session_caller(value: str, tokens: Sequence[str]) -> Caller | None:
    """Who a session cookie speaks for, if it is genuine and not expired."""
    token = check_session(value, tokens)
    if token is None:
        return None
    return Caller(token_id=token_id(token), via="cookie", session=value, token=token)


def csrf_token(token: str, session: str) -> str:
    return _mac(token, f"csrf:{session}")


def match_token(given: str, tokens: Sequence[str]) -> str | None:
    """The configured token equal to ``given``, compared with every one in constant time."""
    found = None
    for candidate in tokens:
        if hmac.compare_digest(given.encode(), candidate.encode()):
            found = candidate
    return found


def cookie_header(value: str, *, max_age: int = SESSION_SECONDS) -> str:
    return f"{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"

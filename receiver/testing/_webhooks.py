"""Checking a forwarded webhook in your own tests: :func:`verify_webhook`.

Forwarding signs every ``http`` message as the Standard Webhooks specification says
(https://www.standardwebhooks.com/, "Verifying webhooks"): ``webhook-signature`` holds one
``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` per secret, space-separated, each keyed with
the base64 after ``whsec_``. Verify with any one of your secrets (two during a rotation); the
timestamp must be within ``tolerance`` seconds of ``now`` (pass it in for exact tests).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from receiver.errors import ReceiverError

PREFIX = "whsec_"


class WebhookVerificationFailed(ReceiverError):
    code = "RCV.WEBHOOK_SIGNATURE_INVALID"


def verify_webhook(
    body: bytes,
    headers: Mapping[str, str],
    secrets: str | Sequence[str],
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> dict[str, Any]:
    """The message (parsed JSON) when one of ``secrets`` signed it within ``tolerance`` seconds
    of ``now``; otherwise :class:`WebhookVerificationFailed`, saying why."""
    lower = {k.lower(): v for k, v in headers.items()}
    message_id = lower.get("webhook-id", "")
    stamp = lower.get("webhook-timestamp", "")
    signatures = lower.get("webhook-signature", "")
    if not (message_id and stamp and signatures):
        raise WebhookVerificationFailed(
            "missing webhook-id, webhook-timestamp or webhook-signature"
        )
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:
        raise WebhookVerificationFailed("webhook-timestamp is not whole seconds")
    skew = (time.time() if now is None else now) - int(stamp)
    if abs(skew) > tolerance:
        raise WebhookVerificationFailed(f"webhook-timestamp is {skew:+.0f} s from now")
    signed = f"{message_id}.{stamp}.".encode() + body
    given = [part.split(",", 1)[1] for part in signatures.split() if part.startswith("v1,")]
    for secret in [secrets] if isinstance(secrets, str) else secrets:
        key = _key(secret)
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest(expected, candidate) for candidate in given):
            message: dict[str, Any] = json.loads(body)
            return message
    raise WebhookVerificationFailed("no signature matches any of the given secrets")


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationFailed("a secret is not whsec_ + base64") from None


def new_secret() -> str:
    """A fresh signing secret (32 random bytes), for a destination's ``secrets_env``."""
    import secrets

    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()

"""Findings as a chat service's incoming-webhook message (``format`` of an http destination).

Each service takes a short text in a JSON shape of its own, and says in its answer whether it
took it (some answer HTTP 200 with an error code in the body):

- ``slack``: ``{"text": "..."}``; a 2xx (body ``ok``) took it, a 4xx body names the problem
  (Slack, "Sending messages using incoming webhooks").
- ``feishu``: ``{"msg_type": "text", "content": {"text": "..."}}``; the answer's ``code`` is 0
  when it took it (Feishu, "Custom bot usage guide"; older hooks answer ``StatusCode``).
- ``dingtalk``: ``{"msgtype": "text", "text": {"content": "..."}}``; ``errcode`` 0 (DingTalk,
  "Custom robot access"; 20 messages a minute at most, 130101 past that).
- ``wecom``: ``{"msgtype": "text", "text": {"content": "..."}}``; ``errcode`` 0 (WeCom, "Group
  robot configuration"; 20 a minute, 45009 past that; the text at most 2048 bytes).

A rate limit answered in the body is a failing destination (tried again later); any other
error code is a refusal of that message.
"""

from __future__ import annotations

from typing import Any

import orjson

from receiver.forward.messages import Message
from receiver.forward.transport import DELIVERED, FAILED, REFUSED, short

# Body error codes that mean "too many messages now": try again later.
_RATE_LIMITS = {"feishu": {11232, 9499}, "dingtalk": {130101, 90030}, "wecom": {45009}}
# WeCom's limit is 2048 bytes; the others take more, none needs more for an alert.
MAX_TEXT_BYTES = 2000


def text(message: Message, *, public_url: str | None = None) -> str:
    """One alert in a few lines: what happened, where, since when, and a link to the console's
    job page when the receiver's ``public_url`` is known."""
    data = message.data or {}
    what = message.type.removeprefix("finding.")
    kind = data.get("kind", "finding")
    lines = [f"[MetaStudio] {kind} {what}"]
    where = []
    if data.get("room_id"):
        where.append(f"room {data['room_id']}")
    if data.get("job_id"):
        where.append(f"job {data['job_id']}")
    if where:
        lines.append(", ".join(where))
    if data.get("detail"):
        lines.append(str(data["detail"]))
    since = data.get("resolved_at") if what == "resolved" else data.get("first_seen_at")
    if since:
        lines.append(f"{'resolved at' if what == 'resolved' else 'since'} {since}")
    if public_url and data.get("job_id"):
        lines.append(f"{public_url.rstrip('/')}/ui/jobs/{data['job_id']}")
    joined = "\n".join(lines)
    encoded = joined.encode()
    if len(encoded) > MAX_TEXT_BYTES:
        joined = encoded[: MAX_TEXT_BYTES - 3].decode("utf-8", "ignore") + "..."
    return joined


def render(format_: str, message: Message, *, public_url: str | None = None) -> bytes:
    """The request body ``format_``'s service takes."""
    content = text(message, public_url=public_url)
    payload: dict[str, Any]
    if format_ == "slack":
        payload = {"text": content}
    elif format_ == "feishu":
        payload = {"msg_type": "text", "content": {"text": content}}
    elif format_ in ("dingtalk", "wecom"):
        payload = {"msgtype": "text", "text": {"content": content}}
    else:
        raise ValueError(f"not a chat format: {format_!r}")
    return orjson.dumps(payload)


def judge(format_: str, answer: bytes) -> tuple[str, str | None]:
    """What a 2xx answer of ``format_``'s service means: delivered, or the error it names."""
    if format_ == "slack":
        return DELIVERED, None
    try:
        body = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return REFUSED, f"{format_} answered 2xx without its JSON result"
    if not isinstance(body, dict):
        return REFUSED, f"{format_} answered 2xx without its JSON result"
    if format_ == "feishu":
        code = body.get("code", body.get("StatusCode"))
        message = body.get("msg", body.get("StatusMessage"))
    else:
        code, message = body.get("errcode"), body.get("errmsg")
    if code == 0:
        return DELIVERED, None
    if not isinstance(code, int):
        return REFUSED, f"{format_} answered 2xx without a result code"
    kind = FAILED if code in _RATE_LIMITS.get(format_, set()) else REFUSED
    return kind, short(f"{format_} error {code}: {message}")

"""Request bodies read with a limit: a body over it is refused before it is all in memory."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from receiver.errors import BodyTooLarge, ClientGone

# An ASGI scope extension: receiver.http_limits sets it ({"seconds": ...}) when the client was too
# slow to send the body, answered 408 for the app and cut the connection.
BODY_TIMED_OUT = "receiver.body_timed_out"


def declared_length(request: Request) -> int | None:
    """Content-Length as a number, if it is one (ASCII digits; absurd lengths count as huge)."""
    declared = request.headers.get("content-length", "")
    if not (declared.isascii() and declared.isdigit()):
        return None
    return int(declared) if len(declared) <= 18 else 10**18


async def read_body(request: Request, limit: int) -> bytes:
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"body is over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        timed_out = request.scope.get("extensions", {}).get(BODY_TIMED_OUT)
        if timed_out is not None:
            raise ClientGone(
                f"the body did not arrive within {timed_out.get('seconds')} s; answered 408"
            ) from None
        raise ClientGone("the client disconnected before the whole body arrived") from None
    return b"".join(chunks)

"""Request bodies read with a limit: a body over it is refused before it is all in memory."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Receive, Scope

from receiver.errors import BodyTooLarge, ClientGone

# An ASGI scope extension: receiver.intake.limits sets it ({"seconds": ...}) when the client was too
# slow to send the body, answered 408 for the app and cut the connection.
BODY_TIMED_OUT = "receiver.body_timed_out"


def parse_length(declared: str) -> int | None:
    """A Content-Length value as a number, if it is one (ASCII digits; absurd lengths count as
    huge)."""
    if not (declared.isascii() and declared.isdigit()):
        return None
    return int(declared) if len(declared) <= 18 else 10**18


def declared_length(request: Request) -> int | None:
    """Content-Length as a number, if it is one."""
    return parse_length(request.headers.get("content-length", ""))


def _gone(scope: Scope) -> ClientGone:
    timed_out = scope.get("extensions", {}).get(BODY_TIMED_OUT)
    if timed_out is not None:
        return ClientGone(
            f"the body did not arrive within {timed_out.get('seconds')} s; answered 408"
        )
    return ClientGone("the client disconnected before the whole body arrived")


def _too_large(limit: int, declared: int | None = None) -> BodyTooLarge:
    if declared is not None:
        return BodyTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
    return BodyTooLarge(f"body is over the limit of {limit} bytes")


async def read_asgi_body(scope: Scope, receive: Receive, limit: int, declared: int | None) -> bytes:
    """The body straight from ASGI ``receive`` (the callback path has no Request object)."""
    if declared is not None and declared > limit:
        raise _too_large(limit, declared)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            if not message.get("more_body", False):
                if not chunks:
                    return chunk  # the usual case: the whole body in one message
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)
        elif kind == "http.disconnect":
            raise _gone(scope)


async def read_body(request: Request, limit: int) -> bytes:
    """The body of a routed request, read as :func:`read_asgi_body` reads a callback's."""
    return await read_asgi_body(request.scope, request.receive, limit, declared_length(request))

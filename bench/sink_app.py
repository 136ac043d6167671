"""A webhook destination for ``bench/forward.py``: answers 200 at once and notes, for each
message, when it arrived and when the receiver received its callback (the payload's
``data.received_at``). ``GET /_arrivals`` hands the notes over (and forgets them).

It runs as its own process under uvicorn (httptools), so the bench measures the receiver's
forwarding, not a slow test server."""

from __future__ import annotations

import argparse
import time

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ARRIVALS: list[tuple[str, float, str]] = []


async def hook(request: Request) -> Response:
    body = await request.body()
    arrived = time.time()
    try:
        received_at = orjson.loads(body)["data"]["received_at"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        received_at = ""
    ARRIVALS.append((request.headers.get("webhook-id", ""), arrived, received_at))
    return Response(b"ok")


async def arrivals(request: Request) -> Response:
    taken = ARRIVALS[:]
    del ARRIVALS[: len(taken)]
    return Response(orjson.dumps(taken), media_type="application/json")


app = Starlette(
    routes=[
        Route("/hooks", hook, methods=["POST"]),
        Route("/_arrivals", arrivals, methods=["GET"]),
        Route("/healthz", lambda request: Response(b"ok"), methods=["GET"]),
    ]
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", http="httptools")

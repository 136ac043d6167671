"""The baseline of ``bench/ingest.py``: a Starlette endpoint that reads the body and answers 200.

It does none of the receiver's work (no signature, no decoding, no database), so the ratio
receiver/bare says what verification, decoding and the durable commit cost on top of the HTTP
stack itself. Same route shape and the same uvicorn options as ``receiver/cli/__init__.py``
``cmd_serve``.

    .venv/bin/python bench/bare_app.py --port 8081
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def callback(request: Request) -> Response:
    await request.body()
    return Response(status_code=200)


app = Starlette(routes=[Route("/callbacks/{name}", callback, methods=["POST"])])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    # Keep in step with receiver/cli/__init__.py cmd_serve: one worker, no access log, uvicorn's
    # default
    # ("auto") loop and HTTP implementation, which pick uvloop and httptools when installed.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        server_header=False,
        timeout_keep_alive=15,
        h11_max_incomplete_event_size=65536,
        limit_concurrency=2048,
        backlog=2048,
    )


if __name__ == "__main__":
    main()

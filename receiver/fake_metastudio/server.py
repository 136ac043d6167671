"""Serving the fake over HTTP with uvicorn: :func:`serve_fake` in a background thread on a
free loopback port (for tests, ``simulate`` and the demo), :func:`run_fake` in the foreground
(``metastudio-receiver fake-metastudio``). uvicorn is imported only when one of them runs.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from receiver.errors import ConfigError
from receiver.fake_metastudio.app import create_fake_app
from receiver.fake_metastudio.spec import DEFAULT_AK, DEFAULT_PROJECT_ID, DEFAULT_SK, DEFAULT_TOKEN
from receiver.fake_metastudio.state import FakeMetaStudio

log = logging.getLogger("receiver.testing.fake_metastudio")


def _uvicorn_config(fake: FakeMetaStudio, *, host: str, port: int) -> Any:
    import uvicorn

    return uvicorn.Config(
        create_fake_app(fake),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=1,
    )


@contextmanager
def serve_fake(fake: FakeMetaStudio, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Run the fake in a background thread on a free port; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(_uvicorn_config(fake, host=host, port=port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the fake MetaStudio did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        fake.set_mode("ok")  # release requests held in hang mode
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def run_fake(
    *,
    host: str = "127.0.0.1",
    port: int = 8090,
    jobs_file: str | Path | None = None,
    project_id: str = DEFAULT_PROJECT_ID,
    tokens: Iterable[str] = (DEFAULT_TOKEN,),
    ak: str | None = DEFAULT_AK,
    sk: str | None = DEFAULT_SK,
) -> None:
    """Serve the fake in the foreground (``metastudio-receiver fake-metastudio``)."""
    import uvicorn

    if (ak is None) != (sk is None):
        raise ConfigError("fake-metastudio: give both an AK and an SK, or neither")
    fake = FakeMetaStudio(
        project_id=project_id,
        tokens=tokens,
        credentials={ak: sk} if ak is not None and sk is not None else {},
    )
    if jobs_file is not None:
        loaded = fake.load_jobs(jobs_file)
        log.info("fake MetaStudio: %d job(s) from %s", loaded, jobs_file)
    uvicorn.Server(_uvicorn_config(fake, host=host, port=port)).run()

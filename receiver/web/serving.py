"""``serve``: the receiver under uvicorn, in one process or in N worker processes on one port.

With ``workers = 1`` the app runs in this process. With more, this process binds the port, then
uvicorn's supervisor spawns the workers (each a fresh interpreter: nothing of this process's
memory is shared), restarts one that dies and stops them all on SIGTERM or SIGINT. Every worker
builds its own app with :func:`worker_app`, so each has its own store connection and its own
group-commit writer; duplicates stay exactly-once because the database decides them
(``deliveries.dedup_key`` is unique, receiver.store.write).

SQLite takes one writer at a time: worker processes would queue on its file lock and time each
other out, so more than one worker on SQLite is refused (:func:`check_workers`). PostgreSQL
takes N writers; replicas and workers alike take turns at the commit-order lock.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from sqlalchemy.engine import make_url
from starlette.applications import Starlette

from receiver.config import Settings
from receiver.errors import ConfigError

log = logging.getLogger("receiver.serving")

_PR_SET_PDEATHSIG = 1


def check_workers(settings: Settings, workers: int) -> None:
    """Refuse what is not safe: more than one worker on SQLite."""
    if workers < 1:
        raise ConfigError(f"workers: must be at least 1, not {workers}")
    if workers > 1 and make_url(settings.database_url).get_backend_name() == "sqlite":
        raise ConfigError(
            f"workers: {workers} worker processes cannot share a SQLite store (it takes one "
            "writer at a time); use workers = 1 with SQLite, or a PostgreSQL database_url"
        )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The options every ``serve`` passes to uvicorn, whatever the number of workers."""
    from receiver.intake.limits import DEFAULT_MAX_HEAD_BYTES, protocol_factory

    return {
        "log_config": None,
        "access_log": False,
        "proxy_headers": True,
        "server_header": False,
        # Limits set on purpose: slow or hostile clients cannot hold connections for long.
        "timeout_keep_alive": 15,
        "h11_max_incomplete_event_size": DEFAULT_MAX_HEAD_BYTES,
        # httptools with a bound on the request head and on the time its parts may take
        # (408/414/431): uvicorn alone has neither, so a byte-a-second client could hold a slot.
        "http": protocol_factory(client_timeout=settings.client_timeout_seconds),
        "limit_concurrency": 2048,
        "backlog": 2048,
    }


def serve(settings: Settings, *, host: str, port: int, workers: int) -> None:
    """Run until SIGTERM or SIGINT. The schema must be migrated already."""
    import uvicorn

    check_workers(settings, workers)
    options = uvicorn_options(settings)
    if workers == 1:
        from receiver.web.app import create_app

        app = create_app(settings)
        freeze_startup_objects()
        uvicorn.run(app, host=host, port=port, **options)
        return
    from uvicorn.supervisors import Multiprocess

    from receiver.metrics import MULTIPROCESS_DIR

    # Set before the workers start: each one's metrics go to files there (receiver.metrics).
    own_metrics_dir = not os.environ.get(MULTIPROCESS_DIR)
    if own_metrics_dir:
        os.environ[MULTIPROCESS_DIR] = tempfile.mkdtemp(prefix="receiver-metrics-")
    metrics_dir = os.environ[MULTIPROCESS_DIR]
    # The app travels to the workers as a picklable factory: the settings, not a built app.
    config = uvicorn.Config(
        functools.partial(worker_app, settings, os.getpid()),
        factory=True,
        host=host,
        port=port,
        workers=workers,
        **options,
    )
    sock = config.bind_socket()
    log.info("serving on %s:%d with %d worker processes (pid %d)", host, port, workers, os.getpid())
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
        if own_metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def worker_app(settings: Settings, parent_pid: int) -> Starlette:
    """What each spawned worker serves (uvicorn calls it once, at the worker's start)."""
    from receiver.observability import setup_logging
    from receiver.web.app import create_app

    setup_logging(log_format=settings.log_format, level=settings.log_level)
    _die_with_parent(parent_pid)
    app = create_app(settings)
    freeze_startup_objects()
    return app


def _die_with_parent(parent_pid: int) -> None:
    """A worker gets SIGTERM (and drains, committing what it took) when the supervisor dies, even
    by kill -9, instead of serving on as an orphan nobody will stop."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def freeze_startup_objects() -> None:
    """Move what start-up created (modules, the app, its settings) out of the collector's sight.

    A full collection otherwise walks those ~100,000 long-lived objects every time, pausing the
    event loop (35 ms measured with the ingest path in-process); afterwards it only walks what
    requests create.
    """
    gc.collect()
    gc.freeze()

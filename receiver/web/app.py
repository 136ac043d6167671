"""create_app(settings): the Starlette application. Its lifespan owns the store, the writer,
the rejection log, the read engine and the periodic tasks (cross-check, prune)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from receiver.config import Settings
from receiver.crosscheck.run import CrossChecker
from receiver.intake.endpoint import ReceiverApp, callback_endpoint
from receiver.metrics import Metrics
from receiver.observability import RequestIdMiddleware, redact
from receiver.store.rejections import RejectionLog
from receiver.store.writer import create_engine_for, dispose_when_idle, open_writer
from receiver.web import api, live
from receiver.web.console import destinations as console_destinations
from receiver.web.console import routes as console
from receiver.web.pruning import prune_periodically
from receiver.web.runtime import Runtime, build_crosschecker

if TYPE_CHECKING:
    from receiver.forward.forwarder import Forwarder
    from receiver.forward.process import ForwarderProcess
    from receiver.rules.monitor import StreamMonitor

log = logging.getLogger("receiver.app")


async def _every(interval: float, checker: CrossChecker) -> None:
    """The periodic cross-check. A failed run is logged and the next one comes anyway."""
    while True:
        await asyncio.sleep(interval)
        try:
            report = await checker.run()
        except Exception:
            log.exception("the periodic cross-check failed; trying again in %g s", interval)
            continue
        if report.skipped:
            log.debug("cross-check skipped: %s", report.skipped)
        else:
            log.info(
                "cross-check: %d room(s), %d failed, %d finding(s) opened, %d resolved",
                report.rooms_checked,
                report.rooms_failed,
                report.findings_opened,
                report.findings_resolved,
            )


def _on_stop_signal(callback: Callable[[], None]) -> Callable[[], None]:
    """Also call ``callback`` (on the event loop) when SIGTERM or SIGINT arrives, before the
    handler already in place (uvicorn's, which then waits for open requests to finish). Returns
    what puts the previous handlers back. Nothing happens off the main thread (TestClient)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        before = previous.get(signum)
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_DFL:
            signal.default_int_handler(signum, frame) if signum == signal.SIGINT else sys.exit(1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, handler)

    def restore() -> None:
        for signum, before in previous.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, before)

    return restore


def _forwarder(settings: Settings, metrics: Metrics) -> Forwarder | ForwarderProcess | None:
    """The forwarder of the configured destinations: in a process of its own (the default,
    receiver.forward.process), or on this event loop with an engine of its own."""
    if not settings.destinations:
        return None
    for destination in settings.destinations:
        redact(destination.credentials())
    if settings.forwarder == "process":
        from receiver.forward.process import ForwarderProcess

        return ForwarderProcess(settings, metrics=metrics)
    from receiver.forward.forwarder import Forwarder

    engine = create_engine_for(settings.database_url, pool_size=2)
    return Forwarder(
        settings.destinations,
        engine=engine,
        metrics=metrics,
        owns_engine=True,
        public_url=settings.public_url,
    )


def _monitor(settings: Settings) -> StreamMonitor | None:
    """The stream rules ([rules]), on an engine of their own."""
    if not settings.rules.active:
        return None
    from receiver.rules.monitor import StreamMonitor

    engine = create_engine_for(settings.database_url, pool_size=1)
    return StreamMonitor(settings.rules, engine=engine)


class _Wakeable(Protocol):
    def wake(self) -> None: ...


def _and_wake(
    observe: Callable[[Sequence[Any]], None] | None, follower: _Wakeable
) -> Callable[[Sequence[Any]], None]:
    """After each committed batch: what was there (the metrics), then a wake-up of one who
    follows the event log (an event set, a small write: the intake never waits for it)."""

    def on_batch(outcomes: Sequence[Any]) -> None:
        if observe is not None:
            observe(outcomes)
        follower.wake()

    return on_batch


def create_app(settings: Settings) -> ReceiverApp:
    """The receiver as an ASGI app. The schema must already be migrated
    (``receiver.store.migrate``)."""
    # A database error may quote its connection (the prune's failures are logged here too).
    password = make_url(settings.database_url).password
    if password:
        redact([str(password)])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        metrics = Metrics()
        writer = open_writer(
            settings.database_url,
            writer=settings.store_writer,
            max_batch=settings.store_batch_max,
            max_pending=settings.store_max_pending,
            timeout=settings.store_timeout_seconds,
        )
        reader = create_engine_for(settings.database_url)
        forwarder = _forwarder(settings, metrics)
        writer.on_batch = metrics.observe_batch
        if forwarder is not None:
            writer.on_batch = _and_wake(metrics.observe_batch, forwarder)
        rejections = RejectionLog(reader, on_suppressed=metrics.rejections_unlogged.inc)
        app.state.runtime = Runtime(
            settings=settings,
            writer=writer,
            reader=reader,
            rejections=rejections,
            metrics=metrics,
            endpoints={endpoint.name: endpoint for endpoint in settings.endpoints},
            forwarder=forwarder,
        )
        runtime = app.state.runtime
        restore = _on_stop_signal(runtime.closing.set)
        source = None
        if settings.metastudio is not None:
            runtime.crosschecker, source = build_crosschecker(settings, reader)
            runtime.crosschecker.on_outcome = metrics.crosscheck_outcome
        await writer.start()
        await rejections.start()
        if forwarder is not None:
            await forwarder.start()
        monitor = _monitor(settings)
        if monitor is not None:
            await monitor.start()
            writer.on_batch = _and_wake(writer.on_batch, monitor)
        upkeep = asyncio.create_task(prune_periodically(settings, metrics), name="prune")
        periodic = None
        if runtime.crosschecker is not None and settings.metastudio is not None:
            interval = settings.metastudio.crosscheck_interval_seconds
            if interval > 0:
                periodic = asyncio.create_task(_every(interval, runtime.crosschecker))
        try:
            yield
        finally:
            runtime.closing.set()
            restore()
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
            if periodic is not None:
                periodic.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await periodic
            if monitor is not None:
                await monitor.stop()
            if forwarder is not None:
                await forwarder.stop()
            await rejections.stop()
            await writer.stop()
            if source is not None:
                source.close()
            await dispose_when_idle(reader)

    app = ReceiverApp(
        # POST /callbacks/{name} is answered by ReceiverApp before routing; the route stays for
        # a 405 on other methods, and for requests under a root_path.
        routes=[
            Route("/callbacks/{name}", callback_endpoint, methods=["POST"]),
            # Before /v1/events/{event_id}, which would take "stream" for an id.
            Route("/v1/events/stream", live.stream_events, methods=["GET"]),
            *api.routes,
            *console.routes,
            *console_destinations.routes,
        ],
        exception_handlers=api.exception_handlers,
        middleware=[Middleware(RequestIdMiddleware)],
        lifespan=lifespan,
    )
    # /callbacks/shop-a/ is not an endpoint: a 404 in the error shape, not a 307 elsewhere.
    app.router.redirect_slashes = False
    return app

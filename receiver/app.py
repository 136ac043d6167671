"""create_app(settings): the Starlette application. Its lifespan owns the store, the writer,
the rejection log and the read engine."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.middleware import Middleware

from receiver import api
from receiver.config import EndpointSettings, Settings
from receiver.errors import StoreUnavailable
from receiver.metrics import Metrics
from receiver.observability import RequestIdMiddleware
from receiver.rejections import RejectionLog
from receiver.store import GroupCommitWriter, Store, create_engine_for

log = logging.getLogger("receiver.app")


@dataclass
class Runtime:
    """What the routes share while the app runs."""

    settings: Settings
    writer: GroupCommitWriter
    reader: sa.Engine
    rejections: RejectionLog
    metrics: Metrics
    endpoints: dict[str, EndpointSettings] = field(default_factory=dict)

    async def store_problem(self) -> str | None:
        """None when the store answers; otherwise what is wrong with it."""
        try:
            await self.writer.ping()
        except StoreUnavailable as exc:
            self.metrics.store_up.set(0)
            return exc.message
        except TimeoutError:
            self.metrics.store_up.set(0)
            return "the store did not answer in time"
        self.metrics.store_up.set(1)
        return None


def create_app(settings: Settings) -> Starlette:
    """The receiver as an ASGI app. The schema must already be migrated (``receiver.migrate``)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        metrics = Metrics()
        store = Store(settings.database_url)
        writer = GroupCommitWriter(
            store,
            max_batch=settings.store_batch_max,
            max_pending=settings.store_max_pending,
            timeout=settings.store_timeout_seconds,
        )
        reader = create_engine_for(settings.database_url)
        rejections = RejectionLog(reader, on_suppressed=metrics.rejections_unlogged.inc)
        app.state.runtime = Runtime(
            settings=settings,
            writer=writer,
            reader=reader,
            rejections=rejections,
            metrics=metrics,
            endpoints={endpoint.name: endpoint for endpoint in settings.endpoints},
        )
        await writer.start()
        await rejections.start()
        try:
            yield
        finally:
            await rejections.stop()
            await writer.stop()
            reader.dispose()

    return Starlette(
        routes=api.routes,
        exception_handlers=api.exception_handlers,
        middleware=[Middleware(RequestIdMiddleware)],
        lifespan=lifespan,
    )

"""create_app(settings): the Starlette application. Its lifespan owns the store and the writer."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import sqlalchemy as sa
from starlette.applications import Starlette

from receiver import api
from receiver.config import EndpointSettings, Settings
from receiver.errors import StoreUnavailable
from receiver.store import GroupCommitWriter, Store, create_engine_for

log = logging.getLogger("receiver.app")


@dataclass
class Runtime:
    """What the routes share while the app runs."""

    settings: Settings
    writer: GroupCommitWriter
    reader: sa.Engine
    endpoints: dict[str, EndpointSettings] = field(default_factory=dict)

    async def store_problem(self) -> str | None:
        """None when the store answers; otherwise what is wrong with it."""
        try:
            await self.writer.ping()
        except StoreUnavailable as exc:
            return exc.message
        return None


def create_app(settings: Settings) -> Starlette:
    """The receiver as an ASGI app. The schema must already be migrated (``receiver.migrate``)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = Store(settings.database_url)
        writer = GroupCommitWriter(
            store,
            max_batch=settings.store_batch_max,
            max_pending=settings.store_max_pending,
            timeout=settings.store_timeout_seconds,
        )
        reader = create_engine_for(settings.database_url)
        app.state.runtime = Runtime(
            settings=settings,
            writer=writer,
            reader=reader,
            endpoints={endpoint.name: endpoint for endpoint in settings.endpoints},
        )
        await writer.start()
        try:
            yield
        finally:
            await writer.stop()
            reader.dispose()

    return Starlette(
        routes=api.routes,
        exception_handlers=api.exception_handlers,
        lifespan=lifespan,
    )

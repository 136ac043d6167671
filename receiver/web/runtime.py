"""What the routes share while the app runs (``Runtime``), and the cross-checker it may hold.

Its own module so that the routes (``api``, ``api_v1``, ``live``, the console, the callback
endpoint) can name it without importing ``app``, which imports them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from receiver.config import EndpointSettings, Settings
from receiver.crosscheck.rules import Policy
from receiver.crosscheck.run import CrossChecker
from receiver.errors import NotConfigured, StoreUnavailable
from receiver.metrics import Metrics
from receiver.store.group_commit import GroupCommitWriter
from receiver.store.rejections import RejectionLog

if TYPE_CHECKING:
    from receiver.crosscheck.metastudio import MetaStudioJobs
    from receiver.forward.forwarder import Forwarder
    from receiver.forward.process import ForwarderProcess


@dataclass
class Runtime:
    """What the routes share while the app runs."""

    settings: Settings
    writer: GroupCommitWriter
    reader: sa.Engine
    rejections: RejectionLog
    metrics: Metrics
    endpoints: dict[str, EndpointSettings] = field(default_factory=dict)
    crosschecker: CrossChecker | None = None
    # Hands stored events on to [[destinations]] (None when none is configured).
    forwarder: Forwarder | ForwarderProcess | None = None
    # Set when the server is told to stop: long-lived answers (the event stream) end then,
    # instead of holding the shutdown until their clients leave.
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    async def store_problem(self) -> str | None:
        """None when the store answers; otherwise what is wrong with it."""
        try:
            await self.writer.ping()
        except StoreUnavailable as exc:  # ping() turns a time-out into this too
            self.metrics.store_up.set(0)
            return exc.message
        self.metrics.store_up.set(1)
        return None


def build_crosschecker(
    settings: Settings, engine: sa.Engine
) -> tuple[CrossChecker, MetaStudioJobs]:
    """The cross-check over the official SDK, as ``[metastudio]`` configures it."""
    # Imported here: the SDK costs ~37 MiB and 1,200 modules, paid only when [metastudio] is set.
    from receiver.crosscheck.metastudio import MetaStudioJobs

    config = settings.metastudio
    if config is None:
        raise NotConfigured("cross-checking needs a [metastudio] section in the config")
    source = MetaStudioJobs(
        endpoint=config.endpoint,
        project_id=config.project_id,
        ak=config.ak,
        sk=config.sk,
        token=config.token,
        timeout=config.timeout_seconds,
        cache_ttl=config.cache_seconds,
    )
    checker = CrossChecker(
        engine=engine,
        source=source,
        endpoints={endpoint.name: endpoint for endpoint in settings.endpoints},
        policy=Policy(
            window_skew=timedelta(seconds=config.window_skew_seconds),
            grace=timedelta(seconds=config.grace_seconds),
            reuse_spread=timedelta(seconds=config.reuse_spread_seconds),
        ),
    )
    return checker, source

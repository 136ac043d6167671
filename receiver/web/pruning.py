"""The periodic prune (receiver.store.retention) and the store's figures on ``/metrics``.

Every minute the oldest event's age and the store's size are measured; every
``prune_interval_seconds`` (when ``retention_days`` is set) the prune runs, in a thread on an
engine of its own: the event loop, and so the intake, never waits for it. Replicas each run the
loop; the prune's own lock lets one of them prune at a time (the others count ``busy``). A
failure (the store down, the archive folder full) is logged, counted as ``failed`` and tried
again at the next interval; nothing is deleted that was not archived.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from receiver.config import Settings
from receiver.metrics import Metrics
from receiver.store import retention
from receiver.store.bounds import store_figures
from receiver.store.writer import create_engine_for

log = logging.getLogger("receiver.prune")
FIGURES_SECONDS = 60.0
FIRST_PRUNE_SECONDS = 30.0


async def prune_periodically(
    settings: Settings,
    metrics: Metrics,
    *,
    figures_every: float = FIGURES_SECONDS,
    first_prune: float = FIRST_PRUNE_SECONDS,
) -> None:
    engine = create_engine_for(settings.database_url, pool_size=1)
    policy = retention.policy_from(settings)
    pruning = retention.enabled(settings)
    next_prune = time.monotonic() + min(first_prune, settings.prune_interval_seconds)
    try:
        while True:
            if pruning and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + settings.prune_interval_seconds
                await _prune_once(engine, policy, metrics, settings.prune_interval_seconds)
            try:
                age, size = await asyncio.to_thread(store_figures, engine, now=datetime.now(UTC))
            except Exception as exc:
                log.warning("could not measure the store: %s", type(exc).__name__)
            else:
                metrics.oldest_event.set(age if age is not None else 0)
                if size is not None:
                    metrics.store_bytes.set(size)
            wait = figures_every
            if pruning:
                wait = min(wait, max(next_prune - time.monotonic(), 0.0))
            await asyncio.sleep(wait)
    finally:
        engine.dispose()


async def _prune_once(
    engine: Engine, policy: retention.RetentionPolicy, metrics: Metrics, interval: float
) -> None:
    def on_batch(events: int, deliveries: int, archived: bool) -> None:
        metrics.pruned.labels("events").inc(events)
        metrics.pruned.labels("deliveries").inc(deliveries)
        metrics.archived.inc(archived)

    try:
        report = await asyncio.to_thread(
            retention.prune, engine, policy, now=datetime.now(UTC), on_batch=on_batch
        )
    except retention.PruneBusy:
        metrics.prune_runs.labels("busy").inc()
        log.debug("prune skipped: another replica is pruning")
        return
    except Exception as exc:
        metrics.prune_runs.labels("failed").inc()
        log.error(
            "the prune failed (%s: %s); nothing more was deleted, trying again in %g s",
            type(exc).__name__,
            str(exc)[:200],
            interval,
        )
        return
    metrics.prune_runs.labels("ran").inc()
    log.info(
        "pruned %d events and %d deliveries (%d archive files) in %.1f s",
        report.events,
        report.deliveries,
        report.archived_files,
        report.seconds,
    )

"""The periodic prune (receiver.store.retention) and the store's figures on ``/metrics``.

Every minute the oldest event's age and the store's size are measured; every
``prune_interval_seconds`` (when ``retention_days`` is set) the prune runs, in a process of its
own (receiver.store.prune_child): the intake neither waits for it nor shares the interpreter
lock with it. Replicas each run the loop; the prune's own lock lets one of them prune at a time
(the others count ``busy``). A failure (the store down, the archive folder full) is logged,
counted as ``failed`` and tried
again at the next interval; nothing is deleted that was not archived.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from receiver.config import Settings
from receiver.metrics import Metrics
from receiver.store import retention
from receiver.store.bounds import store_figures
from receiver.store.prune_child import policy_json
from receiver.store.writer import create_engine_for, dispose_when_idle

log = logging.getLogger("receiver.prune")
FIGURES_SECONDS = 60.0
FIRST_PRUNE_SECONDS = 30.0
CHILD_MODULE = "receiver.store.prune_child"


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
                try:
                    await _prune_once(
                        settings.database_url, policy, metrics, settings.prune_interval_seconds
                    )
                except (OSError, ValueError) as exc:  # could not start it, or garbled output
                    metrics.prune_runs.labels("failed").inc()
                    log.error("the prune could not run: %s: %s", type(exc).__name__, exc)
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
        await dispose_when_idle(engine)


async def _prune_once(
    database_url: str, policy: retention.RetentionPolicy, metrics: Metrics, interval: float
) -> None:
    """One prune, in a child process (receiver.store.prune_child), its batches counted as
    they come. Cancelled (the server stops): the child is killed, which loses nothing."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        CHILD_MODULE,
        str(os.getpid()),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        order = {"database_url": database_url, "policy": policy_json(policy)}
        child.stdin.write(json.dumps(order).encode() + b"\n")
        await child.stdin.drain()
        child.stdin.close()
        outcome: dict[str, Any] = {"failed": "the prune process ended without a report"}
        async for line in child.stdout:
            message = json.loads(line)
            if "batch" in message:
                events, deliveries, archived = message["batch"]
                metrics.pruned.labels("events").inc(events)
                metrics.pruned.labels("deliveries").inc(deliveries)
                metrics.archived.inc(archived)
            else:
                outcome = message
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    if "busy" in outcome:
        metrics.prune_runs.labels("busy").inc()
        log.debug("prune skipped: %s", outcome["busy"])
    elif "report" in outcome:
        report = outcome["report"]
        metrics.prune_runs.labels("ran").inc()
        log.info(
            "pruned %d events and %d deliveries (%d archive files) in %.1f s",
            report["events"],
            report["deliveries"],
            report["archived_files"],
            report["seconds"],
        )
    else:
        metrics.prune_runs.labels("failed").inc()
        log.error(
            "the prune failed (%s); nothing more was deleted, trying again in %g s",
            outcome.get("failed"),
            interval,
        )

"""Prometheus metrics (``GET /metrics``), one registry per app so that tests stay apart.

Under ``serve --workers N`` every worker is a process of its own, and a scrape reaches one of
them. There, receiver.web.serving sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start:
prometheus_client then keeps every worker's values in files in that folder, and ``/metrics``
answers the sum over all workers (counters, histograms), or the lowest value of the workers
alive (``receiver_store_up``: 0 as soon as one worker cannot reach the store).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")


class Metrics:
    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_DIR) or None
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.deliveries = Counter(
            "receiver_deliveries",
            "Callbacks answered, by endpoint and result "
            "(stored, duplicate, undecodable, rejected, unavailable).",
            ["endpoint", "result"],
            registry=r,
        )
        self.rejections = Counter(
            "receiver_rejections", "Refused callbacks by reason.", ["reason"], registry=r
        )
        self.rejections_unlogged = Counter(
            "receiver_rejections_unlogged",
            "Refusals over the rejection log's rate limit (counted, not written).",
            registry=r,
        )
        self.intake_seconds = Histogram(
            "receiver_intake_seconds",
            "Time from request to answer for callbacks (verify + decode + commit).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.clock_skew = Histogram(
            "receiver_clock_skew_seconds",
            "now - signed time (hwTime) of verified callbacks; negative: signed in the future.",
            buckets=(-300, -60, -10, -1, 0, 1, 2, 5, 10, 30, 60, 300, 3600),
            registry=r,
        )
        self.batch_size = Histogram(
            "receiver_store_batch_size",
            "Deliveries committed per transaction (group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.events_stored = Counter(
            "receiver_events_stored", "Decoded events committed to the store.", registry=r
        )
        self.crosscheck_runs = Counter(
            "receiver_crosscheck_runs",
            "Cross-check runs by outcome: ran; skipped (another run held the lock, in this "
            "process or on another replica); store_error.",
            ["outcome"],
            registry=r,
        )
        self.store_up = Gauge(
            "receiver_store_up",
            "1 when the last store operation succeeded.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.store_up.set(1)
        self._delivered: dict[tuple[str, str], Any] = {}
        self.forward = ForwardMetrics(r)
        self.pruned = Counter(
            "receiver_pruned_rows",
            "Rows the prune deleted (retention_days), by what they were: events, deliveries.",
            ["table"],
            registry=r,
        )
        self.archived = Counter(
            "receiver_archive_files",
            "Archive files the prune wrote (archive_dir) before deleting their rows.",
            registry=r,
        )
        self.prune_runs = Counter(
            "receiver_prune_runs",
            "Periodic prunes by outcome: ran; busy (another replica was pruning); failed (the "
            "store or the archive folder; nothing more was deleted, the next run tries again).",
            ["outcome"],
            registry=r,
        )
        self.oldest_event = Gauge(
            "receiver_oldest_event_age_seconds",
            "Age of the oldest stored event (updated every minute).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.store_bytes = Gauge(
            "receiver_store_bytes",
            "The store's size on disk (the SQLite file and its WAL; PostgreSQL's database).",
            registry=r,
            multiprocess_mode="livemax",
        )

    # Forwarding (receiver.forward) reports through these.
    def forward_attempts(self, destination: str, outcome: str, count: int) -> None:
        self.forward.attempts.labels(destination, outcome).inc(count)

    def forward_latency(self, destination: str, seconds: Sequence[float]) -> None:
        histogram = self.forward.latency.labels(destination)
        for value in seconds:
            histogram.observe(value)

    def forward_owned(self, owned: Iterable[str], every: Iterable[str]) -> None:
        mine = set(owned)
        for name in every:
            self.forward.sender.labels(name).set(1 if name in mine else 0)
            if name not in mine:  # another process reports it now
                self.forward.lag_events.labels(name).set(0)
                self.forward.lag_seconds.labels(name).set(0)

    def forward_condition(self, destination: str, view: Mapping[str, Any]) -> None:
        """A destination's overview (receiver.forward.admin.describe), as its sender sees it."""
        f = self.forward
        f.lag_events.labels(destination).set(view["lag_events"])
        f.lag_seconds.labels(destination).set(view["lag_seconds"])
        f.dead_letters.labels(destination).set(view["dead_letters"])
        for state in ("active", "retrying", "disabled"):
            f.state.labels(destination, state).set(1 if view["state"] == state else 0)

    def delivered(self, endpoint: str, result: str) -> None:
        """Count one answered callback (label children cached: this runs for every request)."""
        child = self._delivered.get((endpoint, result))
        if child is None:
            child = self._delivered[(endpoint, result)] = self.deliveries.labels(endpoint, result)
        child.inc()

    def observe_batch(self, outcomes: Sequence[object]) -> None:
        self.batch_size.observe(len(outcomes))
        stored = sum(
            1
            for o in outcomes
            if getattr(o, "result", None) == "stored" and getattr(o, "event_id", None) is not None
        )
        if stored:
            self.events_stored.inc(stored)

    def crosscheck_outcome(self, outcome: str) -> None:
        self.crosscheck_runs.labels(outcome).inc()

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        _forget_dead_workers(Path(self.multiprocess_dir))
        every_worker = CollectorRegistry()
        MultiProcessCollector(every_worker, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(every_worker)


class ForwardMetrics:
    """``receiver_forward_*``: what forwarding did, per destination. Gauges are set by the
    process that sends to the destination (others report 0), so the highest over the workers
    alive is the destination's."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.attempts = Counter(
            "receiver_forward_attempts",
            "Messages handed to destinations, by outcome: delivered, failed (the destination "
            "is failing), refused (the message), gone (410), dead_lettered.",
            ["destination", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "receiver_forward_latency_seconds",
            "From a callback received to its message acknowledged by the destination.",
            ["destination"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=r,
        )
        self.lag_events = Gauge(
            "receiver_forward_lag_events",
            "Messages stored and not yet taken by the destination (parked ones included).",
            ["destination"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.lag_seconds = Gauge(
            "receiver_forward_lag_seconds",
            "Age of the oldest message the destination has not taken; 0 when it is up to date.",
            ["destination"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.dead_letters = Gauge(
            "receiver_forward_dead_letters",
            "Messages the destination kept refusing, set aside (resend them by hand).",
            ["destination"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.state = Gauge(
            "receiver_forward_state",
            "1 for the destination's state: active, retrying or disabled.",
            ["destination", "state"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.sender = Gauge(
            "receiver_forward_sender",
            "1 when this process holds the destination's lease (sends to it).",
            ["destination"],
            registry=r,
            multiprocess_mode="livesum",
        )


def _forget_dead_workers(folder: Path) -> None:
    """Drop the live gauges of workers that are gone (a worker that died was restarted under a
    new pid; its last values must not speak for it). Counters stay: they happened."""
    for pid in {int(m[1]) for f in folder.iterdir() if (m := _LIVE_FILE.match(f.name))}:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, under another user
            continue

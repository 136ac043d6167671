"""A destination's condition, as its sender sees it: active, failing (retried on the schedule,
its place kept), or disabled (410 Gone, no success for ``disable_after_hours``, or by hand).

Each change returns the ``forward_state`` columns to write, so that every replica (and the query
API) reads the same condition, and logs one line when the condition changes, never one per
attempt.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from receiver.config import DestinationSettings
from receiver.forward import schedule
from receiver.forward.store import StateRow
from receiver.forward.transport import Outcome, short

log = logging.getLogger("receiver.forward")

ACTIVE = "active"
RETRYING = "retrying"
DISABLED = "disabled"


class Conditions:
    def __init__(self, destination: DestinationSettings) -> None:
        self.destination = destination
        self.disabled_at: datetime | None = None
        self.disabled_reason: str | None = None
        self.failing_since: datetime | None = None
        self.failures = 0
        self.retry_at: datetime | None = None
        self.last_error: str | None = None
        self.last_delivered_at: datetime | None = None
        self._delivered_saved: datetime | None = None
        # Why the sender holds its place without a failure (too many parked messages).
        self.holding_reason: str | None = None

    def adopt(self, row: StateRow) -> None:
        """Take the condition as stored (set by this or another replica, or by hand)."""
        if self.disabled_at is not None and row.disabled_at is None:
            log.info("destination %s: enabled", self.destination.name)
        self.disabled_at, self.disabled_reason = row.disabled_at, row.disabled_reason
        self.failing_since, self.failures = row.failing_since, row.failures
        self.retry_at, self.last_error = row.retry_at, row.last_error
        if self.last_delivered_at is None:
            self.last_delivered_at = self._delivered_saved = row.last_delivered_at

    def state(self, now: datetime) -> str:
        if self.disabled_at is not None:
            return DISABLED
        if self.failing_since is not None or self.holding_reason is not None:
            return RETRYING
        return ACTIVE

    def hold(self, now: datetime) -> float | None:
        """Seconds to wait before sending again, or None to send now."""
        if self.disabled_at is not None:
            return 1.0
        if self.retry_at is not None and self.retry_at > now:
            return (self.retry_at - now).total_seconds()
        return None

    def holding(self, reason: str) -> None:
        if self.holding_reason != reason:
            log.warning("destination %s: %s", self.destination.name, reason)
        self.holding_reason = reason

    def delivered(self, now: datetime, *, clear: bool = True) -> dict[str, Any]:
        self.last_delivered_at = now
        self.holding_reason = None
        if not clear or (self.failing_since is None and self.failures == 0):
            return {}
        log.info(
            "destination %s: delivering again after %d failed attempt(s) since %s",
            self.destination.name,
            self.failures,
            self.failing_since.isoformat() if self.failing_since else "-",
        )
        self.failing_since, self.failures, self.retry_at = None, 0, None
        return {"failing_since": None, "failures": 0, "retry_at": None, **self.unsaved()}

    def unsaved(self) -> dict[str, Any]:
        """``last_delivered_at`` when it moved since it was last written."""
        if self.last_delivered_at == self._delivered_saved:
            return {}
        self._delivered_saved = self.last_delivered_at
        return {"last_delivered_at": self.last_delivered_at}

    def failed(self, outcome: Outcome, now: datetime) -> dict[str, Any]:
        """The destination failed: try again on the schedule (or as it asked), and disable it
        once it has not succeeded for ``disable_after_hours``."""
        first = self.failing_since is None
        self.failing_since = self.failing_since or now
        self.failures += 1
        wait = schedule.delay(
            self.destination.retry_seconds, self.failures, retry_after=outcome.retry_after
        )
        self.retry_at = now + timedelta(seconds=wait)
        self.last_error = short(outcome.error or "failed")
        changes: dict[str, Any] = {
            "failing_since": self.failing_since,
            "failures": self.failures,
            "retry_at": self.retry_at,
            "last_error": self.last_error,
            "last_error_at": now,
        }
        if first:
            log.warning(
                "destination %s: failing (%s); its place is kept, trying again in %.1f s",
                self.destination.name,
                self.last_error,
                wait,
            )
        hours = self.destination.disable_after_hours
        if hours and now - self.failing_since >= timedelta(hours=hours):
            reason = (
                f"no success for {hours:g} hours (failing since "
                f"{self.failing_since.isoformat()}): {self.last_error}"
            )
            changes.update(self._disable(reason, now))
        return changes

    def refused(self, error: str, now: datetime) -> dict[str, Any]:
        self.last_error = short(error)
        return {"last_error": self.last_error, "last_error_at": now}

    def gone(self, message_id: str, outcome: Outcome, now: datetime) -> dict[str, Any]:
        reason = short(f"{outcome.error or '410 Gone'} (answering {message_id})")
        self.last_error = reason
        return {"last_error": reason, "last_error_at": now, **self._disable(reason, now)}

    def _disable(self, reason: str, now: datetime) -> dict[str, Any]:
        log.warning(
            "destination %s: disabled, keeping its place: %s", self.destination.name, reason
        )
        self.disabled_at, self.disabled_reason = now, reason[:300]
        return {"disabled_at": now, "disabled_reason": self.disabled_reason}

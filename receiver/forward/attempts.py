"""The attempts of one destination, gathered in memory and written with its next save.

For a transport whose every message is an attempt (http) each one is a row; for a broker, whose
batch is one pipelined attempt, the batch's deliveries are one row (``messages`` says how many)
and its failures are rows of their own, the first ten of a batch (a broken connection fails
them all alike). Outcomes are also counted for ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from receiver.forward.messages import Message
from receiver.forward.transport import DEAD_LETTERED, Outcome, short

FAILURES_PER_BATCH = 10


class AttemptLog:
    def __init__(
        self,
        name: str,
        *,
        per_message: bool,
        on_outcome: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self.name = name
        self.per_message = per_message
        self.on_outcome = on_outcome
        self.rows: list[dict[str, Any]] = []

    def take(self) -> list[dict[str, Any]]:
        rows, self.rows = self.rows, []
        return rows

    def record(
        self, messages: Sequence[Message], outcomes: Sequence[Outcome | None], now: datetime
    ) -> None:
        counts: dict[str, int] = {}
        delivered: list[tuple[Message, Outcome]] = []
        for message, outcome in zip(messages, outcomes, strict=True):
            if outcome is None:
                continue
            counts[outcome.kind] = counts.get(outcome.kind, 0) + 1
            if self.per_message:
                self.add(message.id, outcome.kind, outcome, now)
            elif outcome.delivered:
                delivered.append((message, outcome))
            elif counts[outcome.kind] <= FAILURES_PER_BATCH:
                self.add(message.id, outcome.kind, outcome, now)
        if delivered:
            first, outcome = delivered[0]
            self.add(first.id, outcome.kind, outcome, now, messages=len(delivered))
        if self.on_outcome:
            for kind, count in counts.items():
                self.on_outcome(self.name, kind, count)

    def dead_lettered(
        self, message_id: str, outcome: Outcome | None, now: datetime, *, error: str | None
    ) -> None:
        self.add(message_id, DEAD_LETTERED, outcome, now, error=error)
        if self.on_outcome:
            self.on_outcome(self.name, DEAD_LETTERED, 1)

    def add(
        self,
        message_id: str,
        kind: str,
        outcome: Outcome | None,
        now: datetime,
        *,
        error: str | None = None,
        messages: int = 1,
    ) -> None:
        self.rows.append(
            {
                "destination": self.name,
                "at": now,
                "message_id": message_id,
                "messages": messages,
                "outcome": kind,
                "status_code": outcome.status if outcome else None,
                "latency_ms": round(outcome.latency * 1000, 3) if outcome else 0.0,
                "error": short(error or (outcome.error if outcome else None) or "") or None,
                "response": outcome.response if outcome else None,
            }
        )

"""What a round of sending comes to: the new place in the log, what to park, what failed.

Pure functions over the messages sent and their outcomes, so every case is tested without a
destination. The rules (README, "How a callback is handled: forwarding"):

- Messages of one order key (one job) are settled in order: once one is not delivered, the ones
  after it wait for it.
- A **refused** message is parked (tried again on the schedule, then dead-lettered) with the rest
  of its job's messages of the round queued behind it; other jobs go on.
- A **failing** destination (or a 410, or a message not tried) keeps its place: the log is read
  again from the first such message, so nothing after it is lost. What was delivered after that
  point is sent again, with the same ids (at least once).
- Messages of a job that already waits in the parked table are queued behind it, unsent.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from receiver.forward.messages import Message
from receiver.forward.transport import DELIVERED, FAILED, GONE, REFUSED, Outcome

Parked = tuple[Message, int, Outcome | None]
"""A message to park: the message, its refusals so far (0: queued behind another), and the
outcome that refused it."""


@dataclass
class LogRound:
    """A round over the log (events, or finding changes)."""

    cursor: int
    delivered: list[tuple[Message, Outcome]] = field(default_factory=list)
    park: list[Parked] = field(default_factory=list)
    failure: Outcome | None = None
    gone: tuple[Message, Outcome] | None = None


def settle_log(
    messages: Sequence[Message],
    outcomes: Sequence[Outcome | None],
    *,
    blocked: Collection[str],
    cursor: int,
    head: int,
    complete: bool,
) -> LogRound:
    """``messages``: what was read past ``cursor``, in log order; ``outcomes``: one each (None for
    one not sent); ``blocked``: order keys with messages already parked; ``complete``: the read
    held every message up to ``head`` (it was not cut by its limit)."""
    round_ = LogRound(cursor=cursor)
    cut: int | None = None
    held: set[str] = set(blocked)
    for message, outcome in zip(messages, outcomes, strict=True):
        if message.order_key in held:
            round_.park.append((message, 0, None))
            continue
        if outcome is None:  # not tried: a message before it in its run failed
            cut = message.source_id if cut is None else min(cut, message.source_id)
        elif outcome.kind == DELIVERED:
            round_.delivered.append((message, outcome))
        elif outcome.kind == REFUSED:
            round_.park.append((message, 1, outcome))
            held.add(message.order_key)
        elif outcome.kind == GONE:
            cut = message.source_id if cut is None else min(cut, message.source_id)
            if round_.gone is None:
                round_.gone = (message, outcome)
        else:  # FAILED
            cut = message.source_id if cut is None else min(cut, message.source_id)
            if round_.failure is None:
                round_.failure = outcome
    if cut is not None:
        round_.cursor = cut - 1
    elif messages:
        round_.cursor = head if complete else messages[-1].source_id
    else:
        round_.cursor = max(cursor, head)
    # Past the new place the log is read again: park nothing there (it will come round again).
    round_.park = [entry for entry in round_.park if entry[0].source_id <= round_.cursor]
    return round_


@dataclass
class ParkedRound:
    """A round over parked messages (``key`` is the ``forward_messages`` row id)."""

    delivered: list[tuple[int, Message, Outcome]] = field(default_factory=list)
    refused: list[tuple[int, Message, Outcome]] = field(default_factory=list)
    failure: Outcome | None = None
    gone: tuple[Message, Outcome] | None = None


def settle_parked(
    runs: Sequence[tuple[int, Message]], outcomes: Sequence[Outcome | None]
) -> ParkedRound:
    """``runs``: (row id, message) of the parked messages sent, in order; one outcome each."""
    round_ = ParkedRound()
    stopped: set[str] = set()
    for (row_id, message), outcome in zip(runs, outcomes, strict=True):
        if message.order_key in stopped or outcome is None:
            stopped.add(message.order_key)
            continue
        if outcome.kind == DELIVERED:
            round_.delivered.append((row_id, message, outcome))
            continue
        stopped.add(message.order_key)
        if outcome.kind == REFUSED:
            round_.refused.append((row_id, message, outcome))
        elif outcome.kind == GONE:
            round_.gone = round_.gone or (message, outcome)
        elif outcome.kind == FAILED and round_.failure is None:
            round_.failure = outcome
    return round_

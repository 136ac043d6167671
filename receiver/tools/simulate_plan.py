"""The callbacks of one simulated live job, in order, and the faults that can be mixed in.

The callbacks are those Table 10 documents: script paragraph switches
(``shoot_script_sequence_no`` as a string, as in its example), RTMP state changes with a
reconnect, reply completions and the END of the stream. A step also says which job state the
fake MetaStudio moves to around it (PROCESSING before the first, SUCCEED after the last).

Faults (``Fault``), each a step of its own:

- ``forge_body``: a body for another job, sent with the URL and time of a real event (the
  signature covers URL and time, not the body: signing-notes.md). The receiver stores it; the
  cross-check flags it ``unknown_job``.
- ``stale``: an event signed an hour ago: 401.
- ``unknown_job``: a correctly signed event for a job MetaStudio does not list: stored, flagged.
- ``duplicate``: one event delivered twice: the second answer is ``duplicate``.

How a step is signed and sent is ``receiver.tools.simulate``'s business; this module only plans.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from receiver.protocol.events import EventType, RtmpState


class Fault(StrEnum):
    FORGE_BODY = "forge_body"
    STALE = "stale"
    UNKNOWN_JOB = "unknown_job"
    DUPLICATE = "duplicate"


ALL_FAULTS: tuple[Fault, ...] = tuple(Fault)
SCENE = "Spring sale"
SCRIPT = (
    "Welcome and today's agenda",
    "Product 1: what it does",
    "Product 1: price and offer",
    "Viewer questions",
    "Wrap-up and goodbye",
)


@dataclass(frozen=True, slots=True)
class Step:
    """One callback of the plan: what it is, its message, and the fault it plays if any."""

    label: str
    event_type: str
    message: dict[str, Any]
    fault: Fault | None = None
    job_state: str | None = None
    """The job state to set in the fake just before (PROCESSING) or after (SUCCEED) sending."""


def plan(
    *,
    room_id: str,
    job_id: str,
    faults: Iterable[Fault] = (),
    forged_job_id: str = "",
    unknown_job_id: str = "",
) -> list[Step]:
    """The callbacks of one live job, in order, with the faults in their places."""
    chosen = set(faults)
    ids = {"room_id": room_id, "job_id": job_id}
    stream = {
        "output_url": "rtmp://live-push.example.com/live",
        "stream_key": "sk_" + secrets.token_hex(12),
    }

    def rtmp(state: RtmpState, **extra: Any) -> Step:
        message = {**ids, **stream, "state": state.value}
        return Step(f"RTMP {state.value}", EventType.RTMP_STREAM_STATE_CHANGE, message, **extra)

    def script(number: int) -> Step:
        message = {
            **ids,
            "scene_script_name": SCENE,
            "shoot_script_sequence_no": str(number),  # a string, as in Table 10's example
            "shoot_script_title": SCRIPT[number - 1],
        }
        return Step(
            f"script #{number} {SCRIPT[number - 1]}", EventType.SHOOT_SCRIPT_SWITCH, message
        )

    def reply() -> Step:
        reply_id = secrets.token_hex(16)
        message = {**ids, "reply_id": reply_id}
        return Step(f"reply {reply_id[:8]} finished", EventType.REPLY_COMMAND_FINISH, message)

    def other_job(step: Step, new_job_id: str, fault: Fault) -> Step:
        message = {**step.message, "job_id": new_job_id}
        return Step(f"{step.label} (job {new_job_id[:8]})", step.event_type, message, fault)

    steps: list[Step] = [
        rtmp(RtmpState.CONNECTING, job_state="PROCESSING"),
        rtmp(RtmpState.CONNECTED),
        script(1),
    ]
    if Fault.DUPLICATE in chosen:
        steps.append(
            Step(
                steps[-1].label + " again", steps[-1].event_type, steps[-1].message, Fault.DUPLICATE
            )
        )
    steps.append(script(2))
    if Fault.FORGE_BODY in chosen:
        steps.append(other_job(steps[-1], forged_job_id, Fault.FORGE_BODY))
    steps.append(reply())
    if Fault.STALE in chosen:
        steps.append(
            Step(
                steps[-1].label + ", signed 1 h ago",
                steps[-1].event_type,
                steps[-1].message,
                Fault.STALE,
            )
        )
    steps += [
        script(3),
        rtmp(RtmpState.DISCONNECTED),
        rtmp(RtmpState.RECONNECTING),
        rtmp(RtmpState.CONNECTED),
        script(4),
        reply(),
    ]
    if Fault.UNKNOWN_JOB in chosen:
        steps.append(other_job(script(4), unknown_job_id, Fault.UNKNOWN_JOB))
    steps += [script(5), rtmp(RtmpState.END, job_state="SUCCEED")]
    return steps

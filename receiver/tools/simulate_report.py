"""What a simulation sent and what the receiver answered: ``Sent`` a delivery, ``SimulationReport``
the whole job, as JSON or as the table the ``simulate`` command prints.

Each delivery carries what its answer should have been (``stored``, ``duplicate`` or ``401``,
from its fault), so the report says by itself whether the receiver behaved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from receiver.protocol.ids import api_form
from receiver.protocol.signing import AuthType, SignedUri
from receiver.tools.simulate_plan import Fault


@dataclass(frozen=True, slots=True)
class Sent:
    """One delivery and what the receiver answered."""

    index: int
    label: str
    event_type: str
    job_id: str
    fault: Fault | None
    signed_at: datetime | None
    expected: str
    """``stored``, ``duplicate`` or ``401``."""
    status: int
    """0 when the receiver did not answer at all."""
    result: str | None
    """``stored`` / ``duplicate``, or the error_code of a refusal."""
    detail: str
    event_id: int | None = None

    @property
    def ok(self) -> bool:
        if self.expected == "401":
            return self.status == 401
        return self.status == 200 and self.result == self.expected

    @property
    def answer(self) -> str:
        if self.status == 0:
            return f"no answer ({self.detail})"
        text = f"{self.status} {self.result or ''}".strip()
        if self.event_id is not None:
            text += f" (event {self.event_id})"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "event_type": self.event_type,
            "job_id": self.job_id,
            "fault": self.fault.value if self.fault else None,
            "signed_at": _iso(self.signed_at) if self.signed_at else None,
            "expected": self.expected,
            "status": self.status,
            "result": self.result,
            "event_id": self.event_id,
            "detail": self.detail,
            "ok": self.ok,
        }


@dataclass
class SimulationReport:
    room_id: str
    job_id: str
    receiver_url: str
    registered_url: str
    auth_type: AuthType
    signed_uri: SignedUri
    faults: tuple[Fault, ...]
    forged_job_id: str | None = None
    unknown_job_id: str | None = None
    sent: list[Sent] = field(default_factory=list)
    job_states: list[tuple[str, datetime]] = field(default_factory=list)
    """The job's states in the fake MetaStudio, with when each was set."""
    aborted: str | None = None

    @property
    def ok(self) -> bool:
        return self.aborted is None and all(s.ok for s in self.sent)

    @property
    def flagged_job_ids(self) -> list[str]:
        """Jobs a cross-check should flag ``unknown_job``."""
        return [j for j in (self.forged_job_id, self.unknown_job_id) if j is not None]

    def stored_for_job(self) -> list[Sent]:
        """The deliveries of the simulated job that the receiver should hold, in order."""
        return [s for s in self.sent if s.job_id == self.job_id and s.expected == "stored"]

    @property
    def listed_job_id(self) -> str:
        """The job's id as MetaStudio's job query API lists it
        (``receiver.protocol.ids.api_form``)."""
        return api_form(self.job_id)

    @property
    def listed_room_id(self) -> str:
        return api_form(self.room_id)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "room_id": self.room_id,
            "job_id": self.job_id,
            "listed_room_id": self.listed_room_id,
            "listed_job_id": self.listed_job_id,
            "receiver_url": self.receiver_url,
            "registered_url": self.registered_url,
            "auth_type": self.auth_type.value,
            "signed_uri": self.signed_uri.value,
            "faults": [f.value for f in self.faults],
            "forged_job_id": self.forged_job_id,
            "unknown_job_id": self.unknown_job_id,
            "job_states": [{"state": s, "at": _iso(at)} for s, at in self.job_states],
            "sent": [s.as_json() for s in self.sent],
            "aborted": self.aborted,
        }

    def render(self) -> str:
        lines = [
            f"simulated live job {self.job_id} in room {self.room_id}",
            f"  (callbacks spell the ids so; MetaStudio's job query lists job "
            f"{self.listed_job_id} in room {self.listed_room_id})",
            f"  sent to {self.receiver_url}, signed for {self.registered_url} "
            f"({self.auth_type.value}, signed_uri={self.signed_uri.value})",
        ]
        rows = [
            (
                str(s.index),
                _iso(s.signed_at) if s.signed_at else "-",
                s.label,
                s.fault.value if s.fault else "-",
                s.expected,
                s.answer,
                "ok" if s.ok else "UNEXPECTED",
            )
            for s in self.sent
        ]
        header = ("#", "SIGNED AT", "EVENT", "FAULT", "EXPECTED", "ANSWER", "")
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
        for row in (header, *rows):
            cells = (v.ljust(w) for v, w in zip(row, widths, strict=True))
            lines.append("  " + "  ".join(cells).rstrip())
        if self.job_states:
            states = " → ".join(f"{s} ({_iso(at)})" for s, at in self.job_states)
            lines.append(f"  job in the fake MetaStudio: {states}")
        if self.aborted:
            lines.append(f"  ABORTED: {self.aborted}")
        bad = [s for s in self.sent if not s.ok]
        if not bad and not self.aborted:
            lines.append(f"  all {len(self.sent)} answers as expected")
        else:
            lines.append(f"  {len(bad)} of {len(self.sent)} answers not as expected")
        return "\n".join(lines) + "\n"


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")

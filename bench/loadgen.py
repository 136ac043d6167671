"""wrk for ``bench/ingest.py``: the Lua script that POSTs distinct callback bodies, and the parse
of wrk's report.

Bodies are built the way MetaStudio builds them (``receiver.protocol.events.encode``: compact JSON,
the
``message`` as JSON text) with placeholders, checked with ``receiver.protocol.events.decode``, and
cut into
literal pieces; the Lua script only concatenates the pieces with a job id and a sequence number.
The job id is ``<run tag, 8 hex><wrk thread, 4 digits><request counter, 20 digits>`` (32
characters, the length of MetaStudio's ids), so no two bodies of a run are equal and the rows of
one run can be counted by the tag.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from receiver.protocol.events import EventType, decode, encode

ROOM_ID = "5f1c0e2b9a7d4c3e8b6a1f0d2c4e6a8b"
_JOB = "JOBIDSLOT"
_SEQ = "SEQNOSLOT"
_SLOTS = re.compile(f"({_JOB}|{_SEQ})")


def body_templates() -> list[bytes]:
    """One body per event type the bench sends, with the two placeholders still in."""
    return [
        encode(
            EventType.RTMP_STREAM_STATE_CHANGE,
            {
                "room_id": ROOM_ID,
                "job_id": _JOB,
                "state": "CONNECTED",
                "output_url": "rtmp://live.example.com/app",
                "stream_key": "sk-" + _SEQ,
            },
        ),
        encode(
            EventType.SHOOT_SCRIPT_SWITCH,
            {
                "room_id": ROOM_ID,
                "job_id": _JOB,
                "scene_script_name": "opening",
                # A string, as in the document's example (see receiver/protocol/events.py).
                "shoot_script_sequence_no": _SEQ,
                "shoot_script_title": "Welcome",
            },
        ),
    ]


def fill(template: bytes, *, job_id: str, seq: int) -> bytes:
    filled = template.replace(_JOB.encode(), job_id.encode())
    return filled.replace(_SEQ.encode(), str(seq).encode())


def _lua_literal(piece: str) -> str:
    assert "]==]" not in piece
    return "[==[" + piece + "]==]"


def lua_script(content_type: str = "application/json", *, delay_ms: int = 0) -> str:
    """The wrk script. Its one argument (after ``--``) is the run tag, 8 hex digits.
    ``delay_ms``: each connection waits this long before each request, so that ``-c N`` sends
    about N * 1000 / (delay_ms + latency) requests a second instead of all it can."""
    entries = []
    for template in body_templates():
        # The decoder must accept what the bench sends, or the run would measure 400s.
        decode(fill(template, job_id="a" * 32, seq=1))
        parts = _SLOTS.split(template.decode("utf-8"))
        literals = ", ".join(_lua_literal(p) for p in parts[0::2])
        slots = ", ".join(f'"{"job" if s == _JOB else "seq"}"' for s in parts[1::2])
        entries.append(f"  {{parts = {{{literals}}}, slots = {{{slots}}}}},")
    templates = "\n".join(entries)
    return f"""-- Written by bench/loadgen.py: POSTs distinct MetaStudio callback bodies.
wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"

local templates = {{
{templates}
}}

local next_id = 1
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end

function init(args)
  tag = args[1]
  n = 0
end

function request()
  n = n + 1
  local values = {{job = string.format("%s%04d%020d", tag, tid, n), seq = tostring(n)}}
  local t = templates[(n % #templates) + 1]
  local out = {{t.parts[1]}}
  for i, slot in ipairs(t.slots) do
    out[#out + 1] = values[slot]
    out[#out + 1] = t.parts[i + 1]
  end
  return wrk.format(nil, nil, nil, table.concat(out))
end
""" + (f"\nfunction delay()\n  return {int(delay_ms)}\nend\n" if delay_ms else "")


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    requests_per_second: float
    latency_avg_ms: float
    latency_ms: dict[str, float]  # "50", "75", "90", "99" -> milliseconds
    non_2xx: int
    socket_errors: dict[str, int]

    @property
    def answered_2xx(self) -> int:
        return self.requests - self.non_2xx

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"answered_2xx": self.answered_2xx}


_TO_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"wrk duration {text!r} not understood")
    return float(match[1]) * _TO_MS[match[2]]


def parse_report(text: str) -> WrkResult:
    """The figures of a ``wrk --latency`` report (wrk 4.x)."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk report has no match for {pattern!r}:\n{text}")
        return match

    total = find(r"^\s*(\d+) requests in ([0-9.]+\w+),")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
        text,
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    return WrkResult(
        requests=int(total[1]),
        seconds=_ms(total[2]) / 1000,
        requests_per_second=float(find(r"^Requests/sec:\s*([0-9.]+)")[1]),
        latency_avg_ms=_ms(find(r"^\s*Latency\s+(\S+)")[1]),
        latency_ms={p: _ms(find(rf"^\s*{p}%\s+(\S+)")[1]) for p in ("50", "75", "90", "99")},
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=dict(
            zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True)
        )
        if errors
        else {"connect": 0, "read": 0, "write": 0, "timeout": 0},
    )


def run_wrk(
    *,
    url: str,
    script: Path,
    tag: str,
    threads: int,
    connections: int,
    seconds: float,
) -> tuple[WrkResult, str]:
    """Run wrk once; (figures, raw report). Raises if wrk fails or overruns its time by far."""
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        tag,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30, start_new_session=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return parse_report(done.stdout), done.stdout

"""What ``metastudio-receiver demo`` shows and checks, step by step, once everything is running.

Given a running receiver and fake MetaStudio (set up by :mod:`receiver.cli.demo`), :func:`play`
sends a simulated live job with faults injected (``receiver.tools.simulate``), then asks the
receiver's API for the cross-check, the stored events, the job's timeline, the findings and the
refusals, printing each and noting in a :class:`DemoResult` anything not as expected;
:func:`look_further` says where to look next.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from receiver.cli import events as cli_events
from receiver.cli.command import command_line
from receiver.config import Settings
from receiver.protocol.ids import id_key
from receiver.tools.simulate import simulate_job
from receiver.tools.simulate_plan import ALL_FAULTS, Fault
from receiver.tools.simulate_report import SimulationReport

if TYPE_CHECKING:
    from receiver.fake_metastudio import FakeMetaStudio
    from receiver.testing import WebhookSink

Say = Callable[..., None]


@dataclass
class DemoResult:
    """What the demo found: ok unless something was not as expected, and what."""

    ok: bool = True
    problems: list[str] = field(default_factory=list)
    base_url: str = ""

    def expect(self, condition: bool, problem: str) -> None:
        if not condition:
            self.ok = False
            self.problems.append(problem)


def play(
    say: Say,
    settings: Settings,
    fake: FakeMetaStudio,
    base_url: str,
    key: str,
    token: str,
    result: DemoResult,
) -> SimulationReport:
    """Steps 1 to 6: the simulated job, then what the receiver made of it, each checked."""
    import httpx2

    endpoint = settings.endpoints[0]
    say("1. A simulated live job: signed callbacks, with faults injected")
    report = simulate_job(
        receiver_url=f"{base_url}/callbacks/{endpoint.name}",
        registered_url=endpoint.registered_url,
        auth_type=endpoint.auth_type,
        key=key,
        signed_uri=endpoint.signed_uri,
        fake=fake,
        faults=ALL_FAULTS,
    )
    say(_indent(report.render()))
    result.expect(report.ok, "some callbacks were not answered as expected (see 1.)")
    if report.aborted:
        return report

    with httpx2.Client(
        base_url=base_url, headers={"authorization": f"Bearer {token}"}, timeout=30
    ) as api:
        say("2. The cross-check against the (fake) MetaStudio job query API: POST /v1/crosscheck")
        check = _json(api.post("/v1/crosscheck", json={"room_id": report.room_id}))
        say(
            f"   {check.get('rooms_checked', 0)} room(s) checked, "
            f"{check.get('jobs_seen', 0)} job(s) listed by MetaStudio, "
            f"{check.get('findings_opened', 0)} finding(s) opened"
        )
        result.expect(check.get("rooms_failed") == 0, "the cross-check could not ask MetaStudio")
        say("")

        say("3. Stored events: GET /v1/events (as `metastudio-receiver events`)")
        events = _json(api.get("/v1/events", params={"limit": "1000"})).get("events", [])
        table = io.StringIO()
        cli_events.print_table(events, table)
        say(_indent(table.getvalue()))
        _check_events(report, events, result)
        say(_indent(_legend(report)))
        say("")

        # By MetaStudio's spelling of the id (a dashed UUID): the callbacks spelled it without
        # dashes, and either spelling finds the job (receiver.protocol.ids).
        say(f"4. The job's timeline: GET /v1/jobs/{report.listed_job_id}")
        say(f"   (MetaStudio lists the job so; its callbacks name it {report.job_id})")
        job = _json(api.get(f"/v1/jobs/{report.listed_job_id}"))
        _job_summary(say, job)
        result.expect(
            len(job.get("timeline") or []) == len(report.stored_for_job()),
            "the job's timeline, asked for by MetaStudio's spelling of its id, is not complete",
        )
        snapshot = job.get("metastudio") or {}
        result.expect(snapshot.get("state") == "SUCCEED", "MetaStudio's job is not SUCCEED")
        result.expect(not job.get("findings"), "the simulated (real) job has findings")
        say("")

        say("5. Findings: GET /v1/findings")
        findings = _json(api.get("/v1/findings")).get("findings", [])
        for finding in findings:
            say(f"   {finding['kind']}  job {finding.get('job_id') or '-'}")
            say(f"      {finding['detail']}")
        if not findings:
            say("   (none)")
        flagged = {
            id_key(f["job_id"]) for f in findings if f.get("kind") == "unknown_job" and f["job_id"]
        }
        for job_id, what in (
            (report.forged_job_id, "the forged body"),
            (report.unknown_job_id, "the unknown job"),
        ):
            if job_id is not None:
                result.expect(
                    id_key(job_id) in flagged, f"{what} ({job_id}) was not flagged unknown_job"
                )
        result.expect(
            id_key(report.job_id) not in flagged,
            "the simulated job, listed by MetaStudio as a dashed UUID, was flagged unknown_job",
        )
        say("")

        say("6. Refused requests: GET /v1/rejections")
        rejections = _rejections(api)
        for rejection in rejections:
            skew = rejection.get("clock_skew_seconds")
            skew_text = f", clock skew {skew:.0f} s" if isinstance(skew, int | float) else ""
            say(
                f"   {rejection['received_at']}  {rejection['reason']}  "
                f"endpoint {rejection.get('endpoint')}{skew_text}"
            )
            say(f"      {rejection['detail']}")
        if not rejections:
            say("   (none)")
        result.expect(
            any(r.get("reason") == "signature_expired" for r in rejections),
            "the stale signature is not in the rejection log",
        )
        say("")
    return report


def _check_events(
    report: SimulationReport, events: list[dict[str, Any]], result: DemoResult
) -> None:
    stored = [e for e in events if e.get("job_id") == report.job_id]
    wanted = [s.event_id for s in report.stored_for_job()]
    result.expect(
        [e.get("id") for e in stored] == wanted,
        f"the job's stored events are {len(stored)}, expected {len(wanted)} in the order sent",
    )


def _legend(report: SimulationReport) -> str:
    by_job = {s.job_id: s.event_id for s in report.sent if s.event_id is not None}
    notes = []
    if report.forged_job_id in by_job:
        notes.append(
            f"event {by_job[report.forged_job_id]} is the forged body (a real event's URL and "
            "time, another job's content): the signature cannot tell, the cross-check does"
        )
    if report.unknown_job_id in by_job:
        notes.append(f"event {by_job[report.unknown_job_id]} names a job MetaStudio does not list")
    if any(s.fault == Fault.DUPLICATE for s in report.sent):
        notes.append("the duplicate delivery was stored once")
    if any(s.fault == Fault.STALE for s in report.sent):
        notes.append("the stale one was refused (401), so it is not here but in 6.")
    return "\n".join(f"- {note}" for note in notes)


def _job_summary(say: Say, job: Mapping[str, Any]) -> None:
    rtmp = job.get("rtmp") or {}
    script = job.get("script") or {}
    replies = job.get("replies") or {}
    snapshot = job.get("metastudio") or {}
    state = snapshot.get("job", {}) if isinstance(snapshot.get("job"), dict) else {}
    say(f"   events        {job.get('event_count')} ({_counts(job.get('event_counts') or {})})")
    say(f"   RTMP stream   {rtmp.get('state')} since {rtmp.get('since')}")
    say(
        f"   script        #{script.get('shoot_script_sequence_no')} "
        f'"{script.get("shoot_script_title")}" of {script.get("scene_script_name")!r}'
    )
    say(f"   replies       {replies.get('finished')} finished")
    say(
        f"   MetaStudio    {snapshot.get('state')} "
        f"(start {state.get('start_time')}, end {state.get('end_time')})"
    )
    say(f"   findings      {len(job.get('findings') or [])}")


def _counts(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))


def _rejections(api: Any) -> list[dict[str, Any]]:
    # The rejection log is written in the background: give it a moment to land.
    deadline = time.monotonic() + 5
    while True:
        found: list[dict[str, Any]] = _json(api.get("/v1/rejections")).get("rejections", [])
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def look_further(
    say: Say,
    base_url: str,
    token: str,
    config: Path,
    environ: Mapping[str, str],
    job_id: str,
    once: bool,
) -> None:
    """Step 8: where to look further (the console, curl, the ``events`` command)."""
    when = "now" if not once else "while `metastudio-receiver demo` runs (without --once)"
    say(f"8. Look further, {when}")
    say(f"   console: {base_url}/ui/jobs/{quote(job_id)} (log in with the API token below)")
    say(f"   forwarding: {base_url}/ui/destinations")
    say(f"   TOKEN={token}")
    paths = ("/v1/events", f"/v1/jobs/{job_id}", "/v1/findings", "/v1/rejections")
    for path in (*paths, "/v1/destinations"):
        say(f'   curl -H "Authorization: Bearer $TOKEN" {base_url}{path}')
    say(f"   curl {base_url}/metrics")
    say(f"   curl {base_url}/openapi.json")
    env = " ".join(f"{name}={value}" for name, value in environ.items())
    # As this process was started (.venv/bin/metastudio-receiver, python -m receiver...), so the
    # line runs as printed where the program is not on PATH.
    say(f"   {env} {command_line('events', config=str(config))}")


def show_forwarding(
    say: Say, webhook: WebhookSink, secret: str, base_url: str, token: str, result: DemoResult
) -> None:
    """Step 7: what the local webhook destination received, its signatures checked as a
    consumer would check them (receiver.testing.verify_webhook), and the destination's state."""
    import httpx2

    from receiver.testing import WebhookVerificationFailed, verify_webhook

    say("7. Forwarded to your own system: the local webhook (GET /v1/destinations)")
    with httpx2.Client(
        base_url=base_url, headers={"authorization": f"Bearer {token}"}, timeout=30
    ) as api:
        stored = {e["id"] for e in _json(api.get("/v1/events", params={"limit": "1000"}))["events"]}
        wanted = {f"evt_{event_id}" for event_id in stored}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the findings are forwarded too: until no lag
            view = _json(api.get("/v1/destinations/demo-app"))
            if wanted <= set(webhook.delivered_ids()) and view.get("lag_events") == 0:
                break
            time.sleep(0.1)
    received = webhook.delivered()
    verified = 0
    by_type: dict[str, int] = {}
    for message in received:
        try:
            kind = verify_webhook(message.body, message.headers, secret)["type"]
        except WebhookVerificationFailed:
            continue
        verified += 1
        by_type[kind] = by_type.get(kind, 0) + 1
    types = len(by_type)
    say(
        f"   {len(received)} messages received, {verified} with a valid webhook-signature "
        f"({types} types: {_counts(by_type)})"
    )
    if received:
        first = received[0]
        say(f"   the first: webhook-id {first.message_id}, {first.body[:110].decode()}...")
    say(
        f"   destination demo-app: {view.get('state')}, lag {view.get('lag_events')} events, "
        f"last delivered {view.get('last_delivered_at')}"
    )
    missing = wanted - set(webhook.delivered_ids())
    result.expect(not missing, f"{len(missing)} stored events were not forwarded to the webhook")
    result.expect(verified == len(received), "a forwarded message's signature did not verify")
    say("")


def _json(response: Any) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _indent(text: str) -> str:
    return "\n".join("   " + line if line else line for line in text.rstrip("\n").split("\n"))

"""receiver.tools.replay and ``metastudio-receiver replay``.

The round trip: events stored by receiver A (MSS_A, host_path_query, key A) are exported with
``metastudio-receiver export`` and replayed with the CLI into receiver B (another key, MSS_A_HEAD,
full_url); B then holds the same events, in the same order, each marked x-receiver-replay. Runs
that stop early (a stop event, a failing target, Ctrl-C) resume with ``--resume-after`` so that B
ends with every event exactly once. Pacing and retries are checked with an injected ``send``.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
import sqlalchemy as sa
from conftest import KEY, ServerProcess, endpoint_table, run_cli

from receiver.protocol.signing import TIME_HEADER
from receiver.store.models import Delivery, Event
from receiver.tools.replay import ReplayReport, ReplayTarget, replay
from receiver.tools.replay_plan import parse_pace, plan
from receiver.tools.replay_records import ExportError, ReplayRecord, filter_records, read_export
from receiver.tools.sender import REPLAY_HEADER, Answer, SignedCallback, build_callback, deliver

EVENTS = Event.__table__  # type: ignore[attr-defined]
DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]

REGISTERED_A = "https://hooks.a.example.com/callbacks/shop-a"
REGISTERED_B = "https://hooks.b.example.com/callbacks/shop-b?tenant=b"
KEY_B = "replay-target-key-0123456789ab"
STREAM_KEY = "fake-stream-key-not-real-0001"  # an obviously fake stream key


def rtmp(state: str, room: str = "room-1", job: str = "job-1") -> tuple[str, dict[str, Any]]:
    return "RTMP_STREAM_STATE_CHANGE", {
        "room_id": room,
        "job_id": job,
        "state": state,
        "output_url": "rtmp://live.example.com/app",
        "stream_key": STREAM_KEY,
    }


def switch(number: int | str, title: str) -> tuple[str, dict[str, Any]]:
    return "SHOOT_SCRIPT_SWITCH", {
        "room_id": "room-1",
        "job_id": "job-1",
        "scene_script_name": "spring-sale",
        "shoot_script_sequence_no": number,
        "shoot_script_title": title,
    }


def reply(reply_id: str, room: str = "room-1", job: str = "job-1") -> tuple[str, dict[str, Any]]:
    return "REPLY_COMMAND_FINISH", {"room_id": room, "job_id": job, "reply_id": reply_id}


# (event type, message, message_as). Two bodies are identical (CONNECTED twice): A keeps both
# (signed a second apart), and so must B.
SEQUENCE: list[tuple[str, dict[str, Any], str]] = [
    (*rtmp("CONNECTING"), "string"),
    (*rtmp("CONNECTED"), "string"),
    (*switch("1", "Opening"), "string"),
    (*switch(2, "Products"), "string"),
    (*reply("reply-1"), "string"),
    ("LIVE_PROGRESS_CUSTOM", {"room_id": "room-1", "job_id": "job-1", "progress": 50}, "string"),
    (*rtmp("DISCONNECTED"), "string"),
    (*rtmp("RECONNECTING"), "string"),
    (*rtmp("CONNECTED"), "string"),
    (*switch(3, "Closing"), "object"),
    (*reply("reply-2"), "string"),
    (*reply("reply-9", room="room-2", job="job-2"), "string"),
    (*rtmp("CONNECTED", room="room-2", job="job-2"), "string"),
    (*rtmp("END"), "string"),
]


def stored(url: str) -> list[dict[str, Any]]:
    """Events with their delivery's body and headers, in id order, read from the tables."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    EVENTS.c.id,
                    EVENTS.c.event_type,
                    EVENTS.c.room_id,
                    EVENTS.c.job_id,
                    EVENTS.c.message,
                    EVENTS.c.message_encoding,
                    DELIVERIES.c.body,
                    DELIVERIES.c.headers,
                )
                .select_from(EVENTS.join(DELIVERIES, DELIVERIES.c.id == EVENTS.c.delivery_id))
                .order_by(EVENTS.c.id)
            ).all()
    finally:
        engine.dispose()
    return [row._asdict() | {"body": bytes(row.body)} for row in rows]


def content(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (r["event_type"], r["room_id"], r["job_id"], r["message"], r["message_encoding"], r["body"])
        for r in rows
    ]


@dataclass
class Setup:
    a: ServerProcess
    a_url: str
    b: ServerProcess
    b_url: str
    export: Path
    a_rows: list[dict[str, Any]]

    def target(self, **changes: Any) -> ReplayTarget:
        fields: dict[str, Any] = {
            "registered_url": REGISTERED_B,
            "auth_type": "MSS_A_HEAD",
            "key": KEY_B,
            "signed_uri": "full_url",
            "time_unit": "seconds",
            "to": self.b.base_url,
        }
        fields.update(changes)
        return ReplayTarget(**fields)

    def replay_args(self, *extra: str) -> list[str]:
        return [
            "replay",
            "--to",
            REGISTERED_B,
            "--deliver-to",
            self.b.base_url,
            "--auth-type",
            "MSS_A_HEAD",
            "--key-env",
            "TARGET_KEY",
            "--signed-uri",
            "full_url",
            *extra,
        ]

    def assert_b_has_everything_once(self) -> None:
        b_rows = stored(self.b_url)
        assert content(b_rows) == content(self.a_rows)
        marks = [row["headers"].get(REPLAY_HEADER) for row in b_rows]
        assert marks == [f"shop-a:{row['id']}" for row in self.a_rows]


def setup_pair(tmp_path: Path, a_url: str, server_factory: Callable[..., ServerProcess]) -> Setup:
    a = server_factory(a_url, endpoint_table(registered_url=REGISTERED_A, keys=[KEY]))
    b_url = f"sqlite:///{tmp_path / 'b.db'}"
    b = server_factory(
        b_url,
        endpoint_table(
            name="shop-b",
            registered_url=REGISTERED_B,
            auth_type="MSS_A_HEAD",
            keys=[KEY_B],
            signed_uri="full_url",
        ),
    )
    start = time.time() - 60
    with httpx2.Client() as client:
        for index, (event_type, message, message_as) in enumerate(SEQUENCE):
            callback = build_callback(
                event_type=event_type,
                message=message,
                registered_url=REGISTERED_A,
                key=KEY,
                when=start + index,  # a second apart: A keeps the two identical bodies apart
                message_as=message_as,
            )
            answer = deliver(callback, to=a.base_url, client=client)
            assert answer.result == "stored", answer.text
    export = tmp_path / "a-export.jsonl"
    done = run_cli("export", "--config", str(a.config), "--output", str(export), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"exported {len(SEQUENCE)} events" in done.stderr
    a_rows = stored(a_url)
    assert len(a_rows) == len(SEQUENCE)
    return Setup(a=a, a_url=a_url, b=b, b_url=b_url, export=export, a_rows=a_rows)


# -- the round trip ----------------------------------------------------------------------------


def test_export_then_replay_into_another_receiver(
    tmp_path: Path, db_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    pair = setup_pair(tmp_path, db_url, server_factory)
    done = run_cli(
        *pair.replay_args("--from", str(pair.export)),
        cwd=tmp_path,
        env={"TARGET_KEY": KEY_B},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    total = len(SEQUENCE)
    assert f"replayed {total} of {total} event(s)" in done.stdout
    assert f"{total} stored, 0 duplicate, 0 failed" in done.stdout
    assert KEY_B not in done.stdout + done.stderr
    pair.assert_b_has_everything_once()
    # The same events again are new deliveries (fresh signing times), so B stores them again:
    # a replay is not deduplicated against earlier replays, only retries within one are.
    again = run_cli(
        *pair.replay_args(
            "--from", str(pair.export), "--json", "--event-type", "LIVE_PROGRESS_CUSTOM"
        ),
        cwd=tmp_path,
        env={"TARGET_KEY": KEY_B},
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["stored"] == 1


def test_replay_straight_from_the_store_with_filters(
    tmp_path: Path, db_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    pair = setup_pair(tmp_path, db_url, server_factory)
    done = run_cli(
        *pair.replay_args("--config", str(pair.a.config), "--room-id", "room-2", "--json"),
        cwd=tmp_path,
        env={"TARGET_KEY": KEY_B},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["stored"] == 2 and report["ok"] is True
    b_rows = stored(pair.b_url)
    assert [row["room_id"] for row in b_rows] == ["room-2", "room-2"]
    assert content(b_rows) == content([r for r in pair.a_rows if r["room_id"] == "room-2"])


def test_dry_run_sends_nothing_and_counts(
    tmp_path: Path, sqlite_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    pair = setup_pair(tmp_path, sqlite_url, server_factory)
    done = run_cli("replay", "--from", str(pair.export), "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"would replay {len(SEQUENCE)} event(s)" in done.stdout
    assert "event type RTMP_STREAM_STATE_CHANGE: 7" in done.stdout
    assert "endpoint shop-a: 14" in done.stdout
    assert "dry run: nothing was sent" in done.stdout

    done = run_cli(
        *pair.replay_args(
            "--config",
            str(pair.a.config),
            "--event-type",
            "REPLY_COMMAND_FINISH,SHOOT_SCRIPT_SWITCH",
            "--dry-run",
            "--json",
            "--pace",
            "10/s",
        ),
        cwd=tmp_path,
        env={"TARGET_KEY": KEY_B},
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["total"] == 6
    assert summary["by_event_type"] == {"SHOOT_SCRIPT_SWITCH": 3, "REPLY_COMMAND_FINISH": 3}
    assert summary["target"] == pair.b.base_url + "/callbacks/shop-b?tenant=b"
    assert summary["estimated_seconds"] == pytest.approx(0.5)
    assert summary["first_event_id"] == pair.a_rows[2]["id"]
    assert stored(pair.b_url) == []


def test_pace_is_a_lower_bound(
    tmp_path: Path, sqlite_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    pair = setup_pair(tmp_path, sqlite_url, server_factory)
    done = run_cli(
        *pair.replay_args("--from", str(pair.export), "--pace", "25/s", "--json"),
        cwd=tmp_path,
        env={"TARGET_KEY": KEY_B},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["stored"] == len(SEQUENCE)
    assert report["elapsed_seconds"] >= (len(SEQUENCE) - 1) / 25 * 0.95
    pair.assert_b_has_everything_once()


# -- stopping and resuming ---------------------------------------------------------------------


def resume(
    pair: Setup, tmp_path: Path, after: int, *extra: str
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        *pair.replay_args("--from", str(pair.export), "--resume-after", str(after), *extra),
        cwd=tmp_path,
        env={"TARGET_KEY": KEY_B},
    )


def test_stopped_run_resumes_exactly(
    tmp_path: Path, sqlite_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    pair = setup_pair(tmp_path, sqlite_url, server_factory)
    stop = threading.Event()

    def progress(report: ReplayReport) -> None:
        if report.stored == 4:
            stop.set()

    report = replay(read_export(pair.export), target=pair.target(), stop=stop, progress=progress)
    assert report.interrupted and report.stored == 4 and report.failed == 0
    assert report.last_event_id == pair.a_rows[3]["id"]
    assert report.uncertain_event_id is None
    assert len(stored(pair.b_url)) == 4

    done = resume(pair, tmp_path, report.last_event_id)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replayed 10 of 10" in done.stdout and "4 skipped by --resume-after" in done.stdout
    pair.assert_b_has_everything_once()


def test_failing_target_stops_the_run_at_an_exact_point(
    tmp_path: Path, sqlite_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    pair = setup_pair(tmp_path, sqlite_url, server_factory)
    calls: list[SignedCallback] = []
    target = pair.target()

    def send(callback: SignedCallback) -> Answer:
        """The target answers for five events, then its store is unavailable."""
        calls.append(callback)
        if len(calls) > 5:
            body = b'{"error_code":"RCV.STORE_UNAVAILABLE","error_msg":"store is down"}'
            return Answer(status=503, json=json.loads(body), text=body.decode(), stored=False)
        return deliver(callback, to=target.to)

    report = replay(read_export(pair.export), target=target, send=send, retries=1)
    assert not report.interrupted and not report.ok
    assert (report.stored, report.failed) == (5, 1)
    assert report.last_event_id == pair.a_rows[4]["id"]
    assert report.failed_event_ids == (pair.a_rows[5]["id"],)
    assert "503" in (report.error or "") and "store is down" in (report.error or "")
    assert len(calls) == 7  # five, then one event tried twice (one retry), then the run stops
    assert calls[5] is calls[6], "a retry resends the same signed request"

    done = resume(pair, tmp_path, report.last_event_id)
    assert done.returncode == 0, done.stdout + done.stderr
    pair.assert_b_has_everything_once()


def test_ctrl_c_stops_cleanly_and_says_how_to_continue(
    tmp_path: Path, sqlite_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    pair = setup_pair(tmp_path, sqlite_url, server_factory)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    env["TARGET_KEY"] = KEY_B
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "receiver",
            *pair.replay_args("--from", str(pair.export), "--pace", "5/s"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(stored(pair.b_url)) < 2:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the replay did not start"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, out + err
    assert "Traceback" not in err
    line = next(line for line in out.splitlines() if "--resume-after" in line)
    after = int(line.rsplit(" ", 1)[1])
    sent = stored(pair.b_url)
    assert len(sent) < len(SEQUENCE)
    # Every event up to the resume point is in B, and nothing after it.
    assert [row["headers"][REPLAY_HEADER] for row in sent] == [
        f"shop-a:{row['id']}" for row in pair.a_rows if row["id"] <= after
    ]
    done = resume(pair, tmp_path, after)
    assert done.returncode == 0, done.stdout + done.stderr
    pair.assert_b_has_everything_once()


def test_replay_command_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "metastudio-receiver/export/v1", "event_id": 1}\n')
    done = run_cli("replay", "--from", str(bad), "--to", REGISTERED_B, "--key", KEY_B, cwd=tmp_path)
    assert done.returncode == 1
    assert "line 1: body_b64" in done.stderr and "Traceback" not in done.stderr
    done = run_cli("replay", "--from", str(bad), cwd=tmp_path)
    assert done.returncode == 2 and "--to" in done.stderr
    done = run_cli("replay", "--from", str(bad), "--to", REGISTERED_B, cwd=tmp_path)
    assert done.returncode == 2 and "needs a key" in done.stderr
    done = run_cli("replay", "--from", str(bad), "--dry-run", "--pace", "fast-ish", cwd=tmp_path)
    assert done.returncode == 2 and "--pace" in done.stderr


# -- the library, with an injected send ---------------------------------------------------------


T0 = datetime(2024, 9, 10, 0, 30, tzinfo=UTC)


def record(event_id: int, seconds: float, body: bytes | None = None) -> ReplayRecord:
    return ReplayRecord(
        event_id=event_id,
        endpoint="shop-a",
        event_type="X",
        room_id="room-1",
        job_id="job-1",
        received_at=T0 + timedelta(seconds=seconds),
        signed_at=None,
        body=body
        if body is not None
        else b'{"event_type":"X","message":"{\\"n\\":%d}"}' % event_id,
    )


class Recorder:
    """A target that stores everything, remembering when each request came."""

    def __init__(self, answers: list[Answer | Exception] | None = None) -> None:
        self.calls: list[tuple[float, SignedCallback]] = []
        self.answers = answers or []

    def __call__(self, callback: SignedCallback) -> Answer:
        self.calls.append((time.monotonic(), callback))
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return Answer(200, {"result": "stored"}, "", True)

    def gaps(self) -> list[float]:
        times = [at for at, _ in self.calls]
        return [later - earlier for earlier, later in itertools.pairwise(times)]


TARGET = ReplayTarget(registered_url=REGISTERED_B, auth_type="MSS_A_HEAD", key=KEY_B)


def test_original_pace_keeps_the_gaps_capped_and_scaled() -> None:
    records = [record(1, 0), record(2, 0.4), record(3, 0.4), record(4, 100), record(5, 100.2)]
    send = Recorder()
    report = replay(records, target=TARGET, pace="original", speed=2, max_gap=0.5, send=send)
    assert report.ok and report.stored == 5
    expected = [0.2, 0.0, 0.25, 0.1]  # 0.4/2, 0, min(99.6, 0.5)/2, 0.2/2
    for got, want in zip(send.gaps(), expected, strict=True):
        assert got >= want - 0.02
    assert sum(send.gaps()) < sum(expected) + 1.0
    assert plan(records, TARGET, pace="original", speed=2, max_gap=0.5).estimated_seconds == (
        pytest.approx(sum(expected))
    )


def test_marks_and_fresh_signatures() -> None:
    send = Recorder()
    before = time.time()
    replay([record(7, 0), record(9, 1)], target=TARGET, send=send, source="prod")
    marks = [callback.headers[REPLAY_HEADER] for _, callback in send.calls]
    assert marks == ["prod:7", "prod:9"]
    for _, callback in send.calls:
        assert int(callback.headers[TIME_HEADER], 16) >= int(before)  # signed now, not then


def test_identical_bodies_never_share_a_signing_time() -> None:
    body = b'{"event_type":"X","message":"{}"}'
    target = ReplayTarget(registered_url=REGISTERED_A, key=KEY, time_unit="milliseconds")
    send = Recorder()
    replay([record(1, 0, body), record(2, 0, body), record(3, 0, body)], target=target, send=send)
    times = [parse_qs(urlsplit(callback.url).query)["hwTime"][0] for _, callback in send.calls]
    assert len(set(times)) == 3


def test_a_new_run_never_shares_a_signing_time_with_the_last_one() -> None:
    body = b'{"event_type":"X","message":"{}"}'
    target = ReplayTarget(registered_url=REGISTERED_A, key=KEY)  # hwTime in whole seconds
    send = Recorder()
    replay([record(1, 0, body)], target=target, send=send)
    replay([record(1, 0, body)], target=target, send=send, start_after=None)
    times = [parse_qs(urlsplit(callback.url).query)["hwTime"][0] for _, callback in send.calls]
    assert times[0] != times[1], "the receiver would take the second for a retry of the first"


def test_retries_what_may_succeed_and_not_what_cannot() -> None:
    unavailable = Answer(503, {"error_code": "RCV.STORE_UNAVAILABLE"}, "", False)
    refused = Answer(
        401, {"error_code": "RCV.SIGNATURE_MISMATCH", "error_msg": "no key"}, "", False
    )
    send = Recorder([httpx2.ConnectError("refused"), unavailable])
    report = replay([record(1, 0)], target=TARGET, send=send, retries=2)
    assert report.ok and len(send.calls) == 3
    assert send.calls[0][1] is send.calls[2][1]

    send = Recorder([refused])
    report = replay([record(1, 0), record(2, 1)], target=TARGET, send=send, retries=3)
    assert len(send.calls) == 1 and report.failed == 1 and report.last_event_id is None
    assert report.error == "event 1: answered 401 RCV.SIGNATURE_MISMATCH: no key"

    send = Recorder([refused, refused])
    report = replay(
        [record(1, 0), record(2, 1), record(3, 2)], target=TARGET, send=send, keep_going=True
    )
    assert report.failed_event_ids == (1, 2) and report.stored == 1 and report.last_event_id == 3


def test_keyboard_interrupt_during_a_delivery_is_reported() -> None:
    def send(callback: SignedCallback) -> Answer:
        if callback.headers[REPLAY_HEADER].endswith(":2"):
            raise KeyboardInterrupt
        return Answer(200, {"result": "duplicate"}, "", True)

    report = replay([record(1, 0), record(2, 1), record(3, 2)], target=TARGET, send=send)
    assert report.interrupted and report.duplicate == 1 and report.last_event_id == 1
    assert report.uncertain_event_id == 2 and not report.ok


def test_resume_after_an_id_that_is_not_there() -> None:
    records = [record(2, 0), record(4, 1), record(6, 2)]
    assert plan(records, start_after=4).total == 1
    assert plan(records, start_after=5).first_event_id == 6
    assert plan(records, start_after=1).skipped == 0


def test_plan_and_filters() -> None:
    records = [record(1, 0), record(2, 30), replace_room(record(3, 90), "room-2")]
    chosen = plan(records, TARGET)
    assert chosen.total == 3 and chosen.span_seconds == 90
    assert chosen.by_event_type == {"X": 3} and chosen.target == REGISTERED_B
    assert [r.event_id for r in filter_records(records, room_id="room-2")] == [3]
    assert [r.event_id for r in filter_records(records, until=T0 + timedelta(seconds=30))] == [1, 2]


def replace_room(item: ReplayRecord, room: str) -> ReplayRecord:
    return dataclasses.replace(item, room_id=room)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "line 2: not JSON"),
        ("[1]", "line 2: not a JSON object"),
        ('{"format": "other/v9", "event_id": 1, "body_b64": ""}', "format"),
        ('{"event_id": "1", "body_b64": ""}', "event_id"),
        ('{"event_id": 1, "body_b64": "***"}', "base64"),
        (
            '{"event_id": 1, "body_b64": "", "endpoint": "a", "event_type": "X", "received_at": 5}',
            "received_at",
        ),
    ],
)
def test_bad_export_lines_are_named(tmp_path: Path, line: str, problem: str) -> None:
    good = {
        "event_id": 1,
        "endpoint": "a",
        "event_type": "X",
        "body_b64": base64.b64encode(b"{}").decode(),
    }
    path = tmp_path / "export.jsonl"
    path.write_text(json.dumps(good) + "\n" + line + "\n\n")
    with pytest.raises(ExportError, match=problem):
        read_export(path)
    with pytest.raises(ExportError, match="no such file"):
        read_export(tmp_path / "missing.jsonl")


def test_parse_pace() -> None:
    assert parse_pace("original") == "original"
    assert parse_pace("50/s") == 50.0 and parse_pace("2.5") == 2.5
    assert parse_pace("max") is None and parse_pace(None) is None
    for bad in ("0/s", "-1", "nan", "fast-ish"):
        with pytest.raises(ValueError):
            parse_pace(bad)

"""``replay``: deliver stored or exported events again, in order, re-signed for a target.

The command around :func:`receiver.tools.replay.replay`: reads the records (an export file with
``--from``, or the store with ``--config`` and the ``events`` filters), says what would be sent
(``--dry-run``), shows progress on stderr, and prints a summary. Ctrl-C stops between two
deliveries and the summary gives the exact ``--resume-after`` that continues the run.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any, TextIO

from receiver.cli.signing_options import (
    EXIT_INTERRUPTED,
    EXIT_NOT_STORED,
    EXIT_STORED,
    UsageError,
    add_signing,
    fail,
    positive,
    shown_url,
    signing_key,
)
from receiver.protocol.signing import AuthType, SignedUri, TimeUnit

# -- argument types ----------------------------------------------------------------------------


def _pace(text: str) -> str | float | None:
    from receiver.tools.replay_plan import parse_pace

    try:
        return parse_pace(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


# -- replay ------------------------------------------------------------------------------------


class ProgressLine:
    """Progress on stderr: one line rewritten in place on a terminal (at most 10 times a
    second), otherwise a line every ``every`` events, so logs stay readable."""

    def __init__(self, total: int, *, out: TextIO, every: int = 100) -> None:
        self.total = total
        self.out = out
        self.every = every
        self.tty = out.isatty()
        self.shown_at = 0.0
        self.dirty = False

    def __call__(self, report: Any) -> None:
        done = report.stored + report.duplicate + report.failed
        text = (
            f"replay: {done}/{self.total} (stored {report.stored}, duplicate "
            f"{report.duplicate}, failed {report.failed})"
        )
        if self.tty:
            now = time.monotonic()
            if now - self.shown_at >= 0.1 or done == self.total:
                self.out.write("\r" + text)
                self.out.flush()
                self.shown_at, self.dirty = now, True
        elif done % self.every == 0 or done == self.total:
            self.out.write(text + "\n")
            self.out.flush()

    def close(self) -> None:
        if self.dirty:
            self.out.write("\n")
            self.out.flush()
            self.dirty = False


def _records(args: argparse.Namespace, environ: Mapping[str, str]) -> list[Any]:
    from receiver.cli.events import filters_from
    from receiver.tools.replay_records import filter_records, read_export, read_store

    filters = filters_from(args)
    if args.from_file is not None:
        source = sys.stdin if args.from_file == "-" else args.from_file
        return filter_records(read_export(source), **filters)
    from receiver.cli.store_access import open_store
    from receiver.config import load_settings

    settings = load_settings(path=args.config, environ=environ)
    with open_store(settings, config=args.config) as engine, engine.connect() as conn:
        return read_store(conn, **filters)


def _on_ctrl_c(stop: threading.Event) -> Any:
    """First Ctrl-C: stop after the delivery in flight. Second: stop at once."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            "\nreplay: stopping after the delivery in flight (Ctrl-C again to stop at once)",
            file=sys.stderr,
        )

    return signal.signal(signal.SIGINT, handler)


def cmd_replay(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from receiver.tools import replay
    from receiver.tools.replay_plan import plan
    from receiver.tools.replay_records import resume_point

    if args.from_file is not None and args.config is not None:
        return fail("replay", "give --from FILE or --config (the store), not both")
    try:
        target = None
        if args.to is not None:
            key = signing_key(args, environ)
            target = replay.ReplayTarget(
                registered_url=args.to,
                auth_type=args.auth_type or AuthType.MSS_A.value,
                key=key,
                signed_uri=args.signed_uri or SignedUri.HOST_PATH_QUERY.value,
                time_unit=args.time_unit or TimeUnit.SECONDS.value,
                to=args.deliver_to,
            )
            target.check()
        elif not args.dry_run:
            raise UsageError("--to (the registered callback URL of the target) is required")
    except (UsageError, ValueError) as exc:
        return fail("replay", str(exc))
    records = _records(args, environ)
    if args.dry_run:
        chosen = plan(
            records,
            target,
            start_after=args.resume_after,
            pace=args.pace,
            speed=args.speed,
            max_gap=args.max_gap,
        )
        if args.json:
            print(json.dumps({"dry_run": True, **chosen.as_json()}, default=str))
        else:
            print("\n".join(chosen.lines()))
            print("dry run: nothing was sent")
        return EXIT_STORED
    assert target is not None
    stop = threading.Event()
    remaining = len(records) - resume_point(records, args.resume_after)
    progress = None if args.quiet else ProgressLine(remaining, out=sys.stderr)
    previous = _on_ctrl_c(stop)
    try:
        report = replay.replay(
            records,
            target=target,
            pace=args.pace,
            speed=args.speed,
            max_gap=args.max_gap,
            start_after=args.resume_after,
            keep_going=args.keep_going,
            retries=args.retries,
            progress=progress,
            stop=stop,
            source=args.source,
            timeout=args.timeout,
        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if progress is not None:
            progress.close()
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        print("\n".join(_summary(report, target, args.resume_after)))
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_STORED if report.ok else EXIT_NOT_STORED


def _summary(report: Any, target: Any, resumed_after: int | None) -> list[str]:
    from receiver.tools.sender import retarget

    where = shown_url(retarget(target.registered_url, target.to))
    done = report.stored + report.duplicate
    lines = [
        f"replayed {done} of {report.total - report.skipped} event(s) to {where}: "
        f"{report.stored} stored, {report.duplicate} duplicate, {report.failed} failed "
        f"in {report.elapsed_seconds:.1f} s"
        + (f" ({report.skipped} skipped by --resume-after)" if report.skipped else "")
    ]
    if report.failed_event_ids:
        shown = ", ".join(str(i) for i in report.failed_event_ids[:20])
        more = len(report.failed_event_ids) - 20
        lines.append("failed event ids: " + shown + (f" and {more} more" if more > 0 else ""))
    if report.error:
        lines.append(("stopped: " if not report.ok else "last failure: ") + report.error)
    if report.uncertain_event_id is not None:
        lines.append(
            f"event {report.uncertain_event_id} was on its way when the run stopped: it may "
            "have been stored"
        )
    if report.interrupted or (report.remaining and not report.ok):
        resume = report.last_event_id if report.last_event_id is not None else resumed_after
        state = "interrupted" if report.interrupted else "stopped"
        fix = "" if report.interrupted else "fix the problem above, then "
        if resume is None:
            lines.append(f"{state} before any event was confirmed: {fix}run the same command again")
        else:
            lines.append(
                f"{state} after event {resume}; {fix}continue with: --resume-after {resume}"
            )
    return lines


# -- registration ------------------------------------------------------------------------------


def register(commands: Any) -> None:
    """Add ``replay`` to the ``metastudio-receiver`` subcommands."""
    from receiver.cli.events import add_filters

    rep = commands.add_parser(
        "replay",
        help="deliver stored or exported events again, re-signed for a target",
        description="Deliver events again, in their original order, with their original bodies, "
        "signed for the target at send time and marked x-receiver-replay. Reads an export "
        "file (--from) or the store (--config and filters).",
    )
    target = rep.add_argument_group("target")
    target.add_argument("--to", metavar="URL", help="the target's registered callback URL")
    target.add_argument(
        "--deliver-to", metavar="BASE_URL", help="where the target listens, if not at --to"
    )
    add_signing(rep, what="the target")
    rep.add_argument(
        "--from",
        dest="from_file",
        metavar="FILE",
        help="export file, archive (.jsonl.gz) or archive folder; - = stdin",
    )
    add_filters(rep)
    rep.add_argument("--dry-run", action="store_true", help="say what would be sent; send none")
    rep.add_argument(
        "--pace",
        type=_pace,
        default=None,
        help="'original' (the original gaps), a rate like '50/s', or 'max' (default)",
    )
    rep.add_argument("--speed", type=positive, default=1.0, help="with original: N times faster")
    rep.add_argument(
        "--max-gap", type=positive, default=60.0, help="with original: longest wait (s)"
    )
    rep.add_argument("--resume-after", type=int, metavar="EVENT_ID", help="skip up to this event")
    rep.add_argument(
        "--keep-going", action="store_true", help="go on after an event that cannot be delivered"
    )
    rep.add_argument("--retries", type=_count, default=3, help="per event (default 3)")
    rep.add_argument("--timeout", type=positive, default=10.0, help="seconds per request")
    rep.add_argument("--source", help="name in x-receiver-replay (default: the endpoint)")
    rep.add_argument("--quiet", action="store_true", help="no progress on stderr")
    rep.add_argument("--json", action="store_true", help="print the report as JSON")
    rep.set_defaults(run=cmd_replay)

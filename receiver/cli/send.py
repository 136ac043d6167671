"""``send`` and ``replay``: sign callbacks as MetaStudio does and deliver them from the shell.

``send`` builds (or reads) one event, signs it for an endpoint and prints the receiver's answer;
its exit status says whether it was stored. ``replay`` delivers stored or exported events again,
in order, re-signed for a target endpoint; Ctrl-C stops between two deliveries and prints the
exact ``--resume-after`` that continues the run.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from receiver.protocol.signing import AuthType, SignedUri, TimeUnit, mask_secrets_in

EXIT_STORED = 0
EXIT_NOT_STORED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Usage(Exception):
    """A problem with the arguments found after parsing (exit 2, one line)."""


# -- argument types ----------------------------------------------------------------------------


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _moment(text: str) -> float:
    """Unix seconds (``1725928200``, ``1725928200.5``) or RFC 3339 (``2024-09-10T00:30:00Z``)."""
    try:
        return float(text)
    except ValueError:
        pass
    from receiver.errors import QueryError
    from receiver.store.queries import parse_time

    try:
        moment = parse_time("--at", text)
    except QueryError as exc:
        raise argparse.ArgumentTypeError(exc.message + ", or Unix seconds") from None
    assert moment is not None
    return moment.timestamp()


def _pace(text: str) -> str | float | None:
    from receiver.tools.replay import parse_pace

    try:
        return parse_pace(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("must be NAME: VALUE")
    return name.strip().lower(), value.strip()


def _add_signing(parser: argparse.ArgumentParser, *, what: str) -> None:
    group = parser.add_argument_group(f"signing (as MetaStudio would for {what})")
    group.add_argument(
        "--auth-type",
        type=str.upper,
        choices=[member.value for member in AuthType],
        help="default MSS_A (or the endpoint's)",
    )
    keys = group.add_mutually_exclusive_group()
    keys.add_argument("--key", help="the signing key (visible to other users: prefer --key-env)")
    keys.add_argument("--key-env", metavar="VAR", help="environment variable holding the key")
    group.add_argument(
        "--signed-uri",
        choices=[member.value for member in SignedUri],
        help="what is signed (default host_path_query, see signing-notes.md)",
    )
    group.add_argument(
        "--time-unit",
        choices=[TimeUnit.SECONDS.value, TimeUnit.MILLISECONDS.value],
        help="hwTime in seconds (default) or milliseconds",
    )


def _key(args: argparse.Namespace, environ: Mapping[str, str], default: str = "") -> str:
    if args.key_env:
        value = environ.get(args.key_env)
        if not value:
            raise _Usage(f"--key-env: environment variable {args.key_env} is not set")
        return value
    return str(args.key or default)


def _fail(command: str, message: str) -> int:
    print(f"metastudio-receiver {command}: {message}", file=sys.stderr)
    return EXIT_USAGE


# -- send --------------------------------------------------------------------------------------


def _body_from_file(args: argparse.Namespace) -> tuple[str, bytes | None, dict[str, Any] | None]:
    """(event type, body to send as is, or message to encode) from ``--file``.

    The file is an export record (its original bytes are sent), an event JSON whose ``message``
    is an object (encoded per ``--message-as``), a message object with ``--event-type``, or a
    body sent exactly as it is (anything else, e.g. a captured body or a deliberately bad one).
    """
    path = args.file
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    if args.raw:
        return args.event_type or "", raw, None
    try:
        data = json.loads(raw)
    except ValueError:
        return args.event_type or "", raw, None
    if isinstance(data, dict) and isinstance(data.get("body_b64"), str):
        try:
            body = base64.b64decode(data["body_b64"], validate=True)
        except (binascii.Error, ValueError):
            raise _Usage(f"--file {path}: body_b64 is not valid base64") from None
        return str(data.get("event_type", "")), body, None
    if isinstance(data, dict) and "event_type" in data and isinstance(data.get("message"), dict):
        return str(data["event_type"]), None, data["message"]
    if isinstance(data, dict) and args.event_type and "event_type" not in data:
        return args.event_type, None, data
    return args.event_type or "", raw, None


def _config_endpoint(args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    from receiver.config import load_settings

    settings = load_settings(path=args.config, environ=environ)
    if args.endpoint is None:
        if len(settings.endpoints) != 1:
            raise _Usage("--endpoint: the config has several endpoints (or none); name one")
        return settings.endpoints[0]
    endpoint = settings.endpoint(args.endpoint)
    if endpoint is None:
        raise _Usage(f"--endpoint: no endpoint named {args.endpoint!r} in the config")
    return endpoint


def cmd_send(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from receiver.tools import sender

    try:
        endpoint = None
        if args.endpoint is not None or args.config is not None:
            endpoint = _config_endpoint(args, environ)
        url = args.url or (endpoint.registered_url if endpoint else None)
        if not url:
            raise _Usage("--url (the registered callback URL) or --endpoint is required")
        auth_type = args.auth_type or (endpoint.auth_type.value if endpoint else "MSS_A")
        key = _key(args, environ, endpoint.keys[0] if endpoint and endpoint.keys else "")
        if auth_type != AuthType.NONE and not key:
            raise _Usage(f"--key or --key-env is required for {auth_type}")
        signed_uri = args.signed_uri or (endpoint.signed_uri.value if endpoint else None)
        time_unit = args.time_unit or (
            endpoint.time_unit.value
            if endpoint and endpoint.time_unit != TimeUnit.AUTO
            else TimeUnit.SECONDS.value
        )
        if args.file is not None:
            event_type, body, message = _body_from_file(args)
        elif args.event_type:
            event_type, body, message = args.event_type, None, args.message or {}
        else:
            raise _Usage("give --event-type (with --message) or --file")
        callback = sender.build_callback(
            event_type=event_type,
            message=message,
            body=body,
            registered_url=url,
            auth_type=auth_type,
            key=key,
            when=args.at,
            signed_uri=signed_uri or SignedUri.HOST_PATH_QUERY.value,
            time_unit=time_unit,
            message_as=args.message_as,
            extra_headers=dict(args.header or []),
        )
    except (_Usage, ValueError) as exc:
        return _fail("send", str(exc))
    except OSError as exc:
        return _fail("send", f"--file: {exc.strerror}: {exc.filename}")
    import httpx2

    target = sender.retarget(callback.url, args.to)
    try:
        answer = sender.deliver(callback, to=args.to, timeout=args.timeout)
    except httpx2.TransportError as exc:
        problem = mask_secrets_in(f"{type(exc).__name__}: {exc}")
        print(f"no answer from {_shown(target)}: {problem}", file=sys.stderr)
        return EXIT_NOT_STORED
    print(_status_line(answer), file=sys.stderr)
    if answer.json is not None:
        print(json.dumps(answer.json, ensure_ascii=False))
    elif answer.text:
        print(answer.text)
    return EXIT_STORED if answer.stored else EXIT_NOT_STORED


def _shown(url: str) -> str:
    """A URL for messages, without its query (hwSecret is a credential)."""
    return url.partition("?")[0]


def _status_line(answer: Any) -> str:
    data = answer.json if isinstance(answer.json, dict) else {}
    if answer.stored:
        return (
            f"{answer.status} {data.get('result')}: delivery {data.get('delivery_id')}, "
            f"event {data.get('event_id')}"
        )
    code = data.get("error_code") or ""
    return f"{answer.status} not stored {code}".rstrip() + (
        f": {data['error_msg']}" if data.get("error_msg") else ""
    )


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
    from receiver.tools import replay

    filters = filters_from(args)
    if args.from_file is not None:
        source = sys.stdin if args.from_file == "-" else args.from_file
        return replay.filter_records(replay.read_export(source), **filters)
    from receiver.config import load_settings
    from receiver.store.writer import create_engine_for

    settings = load_settings(path=args.config, environ=environ)
    engine = create_engine_for(settings.database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return replay.read_store(conn, **filters)
    finally:
        engine.dispose()


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

    if args.from_file is not None and args.config is not None:
        return _fail("replay", "give --from FILE or --config (the store), not both")
    try:
        target = None
        if args.to is not None:
            key = _key(args, environ)
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
            raise _Usage("--to (the registered callback URL of the target) is required")
    except (_Usage, ValueError) as exc:
        return _fail("replay", str(exc))
    records = _records(args, environ)
    if args.dry_run:
        chosen = replay.plan(
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
    remaining = len(records) - replay.resume_point(records, args.resume_after)
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

    where = _shown(retarget(target.registered_url, target.to))
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
    """Add ``send`` and ``replay`` to the ``metastudio-receiver`` subcommands."""
    send = commands.add_parser(
        "send",
        help="sign one callback as MetaStudio does, deliver it, print the answer",
        description="Build (or read) one event, sign it for an endpoint, deliver it and print "
        "the answer. Exit status 0 only when the receiver stored it (or already had it).",
    )
    where = send.add_argument_group("where")
    where.add_argument("--url", help="the registered callback URL (what is signed)")
    where.add_argument(
        "--to", metavar="BASE_URL", help="where the receiver listens, e.g. http://127.0.0.1:8080"
    )
    where.add_argument(
        "--config", help="TOML file: URL, auth type, key and form from one of its endpoints"
    )
    where.add_argument("--endpoint", metavar="NAME", help="that endpoint (default: the only one)")
    _add_signing(send, what="the endpoint")
    what = send.add_argument_group("what")
    what.add_argument("--event-type", help="e.g. SHOOT_SCRIPT_SWITCH")
    what.add_argument("--message", type=_json_object, help="the message, a JSON object")
    what.add_argument(
        "--file",
        help="a body, an event JSON, a message (with --event-type) or an export record; - = stdin",
    )
    what.add_argument("--raw", action="store_true", help="send --file exactly as it is")
    what.add_argument("--message-as", choices=["string", "object"], default="string")
    what.add_argument(
        "--at",
        type=_moment,
        help="signing time, Unix seconds or RFC 3339 (default now; to test stale/future)",
    )
    what.add_argument(
        "--header", type=_header, action="append", metavar="'NAME: VALUE'", help="extra header"
    )
    send.add_argument("--timeout", type=_positive, default=10.0, help="seconds (default 10)")
    send.set_defaults(run=cmd_send)

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
    _add_signing(rep, what="the target")
    rep.add_argument("--from", dest="from_file", metavar="FILE", help="export file; - = stdin")
    add_filters(rep)
    rep.add_argument("--dry-run", action="store_true", help="say what would be sent; send none")
    rep.add_argument(
        "--pace",
        type=_pace,
        default=None,
        help="'original' (the original gaps), a rate like '50/s', or 'max' (default)",
    )
    rep.add_argument("--speed", type=_positive, default=1.0, help="with original: N times faster")
    rep.add_argument(
        "--max-gap", type=_positive, default=60.0, help="with original: longest wait (s)"
    )
    rep.add_argument("--resume-after", type=int, metavar="EVENT_ID", help="skip up to this event")
    rep.add_argument(
        "--keep-going", action="store_true", help="go on after an event that cannot be delivered"
    )
    rep.add_argument("--retries", type=_count, default=3, help="per event (default 3)")
    rep.add_argument("--timeout", type=_positive, default=10.0, help="seconds per request")
    rep.add_argument("--source", help="name in x-receiver-replay (default: the endpoint)")
    rep.add_argument("--quiet", action="store_true", help="no progress on stderr")
    rep.add_argument("--json", action="store_true", help="print the report as JSON")
    rep.set_defaults(run=cmd_replay)

"""``diagnose``, ``simulate`` and ``demo``: thin commands over the modules of those names.

``register(commands)`` adds them to the ``metastudio-receiver`` sub-command parser.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import Any

import orjson

from receiver.cli.command import CommandError, command_line
from receiver.errors import ConfigError, MetaStudioUnavailable, ReceiverError

_PROG = "metastudio-receiver"


def _keys(args: argparse.Namespace, environ: Mapping[str, str]) -> list[str]:
    keys = list(args.key or [])
    for variable in args.key_env or []:
        text = environ.get(variable)
        if text is None:
            raise ConfigError(f"--key-env: environment variable {variable} is not set")
        found = [part.strip() for part in text.split(",") if part.strip()]
        if not found:
            raise ConfigError(f"--key-env: environment variable {variable} is empty")
        keys.extend(found)
    return keys


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


# --- diagnose ------------------------------------------------------------------------------------


def cmd_diagnose(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from receiver.tools.diagnose import diagnose_request
    from receiver.tools.diagnose_capture import header_lines

    try:
        keys = _keys(args, environ)
        if not keys:
            raise ConfigError("give the key to try: --key KEY (repeatable) or --key-env VARIABLE")
        diagnosis = diagnose_request(
            url=args.url,
            headers=header_lines(args.header or []),
            secret=args.secret,
            hw_time=args.time,
            keys=keys,
            registered_url=args.registered_url,
            tolerance_seconds=args.tolerance,
            now=time.time(),
        )
    except ReceiverError as exc:
        # Exit 2: the input could not be diagnosed (1 means: diagnosed, nothing matched).
        print(f"{_PROG} diagnose: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(diagnosis.as_json())
    else:
        sys.stdout.write(diagnosis.render())
    return 0 if diagnosis.matched else 1


# --- simulate ------------------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from receiver.tools.simulate import REALISTIC_INTERVAL, simulate_job
    from receiver.tools.simulate_plan import ALL_FAULTS, Fault

    registered_url = args.registered_url
    auth_type = args.auth_type
    signed_uri = args.signed_uri
    keys = _keys(args, environ)
    receiver_url = args.to
    if args.config or args.endpoint:
        from receiver.config import load_settings

        settings = load_settings(path=args.config, environ=environ)
        name = args.endpoint or (settings.endpoints[0].name if settings.endpoints else None)
        endpoint = settings.endpoint(name) if name else None
        if endpoint is None:
            raise ConfigError(f"--endpoint: no endpoint named {name!r} in the config")
        registered_url = registered_url or endpoint.registered_url
        auth_type = auth_type or endpoint.auth_type.value
        signed_uri = signed_uri or endpoint.signed_uri.value
        keys = keys or list(endpoint.keys[:1])
        receiver_url = receiver_url or f"http://127.0.0.1:8080/callbacks/{endpoint.name}"
    if not registered_url:
        raise ConfigError("--registered-url: required (or --config with --endpoint)")
    if not receiver_url:
        raise ConfigError("--to: required, e.g. http://127.0.0.1:8080/callbacks/shop-a")
    faults = set(ALL_FAULTS) if args.all_faults else set()
    for fault in Fault:
        if getattr(args, fault.value):
            faults.add(fault)
    interval = args.interval
    if args.speed is not None:
        if not args.speed > 0:
            raise ConfigError("--speed: must be more than 0")
        interval = REALISTIC_INTERVAL / args.speed

    def progress(sent: Any) -> None:
        if args.interval or args.speed:
            print(f"  {sent.index:>2} {sent.label}: {sent.answer}", file=sys.stderr, flush=True)

    try:
        report = simulate_job(
            receiver_url=receiver_url,
            registered_url=registered_url,
            auth_type=auth_type or "MSS_A",
            key=keys[0] if keys else "",
            signed_uri=signed_uri or "host_path_query",
            time_unit=args.time_unit,
            fake=args.fake,
            room_id=args.room_id,
            job_id=args.job_id,
            faults=[f for f in ALL_FAULTS if f in faults],
            interval=interval,
            on_sent=progress,
        )
    except MetaStudioUnavailable as exc:
        raise CommandError(
            f"{exc.message}: start it with `{command_line('fake-metastudio')}`, or check --fake"
        ) from None
    if report.aborted and not any(sent.status for sent in report.sent):
        # Nothing answered at all: a wrong --to or a receiver not started, not a simulation.
        detail = report.sent[0].detail if report.sent else report.aborted
        raise CommandError(
            f"no answer from {receiver_url.partition('?')[0]} ({detail}): is the receiver "
            f"running there? start it with `{command_line('serve')}`, or check --to"
        )
    if args.fake is None and not args.json:
        print(
            "note: no --fake given, so no job is registered in a fake MetaStudio",
            file=sys.stderr,
        )
    if args.json:
        _print_json(report.as_json())
    else:
        sys.stdout.write(report.render())
    return 0 if report.ok else 1


# --- demo ----------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from receiver.cli.demo import run_demo

    if not 0 <= args.port <= 65535:
        raise ConfigError("--port: must be from 0 to 65535")
    return run_demo(port=args.port, once=args.once, keep=args.keep)


# --- registration --------------------------------------------------------------------------------


def _key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key", action="append", metavar="KEY", help="an endpoint key (repeatable)"
    )
    parser.add_argument(
        "--key-env",
        action="append",
        metavar="VARIABLE",
        help="environment variable holding keys, comma-separated (repeatable)",
    )


def register(commands: Any) -> None:
    diagnose = commands.add_parser(
        "diagnose",
        help="say which signed_uri form, key and time unit match a captured callback",
        description=(
            "Given a captured callback request (its URL, and the x-hw-mss-* headers for "
            "MSS_A_HEAD) and one or more keys, try every signed_uri form, key and time unit, "
            "and common registered-URL mistakes. Exit 0 when something matches, 1 when "
            "nothing does, 2 when the input cannot be diagnosed."
        ),
    )
    diagnose.add_argument(
        "--url", required=True, help="the captured URL (with hwSecret/hwTime for MSS_A)"
    )
    diagnose.add_argument(
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="a captured header, e.g. 'x-hw-mss-secret: 5e7f...' (repeatable)",
    )
    diagnose.add_argument("--secret", help="hwSecret / x-hw-mss-secret, given separately")
    diagnose.add_argument("--time", help="hwTime / x-hw-mss-time, given separately")
    _key_options(diagnose)
    diagnose.add_argument(
        "--registered-url",
        help="the URL registered with MetaStudio (default: the captured URL without "
        "hwSecret/hwTime)",
    )
    diagnose.add_argument(
        "--tolerance",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="the endpoint's tolerance_seconds, to say whether the time would pass (300)",
    )
    diagnose.add_argument("--json", action="store_true", help="the diagnosis as JSON")
    diagnose.set_defaults(run=cmd_diagnose)

    simulate = commands.add_parser(
        "simulate",
        help="play a realistic live job's callbacks against a receiver",
        description=(
            "Register a live job in a fake MetaStudio (WAITING -> PROCESSING -> SUCCEED) and "
            "send its signed callbacks to a receiver: script paragraphs, RTMP state changes "
            "with a reconnect, reply completions and END, with optional faults. Exit 0 when "
            "every answer was as expected."
        ),
    )
    simulate.add_argument(
        "--to",
        metavar="URL",
        help="the receiver endpoint, e.g. http://127.0.0.1:8080/callbacks/shop-a",
    )
    simulate.add_argument("--config", help="take the endpoint's settings from this TOML file")
    simulate.add_argument("--endpoint", help="endpoint name in --config (default: the first)")
    simulate.add_argument("--registered-url", help="the URL the callbacks are signed for")
    simulate.add_argument(
        "--auth-type", type=str.upper, choices=["NONE", "MSS_A", "MSS_A_HEAD"], default=None
    )
    _key_options(simulate)
    simulate.add_argument(
        "--signed-uri", choices=["host_path_query", "full_url", "path_query"], default=None
    )
    simulate.add_argument("--time-unit", choices=["seconds", "milliseconds"], default="seconds")
    simulate.add_argument(
        "--fake",
        metavar="URL",
        help="base URL of a running `fake-metastudio` to register the job in",
    )
    simulate.add_argument("--room-id", help="default: a random one")
    simulate.add_argument("--job-id", help="default: a random one")
    pace = simulate.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=float,
        metavar="FACTOR",
        help="1 = one event every 10 s, 10 = one a second",
    )
    pace.add_argument(
        "--interval", type=float, default=0.0, metavar="SECONDS", help="between events (0)"
    )
    simulate.add_argument(
        "--forge-body",
        action="store_true",
        help="resend a real event's URL and time with a body for another job",
    )
    simulate.add_argument("--stale", action="store_true", help="an event signed an hour ago")
    simulate.add_argument(
        "--unknown-job", action="store_true", help="an event for a job MetaStudio does not list"
    )
    simulate.add_argument("--duplicate", action="store_true", help="deliver one event twice")
    simulate.add_argument("--all-faults", action="store_true", help="all four faults")
    simulate.add_argument("--json", action="store_true", help="the report as JSON")
    simulate.set_defaults(run=cmd_simulate)

    demo = commands.add_parser(
        "demo",
        help="run a receiver, a fake MetaStudio and a simulated live job on this machine",
    )
    demo.add_argument(
        "--port", type=int, default=8080, help="receiver port (8080; a free one if taken)"
    )
    demo.add_argument(
        "--once", action="store_true", help="exit when done (0 if all went as expected)"
    )
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")
    demo.set_defaults(run=cmd_demo)

"""The ``metastudio-receiver`` command: thin subcommands over the library.

Here: the parser, ``serve``, ``migrate``, ``crosscheck`` and ``fake-metastudio``. Beside it:
``init`` (a config, its secrets file, and what to register with MetaStudio), ``events``
(``events`` and ``export``), ``send`` and ``replay`` (with ``signing_options``, the flags and exit
codes both share), ``sim`` (the ``simulate``, ``diagnose`` and ``demo`` commands),
``destinations`` (forwarding: state, attempts, resend, enable, disable), ``prune``
(retention now) and ``demo`` (the demo's
stage) with ``demo_walkthrough`` (what the demo shows and checks). What commands share:
``command`` (``CommandError``, one line and exit 2; how the program was started),
``store_access`` (opening the configured store) and ``api_access`` (calling a receiver).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from receiver import __version__
from receiver.cli.command import EXIT_CANNOT, CommandError
from receiver.config import Settings, load_settings
from receiver.errors import ConfigError, ReceiverError, StoreUnavailable

log = logging.getLogger("receiver")


def setup_logging(settings: Settings) -> None:
    from receiver.observability import setup_logging as setup

    setup(log_format=settings.log_format, level=settings.log_level)


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    return load_settings(path=args.config, environ=environ)


def cmd_serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from receiver.cli.store_access import migrate_problem, open_store
    from receiver.store.migrate import upgrade
    from receiver.web.serving import check_workers, serve

    settings = _settings(args, environ)
    setup_logging(settings)
    workers = args.workers if args.workers is not None else settings.workers
    check_workers(settings, workers)  # before migrating: a refused combination changes nothing
    if args.no_migrate:
        with open_store(settings, config=args.config):
            pass  # there, reachable, and at this version's migration: nothing is created
    else:
        try:
            upgrade(settings.database_url)
        except StoreUnavailable as exc:
            raise migrate_problem(settings.database_url, exc) from None
    if not settings.endpoints:
        log.warning("no [[endpoints]] configured: every callback will be answered 404")
    for endpoint in settings.endpoints:
        log.info(
            "endpoint %s: POST /callbacks/%s (%s, signed_uri=%s, time_unit=%s, %d key(s))",
            endpoint.name,
            endpoint.name,
            endpoint.auth_type.value,
            endpoint.signed_uri.value,
            endpoint.time_unit.value,
            len(endpoint.keys),
        )
    serve(settings, host=args.host, port=args.port, workers=workers)
    return 0


def cmd_migrate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from receiver.cli.store_access import migrate_problem
    from receiver.store.migrate import upgrade

    settings = _settings(args, environ)
    setup_logging(settings)
    try:
        upgrade(settings.database_url)
    except StoreUnavailable as exc:
        raise migrate_problem(settings.database_url, exc) from None
    print("schema is at the latest migration")
    return 0


def cmd_fake_metastudio(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from receiver import fake_metastudio as fake

    def pick(flag: str | None, variable: str, default: str) -> str:
        return flag or environ.get(variable) or default

    project_id = pick(args.project_id, "FAKE_METASTUDIO_PROJECT_ID", fake.DEFAULT_PROJECT_ID)
    ak = pick(args.ak, "FAKE_METASTUDIO_AK", fake.DEFAULT_AK)
    sk = pick(args.sk, "FAKE_METASTUDIO_SK", fake.DEFAULT_SK)
    token = pick(args.token, "FAKE_METASTUDIO_TOKEN", fake.DEFAULT_TOKEN)
    base = f"http://{args.host}:{args.port}"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # These are the fake's own made-up credentials (a local test double), not real secrets.
    print(f"fake MetaStudio on {base} (a local test double: do not expose it)")
    print(f"  project id: {project_id}")
    print(f"  AK: {ak}")
    print(f"  SK: {sk}")
    print(f"  token (X-Auth-Token): {token}")
    print(f"  jobs: GET {base}/v1/{project_id}/smart-live-rooms/{{room_id}}/smart-live-jobs")
    print(
        "  admin: PUT/PATCH/DELETE /_fake/jobs/{job_id}, POST /_fake/mode, POST /_fake/faults,"
        " GET /_fake/requests"
    )
    print(f'  receiver config: [metastudio] endpoint = "{base}", project_id = "{project_id}"')
    print(f"  receiver env: HUAWEICLOUD_SDK_AK={ak} HUAWEICLOUD_SDK_SK={sk}", flush=True)
    fake.run_fake(
        host=args.host,
        port=args.port,
        jobs_file=args.jobs,
        project_id=project_id,
        tokens=[token],
        ak=ak,
        sk=sk,
    )
    return 0


def cmd_crosscheck(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import asyncio
    import json

    from receiver.cli.store_access import open_store
    from receiver.web.runtime import build_crosschecker

    settings = _settings(args, environ)
    setup_logging(settings)
    if settings.metastudio is None:
        print("metastudio-receiver: cross-checking needs a [metastudio] section", file=sys.stderr)
        return 2
    with open_store(settings, config=args.config, pool_size=5) as engine:
        checker, source = build_crosschecker(settings, engine)
        try:
            report = asyncio.run(checker.run(room_id=args.room_id))
        finally:
            source.close()
    print(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
    return 1 if report.rooms_failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metastudio-receiver",
        description="Receive, verify and store Huawei Cloud MetaStudio livestream callbacks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--config", help="TOML file (default: env RECEIVER_CONFIG)")
        return sub

    serve = with_config(commands.add_parser("serve", help="run the receiver"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not migrate at start; refuse to serve unless the schema is at the latest "
        "migration (for replicas, when `migrate` runs as its own step)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes on the one port (default: config key workers, else 1); more "
        "than one needs PostgreSQL",
    )
    serve.set_defaults(run=cmd_serve)
    migrate = with_config(commands.add_parser("migrate", help="apply database migrations"))
    migrate.set_defaults(run=cmd_migrate)
    fake_ms = commands.add_parser(
        "fake-metastudio", help="serve a local fake of MetaStudio's job query API"
    )
    fake_ms.add_argument("--host", default="127.0.0.1")
    fake_ms.add_argument("--port", type=int, default=8090)
    fake_ms.add_argument("--jobs", metavar="FILE", help="JSON file: a list of SmartLiveJob objects")
    fake_ms.add_argument(
        "--project-id", help="default: env FAKE_METASTUDIO_PROJECT_ID or a demo id"
    )
    fake_ms.add_argument("--ak", help="default: env FAKE_METASTUDIO_AK, else a demo AK")
    fake_ms.add_argument("--sk", help="default: env FAKE_METASTUDIO_SK, else a demo SK")
    fake_ms.add_argument("--token", help="default: env FAKE_METASTUDIO_TOKEN, else a demo token")
    fake_ms.set_defaults(run=cmd_fake_metastudio)
    check = with_config(
        commands.add_parser("crosscheck", help="cross-check events with MetaStudio")
    )
    check.add_argument("--room-id", help="only this room (default: every room events came from)")
    check.set_defaults(run=cmd_crosscheck)
    from receiver.cli import init as cli_init

    cli_init.register(commands)
    from receiver.cli import events as cli_events

    cli_events.register(commands)
    from receiver.cli import sim as cli_sim

    cli_sim.register(commands)
    from receiver.cli import send as cli_send

    cli_send.register(commands)
    from receiver.cli import replay as cli_replay

    cli_replay.register(commands)
    from receiver.cli import destinations as cli_destinations

    cli_destinations.register(commands)
    from receiver.cli import prune as cli_prune

    cli_prune.register(commands)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        code: int = args.run(args, env)
    except ConfigError as exc:
        print(f"metastudio-receiver: config error: {exc.message}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"metastudio-receiver: {exc.message}", file=sys.stderr)
        return EXIT_CANNOT
    except ReceiverError as exc:
        print(f"metastudio-receiver: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code

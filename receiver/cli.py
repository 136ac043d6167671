"""The ``metastudio-receiver`` command: thin subcommands over the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from receiver import __version__
from receiver.config import Settings, load_settings
from receiver.errors import ConfigError, ReceiverError

log = logging.getLogger("receiver")


def setup_logging(settings: Settings) -> None:
    from receiver.observability import setup_logging as setup

    setup(log_format=settings.log_format, level=settings.log_level)


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    return load_settings(path=args.config, environ=environ)


def cmd_serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import uvicorn

    from receiver.app import create_app
    from receiver.migrate import upgrade

    settings = _settings(args, environ)
    setup_logging(settings)
    upgrade(settings.database_url)
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
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        server_header=False,
        # Limits set on purpose: slow or hostile clients cannot hold connections for long.
        timeout_keep_alive=15,
        h11_max_incomplete_event_size=65536,
        limit_concurrency=2048,
        backlog=2048,
    )
    return 0


def cmd_migrate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from receiver.migrate import upgrade

    settings = _settings(args, environ)
    setup_logging(settings)
    upgrade(settings.database_url)
    print("schema is at the latest migration")
    return 0


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
    serve.set_defaults(run=cmd_serve)
    migrate = with_config(commands.add_parser("migrate", help="apply database migrations"))
    migrate.set_defaults(run=cmd_migrate)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        code: int = args.run(args, env)
    except ConfigError as exc:
        print(f"metastudio-receiver: config error: {exc.message}", file=sys.stderr)
        return 2
    except ReceiverError as exc:
        print(f"metastudio-receiver: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code

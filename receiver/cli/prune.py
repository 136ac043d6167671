"""``prune``: delete (archiving first, with ``archive_dir``) what retention lets go, now.

    metastudio-receiver prune [--before RFC3339] [--dry-run] [--json] [--config FILE]

``--before`` overrides ``retention_days`` for every endpoint; what destinations still need and
each endpoint's signature tolerance are kept either way (receiver.store.retention). A running
receiver prunes by itself every ``prune_interval_seconds``; this is for now, or for a cron job
beside receivers that leave it off.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from receiver.cli.command import CommandError
from receiver.cli.store_access import open_store
from receiver.config import load_settings
from receiver.errors import QueryError
from receiver.store import queries, retention


def cmd_prune(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    settings = load_settings(path=args.config, environ=environ)
    try:
        before = queries.parse_time("--before", args.before)
    except QueryError as exc:
        raise CommandError(exc.message) from None
    if before is None and not retention.enabled(settings):
        raise CommandError(
            "nothing to prune: set retention_days in the config (or an endpoint's), or give "
            "--before RFC3339"
        )
    policy = retention.policy_from(settings)
    with open_store(settings, config=args.config) as engine:
        try:
            report = retention.prune(
                engine, policy, now=datetime.now(UTC), before=before, dry_run=args.dry_run
            )
        except retention.PruneBusy as exc:
            raise CommandError(f"{exc}: try again when it is done") from None
        except OSError as exc:
            raise CommandError(
                f"cannot write the archive under {policy.archive_dir}: {exc.strerror or exc}; "
                "nothing more was deleted"
            ) from None
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_json()).decode() + "\n")
    else:
        print(_summary(report.as_json(), archive_dir=policy.archive_dir))
    return 0


def _summary(report: Mapping[str, Any], *, archive_dir: str | None) -> str:
    verb = "would delete" if report["dry_run"] else "deleted"
    parts = [f"prune: {verb} {report['events']} events and {report['deliveries']} deliveries"]
    if not report["dry_run"]:
        parts.append(
            f", {report['findings']} resolved findings, {report['snapshots']} job snapshots, "
            f"{report['rejections']} rejections"
        )
        if archive_dir:
            parts.append(f"; {report['archived_files']} archive files in {archive_dir}")
        parts.append(f" in {report['seconds']:.1f} s")
    if report["kept_for_forwarding"] is not None:
        parts.append(
            f" (events after id {report['kept_for_forwarding']} kept: a destination has not "
            "taken them yet)"
        )
    return "".join(parts)


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "prune", help="delete (and archive) what retention_days lets go, now"
    )
    parser.add_argument("--config", help="TOML file (default: env RECEIVER_CONFIG)")
    parser.add_argument(
        "--before", metavar="RFC3339", help="prune what was received before this instead"
    )
    parser.add_argument("--dry-run", action="store_true", help="count what would go; delete none")
    parser.add_argument("--json", action="store_true", help="the report as JSON")
    parser.set_defaults(run=cmd_prune)

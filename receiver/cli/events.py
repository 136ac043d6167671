"""``events`` and ``export``: what the query API answers, from the shell, read from the store."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import orjson

from receiver.cli.api_access import add_api_options
from receiver.cli.command import CommandError
from receiver.cli.store_access import open_store
from receiver.config import load_settings
from receiver.store import queries


def add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file (default: env RECEIVER_CONFIG)")
    parser.add_argument("--endpoint")
    parser.add_argument("--room-id")
    parser.add_argument("--job-id")
    parser.add_argument("--event-type", help="comma-separated event types")
    parser.add_argument("--since", help="RFC 3339, on received time")
    parser.add_argument("--until", help="RFC 3339, on received time")


def filters_from(args: argparse.Namespace) -> dict[str, Any]:
    """The store filters of ``add_filters``, checked as the query API checks them."""
    return queries.event_filters(vars(args))


def _summary(event: Mapping[str, Any]) -> str:
    message = event["message"]
    if event["event_type"] == "RTMP_STREAM_STATE_CHANGE":
        return f"state={message.get('state')}"
    if event["event_type"] == "SHOOT_SCRIPT_SWITCH":
        return f"#{message.get('shoot_script_sequence_no')} {message.get('shoot_script_title')}"
    if event["event_type"] == "REPLY_COMMAND_FINISH":
        return f"reply_id={message.get('reply_id')}"
    return orjson.dumps(message).decode()[:60]


def print_table(events: list[dict[str, Any]], out: TextIO) -> None:
    columns = ("id", "received_at", "endpoint", "event_type", "job_id", "summary")
    rows = [
        (
            str(e["id"]),
            e["received_at"],
            e["endpoint"],
            e["event_type"],
            e["job_id"] or "-",
            _summary(e),
        )
        for e in events
    ]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    header = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    out.write(header.rstrip() + "\n")
    for row in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def cmd_events(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    filters = filters_from(args)
    limit = queries.parse_limit(args.limit)
    if args.url is not None:
        items, next_cursor = _from_api(args, environ)
    else:
        settings = load_settings(path=args.config, environ=environ)
        with open_store(settings, config=args.config) as engine, engine.connect() as conn:
            page = queries.list_events(conn, **filters, limit=limit, cursor=args.cursor)
        items, next_cursor = page.items, page.next_cursor
    if args.json:
        sys.stdout.write(
            orjson.dumps({"events": items, "next_cursor": next_cursor}).decode() + "\n"
        )
    else:
        print_table(items, sys.stdout)
        if next_cursor:
            print(f"more: --cursor {next_cursor}")
    return 0


def _from_api(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[list[Any], Any]:
    """GET /v1/events of the receiver at ``--url``, with the same filters (checked here first)."""
    from receiver.cli.api_access import ReceiverApi, token_for

    names = ("endpoint", "room_id", "job_id", "event_type", "since", "until", "limit", "cursor")
    params = {name: value for name in names if (value := getattr(args, name)) is not None}
    with ReceiverApi(args.url, token_for(args, environ)) as api:
        data = api.get("/v1/events", params)
    events = data.get("events")
    return (events if isinstance(events, list) else []), data.get("next_cursor")


def cmd_export(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    filters = filters_from(args)
    settings = load_settings(path=args.config, environ=environ)
    count = 0
    with open_store(settings, config=args.config) as engine, engine.connect() as conn:
        # Opened once the store is known to be there: a refused command leaves no empty file.
        out: TextIO = sys.stdout if args.output in (None, "-") else _output(args.output)
        try:
            for record in queries.export_events(conn, **filters):
                out.write(orjson.dumps(record).decode() + "\n")
                count += 1
        finally:
            if out is not sys.stdout:
                out.close()
    print(f"exported {count} events", file=sys.stderr)
    return 0


def _output(path: str) -> TextIO:
    try:
        return open(path, "w")  # closed by the caller
    except OSError as exc:
        raise CommandError(f"--output: cannot write {path}: {exc.strerror}") from None


def register(commands: Any) -> None:
    events = commands.add_parser("events", help="list stored events (as GET /v1/events)")
    add_filters(events)
    events.add_argument("--limit", help="1-1000, default 100")
    events.add_argument("--cursor")
    events.add_argument("--json", action="store_true", help="the API's JSON answer")
    add_api_options(events)
    events.set_defaults(run=cmd_events)
    export = commands.add_parser("export", help="stored events with original bytes, JSON Lines")
    add_filters(export)
    export.add_argument("--output", "-o", help="file to write (default: standard output)")
    export.set_defaults(run=cmd_export)

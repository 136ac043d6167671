"""``destinations``: what ``/v1/destinations`` shows and does, from the shell, on the store.

    metastudio-receiver destinations [list] [--json]
    metastudio-receiver destinations attempts NAME [--limit N] [--json]
    metastudio-receiver destinations messages NAME [--state dead|pending] [--json]
    metastudio-receiver destinations resend NAME (--event-id ID ... | --since T --until T |
                                                  --dead-letters)
    metastudio-receiver destinations enable NAME
    metastudio-receiver destinations disable NAME [--reason TEXT]

A running receiver picks a change up within two seconds (its next lease renewal).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO, TypeVar

import orjson

from receiver.cli.command import CommandError
from receiver.cli.store_access import open_store
from receiver.config import DestinationSettings, Settings, load_settings
from receiver.errors import NotFound
from receiver.forward import admin
from receiver.store import queries

T = TypeVar("T")


def _on_store(args: argparse.Namespace, settings: Settings, work: Callable[[Any], T]) -> T:
    """``work`` in a transaction on the configured store (receiver.cli.store_access: one line
    and exit 2 when it is missing, unmigrated or unreachable)."""
    with open_store(settings, config=args.config) as engine, engine.begin() as conn:
        return work(conn)


def _find(settings: Settings, name: str) -> DestinationSettings:
    try:
        return admin.find(settings.destinations, name)
    except NotFound:
        names = ", ".join(d.name for d in settings.destinations) or "none is configured"
        raise CommandError(f"no destination named {name[:40]!r} (configured: {names})") from None


def _table(rows: list[list[str]], columns: tuple[str, ...], out: TextIO) -> None:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    out.write("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    out.write("\n")
    for row in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    now = datetime.now(UTC)
    views = _on_store(args, settings, lambda c: admin.overview(c, settings.destinations, now=now))
    if args.json:
        _json({"destinations": views})
        return 0
    if not views:
        print("no [[destinations]] configured")
        return 0
    columns = ("name", "kind", "state", "lag", "lag_s", "dead", "last_delivered", "last_error")
    rows = [
        [
            v["name"],
            v["kind"],
            v["state"],
            str(v["lag_events"]),
            f"{v['lag_seconds']:.1f}",
            str(v["dead_letters"]),
            v["last_delivered_at"] or "-",
            (v["disabled_reason"] or v["last_error"] or "-")[:80],
        ]
        for v in views
    ]
    _table(rows, columns, sys.stdout)
    return 0


def cmd_attempts(args: argparse.Namespace, settings: Settings) -> int:
    destination = _find(settings, args.name)
    limit = queries.parse_limit(args.limit, high=admin.MAX_ATTEMPTS_PAGE)
    page = _on_store(args, settings, lambda c: admin.attempts(c, destination.name, limit=limit))
    if args.json:
        _json(page)
        return 0
    columns = ("at", "message", "n", "outcome", "status", "ms", "error")
    rows = [
        [
            a["at"],
            a["message_id"],
            str(a["messages"]),
            a["outcome"],
            str(a["status_code"] or "-"),
            f"{a['latency_ms']:.1f}",
            (a["error"] or "-")[:80],
        ]
        for a in page["attempts"]
    ]
    _table(rows, columns, sys.stdout)
    return 0


def cmd_messages(args: argparse.Namespace, settings: Settings) -> int:
    destination = _find(settings, args.name)
    found = _on_store(
        args, settings, lambda c: admin.messages(c, destination.name, state=args.state, limit=1000)
    )
    if args.json:
        _json({"messages": found})
        return 0
    columns = ("message", "state", "attempts", "next_attempt", "last_error")
    rows = [
        [
            m["message_id"],
            m["state"],
            str(m["attempts"]),
            m["next_attempt_at"] or "-",
            (m["last_error"] or "-")[:80],
        ]
        for m in found
    ]
    _table(rows, columns, sys.stdout)
    return 0


def cmd_resend(args: argparse.Namespace, settings: Settings) -> int:
    destination = _find(settings, args.name)
    since = queries.parse_time("since", args.since)
    until = queries.parse_time("until", args.until)
    now = datetime.now(UTC)
    counts = _on_store(
        args,
        settings,
        lambda c: admin.resend(
            c,
            destination,
            event_ids=args.event_id or None,
            since=since,
            until=until,
            dead_letters=args.dead_letters,
            now=now,
        ),
    )
    print(f"queued {counts['queued']} message(s) for {destination.name}", end="")
    print(f"; skipped {counts['skipped']}" if counts["skipped"] else "")
    return 0


def cmd_enable(args: argparse.Namespace, settings: Settings) -> int:
    destination = _find(settings, args.name)
    now = datetime.now(UTC)
    _on_store(args, settings, lambda c: admin.enable(c, destination, now=now))
    print(f"{destination.name}: enabled; sending resumes from its place")
    return 0


def cmd_disable(args: argparse.Namespace, settings: Settings) -> int:
    destination = _find(settings, args.name)
    now = datetime.now(UTC)
    reason = f"{args.reason} (from the command line)"
    _on_store(args, settings, lambda c: admin.disable(c, destination, reason=reason, now=now))
    print(f"{destination.name}: disabled; its place is kept")
    return 0


def _run(action: Callable[[argparse.Namespace, Settings], int]) -> Any:
    def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
        return action(args, load_settings(path=args.config, environ=environ))

    return run


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "destinations", help="where events are forwarded: state, attempts, resend, enable"
    )
    parser.add_argument("--config", help="TOML file (default: env RECEIVER_CONFIG)")
    parser.add_argument("--json", action="store_true", help="the API's JSON answer")
    parser.set_defaults(run=_run(cmd_list))
    sub = parser.add_subparsers(dest="action", metavar="ACTION")

    def action(name: str, help_text: str, run: Callable[..., int]) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON")
        p.set_defaults(run=_run(run))
        return p

    action("list", "each destination's state, lag and last error", cmd_list)
    attempts = action("attempts", "a destination's latest attempts", cmd_attempts)
    attempts.add_argument("name")
    attempts.add_argument("--limit", help="1-1000, default 100")
    messages = action("messages", "its dead-lettered (or parked) messages", cmd_messages)
    messages.add_argument("name")
    messages.add_argument("--state", choices=("dead", "pending"), default="dead")
    resend = action("resend", "send events or dead letters again, ids unchanged", cmd_resend)
    resend.add_argument("name")
    resend.add_argument("--event-id", type=int, action="append", metavar="ID")
    resend.add_argument("--since", help="RFC 3339, on received time")
    resend.add_argument("--until", help="RFC 3339, on received time")
    resend.add_argument("--dead-letters", action="store_true", help="its dead letters")
    enable = action("enable", "send to it again, from its place", cmd_enable)
    enable.add_argument("name")
    disable = action("disable", "stop sending to it, keeping its place", cmd_disable)
    disable.add_argument("name")
    disable.add_argument("--reason", default="disabled by hand")

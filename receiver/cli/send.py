"""``send``: sign one callback as MetaStudio does, deliver it from the shell, print the answer.

The event is built from ``--event-type`` / ``--message`` or read from ``--file`` (an export
record, an event, a message, or a body sent as it is), signed for the endpoint given by ``--url``
and the signing options or taken from a config file's endpoint, and delivered; the exit status
says whether the receiver stored it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from receiver.cli.signing_options import (
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


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("must be NAME: VALUE")
    return name.strip().lower(), value.strip()


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
            raise UsageError(f"--file {path}: body_b64 is not valid base64") from None
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
            raise UsageError("--endpoint: the config has several endpoints (or none); name one")
        return settings.endpoints[0]
    endpoint = settings.endpoint(args.endpoint)
    if endpoint is None:
        raise UsageError(f"--endpoint: no endpoint named {args.endpoint!r} in the config")
    return endpoint


def cmd_send(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from receiver.tools import sender

    try:
        endpoint = None
        if args.endpoint is not None or args.config is not None:
            endpoint = _config_endpoint(args, environ)
        url = args.url or (endpoint.registered_url if endpoint else None)
        if not url:
            raise UsageError("--url (the registered callback URL) or --endpoint is required")
        auth_type = args.auth_type or (endpoint.auth_type.value if endpoint else "MSS_A")
        key = signing_key(args, environ, endpoint.keys[0] if endpoint and endpoint.keys else "")
        if auth_type != AuthType.NONE and not key:
            raise UsageError(f"--key or --key-env is required for {auth_type}")
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
            raise UsageError("give --event-type (with --message) or --file")
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
    except (UsageError, ValueError) as exc:
        return fail("send", str(exc))
    except OSError as exc:
        return fail("send", f"--file: {exc.strerror}: {exc.filename}")
    import httpx2

    from receiver.cli.api_access import no_answer

    target = sender.retarget(callback.url, args.to)
    try:
        answer = sender.deliver(callback, to=args.to, timeout=args.timeout)
    except httpx2.TransportError as exc:
        raise no_answer(target, exc, flag="--to (where the receiver listens)") from None
    print(_status_line(answer), file=sys.stderr)
    if _code(answer) == "RCV.SIGNATURE_MISMATCH":
        # The usual cause: signed for the address it was sent to, not for the registered URL.
        print(
            f"hint: this was signed for {shown_url(url)}; the receiver checks the signature "
            "against its endpoint's registered_url and keys: give that URL as --url (or use "
            "--config), one of its keys, and the receiver's own address as --to",
            file=sys.stderr,
        )
    if answer.json is not None:
        print(json.dumps(answer.json, ensure_ascii=False))
    elif answer.text:
        print(answer.text)
    return EXIT_STORED if answer.stored else EXIT_NOT_STORED


def _code(answer: Any) -> str | None:
    data = answer.json if isinstance(answer.json, dict) else {}
    code = data.get("error_code")
    return code if isinstance(code, str) else None


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


# -- registration ------------------------------------------------------------------------------


def register(commands: Any) -> None:
    """Add ``send`` to the ``metastudio-receiver`` subcommands."""
    send = commands.add_parser(
        "send",
        help="sign one callback as MetaStudio does, deliver it, print the answer",
        description="Build (or read) one event, sign it for an endpoint, deliver it and print "
        "the answer. Exit status 0 when the receiver stored it (or already had it), 1 when it "
        "answered without storing it, 2 when it could not be sent (the arguments, or nothing "
        "answering at the address).",
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
    add_signing(send, what="the endpoint")
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
    send.add_argument("--timeout", type=positive, default=10.0, help="seconds (default 10)")
    send.set_defaults(run=cmd_send)

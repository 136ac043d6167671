"""``init``: from nothing to a receiver MetaStudio can call (PRODUCT.md, "Getting started").

``metastudio-receiver init --public-url https://hooks.example.com`` writes two files in ``--dir``
(default: here):

- ``receiver.toml``: one endpoint served at ``/callbacks/{name}`` whose ``registered_url`` is
  ``{public-url}/callbacks/{name}``, a SQLite store beside it, and ``secrets_file`` naming
- ``receiver.secrets`` (mode 0600): a generated key of 32 letters and digits (Table 10's
  maximum, the form of Huawei's worked example key) and an API token, as NAME=VALUE lines.

Then it loads the config with an empty environment (``serve --config`` needs nothing exported)
and prints the ``live_event_callback_config`` object to register (Table 10 of
metastudio-list-smart-live-jobs.txt: ``live_event_type_callback_url``, ``auth_type``, ``key``,
``callback_event_type``) as JSON on standard output; what it did and what to run next go to
standard error. It is the one place a key is printed: MetaStudio must be given it. Existing
files are refused, and replaced only with ``--force``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import string
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from receiver.cli.command import CommandError, command_line
from receiver.config import ENDPOINT_NAME, MAX_KEY_LENGTH, load_settings
from receiver.protocol.events import EventType

CONFIG_NAME = "receiver.toml"
SECRETS_NAME = "receiver.secrets"
DEFAULT_ENDPOINT = "live"
TOKENS_VARIABLE = "RECEIVER_API_TOKENS"
# The SDK's LiveEventCallBackConfig: live_event_type_callback_url is 0-2048 characters.
MAX_URL_LENGTH = 2048
_KEY_ALPHABET = string.ascii_letters + string.digits
SAMPLE_MESSAGE = '{"room_id": "r1", "job_id": "j1", "state": "CONNECTED"}'


def generate_key() -> str:
    """A MetaStudio callback key: 32 letters and digits (about 190 bits)."""
    return "".join(secrets.choice(_KEY_ALPHABET) for _ in range(MAX_KEY_LENGTH))


def keys_variable(endpoint: str) -> str:
    """The variable holding an endpoint's keys: shop-a -> SHOP_A_KEYS."""
    stem = re.sub(r"[^A-Za-z0-9]", "_", endpoint).upper()
    return f"{stem}_KEYS" if not stem[0].isdigit() else f"ENDPOINT_{stem}_KEYS"


def callback_config(*, url: str, auth_type: str, key: str) -> dict[str, Any]:
    """The ``live_event_callback_config`` object of a live job (Table 10)."""
    return {
        "live_event_type_callback_url": url,
        "auth_type": auth_type,
        "key": key,
        "callback_event_type": [event_type.value for event_type in EventType],
    }


def registered_url(public_url: str, endpoint: str) -> str:
    """``{public_url}/callbacks/{endpoint}``, once ``public_url`` is one MetaStudio takes."""
    try:
        parts = urlsplit(public_url)
        parts.port  # noqa: B018 - a non-numeric or out-of-range port raises here
    except ValueError as exc:
        raise CommandError(f"--public-url: {public_url!r} is not a valid URL ({exc})") from None
    if parts.scheme != "https" or not parts.hostname:
        raise CommandError(
            "--public-url: MetaStudio calls only https:// URLs (Table 10); give the address "
            f"your HTTPS proxy answers at, like https://hooks.example.com, not {public_url!r}"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise CommandError("--public-url: give scheme, host and path only (no query, no user)")
    url = f"{public_url.rstrip('/')}/callbacks/{endpoint}"
    if len(url) > MAX_URL_LENGTH:
        raise CommandError(f"--public-url: the callback URL is longer than {MAX_URL_LENGTH}")
    return url


def _toml(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a TOML basic string


def config_text(*, database: Path, url: str, endpoint: str, auth_type: str) -> str:
    variable = keys_variable(endpoint)
    return f"""\
# metastudio-receiver, written by `metastudio-receiver init`; every key is described in the
# project's examples/receiver.toml. Serve it behind an HTTPS proxy that forwards
# {url} to the receiver (127.0.0.1:8080 by default).

# SQLite beside this file (one machine). Several replicas: postgresql+psycopg://user@host/db
database_url = {_toml(f"sqlite:///{database}")}

# The secrets are not in this file but in secrets_file (mode 0600, beside this one): NAME=VALUE
# lines for the variables the *_env keys below name. The environment wins over that file.
secrets_file = {_toml(SECRETS_NAME)}

# Bearer tokens for the /v1 query API and the web console (comma-separated).
api_tokens_env = {_toml(TOKENS_VARIABLE)}

[[endpoints]]
name = {_toml(endpoint)}
# Exactly the live_event_type_callback_url registered with MetaStudio.
registered_url = {_toml(url)}
auth_type = {_toml(auth_type)}
# "new,old" while a rotation is under way: any one verifies.
keys_env = {_toml(variable)}

# To cross-check events against MetaStudio's job query API, uncomment, and add
# HUAWEICLOUD_SDK_AK=... and HUAWEICLOUD_SDK_SK=... to {SECRETS_NAME}:
# [metastudio]
# endpoint = "https://metastudio.cn-north-4.myhuaweicloud.com"
# project_id = "your project id"
"""


def secrets_text(*, endpoint: str, key: str, token: str) -> str:
    return f"""\
# Secrets of {CONFIG_NAME}, written by `metastudio-receiver init`. Keep this file to yourself
# (mode 0600) and out of version control. NAME=VALUE lines; nothing is expanded.

# The key registered with MetaStudio (live_event_callback_config.key). To rotate: "new,old",
# register the new one, then remove the old one (README: Register with MetaStudio).
{keys_variable(endpoint)}={key}

# Bearer tokens for /v1 and the web console, comma-separated.
{TOKENS_VARIABLE}={token}
"""


def _write_private(path: Path, text: str, *, force: bool) -> None:
    """Write ``text`` to ``path`` with mode 0600; an existing file only when ``force``."""
    if force:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        _write_new(temporary, text)
        os.replace(temporary, path)
    else:
        _write_new(path, text)


def _write_new(path: Path, text: str) -> None:
    # O_EXCL: refused if it appeared meanwhile; 0600 from the start, never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def cmd_init(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    endpoint = args.endpoint
    if not ENDPOINT_NAME.match(endpoint):
        raise CommandError(
            f"--endpoint: {endpoint!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (it is a path segment of /callbacks/NAME)"
        )
    url = registered_url(args.public_url, endpoint)
    folder = Path(args.dir)
    config, secrets_file = folder / CONFIG_NAME, folder / SECRETS_NAME
    if not args.force:
        for path in (config, secrets_file):
            if path.exists():
                raise CommandError(
                    f"{path} exists: init does not overwrite it; give another --dir, or "
                    "--force to replace it (its key and token are then lost)"
                )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        key = generate_key()
        _write_private(
            secrets_file,
            secrets_text(endpoint=endpoint, key=key, token=secrets.token_urlsafe(32)),
            force=args.force,
        )
        text = config_text(
            database=(folder / "receiver.db").resolve(),
            url=url,
            endpoint=endpoint,
            auth_type=args.auth_type,
        )
        _write_private(config, text, force=args.force)
    except FileExistsError as exc:
        raise CommandError(f"{exc.filename} appeared meanwhile: not overwritten") from None
    except OSError as exc:
        raise CommandError(
            f"--dir: cannot write {exc.filename or folder}: {exc.strerror}"
        ) from None
    # What serve will read, with nothing from the environment.
    written = load_settings(path=config, environ={}).endpoints
    if [(e.registered_url, e.keys) for e in written] != [(url, (key,))]:
        raise CommandError(f"{config} does not read back as written: please report this")
    _report(config, secrets_file, url, callback_config(url=url, auth_type=args.auth_type, key=key))
    return 0


def _report(config: Path, secrets_file: Path, url: str, registration: dict[str, Any]) -> None:
    say = sys.stderr.write
    say(f"wrote {config} and {secrets_file} (mode 0600: the key and an API token)\n")
    say("register this live_event_callback_config with MetaStudio (for each live job):\n")
    sys.stderr.flush()
    sys.stdout.write(json.dumps(registration, indent=2) + "\n")
    sys.stdout.flush()
    serve = command_line("serve", config=str(config))
    send = command_line("send", config=str(config))
    say(f"then serve it, behind HTTPS at {url.rsplit('/callbacks/', 1)[0]}:\n  {serve}\n")
    say("and try it from this machine while it runs:\n")
    say(
        f"  {send} --to http://127.0.0.1:8080 --event-type RTMP_STREAM_STATE_CHANGE "
        f"--message {shlex.quote(SAMPLE_MESSAGE)}\n"
    )
    sys.stderr.flush()


def register(commands: Any) -> None:
    """Add ``init`` to the ``metastudio-receiver`` subcommands."""
    init = commands.add_parser(
        "init",
        help="write a config and a secrets file, and print what to register with MetaStudio",
        description="Write receiver.toml and receiver.secrets (mode 0600: a generated key and "
        "API token), and print the live_event_callback_config to register with MetaStudio as "
        "JSON. `serve --config` on what it wrote accepts callbacks signed with that key.",
    )
    init.add_argument(
        "--public-url",
        required=True,
        metavar="URL",
        help="the https:// address MetaStudio reaches this receiver at, e.g. "
        "https://hooks.example.com",
    )
    init.add_argument("--endpoint", default=DEFAULT_ENDPOINT, metavar="NAME", help="default: live")
    init.add_argument(
        "--auth-type",
        type=str.upper,
        choices=["MSS_A_HEAD", "MSS_A"],
        default="MSS_A_HEAD",
        help="MSS_A_HEAD (default: the signature travels in headers, out of URLs and proxy "
        "logs) or MSS_A (in the query string)",
    )
    init.add_argument("--dir", default=".", help="where to write the files (default: here)")
    init.add_argument(
        "--force", action="store_true", help="replace existing files (their key is lost)"
    )
    init.set_defaults(run=cmd_init)

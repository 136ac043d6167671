"""Command-line pieces shared by ``send`` and ``replay``: signing options, exit statuses, usage.

Both commands sign callbacks as MetaStudio would, so they take the same signing options
(:func:`add_signing`) and read the key the same way (:func:`signing_key`); both exit with the
same statuses, report a usage problem found after parsing as one line (:class:`UsageError`,
:func:`fail`), and show URLs without their query (:func:`shown_url`: hwSecret is a credential).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from receiver.protocol.signing import AuthType, SignedUri, TimeUnit

EXIT_STORED = 0
EXIT_NOT_STORED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A problem with the arguments found after parsing (exit 2, one line)."""


def positive(text: str) -> float:
    """An argument type: a number more than 0 (seconds, a speed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def add_signing(parser: argparse.ArgumentParser, *, what: str) -> None:
    """The signing options, in a group that says whom they sign for."""
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


def signing_key(args: argparse.Namespace, environ: Mapping[str, str], default: str = "") -> str:
    """The key from ``--key-env`` (which must be set) or ``--key``, else ``default``."""
    if args.key_env:
        value = environ.get(args.key_env)
        if not value:
            raise UsageError(f"--key-env: environment variable {args.key_env} is not set")
        return value
    return str(args.key or default)


def fail(command: str, message: str) -> int:
    """Say a usage problem in one line on stderr; returns the exit status for it."""
    print(f"metastudio-receiver {command}: {message}", file=sys.stderr)
    return EXIT_USAGE


def shown_url(url: str) -> str:
    """A URL for messages, without its query (hwSecret is a credential)."""
    return url.partition("?")[0]

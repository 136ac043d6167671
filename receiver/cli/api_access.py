"""Calling a running receiver from a command: one helper for every command that does.

``events --url`` and any command added later that asks a receiver's query API (``/v1``, a bearer
token) go through :class:`ReceiverApi`; commands that deliver callbacks (``send``, ``simulate``)
use :func:`no_answer`. Whatever goes wrong becomes one :class:`CommandError` line that says what
is wrong and what to do (exit 2): nothing answering at the URL, a URL that is not a receiver, a
token the receiver refuses, a receiver whose store is down. Tokens and ``hwSecret`` never appear
in these lines.

The token comes from ``--token-env VAR``, else from ``RECEIVER_API_TOKEN``, else from the first
of the config's ``api_tokens`` (so ``--config`` written by ``init`` is enough on the machine that
runs the receiver).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from receiver.cli.command import CommandError, command_line
from receiver.protocol.signing import mask_secrets_in

if TYPE_CHECKING:
    import httpx2  # imported where used: building the parser must not cost an HTTP client

TOKEN_ENV = "RECEIVER_API_TOKEN"  # noqa: S105 - the name of a variable, not a token


def add_api_options(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--token-env``: ask a running receiver instead of reading the store."""
    group = parser.add_argument_group("a running receiver (instead of the store)")
    group.add_argument(
        "--url", metavar="BASE_URL", help="ask the receiver there, e.g. http://127.0.0.1:8080"
    )
    group.add_argument(
        "--token-env",
        metavar="VAR",
        help=f"environment variable with an API token (default {TOKEN_ENV}, else the first "
        "of --config's api_tokens)",
    )


def token_for(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """The bearer token to send, from ``--token-env``, ``RECEIVER_API_TOKEN`` or the config."""
    if args.token_env:
        token = environ.get(args.token_env)
        if not token:
            raise CommandError(f"--token-env: environment variable {args.token_env} is not set")
        return token
    if environ.get(TOKEN_ENV):
        return environ[TOKEN_ENV]
    if getattr(args, "config", None) or environ.get("RECEIVER_CONFIG"):
        from receiver.config import load_settings

        tokens = load_settings(path=args.config, environ=environ).api_tokens
        if tokens:
            return tokens[0]
    raise CommandError(
        f"the query API needs a token: set {TOKEN_ENV}, name another variable with --token-env, "
        "or give --config with the receiver's api_tokens"
    )


def no_answer(url: str, exc: httpx2.TransportError, *, flag: str) -> CommandError:
    """Nothing answered at ``url`` (refused, timed out, no such host): say so, and what to do."""
    problem = mask_secrets_in(f"{type(exc).__name__}: {exc}")
    where = url.partition("?")[0]
    return CommandError(
        f"no answer from {where} ({problem}): is the receiver running there? "
        f"start it with `{command_line('serve')}`, or check {flag}"
    )


class ReceiverApi:
    """A client of one receiver's ``/v1`` API; every failure is a one-line CommandError."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise CommandError(
                "--url: must be a receiver's base URL, like http://127.0.0.1:8080, "
                f"not {base_url!r}"
            )
        import httpx2

        self.base_url = base_url.rstrip("/")
        self._client = httpx2.Client(
            base_url=self.base_url,
            headers={"authorization": f"Bearer {token}"},
            timeout=timeout,
            follow_redirects=False,
        )

    def __enter__(self) -> ReceiverApi:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._client.close()

    def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self._call("GET", path, params=dict(params or {}))

    def post(self, path: str, body: Any = None) -> dict[str, Any]:
        return self._call("POST", path, json=body)

    def _call(self, method: str, path: str, **options: Any) -> dict[str, Any]:
        import httpx2

        try:
            response = self._client.request(method, path, **options)
        except httpx2.TransportError as exc:
            raise no_answer(self.base_url, exc, flag="--url") from None
        return self._answer(response, path)

    def _answer(self, response: httpx2.Response, path: str) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = None
        status = response.status_code
        if 200 <= status < 300 and isinstance(data, dict):
            return data
        error = data if isinstance(data, dict) and "error_code" in data else None
        if error is None or not str(error["error_code"]).startswith("RCV."):
            raise CommandError(
                f"{self.base_url} answered {method_path(response, path)} with {status}, not as "
                "a metastudio-receiver would: check --url"
            )
        said = f"{status} {error['error_code']}: {error.get('error_msg', '')}".rstrip(": ")
        if status == 401:
            raise CommandError(
                f"the receiver at {self.base_url} refused the API token ({said}): use one of "
                f"its api_tokens ({TOKEN_ENV}, --token-env VAR, or --config)"
            )
        if status == 404:
            raise CommandError(f"{self.base_url} has no {path} ({said}): check --url")
        if status >= 500:
            raise CommandError(
                f"the receiver at {self.base_url} could not answer ({said}): try again; "
                "its /readyz and logs say more"
            )
        raise CommandError(f"the receiver at {self.base_url} refused the request ({said})")


def method_path(response: httpx2.Response, path: str) -> str:
    return f"{response.request.method} {path}"

"""Opening the configured store for a command that reads it: one helper for every command.

``events``, ``export``, ``replay`` (from the store), ``crosscheck`` and any command added later
open the store with :func:`open_store`. It refuses, as one :class:`CommandError` line that says
what to do (exit 2), a SQLite file that does not exist (and never creates one: asking the wrong
path leaves nothing behind), a database that is not migrated or at another migration than this
version's, and a database server that cannot be reached; a database error while the command
reads becomes the same kind of line. :func:`migrate_problem` says the same for ``serve`` and
``migrate``, which create and migrate the store themselves.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from receiver.cli.command import CommandError, command_line
from receiver.errors import StoreUnavailable
from receiver.store.driver import sqlite_path
from receiver.store.migrate import current_revisions, known_revisions, latest_revisions
from receiver.store.writer import create_engine_for

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from receiver.config import Settings

_CHECK = "check database_url in the config (or RECEIVER_DATABASE_URL) and that the database is up"


@contextlib.contextmanager
def open_store(
    settings: Settings, *, config: str | None = None, pool_size: int = 1
) -> Iterator[Engine]:
    """An engine on the configured store, once it is there, reachable and migrated to this
    version's schema; disposed afterwards. ``config``: the ``--config`` the command was given,
    for the commands its messages suggest."""
    url = settings.database_url
    where = describe(url)
    migrate = command_line("migrate", config=config)
    path = sqlite_path(url)
    if path is not None and not os.path.exists(path):
        if config is not None:
            raise CommandError(
                f"no database at {path}: create it with `{migrate}`, or check database_url in "
                "the config (or RECEIVER_DATABASE_URL)"
            )
        raise CommandError(
            f"no database at {path}: give the receiver's config (--config or RECEIVER_CONFIG) "
            f"or RECEIVER_DATABASE_URL, or create a database here with `{migrate}`"
        )
    engine = create_engine_for(url, pool_size=pool_size, create=False)
    try:
        try:
            with engine.connect() as connection:
                current = current_revisions(connection)
        except sa.exc.DBAPIError as exc:
            raise CommandError(
                f"cannot open the database {where}: {reason(exc)}; {_CHECK}"
            ) from None
        _check_schema(current, where=where, migrate=migrate)
        try:
            yield engine
        except sa.exc.DBAPIError as exc:
            raise CommandError(f"the database {where} failed: {reason(exc)}") from None
    finally:
        engine.dispose()


def _check_schema(current: set[str], *, where: str, migrate: str) -> None:
    heads = latest_revisions()
    if current == heads:
        return
    if not current:
        raise CommandError(
            f"the database {where} is not migrated (no receiver tables): run `{migrate}`"
        )
    shown = ", ".join(sorted(current))
    if current <= known_revisions():
        raise CommandError(
            f"the database {where} is at migration {shown}, this version needs "
            f"{', '.join(sorted(heads))}: run `{migrate}`"
        )
    raise CommandError(
        f"the database {where} is at migration {shown}, which this version does not know "
        "(a newer metastudio-receiver migrated it): upgrade metastudio-receiver"
    )


def migrate_problem(url: str, exc: StoreUnavailable) -> CommandError:
    """Why ``serve`` or ``migrate`` could not migrate the store, as one line to act on."""
    cause = exc.__cause__
    if isinstance(cause, sa.exc.DBAPIError):
        return CommandError(f"cannot open the database {describe(url)}: {reason(cause)}; {_CHECK}")
    return CommandError(f"{exc.message} ({describe(url)})")


def describe(url: str) -> str:
    """Where the store is, for messages: the SQLite file, or the server's URL without password."""
    path = sqlite_path(url)
    if path is not None:
        return path
    return make_url(url).render_as_string(hide_password=True)


def reason(exc: BaseException) -> str:
    """The first line of what the driver said (psycopg adds hints on further lines)."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__

"""Apply and check the Alembic migrations that ship inside the package."""

from __future__ import annotations

import threading
from importlib.resources import files
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError as AlembicCommandError

from receiver.errors import StoreUnavailable
from receiver.store.driver import sqlite_path
from receiver.store.writer import create_engine_for

# Alembic's migration context is module-global: one migration at a time in a process. Between
# processes (replicas starting together) migrations/env.py takes a PostgreSQL advisory lock.
_LOCK = threading.Lock()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(str(files("receiver.migrations")))))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """``alembic upgrade head`` (or to ``revision``) on ``url``, creating the SQLite file and its
    folder if needed."""
    path = sqlite_path(url)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        _with_alembic(url, lambda config: command.upgrade(config, revision), commit=True)
    except AlembicCommandError as exc:
        # A revision this version does not ship: a newer version migrated the database.
        raise StoreUnavailable(
            f"cannot migrate the database: {exc}; a newer metastudio-receiver migrated it"
        ) from exc


def check(url: str) -> None:
    """``alembic check``: raises if the models and the migrations disagree."""
    _with_alembic(url, command.check, commit=False)


def require_current(url: str) -> None:
    """Raise StoreUnavailable unless the database is at the latest migration.

    For ``serve --no-migrate``: replicas that start without DDL rights (migrations run as their
    own step, e.g. a one-shot container) refuse to serve a schema they were not written for."""
    heads = latest_revisions()
    path = sqlite_path(url)
    if path is not None and not Path(path).exists():
        # Checked, not created: a replica must not leave an empty database where none was.
        raise StoreUnavailable(
            f"the database file {path} does not exist (not migrated, not at the latest "
            "migration): run `metastudio-receiver migrate` first"
        )
    engine = create_engine_for(url, pool_size=1, create=False)
    try:
        with engine.connect() as connection:
            current = current_revisions(connection)
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise StoreUnavailable(f"cannot read the schema version: {reason}") from exc
    finally:
        engine.dispose()
    if current != heads:
        found = f"at {', '.join(sorted(current))}" if current else "not migrated"
        raise StoreUnavailable(
            f"the database is {found}, not at the latest migration "
            f"({', '.join(sorted(heads))}): run `metastudio-receiver migrate` first"
        )


def latest_revisions() -> set[str]:
    """The head revision(s) of the migrations shipped with this version."""
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def known_revisions() -> set[str]:
    """Every revision of the migrations shipped with this version."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config())
    return {script.revision for script in scripts.walk_revisions()}


def current_revisions(connection: sa.Connection) -> set[str]:
    """The revision(s) the database is at; empty when it was never migrated."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return set()
    rows = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
    return {row[0] for row in rows}


def _with_alembic(url: str, action: object, *, commit: bool) -> None:
    assert callable(action)
    engine = create_engine_for(url, pool_size=1)
    try:
        with _LOCK, engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            action(config)
            if commit:
                connection.commit()
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise StoreUnavailable(f"cannot migrate the database: {reason}") from exc
    finally:
        engine.dispose()

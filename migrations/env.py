"""Alembic environment: the schema's history for SQLite and PostgreSQL.

The connection comes from ``config.attributes["connection"]`` when the project runs migrations
itself (``receiver.store.migrate``), else from RECEIVER_DATABASE_URL or the default SQLite file.
On PostgreSQL an advisory lock makes replicas that start together migrate one at a time.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from receiver.config import DEFAULT_DATABASE_URL
from receiver.store.models import metadata

# Any fixed 64-bit number; replicas agree on it, nothing else in the database uses it.
MIGRATION_LOCK = 0x6D73_7276_6D69_6772


def _run(connection: sa.Connection) -> None:
    is_pg = connection.dialect.name == "postgresql"
    if is_pg:
        connection.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        connection.commit()
    try:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if is_pg:
            connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
            connection.commit()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = os.environ.get("RECEIVER_DATABASE_URL") or DEFAULT_DATABASE_URL
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()

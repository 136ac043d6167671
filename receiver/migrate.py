"""Apply and check the Alembic migrations that ship inside the package."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config

from receiver.store import create_engine_for, sqlite_path


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(str(files("receiver.migrations")))))
    return config


def upgrade(url: str) -> None:
    """``alembic upgrade head`` on ``url`` (creating the SQLite file and its folder if needed)."""
    path = sqlite_path(url)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine_for(url, pool_size=1)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
    finally:
        engine.dispose()


def check(url: str) -> None:
    """``alembic check``: raises if the models and the migrations disagree."""
    engine = create_engine_for(url, pool_size=1)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.check(config)
    finally:
        engine.dispose()

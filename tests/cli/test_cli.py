"""``metastudio-receiver serve`` / ``migrate`` from the shell: exit codes, one-line errors, effects.

PRODUCT.md: "A bad config stops start-up with one clear line naming the key and the problem."
Each case runs ``python -m receiver`` in a subprocess with a clean environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from conftest import endpoint_table, free_port, run_cli, write_config

UNREACHABLE_PG = "postgresql+psycopg://postgres@127.0.0.1:1/receiver"


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.strip("\n").splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    assert done.stdout == ""
    return lines[0]


def _bad(tmp_path: Path, **overrides: Any) -> Path:
    return write_config(
        tmp_path / "bad.toml", f"sqlite:///{tmp_path / 'r.db'}", endpoint_table(**overrides)
    )


BAD_CONFIGS = [
    pytest.param({"auth_type": "MEITUAN_DEFAULT"}, "endpoints[0].auth_type", id="meituan"),
    pytest.param({"keys": ["k" * 33]}, "endpoints[0].keys[0]", id="long key"),
    pytest.param(
        {"registered_url": "https://[hooks.example.com/callbacks/a"},
        "endpoints[0].registered_url",
        id="unparseable url",
    ),
]


@pytest.mark.parametrize(("overrides", "key"), BAD_CONFIGS)
def test_bad_config_stops_serve_with_one_line_naming_the_key(
    tmp_path: Path, overrides: dict[str, Any], key: str
) -> None:
    path = _bad(tmp_path, **overrides)
    line = one_line(run_cli("serve", "--config", str(path), cwd=tmp_path))
    assert key in line
    assert not (tmp_path / "r.db").exists(), "nothing was created"


@pytest.mark.parametrize(
    ("config_workers", "flag"),
    [pytest.param(2, [], id="config key"), pytest.param(1, ["--workers", "3"], id="flag")],
)
def test_serve_refuses_several_workers_on_sqlite_before_touching_it(
    tmp_path: Path, config_workers: int, flag: list[str]
) -> None:
    """SQLite takes one writer at a time: N > 1 worker processes are refused with one line that
    says why and what to do, and the store is not created meanwhile."""
    path = write_config(
        tmp_path / "w.toml",
        f"sqlite:///{tmp_path / 'r.db'}",
        endpoint_table(),
        workers=config_workers,
    )
    done = run_cli("serve", "--config", str(path), *flag, cwd=tmp_path)
    line = one_line(done)
    assert done.returncode == 2
    assert "workers:" in line and "SQLite" in line and "PostgreSQL" in line, line
    assert not (tmp_path / "r.db").exists(), "nothing was created"


@pytest.mark.parametrize("workers", [0, 65, "two"])
def test_workers_key_is_checked(tmp_path: Path, workers: object) -> None:
    path = write_config(
        tmp_path / "w.toml", f"sqlite:///{tmp_path / 'r.db'}", endpoint_table(), workers=workers
    )
    assert "workers" in one_line(run_cli("migrate", "--config", str(path), cwd=tmp_path))


def test_bad_config_stops_migrate_too(tmp_path: Path) -> None:
    path = _bad(tmp_path, auth_type="MEITUAN_DEFAULT")
    done = run_cli("migrate", "--config", str(path), cwd=tmp_path)
    assert "endpoints[0].auth_type" in one_line(done)
    assert not (tmp_path / "r.db").exists()


def test_bad_config_from_receiver_config(tmp_path: Path) -> None:
    path = _bad(tmp_path, signed_uri="host")
    done = run_cli("serve", "--port", "1", cwd=tmp_path, env={"RECEIVER_CONFIG": str(path)})
    assert "endpoints[0].signed_uri" in one_line(done)
    assert done.returncode == 2


def test_unset_keys_env_is_named(tmp_path: Path) -> None:
    table = {k: v for k, v in endpoint_table(keys_env="SHOP_KEYS").items() if k != "keys"}
    path = write_config(tmp_path / "r.toml", f"sqlite:///{tmp_path / 'r.db'}", table)
    line = one_line(run_cli("serve", "--config", str(path), cwd=tmp_path))
    assert "endpoints[0].keys_env" in line and "SHOP_KEYS" in line


def test_missing_and_broken_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert str(missing) in one_line(run_cli("serve", "--config", str(missing), cwd=tmp_path))
    broken = tmp_path / "broken.toml"
    broken.write_text("database_url = \n")
    assert str(broken) in one_line(run_cli("migrate", "--config", str(broken), cwd=tmp_path))


def test_bad_database_url_from_the_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path / "r.toml", f"sqlite:///{tmp_path / 'r.db'}")
    done = run_cli(
        "migrate", "--config", str(path), cwd=tmp_path, env={"RECEIVER_DATABASE_URL": "mysql://x/y"}
    )
    assert "database_url" in one_line(done)


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrate_creates_the_schema_and_is_idempotent(tmp_path: Path, db_url: str) -> None:
    path = write_config(tmp_path / "r.toml", db_url)
    for _ in range(2):
        done = run_cli("migrate", "--config", str(path), cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    assert {"alembic_version", "deliveries", "events"} <= _tables(db_url)


def test_receiver_database_url_decides_what_migrate_migrates(tmp_path: Path, db_url: str) -> None:
    in_file = f"sqlite:///{tmp_path / 'from-file.db'}"
    path = write_config(tmp_path / "r.toml", in_file)
    done = run_cli(
        "migrate", "--config", str(path), cwd=tmp_path, env={"RECEIVER_DATABASE_URL": db_url}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"deliveries", "events"} <= _tables(db_url)
    assert not (tmp_path / "from-file.db").exists()


def test_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    # Not a stack trace: the operator is told which database could not be reached.
    path = write_config(tmp_path / "r.toml", UNREACHABLE_PG)
    for args in (["migrate"], ["serve", "--port", "1"]):
        line = one_line(run_cli(*args, "--config", str(path), cwd=tmp_path))
        assert "127.0.0.1" in line or "database" in line.lower(), line


def test_migrate_defaults_to_receiver_db_in_the_working_directory(tmp_path: Path) -> None:
    # No database_url at all: the documented default is receiver.db in the working directory.
    config = tmp_path / "minimal.toml"
    config.write_text(
        "[[endpoints]]\n"
        'name = "shop-a"\n'
        'registered_url = "https://hooks.example.com/callbacks/shop-a"\n'
        'keys = ["k"]\n'
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    done = run_cli("migrate", "--config", str(config), cwd=workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (workdir / "receiver.db").exists()
    assert {"deliveries", "events"} <= _tables(f"sqlite:///{workdir / 'receiver.db'}")


def test_serve_no_migrate_refuses_an_unmigrated_database_then_serves_after_migrate(
    tmp_path: Path, db_url: str
) -> None:
    """The deployment of examples/deploy/: `migrate` as its own step, replicas with --no-migrate."""
    path = write_config(tmp_path / "r.toml", db_url)
    done = run_cli("serve", "--no-migrate", "--config", str(path), cwd=tmp_path)
    line = one_line(done)
    assert done.returncode == 2
    # What to do, as this program was started (here python -m receiver), with the same config.
    assert f"-m receiver migrate --config {path}" in line, line
    if db_url.startswith("sqlite"):
        assert "no database at" in line and not (tmp_path / "receiver.db").exists(), line
    else:
        assert "is not migrated" in line, line
        assert "alembic_version" not in _tables(db_url)  # nothing was created
    assert run_cli("migrate", "--config", str(path), cwd=tmp_path).returncode == 0
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    serve = [sys.executable, "-m", "receiver", "serve", "--no-migrate", "--config", str(path)]
    with subprocess.Popen(
        [*serve, "--port", str(port)], env=env, cwd=tmp_path, stderr=subprocess.PIPE
    ) as proc:
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                try:
                    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "serve --no-migrate did not start"
                    time.sleep(0.1)
            assert ready.status_code == 200, ready.text
        finally:
            proc.terminate()
            proc.wait(timeout=15)

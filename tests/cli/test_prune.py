"""``metastudio-receiver prune`` from the shell: what it says, and the one line (exit 2) for
input it cannot act on, nothing deleted then."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from conftest import endpoint_table, run_cli, write_config
from forwarding_world import callback

from receiver.store.models import Event
from receiver.store.writer import create_engine_for
from receiver.testing import deliver

EVENTS = Event.__table__  # type: ignore[attr-defined]


def _events(url: str) -> int:
    engine = create_engine_for(url, pool_size=1)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar_one())
    finally:
        engine.dispose()


def test_prune_says_what_it_did_and_refuses_what_it_cannot_do(
    migrated_url: str, tmp_path: Path, app_client: object
) -> None:
    client = app_client()  # type: ignore[operator]
    for n in range(3):
        assert deliver(callback("job-a", n), client=client).stored
    plain = write_config(tmp_path / "plain.toml", migrated_url, endpoint_table())

    nothing = run_cli("prune", "--config", str(plain), cwd=tmp_path)
    assert nothing.returncode == 2
    assert "set retention_days" in nothing.stderr and "Traceback" not in nothing.stderr
    bad = run_cli("prune", "--config", str(plain), "--before", "yesterday", cwd=tmp_path)
    assert bad.returncode == 2 and "--before: must be an RFC 3339 time" in bad.stderr

    # Everything received before 2100, except what is inside the 300 s tolerance: nothing.
    dry = run_cli(
        "prune",
        "--config",
        str(plain),
        "--before",
        "2100-01-01T00:00:00Z",
        "--dry-run",
        cwd=tmp_path,
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == "prune: would delete 0 events and 0 deliveries"

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the archive folder should be")
    archiving = write_config(
        tmp_path / "archiving.toml",
        migrated_url,
        endpoint_table(tolerance_seconds=60),
        archive_dir=str(blocked),
        retention_days=1,
    )
    engine = create_engine_for(migrated_url, pool_size=1)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE events SET received_at = '2026-01-01 00:00:00+00:00'"))
        conn.execute(sa.text("UPDATE deliveries SET received_at = '2026-01-01 00:00:00+00:00'"))
    engine.dispose()
    failed = run_cli("prune", "--config", str(archiving), cwd=tmp_path)
    assert failed.returncode == 2, failed.stderr
    assert (
        "cannot write the archive" in failed.stderr and "nothing more was deleted" in failed.stderr
    )
    assert _events(migrated_url) == 3

    blocked.unlink()
    done = run_cli("prune", "--config", str(archiving), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("prune: deleted 3 events and 3 deliveries")
    assert _events(migrated_url) == 0 and list(blocked.rglob("*.jsonl.gz"))

"""The store's writer process (receiver.store.process, receiver.store.child), on SQLite and
PostgreSQL: what it stores is what the thread writer stores, a child that dies or hangs costs a
503 and is replaced, it never outlives the server, and it holds no secret on its command line.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from conftest import ServerProcess, endpoint_table, signed_path, stored_bodies
from test_store import body_for, incoming

from receiver.errors import StoreUnavailable
from receiver.store.driver import target_of
from receiver.store.incoming import WriteOutcome
from receiver.store.migrate import upgrade
from receiver.store.process import ChildStore, ProcessCommitWriter
from receiver.store.writer import DELIVERIES, create_engine_for, open_writer
from receiver.testing import encode


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return handle.read()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    if int(handle.read().rpartition(")")[2].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError):
                continue
    return found


def _writer(url: str, timeout: float = 10.0) -> ProcessCommitWriter:
    writer = open_writer(url, writer="process", timeout=timeout)
    assert isinstance(writer, ProcessCommitWriter)
    return writer


async def _retry_until_stored(
    writer: ProcessCommitWriter, body: bytes, *, seconds: float
) -> WriteOutcome:
    """As a sender would: send ``body`` again after each 503 until it is stored."""
    give_up = time.monotonic() + seconds
    while True:
        try:
            return await writer.write(incoming(body))
        except StoreUnavailable:
            assert time.monotonic() < give_up, "no new child took over"
            await asyncio.sleep(0.1)


def test_batches_through_the_child_are_stored_once(db_url: str) -> None:
    """Concurrent deliveries and their duplicates, through the child: each body stored once,
    every copy answered with the original's ids; the rows are those the thread writer writes."""
    upgrade(db_url)
    bodies = [body_for(n) for n in range(120)]

    async def main() -> list[WriteOutcome]:
        writer = _writer(db_url)
        await writer.start()
        try:
            # Every body twice, in one burst: batches hold originals and their copies together.
            return list(await asyncio.gather(*(writer.write(incoming(b)) for b in bodies * 2)))
        finally:
            await writer.stop()

    outcomes = asyncio.run(main())
    first, second = outcomes[: len(bodies)], outcomes[len(bodies) :]
    assert sorted(o.result for o in first + second).count("stored") == len(bodies)
    for a, b in zip(first, second, strict=True):
        assert a.delivery_id == b.delivery_id and a.event_id == b.event_id is not None
    stored = stored_bodies(db_url)
    assert sorted(stored) == sorted(bodies)
    assert all(len(ids) == 1 for ids in stored.values())
    engine = create_engine_for(db_url)
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(
                sa.select(DELIVERIES.c.status, sa.func.count()).group_by(DELIVERIES.c.status)
            ).all()
        )
    engine.dispose()
    assert statuses == {"stored": len(bodies), "duplicate": len(bodies)}


def test_a_killed_child_costs_a_503_and_is_started_again(sqlite_url: str) -> None:
    upgrade(sqlite_url)

    async def main() -> tuple[BaseException | None, WriteOutcome, int, int]:
        writer = _writer(sqlite_url)
        await writer.start()
        try:
            await writer.write(incoming(body_for(1)))
            child = writer.child
            first_pid = child.pid
            assert first_pid is not None and _alive(first_pid)
            os.kill(first_pid, signal.SIGKILL)
            error = None
            try:
                await writer.write(incoming(body_for(2)))
            except StoreUnavailable as exc:
                error = exc
            # A child that lived under a second is started again a second after it started
            # (RESTART_SECONDS): the retries meanwhile are 503s.
            after = await _retry_until_stored(writer, body_for(3), seconds=10)
            assert child.pid is not None and child.pid != first_pid
            return error, after, child.starts, first_pid
        finally:
            await writer.stop()

    error, after, starts, first_pid = asyncio.run(main())
    assert isinstance(error, StoreUnavailable) and "writer process ended" in str(error)
    assert after.result == "stored"
    assert starts == 2
    assert not _alive(first_pid)
    assert body_for(3) in stored_bodies(sqlite_url)


def test_a_hung_child_is_answered_503_then_replaced(sqlite_url: str) -> None:
    """A child that stops answering (SIGSTOP): the delivery gets StoreUnavailable at the
    writer's deadline; past the answer limit the child is killed and a new one takes over."""
    upgrade(sqlite_url)

    async def main() -> tuple[BaseException | None, float, WriteOutcome, int]:
        writer = _writer(sqlite_url, timeout=0.5)
        writer.child.answer_seconds = 1.5
        await writer.start()
        try:
            # The child's start counts against the 0.5 s deadline too: on a loaded machine the
            # first delivery may be a 503 (it is stored all the same).
            await _retry_until_stored(writer, body_for(1), seconds=15)
            stopped = writer.child.pid
            assert stopped is not None
            os.kill(stopped, signal.SIGSTOP)
            started = time.monotonic()
            error = None
            try:
                await writer.write(incoming(body_for(2)))
            except StoreUnavailable as exc:
                error = exc
            waited = time.monotonic() - started
            # Until the stuck batch is given up (1.5 s) the retries are 503s too; then a new
            # child takes them.
            after = await _retry_until_stored(writer, body_for(3), seconds=15)
            assert not _alive(stopped)
            return error, waited, after, writer.child.starts
        finally:
            await writer.stop()

    error, waited, after, starts = asyncio.run(main())
    assert isinstance(error, StoreUnavailable) and "did not commit within" in str(error)
    assert waited < 1.4
    assert starts == 2
    # Retries answered 503 while the child hung still wait in line and are committed by the new
    # child: the one that got through may be answered "duplicate" of one of them. Once stored.
    assert after.result in ("stored", "duplicate")
    stored = stored_bodies(sqlite_url)
    assert len(stored[body_for(3)]) == 1
    # The batch the hung child held was never committed (it was killed): its sender, answered
    # 503, sends it again.
    assert body_for(2) not in stored


def test_the_child_reads_no_secret_from_its_command_line(pg_url: str) -> None:
    """The target (a PostgreSQL URL may hold a password) goes over the socket."""
    url = pg_url.replace("postgres@", "postgres:s3cret-pass@", 1)
    child = ChildStore(target_of(url))

    async def main() -> bytes:
        await child.start()
        try:
            assert child.pid is not None
            return _cmdline(child.pid)
        finally:
            await child.close()

    cmdline = asyncio.run(main())
    assert b"receiver.store.child" in cmdline
    assert b"s3cret" not in cmdline and b"postgres" not in cmdline


def test_the_child_imports_neither_sqlalchemy_nor_psycopg_for_sqlite() -> None:
    """What keeps the writer process small (about 20 MiB against the server's 90)."""
    code = (
        "import sys, receiver.store.child\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'sqlmodel',"
        " 'psycopg', 'starlette'})\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_bad_target_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    """A SQLite file that is not there: the child says why, the write is a 503."""
    url = f"sqlite:///{tmp_path}/missing.db"

    async def main() -> BaseException | None:
        writer = _writer(url, timeout=2)
        await writer.start()
        try:
            await writer.write(incoming(body_for(1)))
        except StoreUnavailable as exc:
            return exc
        finally:
            await writer.stop()
        return None

    error = asyncio.run(main())
    assert isinstance(error, StoreUnavailable)
    assert not os.path.exists(f"{tmp_path}/missing.db")  # never created by the attempt


@pytest.mark.slow
def test_the_child_ends_with_the_server_and_ignores_sigterm(
    server_factory: Callable[..., ServerProcess], sqlite_url: str
) -> None:
    """A SIGTERM meant for the whole process group leaves the child committing while the server
    drains; a server killed with SIGKILL takes the child with it."""
    upgrade(sqlite_url)
    server = server_factory(sqlite_url, endpoint_table())
    assert server.proc is not None
    assert httpx.get(server.base_url + "/readyz", timeout=10).status_code == 200  # child up
    children = [p for p in _children(server.proc.pid) if b"receiver.store.child" in _cmdline(p)]
    assert len(children) == 1
    child = children[0]
    os.kill(child, signal.SIGTERM)
    time.sleep(0.3)
    assert _alive(child)
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        sent = encode("RTMP_STREAM_STATE_CHANGE", {"room_id": "r", "job_id": "j", "state": "END"})
        answer = client.post(signed_path(), content=sent)
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"] == "stored"
    assert sent in stored_bodies(sqlite_url)
    server.proc.kill()
    server.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the writer process outlived a killed server"


def test_a_child_that_cannot_run_is_not_started_again_for_every_batch(sqlite_url: str) -> None:
    """A broken writer (here: a module that is not there, so the interpreter exits at once):
    every delivery is answered 503, and the child is started at most once a second."""
    upgrade(sqlite_url)

    async def main() -> tuple[list[BaseException], int]:
        writer = _writer(sqlite_url, timeout=2)
        writer.child.module = "receiver.no_such_module"
        await writer.start()
        errors: list[BaseException] = []
        try:
            until = time.monotonic() + 1.5
            while time.monotonic() < until:
                answers = await asyncio.gather(
                    *(writer.write(incoming(body_for(n))) for n in range(8)),
                    return_exceptions=True,
                )
                errors += [a for a in answers if isinstance(a, BaseException)]
                await asyncio.sleep(0.05)
        finally:
            await writer.stop()
        return errors, writer.child.starts

    errors, starts = asyncio.run(main())
    assert errors and all(isinstance(e, StoreUnavailable) for e in errors)
    assert 1 <= starts <= 3


def test_stop_commits_what_is_still_queued(db_url: str) -> None:
    """Deliveries queued behind a batch when the server stops are committed before the child
    closes, not dropped (and the stop itself does not fail)."""
    upgrade(db_url)
    bodies = [body_for(n) for n in range(40)]

    async def main() -> list[WriteOutcome | BaseException]:
        writer = _writer(db_url)
        await writer.start()
        await writer.ping()  # the child is up: the first batch goes at once
        tasks = [asyncio.create_task(writer.write(incoming(b))) for b in bodies]
        await asyncio.sleep(0)  # all queued, the first one sent
        await writer.stop()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    outcomes = asyncio.run(main())
    assert all(isinstance(o, WriteOutcome) and o.result == "stored" for o in outcomes), outcomes
    assert sorted(stored_bodies(db_url)) == sorted(bodies)


def test_batches_are_bounded_in_bytes(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Big bodies split into several batches (one message each way per batch must stay far
    from the socket framing's 2 GiB and from memory); every one is still stored."""
    import receiver.store.process

    upgrade(sqlite_url)
    monkeypatch.setattr(receiver.store.process, "MAX_BATCH_BYTES", 3000)
    bodies = [body_for(n, padding="x" * 1000) for n in range(20)]

    async def main() -> list[int]:
        writer = _writer(sqlite_url)
        await writer.start()
        await writer.ping()
        try:
            await asyncio.gather(*(writer.write(incoming(b)) for b in bodies))
        finally:
            await writer.stop()
        return writer.batch_sizes

    sizes = asyncio.run(main())
    assert sum(sizes) == len(bodies) and max(sizes) <= 2
    assert sorted(stored_bodies(sqlite_url)) == sorted(bodies)


def test_a_malformed_answer_costs_its_batch_not_the_writer(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer that does not match its batch (here: one outcome short) is a 503 for that
    batch; the next delivery is stored as usual."""
    upgrade(sqlite_url)
    real = ChildStore.write_batch
    calls = 0

    async def short(self: ChildStore, batch: list[object]) -> list[object]:
        nonlocal calls
        calls += 1
        answers = await real(self, batch)  # type: ignore[arg-type]
        return answers[:-1] if calls == 1 else answers  # type: ignore[return-value]

    monkeypatch.setattr(ChildStore, "write_batch", short)

    async def main() -> tuple[BaseException | None, WriteOutcome]:
        writer = _writer(sqlite_url)
        await writer.start()
        try:
            error = None
            try:
                await writer.write(incoming(body_for(1)))
            except StoreUnavailable as exc:
                error = exc
            return error, await writer.write(incoming(body_for(2)))
        finally:
            await writer.stop()

    error, after = asyncio.run(main())
    assert isinstance(error, StoreUnavailable)
    assert after.result == "stored"

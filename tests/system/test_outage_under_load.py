"""The store goes down in the middle of a sustained load, and comes back.

PRODUCT.md, "Callback intake": 503 store unavailable (never a 200 that was not stored); no 500
for any input a client can send; ``/readyz`` says whether the store answers. A real ``serve``
process takes distinct signed deliveries from WORKERS concurrent senders; meanwhile the store is
taken away (a PostgreSQL server really stopped, a SQLite file made read-only or immutable) for a
few seconds and given back. Every answer is then checked against what the store holds, and every
delivery that was refused is sent again, as MetaStudio would.

tests/system/test_outages.py covers the same failures between single requests.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import psycopg
import pytest
from conftest import (
    REQUIRE_PG,
    ServerProcess,
    free_port,
    signed_path,
    stored_bodies,
)
from sqlalchemy.engine import make_url

from receiver.testing import encode

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]  # stops the shared PostgreSQL

STORE_TIMEOUT = 3.0  # store_timeout_seconds of every server here
SLACK = 4.0  # on top of STORE_TIMEOUT for any answer: a busy machine, 2 cores
CLIENT_TIMEOUT = STORE_TIMEOUT + 15  # no answer by then counts as no answer at all
WORKERS = 12
BACKOFF = 0.1  # a sender waits this long after a refusal before its next delivery
WARMUP_SECONDS = 2.0
OUTAGE_SECONDS = 5.0  # the store stays down this long under load
AFTER_SECONDS = 3.0  # load kept up after the first delivery stored again
RECOVERY_LIMIT = 20.0  # the first 200 must come within this after the store is back
UNAVAILABLE = "RCV.STORE_UNAVAILABLE"


# --- the load -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One signed callback as MetaStudio would send (and resend) it: same URL, same body."""

    path_and_query: str
    body: bytes


@dataclass
class Answer:
    delivery: Delivery
    started: float  # time.monotonic() when sent
    finished: float  # ... when answered (or given up)
    status: int | None  # None: no answer (connection refused, cut, or timed out)
    error_code: str | None = None
    delivery_id: int | None = None
    result: str | None = None
    retry_after: str | None = None


@dataclass
class Probe:
    """One GET /readyz."""

    started: float
    finished: float
    status: int | None
    error_code: str | None = None


_numbers = itertools.count(1)


def new_delivery(run: str, worker: int) -> Delivery:
    n = next(_numbers)
    body = encode(
        "SHOOT_SCRIPT_SWITCH",
        {
            "room_id": f"room-{run}",
            "job_id": f"job-{worker}",
            "scene_script_name": f"scene-{n}",
            "shoot_script_sequence_no": str(n),
        },
    )
    return Delivery(signed_path(), body)


def post(client: httpx.Client, base_url: str, delivery: Delivery) -> Answer:
    started = time.monotonic()
    try:
        response = client.post(
            base_url + delivery.path_and_query,
            content=delivery.body,
            headers={"content-type": "application/json"},
        )
    except httpx.TransportError:
        return Answer(delivery, started, time.monotonic(), None)
    finished = time.monotonic()
    answer = Answer(delivery, started, finished, response.status_code)
    answer.retry_after = response.headers.get("retry-after")
    try:
        data = response.json()
    except ValueError:
        return answer
    if response.status_code == 200:
        answer.delivery_id = data.get("delivery_id")
        answer.result = data.get("result")
    else:
        answer.error_code = data.get("error_code")
    return answer


def probe_ready(client: httpx.Client, base_url: str) -> Probe:
    started = time.monotonic()
    try:
        response = client.get(base_url + "/readyz")
    except httpx.TransportError:
        return Probe(started, time.monotonic(), None)
    probe = Probe(started, time.monotonic(), response.status_code)
    if response.status_code != 200:
        with contextlib.suppress(ValueError):
            probe.error_code = response.json().get("error_code")
    return probe


@dataclass
class Load:
    """WORKERS senders of new deliveries, and one poller of /readyz, until stopped."""

    base_url: str
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    answers: list[Answer] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        targets = [(self._send, (w,)) for w in range(WORKERS)] + [(self._poll, ())]
        for target, args in targets:
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=CLIENT_TIMEOUT + 5)
        assert not any(thread.is_alive() for thread in self._threads), "a sender hangs"

    def _send(self, worker: int) -> None:
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            while not self._stop.is_set():
                answer = post(client, self.base_url, new_delivery(self.run, worker))
                with self._lock:
                    self.answers.append(answer)
                if answer.status != 200:
                    self._stop.wait(BACKOFF)

    def _poll(self) -> None:
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            while not self._stop.is_set():
                probe = probe_ready(client, self.base_url)
                with self._lock:
                    self.probes.append(probe)
                self._stop.wait(0.25)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def wait_for(self, what: Callable[[list[Answer]], bool], within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if what(self.snapshot()):
                return True
            time.sleep(0.05)
        return what(self.snapshot())


def resend(base_url: str, deliveries: Sequence[Delivery]) -> list[Answer]:
    """The senders' retries, WORKERS at a time."""
    local = threading.local()
    clients: list[httpx.Client] = []

    def one(delivery: Delivery) -> Answer:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=CLIENT_TIMEOUT)
            clients.append(local.client)
        return post(local.client, base_url, delivery)

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            return list(pool.map(one, deliveries))
    finally:
        for client in clients:
            client.close()


def outage_under_load(
    label: str,
    server: ServerProcess,
    url: str,
    take_down: Callable[[], None],
    bring_back: Callable[[], float],
) -> None:
    """Load, take the store down for OUTAGE_SECONDS, bring it back, and check everything.
    ``bring_back`` returns the time.monotonic() at which the store answered again."""
    assert server.proc is not None
    pid = server.proc.pid
    load = Load(server.base_url)
    down_begin = down = up_begin = up = 0.0
    load.start()
    started = time.monotonic()
    try:
        warmed = load.wait_for(
            lambda answers: sum(a.status == 200 for a in answers) >= 50, within=15
        )
        assert warmed, Counter(a.status for a in load.snapshot())
        time.sleep(max(0.0, started + WARMUP_SECONDS - time.monotonic()))
        down_begin = time.monotonic()
        try:
            take_down()
            down = time.monotonic()
            time.sleep(OUTAGE_SECONDS)
        finally:
            up_begin = time.monotonic()
            up = bring_back()

        def recovered(answers: list[Answer]) -> bool:
            return any(a.status == 200 and a.started >= down for a in answers)

        load.wait_for(recovered, within=RECOVERY_LIMIT)
        time.sleep(AFTER_SECONDS)
    finally:
        load.stop()
    answers, probes = load.answers, load.probes

    statuses = Counter(a.status for a in answers)
    during = [a for a in answers if a.started >= down and a.finished <= up_begin]
    probes_during = [p for p in probes if p.started >= down and p.finished <= up_begin]
    refusals = sorted(a.finished for a in answers if a.status == 503)
    # Only a delivery sent after the store went down can prove that it came back.
    back = [a for a in answers if a.status == 200 and a.started >= down]
    first_back = min((a.finished for a in back), default=None)
    after = [a for a in answers if first_back is not None and a.started >= first_back]
    probes_after = [p for p in probes if first_back is not None and p.started >= first_back]
    slowest = max(a.finished - a.started for a in answers)

    # The senders' retries of everything that was not acknowledged.
    unacked = [a.delivery for a in answers if a.status != 200]
    again = resend(server.base_url, unacked)
    # A few new deliveries, one by one, and the readiness check, after the load.
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        fresh = [post(client, server.base_url, new_delivery(load.run, -1)) for _ in range(3)]
        ready = probe_ready(client, server.base_url)
    stored = stored_bodies(url)
    late = sum(1 for a in again if a.result == "duplicate")
    code = server.proc.poll()
    process = "server still running" if code is None else f"SERVER EXITED WITH {code}"

    print(
        f"\n[{label}] {process}; {len(answers)} requests: {statuses[200]} answered 200, "
        f"{statuses[503]} answered 503, {statuses[None]} unanswered, "
        f"other {sorted(s for s in statuses if s not in (200, 503, None))}; "
        f"store down {up - down_begin:.1f} s (taken down in {down - down_begin:.2f} s, back "
        f"{up - up_begin:.2f} s after the start), 503s served over "
        f"{(refusals[-1] - refusals[0]) if refusals else 0:.1f} s; first 200 "
        + (f"{first_back - up:+.2f} s after the store was back" if first_back else "never")
        + f"; slowest answer {slowest:.2f} s; /readyz {len(probes_during)} probes during the "
        f"outage ({Counter(p.status for p in probes_during)}), {len(probes_after)} after; "
        f"resent {len(again)}: {Counter(a.status for a in again)} ({late} of them committed "
        f"although answered 503); store holds {len(stored)} deliveries"
    )

    assert code is None, f"the server exited with {code}:\n{server.output()[-4000:]}"
    # No status but 200 and 503, ever (no 500); every answer within the store timeout.
    assert set(statuses) <= {200, 503, None}, statuses
    assert {p.status for p in probes} <= {200, 503}, Counter(p.status for p in probes)
    assert slowest < STORE_TIMEOUT + SLACK
    assert max(p.finished - p.started for p in probes) < STORE_TIMEOUT + SLACK

    # While the store was down: every delivery refused with 503 in the error shape; not ready.
    assert len(during) >= WORKERS, f"only {len(during)} deliveries sent during the outage"
    wrong = [
        (a.status, a.error_code, a.retry_after)
        for a in during
        if (a.status, a.error_code) != (503, UNAVAILABLE) or not a.retry_after
    ]
    assert wrong == [], Counter(wrong)
    assert len(probes_during) >= 3
    assert {(p.status, p.error_code) for p in probes_during} == {(503, UNAVAILABLE)}

    # Back without a restart: the same process stores again, and says it is ready.
    assert server.proc.poll() is None and server.proc.pid == pid
    assert first_back is not None, "no delivery was stored after the store came back"
    assert first_back - up < RECOVERY_LIMIT
    assert len(after) >= 20 and Counter(a.status for a in after) == {200: len(after)}
    assert probes_after and {p.status for p in probes_after} == {200}
    assert [(a.status, a.result) for a in fresh] == [(200, "stored")] * 3
    assert ready.status == 200

    # Every retry is accepted now; a delivery that committed after its 503 is a duplicate.
    assert all(a.status == 200 for a in again), Counter(a.status for a in again)
    assert {a.result for a in again} <= {"stored", "duplicate"}

    # Every 200 is in the store, once, with the id it gave; nothing stored twice or unasked.
    acked: dict[Delivery, int] = {}
    for answer in [*answers, *again, *fresh]:
        if answer.status == 200:
            assert answer.delivery_id is not None
            assert acked.setdefault(answer.delivery, answer.delivery_id) == answer.delivery_id
    wrong_ids = [d for d, i in acked.items() if stored.get(d.body) != [i]]
    assert wrong_ids == [], f"{len(wrong_ids)} acknowledged deliveries not stored as answered"
    assert all(len(ids) == 1 for ids in stored.values())
    sent = {a.delivery.body for a in [*answers, *fresh]}
    assert set(stored) == sent
    assert statuses[None] == 0, "the running server left requests without an answer"
    assert "Traceback" not in server.output(), server.output()[-4000:]


# --- PostgreSQL: a throwaway cluster, really stopped and started --------------------------------


def _unavailable(reason: str) -> None:
    if REQUIRE_PG:
        pytest.fail(f"PostgreSQL is required (RECEIVER_REQUIRE_POSTGRES=1) but {reason}")
    pytest.skip(reason)


def _pg_version() -> str | None:
    """The newest PostgreSQL server installed the Debian way (/usr/lib/postgresql/N)."""
    versions = [p.parent.parent.name for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")]
    numeric = [v for v in versions if v.isdigit()]
    return max(numeric, key=int) if numeric else None


@dataclass
class Cluster:
    """A PostgreSQL cluster of this test's own (postgresql-common tools), in a temp folder."""

    version: str
    name: str
    port: int
    folder: Path

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/receiver"

    def command(self, *action: str) -> list[str]:
        return ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, *action]

    def ctl(self, *action: str) -> None:
        command = self.command(*action)
        done = subprocess.run(command, capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, f"{' '.join(command)}: {done.stderr.decode(errors='replace')}"

    def start(self) -> float:
        """``pg_ctlcluster start``; returns when the server first took a query (the command
        itself returns a second or more after that)."""
        command = self.command("start")
        starting = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            answered = self._wait_until_answering(within=60)
            output, _ = starting.communicate(timeout=60)
        finally:
            if starting.poll() is None:
                starting.kill()
                starting.wait()
        assert starting.returncode == 0, f"{' '.join(command)}: {output.decode(errors='replace')}"
        return answered

    def _wait_until_answering(self, within: float) -> float:
        conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname=receiver"
        deadline = time.monotonic() + within
        while True:
            try:
                with psycopg.connect(conninfo, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return time.monotonic()
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "PostgreSQL did not come back"
                time.sleep(0.02)


@pytest.fixture
def pg_cluster() -> Iterator[Cluster]:
    tools = ("pg_createcluster", "pg_ctlcluster", "pg_dropcluster")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        _unavailable(f"{', '.join(missing)} not found (postgresql-common)")
    if os.geteuid() != 0:
        _unavailable("a throwaway PostgreSQL cluster needs root (it runs as user postgres)")
    version = _pg_version()
    if version is None:
        _unavailable("no PostgreSQL server under /usr/lib/postgresql")
    assert version is not None
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        _unavailable("there is no postgres user")
        raise
    folder = Path(tempfile.mkdtemp(prefix="rcv-pg-", dir="/tmp"))
    os.chown(folder, owner.pw_uid, owner.pw_gid)
    cluster = Cluster(version, f"rcvtest_{uuid.uuid4().hex[:10]}", free_port(), folder)
    try:
        create = [
            "pg_createcluster",
            version,
            cluster.name,
            "--datadir",
            str(folder / "data"),
            "--port",
            str(cluster.port),
            "--logfile",
            str(folder / "postgresql.log"),
            "--start-conf",
            "manual",
            "--",
            "--auth=trust",  # initdb: trust for local and 127.0.0.1/::1 in its pg_hba.conf
        ]
        done = subprocess.run(create, capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        cluster.ctl("start")
        conninfo = f"host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as admin:
            admin.execute("CREATE DATABASE receiver")
        yield cluster
    finally:
        subprocess.run(
            ["pg_dropcluster", "--stop", version, cluster.name],
            capture_output=True,
            timeout=120,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("mode", ["immediate", "fast"])
def test_postgresql_stopped_and_started_under_load(
    pg_cluster: Cluster, server_factory: Callable[..., ServerProcess], mode: str
) -> None:
    """``stop -m immediate``: the server process is gone at once, like a crash (connections cut,
    crash recovery at the next start). ``-m fast``: sessions are terminated, then a clean
    shutdown. Either way connections are refused until ``start``."""
    server = server_factory(pg_cluster.url, store_timeout_seconds=STORE_TIMEOUT)
    try:
        outage_under_load(
            f"postgresql stop -m {mode}",
            server,
            pg_cluster.url,
            take_down=lambda: pg_cluster.ctl("stop", "-m", mode),
            bring_back=pg_cluster.start,
        )
    finally:
        server.stop()  # before the cluster is dropped


# --- SQLite: the database file made read-only ---------------------------------------------------


def _chattr(flag: str, *paths: Path) -> None:
    done = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"chattr {flag} failed: {done.stderr.decode(errors='replace')}")


def _restore(files: Sequence[Path]) -> float:
    if shutil.which("chattr") is not None:
        existing = [f for f in files if f.exists()]
        if existing:
            subprocess.run(["chattr", "-i", *map(str, existing)], capture_output=True, check=False)
    for name in files:
        if name.exists():
            name.chmod(0o644)
    return time.monotonic()


@pytest.mark.parametrize("how", ["chmod", "chattr"])
def test_sqlite_read_only_under_load(
    sqlite_url: str, server_factory: Callable[..., ServerProcess], how: str
) -> None:
    """``chmod 444`` (the database, its WAL and -shm): root still could write, so the store must
    go by the mode bits. ``chattr +i`` (root only; the database and its WAL): writes through
    descriptors already open fail (EPERM) in the middle of batches; the mode bits do not
    change."""
    if how == "chattr":
        if shutil.which("chattr") is None:
            pytest.skip("needs chattr (e2fsprogs)")
        probe = Path(make_url(sqlite_url).database or "").with_name("chattr-probe")
        probe.touch()
        done = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, check=False)
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True, check=False)
        probe.unlink()
        if done.returncode != 0:
            pytest.skip(f"chattr +i does not work here: {done.stderr.decode(errors='replace')}")
    server = server_factory(sqlite_url, store_timeout_seconds=STORE_TIMEOUT)
    path = Path(make_url(sqlite_url).database or "")
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]

    def take_down() -> None:
        present = [f for f in files if f.exists()]
        assert path in present and files[1] in present, "not in WAL mode?"
        if how == "chmod":
            for name in present:
                name.chmod(0o444)
        else:
            # Not the -shm: SQLite maps it into memory, and a store to a mapped page of an
            # immutable file is a SIGBUS (ext4 refuses the write fault), which kills any SQLite
            # process, whatever it does. The database and its WAL are written with write(2).
            _chattr("+i", path, files[1])

    try:
        outage_under_load(
            f"sqlite {how}",
            server,
            sqlite_url,
            take_down=take_down,
            bring_back=lambda: _restore(files),
        )
    finally:
        _restore(files)

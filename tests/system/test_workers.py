"""``serve --workers N``: N processes on one port, on PostgreSQL.

Real servers on loopback: every delivery is stored once whichever worker took it, ``/metrics``
answers for all workers (whichever one a scrape reaches), the supervisor brings a killed worker
back, and a supervisor killed with SIGKILL does not leave its workers serving as orphans.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import pytest
from conftest import ServerProcess, signed_path, stored_bodies

from receiver.testing import encode

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DELIVERIES = 60


def body(number: int) -> bytes:
    return encode(
        "RTMP_STREAM_STATE_CHANGE",
        {"room_id": f"{number:032x}", "job_id": f"{number + 1:032x}", "state": "CONNECTED"},
    )


def worker_pids(server: ServerProcess) -> list[int]:
    assert server.proc is not None
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    ppid = int(handle.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError):
                continue
            if ppid == server.proc.pid:
                found.append(int(entry))
    # multiprocessing's resource tracker is a child too; workers are the ones serving.
    return [pid for pid in found if "spawn_main" in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stored_total(text: str) -> float:
    pattern = r'^receiver_deliveries_total\{endpoint="shop-a",result="stored"\} (\S+)$'
    return sum(float(m) for m in re.findall(pattern, text, flags=re.MULTILINE))


def wait_for(condition: Callable[[], bool], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_two_workers_store_once_and_metrics_count_every_worker(
    pg_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(pg_url, workers=2)
    assert wait_for(lambda: len(worker_pids(server)) == 2), server.output()[-3000:]

    def send(number: int) -> int:
        # A connection of its own each time: the kernel hands connections to either worker.
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            return client.post(signed_path(), content=body(number)).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(send, range(DELIVERIES)))
    assert statuses == [200] * DELIVERIES
    stored = stored_bodies(pg_url)
    assert sorted(stored) == sorted(body(n) for n in range(DELIVERIES))
    assert all(len(ids) == 1 for ids in stored.values())

    # Every scrape, whichever worker answers it, counts what both workers stored.
    for _ in range(10):
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            text = client.get("/metrics").text
        assert stored_total(text) == DELIVERIES, text[-2000:]
        assert "receiver_store_up 1.0" in text


def test_a_killed_worker_is_replaced_and_a_killed_supervisor_takes_its_workers_along(
    pg_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(pg_url, workers=2)
    assert wait_for(lambda: len(worker_pids(server)) == 2), server.output()[-3000:]
    first, second = worker_pids(server)
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: len(set(worker_pids(server)) - {first, second}) == 1), server.output()[
        -3000:
    ]
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        assert client.post(signed_path(), content=body(1)).status_code == 200

    workers = worker_pids(server)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)  # the supervisor alone, not its group
    server.proc.wait(timeout=10)

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return _cmdline(pid) == ""  # a zombie nobody has reaped yet

    assert wait_for(lambda: all(gone(pid) for pid in workers), 20), "orphaned workers serve on"
    with pytest.raises(httpx.TransportError):
        httpx.get(server.base_url + "/healthz", timeout=2)

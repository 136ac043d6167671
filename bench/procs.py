"""Processes for ``bench/ingest.py``: server subprocesses on 127.0.0.1, their RSS, CPU accounting.

Linux only: everything is read from ``/proc`` (``/proc/PID/status`` VmRSS and VmHWM,
``/proc/PID/stat`` utime and stime, ``/proc/stat`` for the whole machine).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14, 15 of stat(5)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server's worker processes), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                ppid = int(handle.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def system_busy_seconds() -> float:
    """CPU time all CPUs spent on anything but idle and iowait, since boot (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as handle:
        ticks = [int(v) for v in handle.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / _TICKS


def children_cpu_seconds() -> float:
    """CPU time of the children this process has reaped so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class CpuUse:
    """Where the machine's CPU went during one measured run, in cores (CPU seconds / second)."""

    server_seconds: float
    server: float
    store: float  # database server processes named by the caller (PostgreSQL backends)
    load: float  # the load generator: children reaped meanwhile (wrk, once it has finished)
    other: float  # everything else on the machine: other programs, the kernel, PostgreSQL
    # Of server_seconds, what the store's writer processes (receiver.store.child) used.
    writer_seconds: float = 0.0
    # Of server_seconds, what the forwarder's process (receiver.forward.child) used.
    forwarder_seconds: float = 0.0


def measure_cpu(pid: int, run: Callable[[], T], store_pids: Sequence[int] = ()) -> tuple[T, CpuUse]:
    """Call ``run`` and account for the CPU time the machine spent meanwhile. The server is
    ``pid`` and the processes under it when the run starts (its workers, if it has any)."""
    server_pids = process_tree(pid)
    writer_pids = [p for p in server_pids if b"receiver.store.child" in _cmdline(p)]
    forwarder_pids = [p for p in server_pids if b"receiver.forward.child" in _cmdline(p)]

    def store_seconds() -> float:
        return sum(process_cpu_seconds(p) for p in store_pids)

    def server_seconds() -> float:
        return sum(process_cpu_seconds(p) for p in server_pids)

    def writer_seconds() -> float:
        return sum(process_cpu_seconds(p) for p in writer_pids)

    def forwarder_seconds() -> float:
        return sum(process_cpu_seconds(p) for p in forwarder_pids)

    server0, store0, writer0 = server_seconds(), store_seconds(), writer_seconds()
    forwarder0 = forwarder_seconds()
    children0, busy0 = children_cpu_seconds(), system_busy_seconds()
    start = time.monotonic()
    value = run()
    elapsed = time.monotonic() - start
    server = server_seconds() - server0
    store = store_seconds() - store0
    writer = writer_seconds() - writer0
    forwarder = forwarder_seconds() - forwarder0
    children = children_cpu_seconds() - children0
    other = max(0.0, system_busy_seconds() - busy0 - server - store - children)
    return value, CpuUse(
        server_seconds=server,
        server=round(server / elapsed, 2),
        store=round(store / elapsed, 2),
        load=round(children / elapsed, 2),
        other=round(other / elapsed, 2),
        writer_seconds=writer,
        forwarder_seconds=forwarder,
    )


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB (empty once the process is gone)."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


@dataclass
class Server:
    """One server subprocess on 127.0.0.1, its log in ``workdir``, its RSS sampled every 100 ms."""

    name: str
    command: list[str]
    port: int
    workdir: Path
    ready_method: str
    ready_path: str
    cwd: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    proc: subprocess.Popen[bytes] | None = None
    rss_samples_kib: list[int] = field(default_factory=list)
    peak_rss_kib: int = 0
    idle_rss_kib: int = 0
    _stop_sampling: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches this script only; it stops the servers
            )
        self._wait_ready()
        self.idle_rss_kib = proc_status(self.proc.pid).get("VmRSS", 0)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        url = f"http://127.0.0.1:{self.port}{self.ready_path}"
        data = b"" if self.ready_method == "POST" else None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                request = urllib.request.Request(url, data=data, method=self.ready_method)
                with urllib.request.urlopen(request, timeout=2) as answer:  # noqa: S310 - loopback
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} did not answer within {START_TIMEOUT:g} s:\n{self.log_tail()}"
        )

    def _sample(self) -> None:
        assert self.proc is not None
        while not self._stop_sampling.wait(0.1):
            found = [proc_status(p).get("VmRSS") for p in process_tree(self.proc.pid)]
            rss = [value for value in found if value is not None]
            if rss:
                self.rss_samples_kib.append(sum(rss))

    def stop(self) -> None:
        """Read the peak RSS, then stop gracefully (SIGINT; SIGKILL if it hangs). Idempotent."""
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join()
        if self.proc is None or self.proc.poll() is not None:
            return
        # With worker processes: the sum of their peaks (each peaks on its own; an upper bound).
        self.peak_rss_kib = sum(proc_status(p).get("VmHWM", 0) for p in process_tree(self.proc.pid))
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

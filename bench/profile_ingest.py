"""Where the ingest path spends its time: py-spy on the receiver under the ingest bench's load.

Run by hand, never by CI, from the project root (needs ``py-spy``: ``pip install -e '.[bench]'``,
and ``wrk``):

    .venv/bin/python bench/profile_ingest.py                 # SQLite, 8 s, top 25 frames
    .venv/bin/python bench/profile_ingest.py --store postgres --seconds 10 --top 40
    .venv/bin/python bench/profile_ingest.py --source /path/to/other/checkout   # compare

It starts ``metastudio-receiver serve`` on a fresh store (as ``bench/ingest.py`` does), warms it
up, then samples it with ``py-spy record --gil`` (only the thread holding the GIL: Python work,
not waiting) while wrk sends the same distinct, signed callbacks for ``--seconds``. It prints the
frames with the most samples by themselves ("self") and with what they call ("total"), and the
server's CPU time per request over the sampled run, split by thread. ``--source`` puts another
checkout of the project first on ``PYTHONPATH``, so a before/after comparison runs on the same
machine with the same load. ``--stub instant`` or ``--stub sleep:0.002`` replaces the store's
write (``bench/serve_stub_store.py``) to see what the rest of the path costs without it.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from ingest import DEFAULT_PG, WARMUP_SECONDS, _signed_path, database, receiver_server
from loadgen import lua_script, run_wrk
from procs import process_tree

_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of ``pid`` and its workers, by thread id."""
    times: dict[int, float] = {}
    for process in process_tree(pid):
        try:
            tasks = os.listdir(f"/proc/{process}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{process}/task/{tid}/stat", encoding="ascii") as handle:
                    fields = handle.read().rpartition(")")[2].split()
            except OSError:
                continue
            times[int(tid)] = (int(fields[11]) + int(fields[12])) / _TICKS
    return times


def top_frames(raw: Path, count: int) -> str:
    """Self and total sample shares of the frames in py-spy's raw (collapsed-stack) output."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        n = int(number)
        samples += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")[1:]]  # [0]: the thread
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    if not samples:
        return "no samples (is py-spy allowed to attach? try as root)"
    lines = [f"{samples} samples with the GIL held", "self:"]
    lines += [f"  {n / samples:6.1%}  {frame}" for frame, n in own.most_common(count)]
    lines += ["total:"]
    lines += [f"  {n / samples:6.1%}  {frame}" for frame, n in total.most_common(count)]
    return "\n".join(lines)


def _py_spy() -> str:
    """py-spy from PATH, else the one installed beside this interpreter (the venv's bin)."""
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--source", type=Path, help="a checkout to profile instead of this one")
    parser.add_argument(
        "--stub",
        metavar="instant|sleep:S",
        help="replace the store's write (bench/serve_stub_store.py): instant answers at once;"
        " sleep:S makes each batch wait S seconds and write nothing. Rows are then not stored.",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        workdir = Path(tmp)
        script = workdir / "callbacks.lua"
        script.write_text(lua_script())
        with database(args.store, workdir, args.pg_url, tag="profile") as url:
            server = receiver_server(workdir, url)
            if args.stub:
                server.command[1] = str(Path(__file__).with_name("serve_stub_store.py"))
                server.env["BENCH_STUB_STORE"] = args.stub
            if args.source is not None:
                path = [str(args.source.resolve()), os.environ.get("PYTHONPATH", "")]
                server.env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
            target = f"http://127.0.0.1:{server.port}{_signed_path()}"
            load = {"script": script, "threads": args.threads, "connections": args.connections}
            raw = workdir / "pyspy.txt"
            try:
                server.start()
                run_wrk(url=target, tag=secrets.token_hex(4), seconds=WARMUP_SECONDS, **load)
                assert server.proc is not None
                pid = server.proc.pid
                spy = [
                    _py_spy(),
                    *("record", "--gil", "--nonblocking", "--format", "raw"),
                    *("--rate", str(args.rate), "--duration", str(args.seconds)),
                    *("--pid", str(pid), "--output", str(raw)),
                ]
                before = thread_cpu(pid)
                profiler = subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                result: list[object] = []
                loader = threading.Thread(
                    target=lambda: result.append(
                        run_wrk(url=target, tag=secrets.token_hex(4), seconds=args.seconds, **load)
                    )
                )
                loader.start()
                loader.join()
                after = thread_cpu(pid)
                _, errors = profiler.communicate(timeout=60)
            finally:
                server.stop()
            (wrk, _report) = result[0]  # type: ignore[misc]
            requests = max(wrk.requests, 1)
            print(
                f"{args.store}: {wrk.requests_per_second:.0f} req/s under "
                f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s; "
                f"source {args.source or 'this checkout'}"
            )
            for tid, seconds in sorted(
                after.items(), key=lambda kv: -(kv[1] - before.get(kv[0], 0))
            ):
                used = seconds - before.get(tid, 0.0)
                if used * 1e6 / requests >= 1:
                    print(f"  thread {tid}: {used * 1e6 / requests:.1f} us CPU per request")
            if profiler.returncode:
                print(f"py-spy failed: {errors.decode(errors='replace')[-500:]}", file=sys.stderr)
                return 1
            print(top_frames(raw, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())

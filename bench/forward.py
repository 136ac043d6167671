"""Forwarding: end-to-end latency at a steady rate, and what forwarding costs the intake at full
load, per kind of destination, in one run.

Run by hand, never by CI, from the project root (needs wrk, and Redis, NATS with JetStream and
RabbitMQ on their usual 127.0.0.1 ports):

    .venv/bin/python bench/forward.py                          # SQLite, every kind
    .venv/bin/python bench/forward.py --store postgres --kinds redis,nats

1. **Steady rate** (``--rate`` callbacks/s, default 500, for ``--steady-seconds``, signed
   before the clock starts): for each kind, a receiver forwarding to it alone
   (``--steady-together``: one receiver forwarding to every kind at once), read back by a
   consumer (the webhook by ``bench/sink_app.py``). For each message: the time it reached the
   consumer minus the time the receiver received its callback (``data.received_at``; one
   machine, one clock), p50/p99/max.
   Target: p99 <= 250 ms for every kind.
2. **Full load**: wrk (as ``bench/ingest.py``: ``-t2 -c32``, distinct valid bodies) for
   ``--full-seconds`` (default 60) against a receiver forwarding to one kind, and against one
   forwarding nowhere, before and after the kinds (the mean of the two is the baseline). For each:
   req/s, p99, server CPU per request (the server's process tree, from /proc) and the broker's
   CPU beside it; the destination's lag (``GET /v1/destinations``) sampled every second, its
   trend over the run (events/s, after the first 5 s) and the time to drain once wrk stops.
   Targets, for each broker kind: req/s at least 85 % of the baseline's (forwarding costs the
   intake at most 15 %), and the lag flat: its trend under 1 % of the ingest rate.

Prints a table, writes ``bench/results/forward-<time>.json``; exit 0 when every target is met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
from ingest import KEY, REGISTERED_URL, _signed_path, database
from loadgen import lua_script, run_wrk
from procs import Server, free_port, measure_cpu, process_cpu_seconds

from receiver.testing import build_callback, new_secret, retarget

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
KINDS = ("http", "redis", "nats", "rabbitmq")
PORTS = {"redis": 6379, "nats": 4222, "rabbitmq": 5672}
BROKER_PROCESSES = {"redis": "redis-server", "nats": "nats-server", "rabbitmq": "beam.smp"}
SECRET = new_secret()
TOKEN = secrets.token_urlsafe(16)
MAX_P99_MS = 250.0
MIN_RATIO = 0.85
MAX_LAG_TREND = 0.01  # of the ingest rate
SETTLE_SECONDS = 5.0
DRAIN_SECONDS = 120.0


# -- the receiver and its destinations ---------------------------------------------------------


BROKER_URLS = {
    "redis": f"redis://127.0.0.1:{PORTS['redis']}",
    "nats": f"nats://127.0.0.1:{PORTS['nats']}",
    "rabbitmq": f"amqp://guest:guest@127.0.0.1:{PORTS['rabbitmq']}/",
}


def destination_table(kind: str, topic: str, sink_url: str) -> str:
    urls = {"http": sink_url, **BROKER_URLS}
    lines = [
        "[[destinations]]",
        f'name = "{kind}"',
        f'kind = "{kind}"',
        f'url = "{urls[kind]}"',
        f'topic = "{topic}"' if kind != "http" else 'secrets_env = "BENCH_SECRETS"',
        "retry_seconds = [1, 2, 5]",
    ]
    return "\n".join(lines) + "\n"


def receiver(workdir: Path, url: str, kinds: list[str], topic: str, sink_url: str) -> Server:
    port = free_port()
    config = workdir / f"receiver-{'-'.join(kinds) or 'off'}.toml"
    config.write_text(
        f"database_url = {json.dumps(url)}\n"
        f'api_tokens = ["{TOKEN}"]\n'
        "[[endpoints]]\n"
        f'name = "bench"\nregistered_url = "{REGISTERED_URL}"\nauth_type = "MSS_A"\n'
        f'keys = ["{KEY}"]\ntolerance_seconds = 3600\n'
        + "".join(destination_table(kind, topic, sink_url) for kind in kinds)
    )
    env = dict(os.environ, BENCH_SECRETS=SECRET)
    env.pop("RECEIVER_DATABASE_URL", None)
    return Server(
        name=f"receiver-{'-'.join(kinds) or 'off'}",
        command=[
            sys.executable,
            "-m",
            "receiver",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        port=port,
        workdir=workdir,
        ready_method="GET",
        ready_path="/healthz",
        cwd=ROOT,
        env=env,
    )


def sink(workdir: Path) -> Server:
    port = free_port()
    return Server(
        name="sink",
        command=[sys.executable, str(BENCH / "sink_app.py"), "--port", str(port)],
        port=port,
        workdir=workdir,
        ready_method="GET",
        ready_path="/healthz",
        cwd=ROOT,
    )


def lag(server: Server, name: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{server.base_url}/v1/destinations/{name}",
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    view: dict[str, Any] = answer.json()
    return view


# -- the brokers, set up and read back ---------------------------------------------------------


class Consumer:
    """Reads one kind's messages back in a thread: (message id, arrived, data.received_at)."""

    def __init__(self, kind: str, topic: str, *, read: bool = True) -> None:
        self.kind, self.topic, self.read = kind, topic, read
        self.arrivals: list[tuple[str, float, str]] = []
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def note(self, message_id: str, body: bytes) -> None:
        arrived = time.time()
        self.arrivals.append((message_id, arrived, orjson.loads(body)["data"]["received_at"]))

    def _run(self) -> None:
        if self.kind == "redis":
            self._redis()
        else:
            asyncio.run(self._async())

    def _redis(self) -> None:
        import redis

        client = redis.Redis(port=PORTS["redis"])
        last = "0"
        self.ready.set()
        while not self.stop.is_set():
            if not self.read:
                self.stop.wait(0.2)
                continue
            for _, entries in client.xread({self.topic: last}, block=200, count=1000) or []:
                for entry_id, fields in entries:
                    last = entry_id
                    self.note(fields[b"id"].decode(), fields[b"payload"])
        client.delete(self.topic)
        client.close()

    async def _async(self) -> None:
        if self.kind == "nats":
            import nats

            nc = await nats.connect(f"nats://127.0.0.1:{PORTS['nats']}")
            js = nc.jetstream()
            stream = self.topic.replace("-", "_").upper()
            await js.add_stream(name=stream, subjects=[f"{self.topic}.>"], max_msgs=200_000)

            async def got(msg: Any) -> None:
                self.note(msg.headers["Nats-Msg-Id"], msg.data)

            if self.read:
                await nc.subscribe(f"{self.topic}.>", cb=got)
            self.ready.set()
            while not self.stop.is_set():
                await asyncio.sleep(0.1)
            await js.delete_stream(stream)
            await nc.close()
            return
        import aio_pika

        connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{PORTS['rabbitmq']}/")
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            self.topic, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            self.topic, auto_delete=False, arguments={"x-max-length": 200_000}
        )
        await queue.bind(exchange, routing_key="#")

        async def got(message: Any) -> None:
            self.note(message.message_id, message.body)

        if self.read:
            await queue.consume(got, no_ack=True)
        self.ready.set()
        while not self.stop.is_set():
            await asyncio.sleep(0.1)
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        await connection.close()


@contextlib.contextmanager
def consumers(kinds: list[str], topic: str, *, read: bool = True) -> Iterator[dict[str, Consumer]]:
    found = {kind: Consumer(kind, topic, read=read) for kind in kinds if kind != "http"}
    for consumer in found.values():
        consumer.thread.start()
        if not consumer.ready.wait(30):
            raise RuntimeError(f"the {consumer.kind} consumer did not start")
    try:
        yield found
    finally:
        for consumer in found.values():
            consumer.stop.set()
        for consumer in found.values():
            consumer.thread.join(timeout=30)


def broker_pids(kind: str) -> list[int]:
    name = BROKER_PROCESSES.get(kind)
    if name is None:
        return []
    done = subprocess.run(["pidof", name], capture_output=True, text=True)
    return [int(pid) for pid in done.stdout.split()]


# -- 1. steady rate ----------------------------------------------------------------------------


def send_steadily(base_url: str, rate: float, seconds: float) -> int:
    """``rate`` signed callbacks a second for ``seconds``, from 4 threads; how many were stored.
    The callbacks are signed before the clock starts, so that the sender's own CPU during the
    run is little more than the requests'."""
    stored = [0] * 4
    per_thread = int(rate * seconds / 4)

    def build(index: int) -> list[tuple[str, bytes, dict[str, str]]]:
        built = []
        for n in range(per_thread):
            signed = build_callback(
                event_type="SHOOT_SCRIPT_SWITCH",
                message={
                    "room_id": "r",
                    "job_id": f"job-{index}-{n % 50}",  # every body distinct
                    "shoot_script_sequence_no": n,
                },
                registered_url=REGISTERED_URL,
                key=KEY,
            )
            built.append((retarget(signed.url, base_url), signed.body, dict(signed.headers)))
        return built

    prepared = [build(i) for i in range(4)]

    def sender(index: int) -> None:
        gap = 4 / rate
        with httpx.Client(timeout=10) as client:
            start = time.monotonic() + index * gap / 4
            for n, (url, body, headers) in enumerate(prepared[index]):
                time.sleep(max(0.0, start + n * gap - time.monotonic()))
                answer = client.post(url, content=body, headers=headers)
                stored[index] += answer.status_code == 200

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(stored)


def acknowledged_latencies(metrics: str) -> dict[str, dict[str, Any]]:
    """Per destination, from ``receiver_forward_latency_seconds``: how many messages, the share
    acknowledged within MAX_P99_MS, and the bucket bounds that hold the p50 and the p99."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(metrics):
        if family.name != "receiver_forward_latency_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                name = sample.labels["destination"]
                buckets.setdefault(name, []).append((float(sample.labels["le"]), sample.value))
    found: dict[str, dict[str, Any]] = {}
    for name, pairs in buckets.items():
        pairs.sort()
        count = pairs[-1][1]
        if not count:
            continue

        def bound(
            share: float, pairs: list[tuple[float, float]] = pairs, n: float = count
        ) -> float:
            return next(le for le, cumulative in pairs if cumulative >= share * n) * 1000

        within = max((c for le, c in pairs if le <= MAX_P99_MS / 1000), default=0.0)
        found[name] = {
            "messages": int(count),
            "within_target": round(within / count, 4),
            "p50_le_ms": bound(0.5),
            "p99_le_ms": bound(0.99),
        }
    return found


def latencies(arrivals: list[tuple[str, float, str]]) -> dict[str, Any]:
    first: dict[str, float] = {}
    for message_id, arrived, received_at in arrivals:
        if message_id not in first and received_at:
            stamp = datetime.fromisoformat(received_at.replace("Z", "+00:00")).timestamp()
            first[message_id] = (arrived - stamp) * 1000
    values = sorted(first.values())
    if not values:
        return {"messages": 0}
    return {
        "messages": len(values),
        "p50_ms": round(values[len(values) // 2], 1),
        "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 1),
        "max_ms": round(values[-1], 1),
    }


def steady(args: argparse.Namespace, workdir: Path, kinds: list[str]) -> dict[str, Any]:
    """Each kind on a receiver of its own, one after another (``--steady-together``: all kinds
    on one receiver at once)."""
    groups = [kinds] if args.steady_together else [[kind] for kind in kinds]
    figures: dict[str, Any] = {}
    answered = stored = 0
    for group in groups:
        part = steady_group(args, workdir, group)
        figures.update(part["kinds"])
        answered, stored = answered + part["answered"], stored + part["stored"]
    return {
        "answered": answered,
        "stored": stored // len(groups),
        "rate": args.rate,
        "seconds": args.steady_seconds,
        "together": args.steady_together,
        "kinds": figures,
    }


def steady_group(args: argparse.Namespace, workdir: Path, kinds: list[str]) -> dict[str, Any]:
    topic = f"bench-{secrets.token_hex(4)}"
    webhook = sink(workdir)
    webhook.start()
    try:
        with (
            database(args.store, workdir, args.pg_url, tag="forward") as url,
            consumers(kinds, topic) as readers,
        ):
            server = receiver(workdir, url, kinds, topic, f"{webhook.base_url}/hooks")
            server.start()
            try:
                print(
                    f"[steady] {args.rate:g}/s for {args.steady_seconds:g} s to {', '.join(kinds)}",
                    file=sys.stderr,
                )
                stored = send_steadily(server.base_url, args.rate, args.steady_seconds)
                events = int(
                    httpx.get(server.base_url + "/metrics")
                    .text.split("\nreceiver_events_stored_total ")[1]
                    .split()[0]
                    .split(".")[0]
                )
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and any(
                    lag(server, k)["lag_events"] for k in kinds
                ):
                    time.sleep(0.5)
                # The forwarder's own measure (received -> acknowledged by the destination), to
                # tell its latency from the way back to this process's consumers.
                acknowledged = acknowledged_latencies(httpx.get(server.base_url + "/metrics").text)
            finally:
                server.stop()
            arrivals = {kind: reader.arrivals for kind, reader in readers.items()}
            if "http" in kinds:
                arrivals["http"] = [
                    tuple(a) for a in httpx.get(webhook.base_url + "/_arrivals").json()
                ]
    finally:
        webhook.stop()
    figures = {kind: latencies(arrivals.get(kind, [])) for kind in kinds}
    for kind in kinds:
        figures[kind]["acknowledged"] = acknowledged.get(kind, {})
        figures[kind]["stored"] = events
    print(f"[steady] {stored} answered 200, {events} events stored", file=sys.stderr)
    return {"answered": stored, "stored": events, "kinds": figures}


# -- 2. full load ------------------------------------------------------------------------------


def full_load(
    args: argparse.Namespace, workdir: Path, kind: str | None, script: Path
) -> dict[str, Any]:
    kinds = [kind] if kind else []
    topic = f"bench-{secrets.token_hex(4)}"
    webhook = sink(workdir) if kind == "http" else None
    samples: list[tuple[float, int, float]] = []
    with contextlib.ExitStack() as stack:
        if webhook is not None:
            webhook.start()
            stack.callback(webhook.stop)
        url = stack.enter_context(database(args.store, workdir, args.pg_url, tag="forward"))
        # The brokers set up (a stream, a bound queue) but not read: reading would take CPU the
        # intake is measured against.
        stack.enter_context(consumers(kinds, topic, read=False))
        server = receiver(
            workdir, url, kinds, topic, f"{webhook.base_url}/hooks" if webhook else ""
        )
        server.start()
        stack.callback(server.stop)
        target = f"http://127.0.0.1:{server.port}{_signed_path()}"
        load = {"script": script, "threads": args.threads, "connections": args.connections}
        run_wrk(url=target, tag=secrets.token_hex(4), seconds=2, **load)
        stop = threading.Event()

        def sample() -> None:
            began = time.monotonic()
            while not stop.wait(1.0):
                view = lag(server, kind) if kind else None
                if view is not None:
                    samples.append(
                        (time.monotonic() - began, view["lag_events"], view["lag_seconds"])
                    )

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        brokers = broker_pids(kind) if kind else []
        broker_before = sum(process_cpu_seconds(p) for p in brokers)
        assert server.proc is not None
        name = kind or "off"
        print(f"[full load] {name} for {args.full_seconds:g} s", file=sys.stderr)
        (result, _report), cpu = measure_cpu(
            server.proc.pid,
            lambda: run_wrk(
                url=target, tag=secrets.token_hex(4), seconds=args.full_seconds, **load
            ),
        )
        broker_seconds = sum(process_cpu_seconds(p) for p in brokers) - broker_before
        stop.set()
        sampler.join()
        drained_in = None
        if kind:
            began = time.monotonic()
            while time.monotonic() - began < DRAIN_SECONDS:
                if lag(server, kind)["lag_events"] == 0:
                    drained_in = round(time.monotonic() - began, 1)
                    break
                time.sleep(0.5)
    requests = max(result.requests, 1)
    figures: dict[str, Any] = {
        "kind": name,
        "requests_per_second": result.requests_per_second,
        "p99_ms": result.latency_ms["99"],
        "non_2xx": result.non_2xx,
        "server_cpu_us_per_request": round(cpu.server_seconds / requests * 1e6, 1),
        "broker_cpu_us_per_request": round(broker_seconds / requests * 1e6, 1),
        # Of the server's: the forwarder's process, and the store's writer process.
        "forwarder_cpu_us_per_request": round(cpu.forwarder_seconds / requests * 1e6, 1),
        "writer_cpu_us_per_request": round(cpu.writer_seconds / requests * 1e6, 1),
        "cores": {"server": cpu.server, "wrk": cpu.load, "other": cpu.other},
    }
    if kind:
        steady_part = [(t, events) for t, events, _ in samples if t >= 5]
        trend = _slope(steady_part)
        figures.update(
            lag_trend_events_per_s=round(trend, 1),
            max_lag_events=max((e for _, e, _ in samples), default=0),
            max_lag_seconds=max((s for _, _, s in samples), default=0.0),
            drained_in_s=drained_in,
            lag_samples=samples,
        )
    return figures


def _slope(points: list[tuple[float, int]]) -> float:
    if len(points) < 3:
        return 0.0
    xs, ys = [p[0] for p in points], [float(p[1]) for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    denominator = sum((x - mx) ** 2 for x in xs) or 1.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / denominator


# -- the run -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--steady-seconds", type=float, default=30.0)
    parser.add_argument("--full-seconds", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steady-together", action="store_true")
    parser.add_argument("--skip-steady", action="store_true")
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    results: dict[str, Any] = {"store": args.store, "kinds": kinds}
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp:
        workdir = Path(tmp)
        script = workdir / "load.lua"
        script.write_text(lua_script())
        if not args.skip_steady:
            results["steady"] = steady(args, workdir, kinds)
        # Each kind between two runs forwarding nowhere: its ratio is to their mean, so a
        # machine that drifts during the whole run does not bias one kind.
        runs = [] if args.skip_full else [full_load(args, workdir, None, script)]
        for kind in kinds if runs else []:
            runs.append(full_load(args, workdir, kind, script))
            runs.append(full_load(args, workdir, None, script))
            _partial(results, runs)
    offs = [run["requests_per_second"] for run in runs if run["kind"] == "off"]
    baseline = statistics.fmean(offs) if offs else 0.0
    for index, run in enumerate(runs):
        if run["kind"] == "off":
            run["ratio_to_off"] = round(run["requests_per_second"] / baseline, 3)
        else:
            around = statistics.fmean(
                [runs[index - 1]["requests_per_second"], runs[index + 1]["requests_per_second"]]
            )
            run["ratio_to_off"] = round(run["requests_per_second"] / around, 3)
    results["full_load"] = runs
    ok = _report(results, baseline)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"forward-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1))
    verdict = "every target met" if ok else "NOT every target met"
    print(f"\nwritten {path.relative_to(ROOT)}; {verdict}")
    return 0 if ok else 1


def _cell(value: Any, missing: str = "-") -> str:
    return missing if value is None else str(value)


def _partial(results: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """What is measured so far, kept should a later run fail."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "forward-partial.json").write_text(json.dumps({**results, "full_load": runs}))


def _report(results: dict[str, Any], baseline: float) -> bool:
    ok = True
    part = results.get("steady")
    if part:
        print(
            f"\nsteady {part['rate']:g}/s for {part['seconds']:g} s ({part['stored']} stored),"
            " end to end (received -> at the consumer):"
        )
        header = ("kind", "messages", "p50 ms", "p99 ms", "max ms")
        print(_row(header, (10, 9, 8, 8, 8)) + f"  target p99 <= {MAX_P99_MS:g} ms")
        for kind, f in part["kinds"].items():
            complete = f.get("messages", 0) >= f.get("stored", part["stored"])
            met = complete and f.get("p99_ms", 1e9) <= MAX_P99_MS
            ok &= met
            cells = (kind, f.get("messages", 0), f.get("p50_ms"), f.get("p99_ms"), f.get("max_ms"))
            print(_row(cells, (10, 9, 8, 8, 8)) + f"  {'met' if met else 'NOT met'}")
        print(
            "\nthe same, received -> acknowledged by the destination (the forwarder's histogram,"
            " receiver_forward_latency_seconds: bucket bounds):"
        )
        header = ("kind", "messages", "p50 <=", "p99 <=", f"<= {MAX_P99_MS:g} ms")
        print(_row(header, (10, 9, 8, 8, 12)))
        for kind, f in part["kinds"].items():
            acked = f.get("acknowledged") or {}
            share = acked.get("within_target")
            cells = (
                kind,
                acked.get("messages", 0),
                acked.get("p50_le_ms"),
                acked.get("p99_le_ms"),
                None if share is None else f"{share * 100:.2f} %",
            )
            print(_row(cells, (10, 9, 8, 8, 12)))
    if not results["full_load"]:
        return ok
    print(
        f"\nfull load ({results['store']}, wrk -t2 -c32); each kind between two runs forwarding"
        f" nowhere (their mean over the run: {baseline:.0f} req/s):"
    )
    widths = (10, 8, 6, 7, 10, 10, 13, 11, 8, 9, 7)
    header = ("kind", "req/s", "ratio", "p99 ms", "srv us/req", "fwd us/req", "broker us/req")
    header += ("lag trend/s", "max lag", "max lag s", "drain s")
    print(_row(header, widths) + "  targets")
    for run in results["full_load"]:
        verdict = ""
        if run["kind"] in PORTS:
            cost_ok = run["ratio_to_off"] >= MIN_RATIO
            flat = (
                run["lag_trend_events_per_s"] <= MAX_LAG_TREND * run["requests_per_second"]
                and run["drained_in_s"] is not None
            )
            ok &= cost_ok and flat
            verdict = (
                f"cost {'met' if cost_ok else 'NOT met'}, lag {'flat' if flat else 'NOT flat'}"
            )
        cells = (
            run["kind"],
            round(run["requests_per_second"]),
            run["ratio_to_off"],
            run["p99_ms"],
            run["server_cpu_us_per_request"],
            run.get("forwarder_cpu_us_per_request"),
            run["broker_cpu_us_per_request"],
            run.get("lag_trend_events_per_s"),
            run.get("max_lag_events"),
            run.get("max_lag_seconds"),
            _cell(run.get("drained_in_s"), "no" if run["kind"] != "off" else "-"),
        )
        print(_row(cells, widths) + f"  {verdict}")
    return ok


def _row(cells: tuple[Any, ...], widths: tuple[int, ...]) -> str:
    first, *rest = (_cell(cell) for cell in cells)
    right = (cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True))
    return " ".join([first.ljust(widths[0]), *right])


if __name__ == "__main__":
    sys.exit(main())

"""What a broker costs the intake without the forwarder: the floor under forward.py's full-load
ratio.

Run by hand, never by CI, from the project root (needs wrk, and the brokers on their usual
127.0.0.1 ports):

    .venv/bin/python bench/broker_floor.py                       # redis, nats, rabbitmq
    .venv/bin/python bench/broker_floor.py --kinds rabbitmq --rate 5000

wrk (as forward.py's full load: ``-t2 -c32``) loads a receiver forwarding nowhere for
``--seconds``, first alone, then with a separate process publishing ``--rate`` messages a second
to one kind through the receiver's own transport (receiver.forward.kinds), in a batch every
50 ms as the forwarder sends under load, at the forwarder's niceness. The messages are the
forwarder's: a stored event's body taken from the receiver under test. What is left out is
everything else the forwarder does: reading the store, keeping its place, the attempts log. So
the ratio here (req/s with the publisher against the mean of the runs without, before and after)
is about the best forward.py can show for that kind on this machine, and the broker's CPU per
message beside it is a cost no change to the forwarder removes.

Prints a table and writes ``bench/results/broker-floor-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from forward import BROKER_URLS, RESULTS, broker_pids, consumers, receiver
from ingest import _signed_path, database
from loadgen import lua_script, run_wrk
from procs import measure_cpu, process_cpu_seconds

from receiver.forward.child import NICENESS

TICK_SECONDS = 0.05  # the forwarder's LINGER_SECONDS: one batch per tick under load


# -- the publisher (its own process) -----------------------------------------------------------


async def publish(kind: str, topic: str, body: bytes, rate: float, seconds: float) -> None:
    from receiver.config import DestinationSettings
    from receiver.forward.kinds import open_transport
    from receiver.forward.messages import EVENT, Message

    transport = open_transport(
        DestinationSettings(name=kind, kind=kind, url=BROKER_URLS[kind], topic=topic)
    )
    message_type = json.loads(body)["type"]
    per_tick = max(1, round(rate * TICK_SECONDS))
    sent = delivered = 0
    started = time.monotonic()
    cpu0 = time.process_time()
    while time.monotonic() - started < seconds:
        tick = time.monotonic()
        batch = [
            Message(
                id=f"evt_{sent + n}",
                type=message_type,
                body=body,
                order_key=f"job:{(sent + n) % 64}",
                source=EVENT,
                source_id=sent + n,
                stored_at=time.time(),
                data=None,
            )
            for n in range(per_tick)
        ]
        outcomes = await transport.send(batch)
        sent += len(batch)
        delivered += sum(1 for o in outcomes if o is not None and o.delivered)
        await asyncio.sleep(max(0.0, TICK_SECONDS - (time.monotonic() - tick)))
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu0
    await transport.close()
    print(
        json.dumps(
            {
                "sent": sent,
                "delivered": delivered,
                "seconds": round(elapsed, 2),
                "publisher_us_per_msg": round(cpu * 1e6 / max(1, sent), 1),
            }
        )
    )


# -- the runs ----------------------------------------------------------------------------------


def forwarder_body(database_url: str) -> bytes:
    """The first stored event's body, built by the forwarder's own reader."""
    from receiver.config import DestinationSettings
    from receiver.forward import logs
    from receiver.store.writer import create_engine_for

    anywhere = DestinationSettings(name="floor", kind="redis", url=BROKER_URLS["redis"])
    engine = create_engine_for(database_url, create=False)
    try:
        with engine.connect() as conn:
            messages, _head = logs.read_events(conn, anywhere, after=0, limit=1)
    finally:
        engine.dispose()
    return messages[0].body


def one_run(
    args: argparse.Namespace,
    server_pid: int,
    target: str,
    script: Path,
    kind: str | None,
    body: bytes,
    topic: str,
) -> dict[str, Any]:
    publisher = None
    body_file = script.parent / "body.json"
    body_file.write_bytes(body)
    if kind is not None:
        command = ["nice", "-n", str(NICENESS), sys.executable, __file__, "--publish", kind]
        command += ["--topic", topic]
        command += ["--rate", str(args.rate), "--seconds", str(args.seconds + 4)]
        command += ["--body-file", str(body_file)]
        publisher = subprocess.Popen(command, stdout=subprocess.PIPE)
        time.sleep(2)  # connected, publishing
    brokers = broker_pids(kind) if kind else []
    broker0 = sum(process_cpu_seconds(p) for p in brokers)
    load = {"script": script, "threads": args.threads, "connections": args.connections}
    print(f"[broker floor] {kind or 'off'} for {args.seconds:g} s", file=sys.stderr)
    began = time.monotonic()
    (result, _report), cpu = measure_cpu(
        server_pid,
        lambda: run_wrk(url=target, tag=secrets.token_hex(4), seconds=args.seconds, **load),
    )
    elapsed = time.monotonic() - began
    broker = sum(process_cpu_seconds(p) for p in brokers) - broker0
    found: dict[str, Any] = {
        "kind": kind or "off",
        "requests_per_second": round(result.requests_per_second, 1),
        "p99_ms": result.latency_ms.get("99"),
        "server_us_per_request": round(cpu.server_seconds * 1e6 / max(1, result.answered_2xx), 1),
    }
    if publisher is not None:
        out, _ = publisher.communicate(timeout=60)
        published = json.loads(out.decode().strip().splitlines()[-1])
        rate = published["sent"] / published["seconds"]
        found.update(
            published,
            publish_rate=round(rate, 1),
            broker_us_per_msg=round(broker * 1e6 / max(1.0, rate * elapsed), 1),
        )
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default="redis,nats,rabbitmq")
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--publish", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--body-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        body = Path(args.body_file).read_bytes()
        asyncio.run(publish(args.publish, args.topic, body, args.rate, args.seconds))
        return 0
    kinds = [k for k in args.kinds.split(",") if k]
    topic = f"bench-{secrets.token_hex(4)}"
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="broker-floor-") as tmp:
        workdir = Path(tmp)
        script = workdir / "load.lua"
        script.write_text(lua_script())
        with (
            database("sqlite", workdir, "", tag="floor") as url,
            consumers(kinds, topic, read=False),
        ):
            server = receiver(workdir, url, [], topic, "")
            server.start()
            try:
                assert server.proc is not None
                target = f"http://127.0.0.1:{server.port}{_signed_path()}"
                run_wrk(url=target, tag="warm", seconds=2, script=script, threads=2, connections=32)
                body = forwarder_body(url)
                runs.append(one_run(args, server.proc.pid, target, script, None, body, topic))
                for kind in kinds:
                    runs.append(one_run(args, server.proc.pid, target, script, kind, body, topic))
                    runs.append(one_run(args, server.proc.pid, target, script, None, body, topic))
            finally:
                server.stop()
    offs = [r for r in runs if r["kind"] == "off"]
    for index, run in enumerate(runs):
        if run["kind"] != "off":
            around = (
                runs[index - 1]["requests_per_second"] + runs[index + 1]["requests_per_second"]
            ) / 2
            run["ratio"] = round(run["requests_per_second"] / around, 3)
    print(
        f"\nbroker floor (sqlite, wrk -t{args.threads} -c{args.connections}, "
        f"{args.seconds:g} s a run, "
        f"publishing {args.rate:g}/s at nice {NICENESS}; off runs' mean "
        f"{sum(r['requests_per_second'] for r in offs) / len(offs):.0f} req/s):"
    )
    print(
        f"{'kind':10} {'req/s':>7} {'ratio':>6} {'srv us/req':>10} {'published/s':>11} "
        f"{'publisher us/msg':>16} {'broker us/msg':>13}"
    )
    for run in runs:
        print(
            f"{run['kind']:10} {run['requests_per_second']:7.0f} {run.get('ratio', ''):>6} "
            f"{run['server_us_per_request']:10.1f} {run.get('publish_rate', ''):>11} "
            f"{run.get('publisher_us_per_msg', ''):>16} {run.get('broker_us_per_msg', ''):>13}"
        )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"broker-floor-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps({"rate": args.rate, "seconds": args.seconds, "runs": runs}, indent=1)
    )
    print(f"written {path.relative_to(RESULTS.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

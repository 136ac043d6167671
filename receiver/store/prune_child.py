"""The server's periodic prune, in a process of its own: ``python -m receiver.store.prune_child
PARENT_PID``.

The prune builds every archived row into JSON and gzips it: Python work that, on a thread of
the server, would take turns with the intake for the interpreter lock. Here it runs on another
core, at a lower priority (``NICENESS``): when the cores are busy, the intake goes first.

receiver.web.pruning starts it for each prune and writes it, on stdin, one JSON object:
``{"database_url": ..., "policy": {...}}`` (never on the command line: the URL may hold a
password). It answers on stdout with JSON lines: ``{"batch": [events, deliveries, archived]}``
after each batch, then one of ``{"report": {...}}``, ``{"busy": "..."}`` or
``{"failed": "..."}``. Its log records go to stderr, the server's.

It dies with the server (PR_SET_PDEATHSIG), which is safe at any moment: an archive is
finished, or its unfinished file removed, by the next prune (receiver.store.archives).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from receiver.store.retention import PruneBusy, RetentionPolicy, prune

NICENESS = 10


def policy_json(policy: RetentionPolicy) -> dict[str, Any]:
    return {
        "days": policy.days,
        "endpoint_days": dict(policy.endpoint_days),
        "tolerance": dict(policy.tolerance),
        "default_tolerance": policy.default_tolerance,
        "keep_for": list(policy.keep_for),
        "archive_dir": policy.archive_dir,
    }


def policy_from_json(data: dict[str, Any]) -> RetentionPolicy:
    return RetentionPolicy(
        days=data["days"],
        endpoint_days=data["endpoint_days"],
        tolerance=data["tolerance"],
        default_tolerance=data["default_tolerance"],
        keep_for=tuple(data["keep_for"]),
        archive_dir=data["archive_dir"],
    )


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str]) -> int:
    from receiver.store.child import die_with_parent_thread
    from receiver.store.writer import create_engine_for

    die_with_parent_thread()
    if os.getppid() != int(argv[0]):  # the server died before prctl took effect
        return 1
    # Below the server: when the cores are busy the intake gets them first.
    os.nice(NICENESS)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    order = json.loads(sys.stdin.readline())
    engine = create_engine_for(order["database_url"], pool_size=1)
    try:
        report = prune(
            engine,
            policy_from_json(order["policy"]),
            on_batch=lambda events, deliveries, archived: _say(
                {"batch": [events, deliveries, archived]}
            ),
        )
    except PruneBusy as exc:
        _say({"busy": str(exc)})
        return 0
    except Exception as exc:
        _say({"failed": f"{type(exc).__name__}: {str(exc)[:300]}"})
        return 1
    finally:
        engine.dispose()
    _say({"report": report.as_json()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

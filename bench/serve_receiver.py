"""``metastudio-receiver serve``, exactly, plus a note of the group-commit batch sizes at shutdown.

    BENCH_BATCH_STATS=/tmp/batches.json .venv/bin/python bench/serve_receiver.py serve --config ...

Runs ``receiver.cli.main`` unchanged. The only addition is a wrapper around the group-commit
writers' ``stop`` (called once, in the app's lifespan shutdown) that writes the writer's
``batches`` and ``batch_sizes`` to ``$BENCH_BATCH_STATS.<pid>`` (one file per worker process);
nothing on the request path changes. If the writer no longer has those attributes, nothing is
written. The wrapper is installed at import, outside ``__main__``: ``serve --workers N`` spawns
its workers as fresh interpreters, which import this module again (as ``__mp_main__``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from receiver.cli import main
from receiver.store import writer as store


def _record_batches_at_stop(path: str) -> None:
    for writer_class in (store.GroupCommitWriter, getattr(store, "ProcessCommitWriter", None)):
        if writer_class is not None and "stop" in vars(writer_class):
            _wrap_stop(writer_class, path)


def _wrap_stop(writer_class: Any, path: str) -> None:
    original = writer_class.stop

    async def stop(self: Any) -> None:
        try:
            await original(self)
        finally:
            sizes = getattr(self, "batch_sizes", None)
            if sizes is not None:
                stats = {"batches": getattr(self, "batches", len(sizes)), "sizes": list(sizes)}
                with open(f"{path}.{os.getpid()}", "w", encoding="utf-8") as handle:
                    json.dump(stats, handle)

    writer_class.stop = stop


if target := os.environ.get("BENCH_BATCH_STATS"):
    _record_batches_at_stop(target)

if __name__ == "__main__":
    sys.exit(main())

"""``metastudio-receiver serve`` with the store's batch write replaced, to take the store apart
from the rest of the ingest path in ``bench/profile_ingest.py --stub``. Never for real use.

    BENCH_STUB_STORE=instant .venv/bin/python bench/serve_stub_store.py serve --config ...
    BENCH_STUB_STORE=sleep:0.002 ...   # each batch waits 2 ms, like a commit, and writes nothing

``instant`` answers each delivery at once, without the writer thread (``GroupCommitWriter.write``
returns an outcome); ``sleep:S`` keeps the writer thread and group commit but a batch only sleeps
S seconds (no driver, no GIL needed meanwhile) before its deliveries are answered "stored".
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from receiver import store
from receiver.cli import main
from receiver.store import WriteOutcome

_ids = itertools.count(1)


def _install(mode: str) -> None:
    if mode == "instant":

        async def write(self: Any, item: Any) -> WriteOutcome:
            n = next(_ids)
            return WriteOutcome("stored", "stored", n, n)

        store.GroupCommitWriter.write = write  # type: ignore[method-assign]
    elif mode.startswith("sleep:"):
        seconds = float(mode.removeprefix("sleep:"))

        def write_batch(self: Any, items: Sequence[Any], rows: Any = None) -> list[WriteOutcome]:
            time.sleep(seconds)
            return [
                WriteOutcome("stored", "stored", n, n) for n in itertools.islice(_ids, len(items))
            ]

        store.Store.write_batch = write_batch  # type: ignore[method-assign]
    else:
        raise SystemExit(f"BENCH_STUB_STORE: instant or sleep:SECONDS, not {mode!r}")


_install(os.environ.get("BENCH_STUB_STORE", "instant"))

if __name__ == "__main__":
    sys.exit(main())

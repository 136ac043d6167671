"""``metastudio-receiver serve`` with the store's batch write replaced, to take the store apart
from the rest of the ingest path in ``bench/profile_ingest.py --stub``. Never for real use.

    BENCH_STUB_STORE=instant .venv/bin/python bench/serve_stub_store.py serve --config ...
    BENCH_STUB_STORE=sleep:0.002 ...   # each batch waits 2 ms, like a commit, and writes nothing

``instant`` decodes each delivery and answers it at once, without a writer (``write_fields``
returns an outcome); ``sleep:S`` keeps the writer and group commit but a batch only sleeps S
seconds (no driver) before its deliveries are answered "stored"; with the writer process the
decoding the child would do runs on the loop instead.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from receiver.cli import main
from receiver.store import writer as store
from receiver.store.incoming import WriteOutcome, delivery_of

_ids = itertools.count(1)


def _install(mode: str) -> None:
    if mode == "instant":

        async def write_fields(self: Any, fields: Any) -> WriteOutcome:
            delivery_of(fields)  # the decoding a writer does, and nothing after it
            n = next(_ids)
            return WriteOutcome("stored", "stored", n, n)

        store.GroupCommitWriter.write_fields = write_fields  # type: ignore[method-assign]
        store.ProcessCommitWriter.write_fields = write_fields  # type: ignore[method-assign]
    elif mode.startswith("sleep:"):
        seconds = float(mode.removeprefix("sleep:"))

        def stored(count: int) -> list[WriteOutcome]:
            return [WriteOutcome("stored", "stored", n, n) for n in itertools.islice(_ids, count)]

        def write_batch(self: Any, items: Sequence[Any], rows: Any = None) -> list[WriteOutcome]:
            time.sleep(seconds)
            return stored(len(items))

        async def child_write_batch(self: Any, batch: Sequence[Any]) -> list[WriteOutcome]:
            for fields in batch:
                delivery_of(fields)  # what the child does before it writes (here: on the loop)
            await asyncio.sleep(seconds)
            return stored(len(batch))

        store.Store.write_batch = write_batch  # type: ignore[method-assign]
        store.ChildStore.write_batch = child_write_batch  # type: ignore[method-assign]
    else:
        raise SystemExit(f"BENCH_STUB_STORE: instant or sleep:SECONDS, not {mode!r}")


_install(os.environ.get("BENCH_STUB_STORE", "instant"))

if __name__ == "__main__":
    sys.exit(main())

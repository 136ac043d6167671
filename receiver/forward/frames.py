"""The framing between the server and the forwarder's process: a 4-byte length, then a pickle.

Both ends are this project's own processes over a socket pair nobody else holds, so pickle is
safe here (it is never read from anywhere else)."""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

_LENGTH = struct.Struct("!I")


def write_frame(writer: asyncio.StreamWriter, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LENGTH.pack(len(data)) + data)


async def read_frame(reader: asyncio.StreamReader) -> Any:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    # S301: the peer is our own process (see the module's docstring).
    return pickle.loads(await reader.readexactly(length))  # noqa: S301

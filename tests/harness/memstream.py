"""In-memory streams for the channel and supervisor tests: a writer that collects the
frames written to it (hookd.ipc.wire framing) and wakes a waiter at every write.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Optional

from hookd.ipc import wire


class CollectingWriter:
    """Stands in for an asyncio.StreamWriter; `wrote` (made inside the running loop, on
    first use) is set at every write."""

    def __init__(self):
        self.data = bytearray()
        self.closed = False
        self.wrote: Optional[asyncio.Event] = None

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.data += data
        if self.wrote is not None:
            self.wrote.set()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None

    def messages(self, decode: Callable[[dict], object] = lambda d: d) -> list:
        """Every frame written so far, as JSON objects (or what `decode` makes of them)."""
        out, buf = [], bytes(self.data)
        while buf:
            (n,) = wire.HEADER.unpack_from(buf)
            out.append(decode(wire.decode(buf[:wire.HEADER.size + n])))
            buf = buf[wire.HEADER.size + n:]
        return out

    async def next_message(self, count: int, timeout: float = 5.0, decode=lambda d: d):
        """Wait until `count` frames were written; the last one."""
        if self.wrote is None:
            self.wrote = asyncio.Event()
        while len(self.messages()) < count:
            self.wrote.clear()
            await asyncio.wait_for(self.wrote.wait(), timeout)
        return self.messages(decode)[count - 1]

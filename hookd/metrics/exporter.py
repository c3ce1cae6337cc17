"""The [metrics] in force: the textfile writer (hookd.metrics.textfile) and the metrics
socket (hookd.metrics.serve), started with the daemon, swapped at a reload that changes
[metrics], and stopped last with `hookd_up 0` written.

Owns their lifecycle and nothing else: what the metrics say is hookd.metrics' and the
daemon's `refresh` callable's. It is the one module of this package that imports
from hookd outside it (hookd.ipc.listener, to bind the socket as hookd binds its
others: mode 0660, the given group, a stale socket replaced). A socket that cannot be
made, like a directory that cannot be written, is logged and left out: metrics never
keep hookd from serving hooks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Optional

from hookd import metrics
from hookd.errors import HookdError
from hookd.ipc.listener import create_unix_listener, file_identity, unlink_if_same
from hookd.metrics.serve import MetricsServer
from hookd.metrics.textfile import TextfileWriter

log = logging.getLogger("hookd.metrics")


class MetricsExporter:
    def __init__(self, refresh: Callable[[], None], group: Callable[[], Optional[int]]):
        """`refresh` copies the daemon's state into hookd.metrics before each write or
        answer; `group` gives the metrics socket's group (None: root only)."""
        self._refresh = refresh
        self._group = group
        self.writer: Optional[TextfileWriter] = None
        self.server: Optional[MetricsServer] = None
        self._socket: Optional[tuple] = None        # (path, file identity) to unlink at stop
        #: Made on first use, inside the loop (Python 3.9 binds it to the loop it is made in).
        self._lock: Optional[asyncio.Lock] = None

    async def start(self, settings) -> None:
        """`settings`: hookd.config.MetricsSettings (textfile_dir, interval, socket)."""
        metrics.UP.set(1)
        if settings.socket:
            await self._serve(settings.socket)
        if settings.textfile_dir:
            self.writer = TextfileWriter(metrics.REGISTRY, settings.textfile_dir, interval=settings.interval,
                                         before_write=self._refresh)
            self.writer.start()
            log.info("metrics: %s, rewritten on change and every %g s", self.writer.path, settings.interval)

    async def _serve(self, path: str) -> None:
        try:
            sock = create_unix_listener(path, 0o660, self._group(), what="metrics", logger=log)
            self._socket = (path, file_identity(path))
        except (HookdError, OSError) as err:
            log.error("%s; metrics are not served on a socket (hooks and the proxy are unaffected)", err)
            return
        self.server = MetricsServer(sock, self._render)
        await self.server.start()
        log.info("metrics: served on %s", path)

    def _render(self) -> str:
        self._refresh()
        return metrics.REGISTRY.render()

    async def stop(self) -> None:
        """The textfile's last write says `hookd_up 0`; the socket is closed and unlinked."""
        writer, self.writer = self.writer, None
        if writer is not None:
            await writer.stop(final=lambda: metrics.UP.set(0))
        server, self.server = self.server, None
        if server is not None:
            await server.close()
        if self._socket is not None:
            unlink_if_same(*self._socket)
            self._socket = None

    async def apply(self, settings) -> None:
        """A reload changed [metrics]: stop what runs, start what the new settings say
        (two reloads in a row: one after the other)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await self.stop()
            await self.start(settings)

"""The metrics textfile: hookd.metrics' registry, written for node_exporter.

Owns the task that writes the registry atomically into node_exporter's textfile-collector
directory (`[metrics] textfile_dir`) as hookd.prom, on change and every `[metrics]
interval` seconds. A write that fails (disk full, a directory that is not writable) is
logged once until it works again, counted in hookd_metrics_write_errors_total, and tried
again at the next interval: it never fails or delays a hook call or a proxy call. It
must not decide what the metrics say (hookd.metrics and the daemon do).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from typing import Callable, Optional

from hookd import metrics
from hookd.metrics.registry import Registry

log = logging.getLogger("hookd.metrics")

TEXTFILE_NAME = "hookd.prom"


class TextfileWriter:
    """Writes the registry to DIR/hookd.prom: at start, after a change (at most once per
    `min_gap` seconds: a boot storm is one write, not hundreds), every `interval` seconds
    (so that the file's mtime says hookd is alive), and a last time at stop.

    The file is written as DIR/.hookd.prom.tmp (node_exporter reads only *.prom), made
    0644 whatever the umask (node_exporter runs as another user), then renamed over the
    old one: a reader sees the old file or the new one, never half of one. No fsync: the
    file is rewritten seconds later and is worthless after a crash; an fsync could stall
    the event loop that answers hooks. `before_write` refreshes what is read from the
    daemon's state.
    """

    def __init__(self, registry: Registry, directory: str, *, interval: float = 15.0, min_gap: float = 1.0,
                 before_write: Optional[Callable[[], None]] = None):
        self.registry = registry
        self.directory = directory
        self.path = os.path.join(directory, TEXTFILE_NAME)
        self.interval = interval
        self.min_gap = min_gap
        self.before_write = before_write
        self.writes = 0
        self.failing: Optional[str] = None
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        #: Set after each write attempt: tests (and nothing else) wait on it.
        self.attempted: Optional[asyncio.Event] = None

    def start(self) -> None:
        self._wake = asyncio.Event()
        self.attempted = asyncio.Event()
        self.registry.on_change = self._wake.set
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            self.write_once()
            # After the write: what it set itself (its timestamp, the refreshed gauges) is
            # no reason for another one.
            self._wake.clear()
            await asyncio.sleep(self.min_gap)
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, self.interval - self.min_gap))
            except asyncio.TimeoutError:
                pass

    async def stop(self, final: Optional[Callable[[], None]] = None) -> None:
        """Stop the task; `final` (e.g. hookd_up 0) is applied before the last write."""
        self.registry.on_change = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])      # returns when it is done; raises nothing
            self._task = None
        if final is not None:
            final()
        self.write_once()

    def write_once(self) -> bool:
        """One atomic write; False (logged once until it works again) when it failed."""
        problem = None
        try:
            if self.before_write is not None:
                self.before_write()
            metrics.SERIES_DROPPED.set(self.registry.dropped)
            metrics.WRITTEN.set(round(time.time(), 3))
            self._write(self.registry.render().encode("utf-8"))
        except OSError as err:
            problem = str(err.strerror or err)
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                # hookd.service's ProtectSystem=strict: the usual cause.
                problem += f" (under systemd, add ReadWritePaths={self.directory} in a drop-in: hookd.conf(5))"
        except Exception as err:
            # A bug in what feeds the metrics must cost the metrics, never the daemon.
            problem = f"{type(err).__name__}: {err}"
            log.debug("traceback", exc_info=True)
        if problem is not None:
            metrics.WRITE_ERRORS.inc()
            if self.failing is None:
                log.error("cannot write metrics to %s: %s; hooks and the proxy are unaffected, "
                          "retrying every %g s", self.path, problem, self.interval)
            self.failing = problem
        else:
            self.writes += 1
            if self.failing is not None:
                log.warning("metrics written to %s again", self.path)
            self.failing = None
        if self.attempted is not None:
            self.attempted.set()
        return problem is None

    def _write(self, data: bytes) -> None:
        tmp = os.path.join(self.directory, "." + TEXTFILE_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            try:
                os.fchmod(fd, 0o644)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

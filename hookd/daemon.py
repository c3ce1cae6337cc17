"""`hookd`: the long-running daemon on each hypervisor.

Owns start-up and shutdown, the one asyncio event loop, configuration reloads
(SIGHUP and inotify on the config directory; an invalid config is refused and the
last good one stays), systemd integration (READY/STATUS/WATCHDOG and socket
activation through hookd.ipc.sdprotocol, the journal) and the wiring of its parts: the hook socket
(hookd.hookpath.server + hookd.hookpath.handler), the libvirt proxy (hookd.rpc.proxy), the audit
log, and the metrics (hookd.metrics.exporter: the textfile and the metrics socket, fed from
the status tree before each write). It holds no policy logic itself.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
from typing import Any, Awaitable, Callable, Dict, Optional, Type

from hookd import __version__, metrics
from hookd.metrics import feed as metrics_feed
from hookd.metrics.exporter import MetricsExporter
from hookd.ipc import messages
from hookd.ipc import sdprotocol as sd
from hookd.rpc import upstream
from hookd.stores.audit import AuditLog
from hookd.config import DEFAULT_CONFIG, Config, load_config
from hookd.errors import HookdError
from hookd.hookpath.handler import HookHandler
from hookd.hookpath.server import HookServer
from hookd.ipc.listener import LISTEN_BACKLOG
from hookd.stores import open_store
from hookd.stores.pins import UnavailableStore
from hookd.virt.supervisor import WorkerSupervisor
from hookd.confwatch import ConfigWatch, WatchError
from hookd.logs import setup_logging

log = logging.getLogger("hookd")

#: Coalesce the burst of inotify events one editor save produces into one reload.
RELOAD_DEBOUNCE_S = 0.2
SHUTDOWN_GRACE_S = 10.0

#: Descriptors kept for everything but proxy sessions: the hook socket's connections
#: during a boot storm (its listen backlog), the audit database, the worker's pipes, the
#: config watch, the pin store.
FD_RESERVE = LISTEN_BACKLOG + 64


def descriptor_budget(max_clients: int) -> int:
    """How many proxy clients the descriptor limit allows (two descriptors each: the
    client and its upstream connection), raising the soft limit towards the hard one
    first. Less than asked for is logged as an error naming both numbers."""
    import resource
    need = 2 * max_clients + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as err:
            log.debug("cannot raise RLIMIT_NOFILE to %d: %s", target, err)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_clients
    allowed = max(1, (soft - FD_RESERVE) // 2)
    log.error("descriptor limit %d (LimitNOFILE) allows %d proxy clients, not [hookd] proxy_max_clients = %d "
              "(needs %d); serving at most %d", soft, allowed, max_clients, need, allowed)
    return allowed


class Daemon:
    def __init__(self, config: Config, config_path: Optional[str]):
        self.config = config
        self.config_path = config_path
        self.started = time.time()
        self.reloads = 0
        self.reload_failures = 0
        self.last_reload_error: Optional[str] = None
        #: Made in run(): an asyncio object made before asyncio.run binds to another loop on 3.9.
        self._stop: Optional[asyncio.Event] = None
        self._reload_handle: Optional[asyncio.TimerHandle] = None
        self._notifier = None
        self.audit: Optional[AuditLog] = None
        self.handler: Optional[HookHandler] = None
        self.server: Optional[HookServer] = None
        self.proxy = None
        self.worker: Optional[WorkerSupervisor] = None
        self.store = None
        self.exporter = MetricsExporter(self.refresh_metrics, self._metrics_group)
        self._metrics_applied: Optional[asyncio.Task] = None      # held: a reload's [metrics] change
        self._pins_counted = (0.0, 0.0, 0)      # (monotonic time, pins made then, count)
        #: hookctl's control calls on the hook socket: message class -> handler.
        self._control: Dict[Type[messages.Message], Callable[[Any], Awaitable[messages.Message]]] = {
            messages.StatusQuery: self._on_status,
            messages.ReconcileQuery: self._on_reconcile,
            messages.LegacyHookCall: self._on_legacy_hook_call,
        }

    # ------------------------------------------------------------- lifecycle
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        d = self.config.daemon
        fds = sd.inherited_fds()          # first: made close-on-exec before anything could fork
        self.audit = AuditLog(d.state_dir)
        try:
            self.store = open_store(self.config, host=self.audit.host)
            await self.store.start()
        except HookdError as err:
            log.error("pin store unavailable (%s); deciding without pins", err)
            self.store = UnavailableStore(str(err))
        if hasattr(self.store, "mirror_audit"):
            self.audit.mirror = self.store.mirror_audit
        self.handler = HookHandler(lambda: self.config, self.audit, self.store)
        hook_fd = fds.get(sd.FD_NAME_HOOK)
        hook_path = d.socket if hook_fd is None else sd.check_inherited_path(
            "hook", hook_fd, "socket", d.socket, sd.UNIT_HOOK,
            "the shim's 50-hookd.conf must name it: hookctl install-hook --socket")
        self.server = HookServer(hook_path, self.dispatch, self.handler.handle, listen_fd=hook_fd)
        await self.server.start()
        self.worker = WorkerSupervisor(self.config_path, self.audit)
        self.handler.on_hook = self.worker.note_hook
        self.worker.lookup_pin = self.handler.decisions.lookup     # the reconciler decides with pins too
        await self.worker.start()
        proxy_fd = fds.get(sd.FD_NAME_PROXY)
        proxy_path = d.proxy_socket if proxy_fd is None else sd.check_inherited_path(
            "proxy", proxy_fd, "proxy_socket", d.proxy_socket, sd.UNIT_PROXY,
            "nova-compute's connection_uri must name it")
        if proxy_path:
            await self._start_proxy(proxy_path, proxy_fd)
        metrics.BUILD_INFO.set(1, __version__)
        metrics.START_TIME.set(round(self.started, 3))
        await self.exporter.start(self.config.metrics)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.schedule_reload, "SIGHUP")
        self._watch_config(loop)
        interval = sd.watchdog_interval()
        watchdog = asyncio.create_task(self._watchdog(interval)) if interval else None

        def served(path, fd):
            return path + (" (inherited)" if fd is not None else "")
        log.info("hookd %s serving hooks on %s%s; policy mode %s, %d rules, on_mismatch %s",
                 __version__, served(hook_path, hook_fd),
                 f", libvirt proxy on {served(proxy_path, proxy_fd)}" if self.proxy else "",
                 self.config.policy.mode, len(self.config.policy.rules), self.config.on_mismatch)
        sd.notify("READY=1")
        self._notify_status()
        await self._stop.wait()
        sd.notify("STOPPING=1")
        log.info("stopping: no new connections; finishing %d in-flight requests", self.server.in_flight)
        self.server.stop_accepting()
        if self.proxy is not None:
            await self.proxy.close()
        await self.server.drain(SHUTDOWN_GRACE_S)
        await self.worker.close()
        await self.exporter.stop()
        await self.store.aclose()
        if watchdog is not None:
            watchdog.cancel()
        if self._notifier is not None:
            self._notifier.close()
        self.audit.close()
        log.info("stopped")
        return 0

    async def _start_proxy(self, path: str, fd: Optional[int]) -> None:
        from hookd.config import resolve_group
        from hookd.rpc.proxy import LibvirtProxy
        from hookd.rpc.handler import DefinitionRewriter
        d = self.config.daemon
        rewriter = DefinitionRewriter(lambda: self.config, self.audit, self.store)
        gid = resolve_group(d.proxy_group)
        if fd is not None:
            sd.check_inherited_group(path, gid, d.proxy_group)
        first = upstream.resolve(d.libvirt_socket)
        (log.info if first.found else log.warning)("libvirt proxy upstream: %s", first.why)
        self.proxy = LibvirtProxy(listen_path=path,
                                  upstream_path=lambda: upstream.resolve(d.libvirt_socket).path,
                                  rewrite=rewriter.rewrite, on_error=rewriter.on_error,
                                  allowed_gid=gid, listen_fd=fd,
                                  max_clients=descriptor_budget(d.proxy_max_clients))
        await self.proxy.start()

    # ---------------------------------------------------------------- metrics
    def _metrics_group(self) -> Optional[int]:
        """The metrics socket's group: [hookd] proxy_group, who may use libvirt's socket too."""
        from hookd.config import resolve_group
        try:
            return resolve_group(self.config.daemon.proxy_group)
        except HookdError as err:
            log.warning("metrics socket: root only (%s)", err)
            return None

    def refresh_metrics(self) -> None:
        """What is counted elsewhere (the status tree, the worker's reports) into hookd.metrics."""
        st = self.status()
        metrics_feed.from_status(st, self.worker.domain_states(), pins=self._pin_count(st["store"]),
                                 reconcile_enabled=self.config.reconcile_enabled,
                                 reconcile_interval=self.config.reconcile_interval)

    def _pin_count(self, store_status: dict) -> int:
        """etcd's cache count, or SQLite's rows: counted again when this daemon made a pin,
        else at most once a minute (hookctl pin/unpin write from another process)."""
        if "cached" in store_status:
            return store_status["cached"] or 0
        when, made, count = self._pins_counted
        made_now = metrics.PINS_MADE.value() or 0
        if hasattr(self.store, "all") and (not when or made_now != made or time.monotonic() - when > 60):
            try:
                count = len(self.store.all())
            except HookdError:
                pass        # the store's own status says it is failing
            self._pins_counted = (time.monotonic(), made_now, count)
        return count

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 from the event loop itself: a loop that stalls (blocked, or the
        process stopped) stops pinging, and systemd (WatchdogSec=) kills and restarts it."""
        while True:
            sd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # ------------------------------------------------------------- requests
    async def dispatch(self, msg: dict) -> dict:
        """hookctl's control calls on the hook socket (hook calls go to self.handler): the
        decoded JSON object in, the reply's out. Never raises for what a client sent."""
        try:
            request = messages.decode_control(msg)
        except messages.UnknownKind as err:
            return messages.ErrorReply(f"unsupported request {err.kind!r}").to_dict()
        except messages.InvalidMessage as err:
            return messages.ErrorReply(f"bad request: {err}").to_dict()
        reply = await self._control[type(request)](request)
        return reply.to_dict()

    async def _on_status(self, _request: messages.StatusQuery) -> messages.Message:
        return messages.StatusReply(self.status())

    async def _on_reconcile(self, request: messages.ReconcileQuery) -> messages.Message:
        return await self.worker.reconcile(dry_run=request.dry_run)

    async def _on_legacy_hook_call(self, request: messages.LegacyHookCall) -> messages.Message:
        # A 0.1 shim (sh/Python, JSON framing): its start goes ahead unchecked. Say so.
        log.warning("hook call %r for domain %r in the old JSON framing: that hook shim predates "
                    "hookd 0.2; the start goes ahead unchecked. Run `hookctl install-hook`",
                    request.op, request.domain)
        return messages.ErrorReply(f"unsupported request {request.op!r}")

    # ---------------------------------------------------------------- status
    def status(self) -> dict:
        """The status tree `hookctl status` shows (a StatusReply adds the protocol version)."""
        c = self.config
        proxy = dict(self.proxy.stats) if self.proxy is not None else None
        if proxy is not None:
            up = upstream.resolve(c.daemon.libvirt_socket)
            proxy["upstream"] = {"path": up.path, "daemon": up.daemon, "why": up.why}
        return {
            "version": __version__, "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "config": {"sources": list(c.sources), "mode": c.policy.mode, "rules": len(c.policy.rules),
                       "on_mismatch": c.on_mismatch, "non_nova": c.policy.non_nova},
            "reloads": self.reloads, "reload_failures": self.reload_failures,
            "last_reload_error": self.last_reload_error,
            "counters": dict(self.handler.counters),
            "hook_requests": self.server.served, "hook_refused": self.server.refused,
            "audit": {"path": self.audit.path, "written": self.audit.written, "pending": self.audit.pending,
                      "failing": self.audit.failing, "dropped": self.audit.dropped},
            "proxy": proxy,
            "store": self.store.status(),
            **self.worker.status(),
        }

    def _notify_status(self) -> None:
        counters = self.handler.counters
        sd.notify("STATUS=" + f"mode {self.config.policy.mode}; {self.server.served} hook requests; "
                f"{counters.get('rewrite', 0)} out of policy, {counters.get('denied', 0)} denied"
                + (f"; {self.proxy.stats.get('definitions_rewritten', 0)} definitions rewritten"
                   if self.proxy is not None else ""))

    # ---------------------------------------------------------------- reload
    def schedule_reload(self, why: str) -> None:
        if self._reload_handle is not None:
            self._reload_handle.cancel()
        self._reload_handle = asyncio.get_running_loop().call_later(RELOAD_DEBOUNCE_S, self.reload, why)

    def reload(self, why: str) -> bool:
        self._reload_handle = None
        sd.notify("RELOADING=1")
        try:
            new = load_config(self.config_path)
        except HookdError as err:
            self.reload_failures += 1
            self.last_reload_error = str(err)
            metrics.RELOADS.inc("rejected")
            metrics.RELOAD_OK.set(0)
            log.error("configuration reload (%s) rejected: %s; the previous configuration stays in force",
                      why, err)
            sd.notify("READY=1")
            return False
        if new.daemon != self.config.daemon:
            log.warning("configuration reload (%s): [hookd] changes take effect at the next restart", why)
            new = dataclasses.replace(new, daemon=self.config.daemon)
        if new.store != self.config.store:
            log.warning("configuration reload (%s): [store] changes take effect at the next restart", why)
            new = dataclasses.replace(new, store=self.config.store)
        metrics_changed = new.metrics != self.config.metrics
        self.config = new
        self.worker.reload()
        self.reloads += 1
        metrics.RELOADS.inc("applied")
        metrics.RELOAD_OK.set(1)
        if metrics_changed:
            self._metrics_applied = asyncio.get_running_loop().create_task(self.exporter.apply(new.metrics))
        self.last_reload_error = None
        log.info("configuration reloaded (%s) from %s: mode %s, %d rules, on_mismatch %s", why,
                 ", ".join(new.sources), new.policy.mode, len(new.policy.rules), new.on_mismatch)
        sd.notify("READY=1")
        self._notify_status()
        return True

    def _watch_config(self, loop) -> None:
        directory = os.path.dirname(self.config_path or DEFAULT_CONFIG)
        if not os.path.isdir(directory):
            log.info("config directory %s does not exist; changes are picked up on SIGHUP only", directory)
            return

        def changed(what: str, path: str, is_dir: bool) -> None:
            if path.endswith(".conf") or is_dir:
                self.schedule_reload(f"{what} {path}")

        watch = ConfigWatch(directory, changed)
        try:
            watch.start(loop)
        except (OSError, WatchError) as err:
            log.warning("cannot watch %s for changes (%s); they are picked up on SIGHUP only", directory, err)
            return
        self._notifier = watch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hookd",
        description="hookd daemon: gives each Nova guest a per-instance SMBIOS system serial. "
                    "Runs in the foreground; serves the qemu hook socket and, if configured, "
                    "a libvirt socket that sets the serial in every definition.")
    p.add_argument("--version", action="version", version=f"hookd {__version__}")
    p.add_argument("--config", metavar="FILE",
                   help=f"configuration file (default {DEFAULT_CONFIG}, plus conf.d/*.conf beside it)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except HookdError as err:
        print(f"hookd: error: {err}", file=sys.stderr)
        return 1
    setup_logging(config.daemon.log_level)
    try:
        return asyncio.run(Daemon(config, args.config).run())
    except (HookdError, OSError) as err:
        # Start-up failures (a socket that cannot be bound, ...): one line, no traceback.
        log.error("cannot run: %s", err)
        log.debug("details", exc_info=True)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

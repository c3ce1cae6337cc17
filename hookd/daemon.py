"""`hookd`: the long-running daemon on each hypervisor.

Owns start-up and shutdown, the one asyncio event loop, configuration reloads
(SIGHUP and inotify on the config directory; an invalid config is refused and the
last good one stays), systemd integration (READY/STATUS/WATCHDOG, socket
activation, the journal) and the wiring of its parts: the hook socket
(hookd.server + hookd.hookhandler), the libvirt proxy (hookd.proxy) and the audit
log. It holds no policy logic itself.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
import warnings
from typing import Optional

from hookd import __version__
from hookd.audit import AuditLog
from hookd.config import DEFAULT_CONFIG, Config, load_config
from hookd.errors import HookdError
from hookd.hookhandler import HookHandler
from hookd.server import LISTEN_BACKLOG, HookServer
from hookd.store import UnavailableStore, open_store
from hookd.supervisor import WorkerSupervisor

log = logging.getLogger("hookd")

#: Coalesce the burst of inotify events one editor save produces into one reload.
RELOAD_DEBOUNCE_S = 0.2
SHUTDOWN_GRACE_S = 10.0
#: systemd socket-activation names (FileDescriptorName=) for the two sockets.
FD_NAME_HOOK = "hook"
FD_NAME_PROXY = "proxy"
#: The socket units that pass them (packaging/systemd), named in log lines.
UNIT_HOOK = "hookd.socket"
UNIT_PROXY = "hookd-proxy.socket"
#: sd_listen_fds(3): passed descriptors start here.
SD_LISTEN_FDS_START = 3


def _under_systemd() -> bool:
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if _under_systemd():
        try:
            from systemd.journal import JournalHandler
            handler = JournalHandler(SYSLOG_IDENTIFIER="hookd")
            handler.setFormatter(logging.Formatter("%(message)s"))
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("hookd: %(levelname)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s hookd[%(process)d] %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())


def _notify(message: str) -> None:
    """sd_notify without ever blocking the event loop.

    libsystemd's sd_notify (what systemd-python calls) sends on a blocking
    datagram socket: if the receiver stops reading and its queue fills, the send,
    and with it every hook waiting on this loop, hangs. A non-blocking send that
    drops the message when the queue is full costs a lost STATUS= at worst.
    """
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]          # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.sendto(message.encode(), path)
    except BlockingIOError:
        log.debug("notify socket full; dropped %r", message)
    except OSError as err:
        log.debug("notify %r failed: %s", message, err)


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


def _inherited_fds() -> dict:
    """Sockets passed by socket activation, by role (FD_NAME_HOOK, FD_NAME_PROXY).

    The sd_listen_fds(3) protocol read directly: LISTEN_PID must be this process,
    LISTEN_FDS descriptors start at 3, LISTEN_FDNAMES names them (FileDescriptorName=,
    colon separated). Named sockets take their role; sockets with another name (or no
    names at all, as from older launchers) take the free roles in descriptor order. The
    variables are removed and the descriptors made close-on-exec, so that hookd's own
    children (the libvirt worker) never hold the listening sockets.
    """
    count = os.environ.pop("LISTEN_FDS", None)
    pid = os.environ.pop("LISTEN_PID", None)
    names = os.environ.pop("LISTEN_FDNAMES", None)
    if not count:
        return {}
    try:
        n, owner = int(count), int(pid or "")
    except ValueError:
        log.warning("socket activation ignored: LISTEN_FDS=%r, LISTEN_PID=%r are not numbers", count, pid)
        return {}
    if owner != os.getpid() or n <= 0:
        log.debug("socket activation variables for pid %s, not this process (%d); ignored", owner, os.getpid())
        return {}
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n))
    labels = (names or "").split(":") if names else []
    labels += [""] * (n - len(labels))
    roles = (FD_NAME_HOOK, FD_NAME_PROXY)
    found: dict = {}
    spare = []
    for fd, name in zip(fds, labels):
        try:
            os.set_inheritable(fd, False)
        except OSError as err:
            log.error("socket activation: descriptor %d (%s) is not open: %s; ignored", fd, name or "unnamed", err)
            continue
        if name in roles and name not in found:
            found[name] = fd
        else:
            spare.append((fd, name))
    for fd, name in spare:
        free = [r for r in roles if r not in found]
        if free:
            found[free[0]] = fd
        else:
            log.warning("socket activation passed descriptor %d (%s) that hookd has no use for; ignored",
                        fd, name or "unnamed")
    return found


def inherited_socket_path(fd: int) -> str:
    """The filesystem path an inherited UNIX socket is bound to ('' if none, or not AF_UNIX)."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return ""
    try:
        if s.family != socket.AF_UNIX:
            return ""
        name = s.getsockname()
    except OSError:
        return ""
    finally:
        s.detach()
    if isinstance(name, bytes):          # abstract (leading NUL) or undecodable
        return ""
    return name


def _same_socket(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_inherited_path(what: str, fd: int, key: str, configured: str, unit: str, fix: str) -> str:
    """The path an inherited socket is bound to; one warning line when [hookd] `key`
    names another (or none).

    The inherited socket is served either way: it is the one systemd listens on, and a
    client queued there would otherwise wait for ever.
    """
    path = inherited_socket_path(fd)
    if not configured:
        log.warning("%s socket inherited from %s (%s) although [hookd] %s is empty; serving it. "
                    "To turn the %s off, disable %s", what, unit, path or f"fd {fd}", key, what, unit)
    elif not path:
        log.warning("%s socket inherited from %s (fd %d) is not bound to a path; serving it instead of "
                    "[hookd] %s = %s", what, unit, fd, key, configured)
    elif not _same_socket(path, configured):
        log.warning("%s socket inherited from %s is %s but [hookd] %s = %s; serving %s (%s). Make "
                    "ListenStream= of %s and [hookd] %s agree", what, unit, path, key, configured, path,
                    fix, unit, key)
    return path or configured


def _check_inherited_group(path: str, gid: Optional[int], group: str) -> None:
    """One warning line when the inherited proxy socket's group (SocketGroup=) is not
    [hookd] proxy_group, the group hookd's own peer check admits."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if gid is not None and st.st_gid != gid:
        import grp
        try:
            name = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            name = str(st.st_gid)
        log.warning("proxy socket %s inherited from %s belongs to group %s but [hookd] proxy_group = %s: "
                    "hookd admits root and group %s only. Make SocketGroup= of %s and proxy_group agree",
                    path, UNIT_PROXY, name, group, group, UNIT_PROXY)


def watchdog_interval() -> Optional[float]:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
    advises), or None when no watchdog is asked of this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    try:
        if pid and int(pid) != os.getpid():
            return None
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r / WATCHDOG_PID=%r are not numbers; no watchdog pings", usec, pid)
        return None
    if value <= 0:
        return None
    return value / 1e6 / 2


class Daemon:
    def __init__(self, config: Config, config_path: Optional[str]):
        self.config = config
        self.config_path = config_path
        self.started = time.time()
        self.reloads = 0
        self.reload_failures = 0
        self.last_reload_error: Optional[str] = None
        self._stop = asyncio.Event()
        self._reload_handle: Optional[asyncio.TimerHandle] = None
        self._notifier = None
        self.audit: Optional[AuditLog] = None
        self.handler: Optional[HookHandler] = None
        self.server: Optional[HookServer] = None
        self.proxy = None
        self.worker: Optional[WorkerSupervisor] = None
        self.store = None

    # ------------------------------------------------------------- lifecycle
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        d = self.config.daemon
        fds = _inherited_fds()          # first: made close-on-exec before anything could fork
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
        hook_fd = fds.get(FD_NAME_HOOK)
        hook_path = d.socket if hook_fd is None else check_inherited_path(
            "hook", hook_fd, "socket", d.socket, UNIT_HOOK,
            "the shim's 50-hookd.conf must name it: hookctl install-hook --socket")
        self.server = HookServer(hook_path, self.dispatch, self.handler.handle, listen_fd=hook_fd)
        await self.server.start()
        self.worker = WorkerSupervisor(self.config_path, self.audit)
        self.handler.on_hook = self.worker.note_hook
        self.worker.lookup_pin = self.handler.evaluator.lookup     # the reconciler decides with pins too
        await self.worker.start()
        proxy_fd = fds.get(FD_NAME_PROXY)
        proxy_path = d.proxy_socket if proxy_fd is None else check_inherited_path(
            "proxy", proxy_fd, "proxy_socket", d.proxy_socket, UNIT_PROXY,
            "nova-compute's connection_uri must name it")
        if proxy_path:
            await self._start_proxy(proxy_path, proxy_fd)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.schedule_reload, "SIGHUP")
        self._watch_config(loop)
        interval = watchdog_interval()
        watchdog = asyncio.create_task(self._watchdog(interval)) if interval else None

        def served(path, fd):
            return path + (" (inherited)" if fd is not None else "")
        log.info("hookd %s serving hooks on %s%s; policy mode %s, %d rules, on_mismatch %s",
                 __version__, served(hook_path, hook_fd),
                 f", libvirt proxy on {served(proxy_path, proxy_fd)}" if self.proxy else "",
                 self.config.policy.mode, len(self.config.policy.rules), self.config.on_mismatch)
        _notify("READY=1")
        self._notify_status()
        await self._stop.wait()
        _notify("STOPPING=1")
        log.info("stopping: no new connections; finishing %d in-flight requests", self.server.in_flight)
        self.server.stop_accepting()
        if self.proxy is not None:
            await self.proxy.close()
        await self.server.drain(SHUTDOWN_GRACE_S)
        await self.worker.close()
        await self.store.aclose()
        if watchdog is not None:
            watchdog.cancel()
        if self._notifier is not None:
            self._notifier.stop()
        self.audit.close()
        log.info("stopped")
        return 0

    async def _start_proxy(self, path: str, fd: Optional[int]) -> None:
        from hookd.config import resolve_group
        from hookd.proxy import LibvirtProxy
        from hookd.proxyhandler import DefinitionRewriter
        d = self.config.daemon
        rewriter = DefinitionRewriter(lambda: self.config, self.audit, self.store)
        gid = resolve_group(d.proxy_group)
        if fd is not None:
            _check_inherited_group(path, gid, d.proxy_group)
        self.proxy = LibvirtProxy(listen_path=path, upstream_path=d.libvirt_socket,
                                  rewrite=rewriter.rewrite, on_error=rewriter.on_error,
                                  allowed_gid=gid, listen_fd=fd,
                                  max_clients=descriptor_budget(d.proxy_max_clients))
        await self.proxy.start()

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 from the event loop itself: a loop that stalls (blocked, or the
        process stopped) stops pinging, and systemd (WatchdogSec=) kills and restarts it."""
        while True:
            _notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # ------------------------------------------------------------- requests
    async def dispatch(self, msg: dict) -> dict:
        """hookctl's control calls on the hook socket (hook calls go to self.handler)."""
        op = msg.get("op")
        if op == "status":
            return self.status()
        if op == "reconcile":
            return await self.worker.reconcile(dry_run=bool(msg.get("dry_run")))
        if op in ("prepare", "migrate", "restore"):
            # A 0.1 shim (sh/Python, JSON framing): its start goes ahead unchecked. Say so.
            log.warning("hook call %r for domain %r in the old JSON framing: that hook shim predates "
                        "hookd 0.2; the start goes ahead unchecked. Run `hookctl install-hook`",
                        op, msg.get("domain"))
        return {"v": 1, "error": f"unsupported request {op!r}"}

    # ---------------------------------------------------------------- status
    def status(self) -> dict:
        c = self.config
        proxy = dict(self.proxy.stats) if self.proxy is not None else None
        return {
            "v": 1, "version": __version__, "pid": os.getpid(),
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
        _notify("STATUS=" + f"mode {self.config.policy.mode}; {self.server.served} hook requests; "
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
        _notify("RELOADING=1")
        try:
            new = load_config(self.config_path)
        except HookdError as err:
            self.reload_failures += 1
            self.last_reload_error = str(err)
            log.error("configuration reload (%s) rejected: %s; the previous configuration stays in force",
                      why, err)
            _notify("READY=1")
            return False
        if new.daemon != self.config.daemon:
            log.warning("configuration reload (%s): [hookd] changes take effect at the next restart", why)
            new = dataclasses.replace(new, daemon=self.config.daemon)
        if new.store != self.config.store:
            log.warning("configuration reload (%s): [store] changes take effect at the next restart", why)
            new = dataclasses.replace(new, store=self.config.store)
        self.config = new
        self.worker.reload()
        self.reloads += 1
        self.last_reload_error = None
        log.info("configuration reloaded (%s) from %s: mode %s, %d rules, on_mismatch %s", why,
                 ", ".join(new.sources), new.policy.mode, len(new.policy.rules), new.on_mismatch)
        _notify("READY=1")
        self._notify_status()
        return True

    def _watch_config(self, loop) -> None:
        directory = os.path.dirname(self.config_path or DEFAULT_CONFIG)
        if not os.path.isdir(directory):
            log.info("config directory %s does not exist; changes are picked up on SIGHUP only", directory)
            return
        with warnings.catch_warnings():
            # pyinotify imports asyncore, deprecated since Python 3.6.
            warnings.simplefilter("ignore", DeprecationWarning)
            import pyinotify
        mask = (pyinotify.IN_CLOSE_WRITE | pyinotify.IN_MOVED_TO | pyinotify.IN_MOVED_FROM
                | pyinotify.IN_DELETE | pyinotify.IN_CREATE)
        wm = pyinotify.WatchManager()

        def changed(event) -> None:
            if event.name.endswith(".conf") or event.dir:
                self.schedule_reload(f"{event.maskname} {event.pathname}")

        self._notifier = pyinotify.AsyncioNotifier(wm, loop, default_proc_fun=changed)
        wm.add_watch(directory, mask, rec=True, auto_add=True, quiet=True)


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

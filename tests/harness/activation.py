"""Socket activation without systemd, for tests and benchmarks.

:class:`ActivatedHookd` is a real hookd started the way systemd starts it from
``hookd.socket`` and ``hookd-proxy.socket``: the test process binds the listening
sockets (as the socket units do) and keeps them across hookd's deaths and restarts,
and each start hands them to hookd as descriptors 3 and 4 with ``LISTEN_FDS``,
``LISTEN_PID`` and ``LISTEN_FDNAMES=hook:proxy`` (sd_listen_fds(3)). A client that
connects while hookd is down waits in the listen backlog, as under systemd.

hookd's sd_notify messages (READY=1, WATCHDOG=1, ...) arrive on a datagram socket
the test owns (``NOTIFY_SOCKET``); a reader thread keeps each with its arrival time
(time.monotonic()), so tests wait on them instead of sleeping.

Every process is started and stopped by pid; the held sockets are closed and their
files removed by :meth:`release` (as ``RemoveOnStop=yes``).
"""

from __future__ import annotations

import grp
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional

from tests.harness.run import REPO, hookd_env
from tests.harness.hookd_proc import HookdProcess

#: Runs in the child between fork and hookd: moves the held sockets to 3, 4, ... (as
#: systemd passes them), sets LISTEN_PID to its own pid (exec keeps it) and execs hookd.
EXEC_WRAPPER = r"""
import fcntl, os, resource, sys
held = [int(fd) for fd in sys.argv[1].split(",")]
names = sys.argv[2]
if sys.argv[3] == "nocore":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))   # SIGABRT (systemd's WatchdogSignal=) leaves no core file
high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in held]
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)              # inheritable, like systemd's
for fd in high:
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(held)), LISTEN_FDNAMES=names)
os.execv(sys.executable, [sys.executable, "-m", "hookd.daemon", *sys.argv[4:]])
"""


def _children(pid: int) -> list:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _runs_with(pid: int, config) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.fsencode(str(config)) in f.read()
    except OSError:
        return False


def kill_hookd(d: HookdProcess, sig: int = signal.SIGKILL, *, cont: bool = False, timeout: float = 15.0,
               reap: bool = True) -> int:
    """Send `sig` to hookd (by pid; then SIGCONT if `cont`, as systemd's kill does), wait for it
    to die and return its wait status.

    The processes hookd started (its libvirt worker) are orphaned by a SIGKILL or SIGABRT:
    under systemd the unit's cgroup is killed with it; here reap_orphans() kills them by pid,
    at once, or later (reap=False: a measurement that must not wait for it)."""
    kids = _children(d.proc.pid)
    d.proc.send_signal(sig)
    if cont:
        d.proc.send_signal(signal.SIGCONT)
    code = d.proc.wait(timeout)
    d.orphans = getattr(d, "orphans", []) + kids
    if reap:
        reap_orphans(d, timeout)
    return code


def reap_orphans(d: HookdProcess, timeout: float = 15.0) -> None:
    """SIGKILL, by pid, what a killed hookd left running, each checked to run with its config."""
    kids, d.orphans = getattr(d, "orphans", []), []
    for pid in kids:
        if _runs_with(pid, d.config):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while any(_runs_with(pid, d.config) for pid in kids):
        if time.monotonic() > deadline:
            raise AssertionError(f"hookd's children {kids} still run {timeout}s after SIGKILL")
        time.sleep(0.05)


class ActivatedHookd(HookdProcess):
    """A hookd whose sockets this process holds, as systemd's socket units do."""

    def __init__(self, workdir: pathlib.Path, *, name: str = "hookd", proxy: bool = True,
                 libvirt_socket: Optional[pathlib.Path] = None, config_extra: str = ""):
        super().__init__(workdir, config_extra=config_extra, proxy=proxy, libvirt_socket=libvirt_socket,
                         name=name)
        self.held: dict = {}                     # FileDescriptorName -> listening socket
        self.starts = 0
        self._cond = threading.Condition()
        self._reader: Optional[threading.Thread] = None
        self.timed: list = []                    # (monotonic time, message) of every notification
        self.orphans: list = []                  # children a kill left behind, for reap_orphans()

    # ------------------------------------------------------------ the socket units
    def hold_sockets(self, *, hook_path=None, proxy_path=None, proxy_gid: Optional[int] = None) -> None:
        """Bind and listen like hookd.socket (0600) and hookd-proxy.socket (0660, root and
        SocketGroup=: `proxy_gid`, by default group libvirt, [hookd] proxy_group's default)."""
        self.held["hook"] = self._listen(pathlib.Path(hook_path or self.socket), 0o600, None)
        if self.proxy_socket is not None or proxy_path is not None:
            if proxy_gid is None:
                proxy_gid = grp.getgrnam("libvirt").gr_gid
            self.held["proxy"] = self._listen(pathlib.Path(proxy_path or self.proxy_socket), 0o660, proxy_gid)

    @staticmethod
    def _listen(path: pathlib.Path, mode: int, gid: Optional[int]) -> socket.socket:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        if gid is not None:
            os.chown(path, 0, gid)
        os.chmod(path, mode)
        s.listen(socket.SOMAXCONN)               # systemd's Backlog= default
        return s

    def held_path(self, name: str) -> pathlib.Path:
        return pathlib.Path(self.held[name].getsockname())

    def release(self) -> None:
        """Close the held sockets and remove their files (RemoveOnStop=yes)."""
        for s in self.held.values():
            path = s.getsockname()
            s.close()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.held.clear()

    # ------------------------------------------------------------ the service
    def start(self, timeout: float = 20.0, *, watchdog_usec: Optional[int] = None,
              core: bool = False) -> "ActivatedHookd":
        """Start hookd on the held sockets; returns once it sent READY=1."""
        assert self.held, "hold_sockets() first"
        assert self.proc is None or self.proc.poll() is not None, "hookd is still running"
        self._open_notify()
        env = hookd_env(NOTIFY_SOCKET=str(self.dir / "notify.sock"))
        for var in ("INVOCATION_ID", "JOURNAL_STREAM", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
                    "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(var, None)
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        names = list(self.held)
        fds = [self.held[n].fileno() for n in names]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", EXEC_WRAPPER, ",".join(map(str, fds)), ":".join(names),
                 "core" if core else "nocore", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO), pass_fds=fds)
        self.starts += 1
        self.wait_notification("READY=1", timeout)
        return self

    def _open_notify(self) -> None:
        if self._notify is not None:
            self._notify.close()
            if self._reader is not None:
                self._reader.join(5)
        path = self.dir / "notify.sock"
        if path.exists():
            path.unlink()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(path))
        self._notify.settimeout(0.2)
        with self._cond:
            self.notifications = []
        sock = self._notify
        self._reader = threading.Thread(target=self._read_notifications, args=(sock,), daemon=True)
        self._reader.start()

    def _read_notifications(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:                      # closed by _open_notify() or stop()
                return
            now = time.monotonic()
            with self._cond:
                for line in data.decode(errors="replace").splitlines():
                    self.notifications.append(line)
                    self.timed.append((now, line))
                self._cond.notify_all()

    # wait_notification is HookdProcess's; a reader thread fills the list here.
    def _take_notification(self, text: str) -> Optional[str]:
        with self._cond:
            return super()._take_notification(text)

    def _await_notifications(self, left: float) -> None:
        with self._cond:
            self._cond.wait(min(left, 0.2))

    def watchdog_pings(self, since: float = 0.0) -> list:
        """Arrival times of the WATCHDOG=1 messages received after `since`."""
        with self._cond:
            return [t for t, line in self.timed if line == "WATCHDOG=1" and t > since]

    def kill(self, sig: int = signal.SIGKILL, *, cont: bool = False, timeout: float = 15.0,
             reap: bool = True) -> int:
        """kill_hookd(self, ...): hookd, and the children it leaves behind, by pid."""
        return kill_hookd(self, sig, cont=cont, timeout=timeout, reap=reap)

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        code = super().stop(timeout)
        reap_orphans(self)
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        return code

"""A real hookd daemon for integration tests, started and stopped by pid.

Readiness is the daemon's own sd_notify READY=1, received on a datagram socket the
test owns (NOTIFY_SOCKET), so tests wait on the event rather than on a sleep, and
the systemd integration is exercised on every start.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

from tests.harness.run import REPO, hookd_env


class HookdProcess:
    def __init__(self, workdir: pathlib.Path, *, config_extra: str = "", proxy: bool = False,
                 libvirt_socket: Optional[pathlib.Path] = None, name: str = "hookd"):
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "hookd.sock"
        self.proxy_socket = self.dir / "libvirt-sock" if proxy else None
        self.state_dir = self.dir / "state"
        self.config = self.dir / "hookd.conf"
        self.log = self.dir / "hookd.log"
        self.config_extra = config_extra
        # Never the host's qemu:///system: the worker's reconciler redefines domains. A test
        # daemon follows the test's own libvirtd (follow()), or a socket that does not exist.
        self.hookd_settings = {
            "socket": self.socket, "state_dir": self.state_dir, "proxy_socket": self.proxy_socket or "",
            "log_level": "debug", "libvirt_socket": libvirt_socket or self.dir / "no-libvirt-sock",
            "libvirt_uri": f"qemu+unix:///system?socket={libvirt_socket or self.dir / 'no-libvirt-sock'}",
        }
        if libvirt_socket is None:
            del self.hookd_settings["libvirt_socket"]
        self.write_config()
        self.proc: Optional[subprocess.Popen] = None
        self._notify: Optional[socket.socket] = None
        self.notifications: list = []

    def write_config(self) -> None:
        lines = ["[hookd]"] + [f"{k} = {v}" for k, v in self.hookd_settings.items()]
        self.config.write_text("\n".join(lines) + "\n" + self.config_extra)

    def follow(self, host) -> None:
        """Point this hookd at a LibvirtHost: its events/reconciler URI and the proxy's upstream."""
        self.hookd_settings["libvirt_uri"] = host.uri
        self.hookd_settings["libvirt_socket"] = host.socket_path
        self.write_config()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> "HookdProcess":
        path = self.dir / "notify.sock"
        if path.exists():
            path.unlink()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(path))
        env = hookd_env(NOTIFY_SOCKET=str(path))
        for var in ("INVOCATION_ID", "JOURNAL_STREAM", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC"):
            env.pop(var, None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.daemon_argv(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=str(REPO))
        self.wait_notification("READY=1", timeout)
        return self

    def daemon_argv(self) -> list:
        """The daemon's command line (a subclass may run it behind a namespace tool)."""
        return [sys.executable, "-m", "hookd.daemon", "--config", str(self.config)]

    def wait_notification(self, text: str, timeout: float = 10.0) -> str:
        """The first sd_notify line containing `text` (taken off the list), waiting up to
        `timeout` s; AssertionError with the log tail if it does not come or hookd exits."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._take_notification(text)
            if found is not None:
                return found
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                raise AssertionError(f"hookd sent no {text!r} within {timeout}s "
                                     f"(exit {self.proc.poll() if self.proc else None}); log:\n{self.log_text()[-3000:]}")
            self._await_notifications(left)

    def _take_notification(self, text: str) -> Optional[str]:
        for n in self.notifications:
            if text in n:
                self.notifications.remove(n)
                return n
        return None

    def _await_notifications(self, left: float) -> None:
        """Block until more notifications may have arrived (at most `left` s)."""
        self._notify.settimeout(left)
        try:
            self.notifications.extend(self._notify.recv(4096).decode().splitlines())
        except socket.timeout:
            pass

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """SIGTERM by pid, wait; SIGKILL if it does not exit. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        return code

    def audit(self, **filters) -> list:
        from hookd.stores import audit
        return audit.query(str(self.state_dir), **filters)

    def hookctl(self, *args, **kw):
        from tests.harness.run import run_hookctl
        return run_hookctl(*args, **kw)

    def install_hook(self, hooks_dir, *, timeout: float = 5.0, on_unreachable: str = "allow",
                     socket_path=None, binary=None) -> None:
        """`hookctl install-hook` with the sanitizer build of the shim (or `binary`)."""
        from tests.harness.shim import sanitized_shim
        res = self.hookctl("install-hook", "--socket", socket_path or self.socket, "--timeout", timeout,
                           "--on-unreachable", on_unreachable, "--binary", binary or sanitized_shim(), hooks_dir)
        assert res.returncode == 0, res.stderr

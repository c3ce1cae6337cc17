"""Socket activation, as hookd.socket and hookd-proxy.socket do it, against a real libvirtd.

The test process holds hookd's listening sockets across hookd's death and restart
(tests/harness/activation.py), as systemd does. What a libvirt client sees:

* hookd SIGKILLed: a connected client's next call fails at once, and the socket file stays;
* while hookd is down, a new client's connect() succeeds (it waits in the listen
  backlog) and its first call completes once hookd is started again on the same socket;
* hookd stopped cleanly (SIGTERM) leaves both inherited sockets in place and listening.
"""

from __future__ import annotations

import grp
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid as uuidlib

import libvirt
import pytest

from tests.harness.domains import domain
from tests.harness.guest import nova_domain_xml
from tests.harness.hookcall import ask_prepare
from tests.harness.activation import kill_hookd
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.libvirt


def accept_queue(path: pathlib.Path) -> int:
    """Connections waiting in the accept queue of the listening socket at `path` (ss Recv-Q)."""
    ss = shutil.which("ss")
    assert ss, "ss (iproute2) is needed to read a listening socket's queue"
    out = subprocess.run([ss, "-xlnH", "src", str(path)], capture_output=True, text=True, timeout=10).stdout
    rows = [line.split() for line in out.splitlines() if str(path) in line]
    assert len(rows) == 1, out
    return int(rows[0][2])


class Call(threading.Thread):
    """fn() in a thread, started at once, so that a call that hangs can only fail the test,
    never hang it."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn = fn
        self.result = self.error = None
        self.elapsed = None
        self.start()

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            self.result = self.fn()
        except Exception as err:          # libvirtError, OSError: reported by the test
            self.error = err
        self.elapsed = time.monotonic() - t0

    def wait(self, timeout: float):
        self.join(timeout)
        assert not self.is_alive(), f"call still blocked after {timeout}s"
        return self


def serial_of(xml: str) -> str:
    import re
    m = re.search(r"<entry name='serial'>([^<]*)</entry>", xml)
    assert m, xml
    return m.group(1)


def test_sigkill_restart_queues_new_clients_on_the_held_socket(libvirt_hosts, activated):
    host = libvirt_hosts("a")
    d = activated("hookd-a", libvirt_socket=host.socket_path)
    d.follow(host)
    d.hold_sockets(proxy_gid=grp.getgrnam("libvirt").gr_gid)
    proxy_path, hook_path = d.held_path("proxy"), d.held_path("hook")
    inodes = {p: os.stat(p).st_ino for p in (proxy_path, hook_path)}
    d.start()
    assert f"libvirt proxy on {proxy_path} (inherited)" in d.log_text()
    assert f"serving hooks on {hook_path} (inherited)" in d.log_text()
    uri = f"qemu+unix:///system?socket={proxy_path}"

    old = libvirt.open(uri)
    version = old.getLibVersion()
    direct = libvirt.open(host.uri)
    assert version == direct.getLibVersion()
    direct.close()

    # hookd dies: the connected client's next call fails at once; the socket file stays.
    assert d.kill(signal.SIGKILL) == -signal.SIGKILL
    call = Call(old.getLibVersion).wait(10)
    assert isinstance(call.error, libvirt.libvirtError), call.result
    assert call.elapsed < 2, call.elapsed
    assert {p: os.stat(p).st_ino for p in (proxy_path, hook_path)} == inodes

    # While hookd is down a new client connects: its connect() succeeds (the socket is held)
    # and it waits in the listen backlog, for a raw client and for libvirt alike.
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(5)
    raw.connect(str(proxy_path))
    new = Call(lambda: libvirt.open(uri))
    wait_for(lambda: accept_queue(proxy_path) == 2, 10, "two clients queued on the held proxy socket")
    assert new.is_alive() and new.error is None       # waiting, not failed

    # hookd again, on the same inherited sockets: the queued client's first call completes.
    d.start()
    conn = new.wait(30).result
    assert new.error is None, new.error
    try:
        assert conn.getLibVersion() == version
        # It is the restarted hookd's proxy: a definition gets the policy serial.
        uid = str(uuidlib.uuid4())
        dom = conn.defineXML(nova_domain_xml(name="act-1", uuid=uid, serial="HOST-SERIAL", image=None,
                                             console_log=None))
        assert serial_of(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == uid
        dom.undefine()
    finally:
        conn.close()
    wait_for(lambda: accept_queue(proxy_path) == 0, 10, "the raw client accepted too")
    raw.close()
    # The hook socket came back the same way.
    assert ask_prepare(hook_path, "instance-1", domain(serial=None), timeout=10).action == "allow"

    # A clean stop never unlinks an inherited socket: the launcher's socket stays and listens.
    assert d.stop() == 0
    assert {p: os.stat(p).st_ino for p in (proxy_path, hook_path)} == inodes
    for p in (proxy_path, hook_path):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(p))
    assert "removing stale socket" not in d.log_text()
    assert "Traceback" not in d.log_text()


def test_without_a_held_socket_a_client_fails_while_hookd_is_down(libvirt_hosts, short_dir):
    """The contrast: hookd binding its own proxy socket (no hookd-proxy.socket). A client
    that connects while hookd is down fails at once instead of waiting."""
    from tests.harness.hookd_proc import HookdProcess
    host = libvirt_hosts("a")
    plain = HookdProcess(short_dir / "d", proxy=True, name="hookd-plain")
    plain.follow(host)
    try:
        plain.start()
        uri = f"qemu+unix:///system?socket={plain.proxy_socket}"
        assert libvirt.open(uri).getLibVersion() > 0
        kill_hookd(plain, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(libvirt.libvirtError, match="Connection refused|No such file"):
            libvirt.open(uri)
        assert time.monotonic() - t0 < 2
    finally:
        plain.stop()

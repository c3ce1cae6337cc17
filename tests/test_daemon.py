"""The hookd daemon as a process: sockets, credentials, reloads, systemd, shutdown.

No libvirt is involved here (tests/integration covers that); each test runs the
real daemon and talks to it the way the shim and hookctl do.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from hookd.hookpath import shimwire

from hookd.ipc import client, messages
from tests.harness.run import REPO, hookd_env, run_hookctl
from tests.harness.hookcall import ask_prepare, hook_request
from tests.harness.domains import domain
from tests.harness.hookd_proc import HookdProcess
from tests.harness.waiting import wait_for


@pytest.fixture
def daemon(tmp_path):
    d = HookdProcess(tmp_path)
    yield d
    d.stop()


def ask(sock_path, msg=None, timeout=5):
    """One control call the way hookctl makes it (hookd.ipc.client); a status query by default."""
    return client.ask(sock_path, msg or messages.StatusQuery(), timeout)


def status(d):
    res = run_hookctl("status", "--socket", d.socket, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_socket_is_root_only_and_answers(daemon):
    daemon.start()
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode == 0o600 and os.stat(daemon.socket).st_uid == 0
    assert ask_prepare(daemon.socket, "d", domain()).action == "allow"
    assert status(daemon)["counters"] == {"rewrite": 1}


@pytest.fixture
def open_dir():
    """A temp dir every user can traverse (pytest's own are 0700)."""
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix="hookd-test-", dir="/tmp")
    os.chmod(path, 0o755)
    yield __import__("pathlib").Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def open_daemon(open_dir):
    d = HookdProcess(open_dir)
    yield d
    d.stop()


def test_non_root_peer_is_refused_with_logged_reason(open_daemon):
    daemon = open_daemon
    daemon.start()
    os.chmod(daemon.socket, 0o666)       # only SO_PEERCRED stands between nobody and hookd now
    os.chmod(daemon.dir, 0o755)
    code = ("import socket,struct,sys\n"
            "s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n"
            "try:\n"
            "    s.sendall(struct.pack('>I',2)+b'{}')\n"
            "    print('closed' if s.recv(10) == b'' else 'answered')\n"
            "except (ConnectionResetError, BrokenPipeError):\n"
            "    print('closed')\n")
    res = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                          sys.executable, "-c", code, str(daemon.socket)], capture_output=True, text=True, timeout=20)
    assert res.stdout.strip() == "closed", res       # closed without an answer
    assert status(daemon)["hook_refused"] == 1
    assert "refused connection from pid" in daemon.log_text() and "uid 65534" in daemon.log_text()


def test_bad_config_at_start_is_one_line(tmp_path):
    cfg = tmp_path / "bad.conf"
    cfg.write_text("[hookd]\nsocket = relative\n")
    res = subprocess.run([sys.executable, "-m", "hookd.daemon", "--config", str(cfg)], capture_output=True,
                         text=True, env=hookd_env(), timeout=30)
    assert res.returncode == 1
    assert res.stderr == f"hookd: error: {cfg}:2: expected an absolute path, got 'relative'\n"


def test_sighup_rejects_invalid_config_and_keeps_the_last_good(daemon):
    daemon.start()
    good = daemon.config.read_text()
    daemon.config.write_text(good + "[policy]\nmode = host\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_notification("READY=1")
    assert status(daemon)["config"]["mode"] == "host"
    daemon.config.write_text(good + "[policy]\nmode = host\n[rule:x]\ninstance = nope\nmode = unique\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_notification("READY=1")
    st = status(daemon)
    assert st["config"]["mode"] == "host" and st["config"]["rules"] == 0
    assert st["reload_failures"] == 1 and "'nope' is not a UUID" in st["last_reload_error"]
    line = daemon.config.read_text().splitlines().index("instance = nope") + 1
    assert f"{daemon.config}:{line}: 'nope' is not a UUID" in daemon.log_text()


def test_inotify_picks_up_conf_d_changes(daemon):
    daemon.start()
    confd = daemon.dir / "conf.d"
    confd.mkdir()
    (confd / "50-mode.conf").write_text("[policy]\nmode = host\n")
    daemon.wait_notification("READY=1")          # each reload ends with READY=1
    st = status(daemon)
    assert st["config"]["mode"] == "host" and st["reloads"] >= 1
    (confd / "50-mode.conf").unlink()            # a removed file is a change too
    daemon.wait_notification("READY=1")
    assert status(daemon)["config"]["mode"] == "unique"


def test_sigterm_finishes_in_flight_request_then_exits_0(daemon):
    daemon.start()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(daemon.socket))
    msg = shimwire.encode_request(hook_request("d", domain()))
    s.sendall(msg[:10])                          # a request in flight
    status(daemon)                               # the daemon has accepted and is serving
    daemon.signal(signal.SIGTERM)
    daemon.wait_notification("STOPPING=1")
    with pytest.raises(client.ClientError, match="not reachable"):     # no new connections
        ask(daemon.socket)
    s.sendall(msg[10:])
    assert s.recv(100) == shimwire.encode_reply(shimwire.HookReply("allow"))
    s.close()
    assert daemon.proc.wait(15) == 0
    assert not daemon.socket.exists()


def test_status_fails_when_daemon_is_down(tmp_path):
    res = run_hookctl("status", "--socket", tmp_path / "none.sock")
    assert res.returncode == 1 and res.stderr.decode().startswith("hookctl: error: hookd is not reachable at ")


@pytest.mark.parametrize("proxy", [False, True], ids=["hook-socket-only", "hook-and-proxy-sockets"])
def test_socket_activation_serves_the_inherited_sockets_and_never_unlinks_them(activated, proxy):
    """hookd.socket alone (the packages' default: hookd binds the proxy socket itself), or with
    hookd-proxy.socket: the inherited sockets are served, and a stop leaves them in place."""
    d = activated(proxy=proxy)
    d.hold_sockets()
    inodes = {name: os.stat(d.held_path(name)).st_ino for name in d.held}
    d.start()
    assert ask(d.socket)["pid"] == d.pid
    log = d.log_text()
    assert f"serving hooks on {d.socket} (inherited)" in log
    if proxy:
        assert f"libvirt proxy on {d.proxy_socket} (inherited)" in log
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:     # hookd accepts on it
            s.settimeout(10)
            s.connect(str(d.proxy_socket))
            assert s.recv(1) == b""      # closed: this test has no libvirtd upstream
        assert "upstream" in d.log_text()
    assert "inherited from" not in log               # paths agree: no warning
    assert d.stop() == 0
    assert {name: os.stat(d.held_path(name)).st_ino for name in d.held} == inodes
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:         # still listening (held here)
        s.settimeout(5)
        s.connect(str(d.socket))


def test_inherited_socket_on_another_path_is_served_with_one_warning(activated, short_dir):
    """hookd-proxy.socket's ListenStream= and [hookd] proxy_socket differ (and hookd.socket's
    and [hookd] socket): one warning line each naming both paths; the inherited one is served,
    the configured one is not created."""
    d = activated(proxy=True)
    unit_proxy, unit_hook = short_dir / "unit-libvirt-sock", short_dir / "unit-hookd.sock"
    d.hold_sockets(hook_path=unit_hook, proxy_path=unit_proxy)
    d.start()
    assert ask(unit_hook)["pid"] == d.pid
    lines = [line for line in d.log_text().splitlines() if "inherited from" in line]
    assert len(lines) == 2, lines
    hook_line, proxy_line = sorted(lines, key=lambda line: "proxy socket" in line)
    assert (f"hook socket inherited from hookd.socket is {unit_hook} but [hookd] socket = {d.socket}; "
            f"serving {unit_hook}") in hook_line
    assert (f"proxy socket inherited from hookd-proxy.socket is {unit_proxy} but [hookd] proxy_socket = "
            f"{d.proxy_socket}; serving {unit_proxy}") in proxy_line
    assert not d.socket.exists() and not d.proxy_socket.exists()
    assert f"libvirt proxy on {unit_proxy} (inherited)" in d.log_text()
    assert d.stop() == 0
    assert unit_hook.exists() and unit_proxy.exists()


def test_inherited_proxy_socket_of_another_group_is_one_warning(activated):
    """SocketGroup= of hookd-proxy.socket is not [hookd] proxy_group (libvirt): the kernel
    lets that group in, hookd's own peer check would not; said in one line."""
    d = activated(proxy=True)
    d.hold_sockets(proxy_gid=0)
    d.start()
    lines = [line for line in d.log_text().splitlines() if "inherited from" in line]
    assert len(lines) == 1 and (f"proxy socket {d.proxy_socket} inherited from hookd-proxy.socket belongs "
                                "to group root but [hookd] proxy_group = libvirt") in lines[0], lines


def test_inherited_proxy_socket_with_proxy_socket_empty_is_served_with_a_warning(activated, short_dir):
    d = activated(proxy=False)                       # [hookd] proxy_socket = (empty)
    unit_proxy = short_dir / "unit-libvirt-sock"
    d.hold_sockets(proxy_path=unit_proxy)
    d.start()
    lines = [line for line in d.log_text().splitlines() if "inherited from" in line]
    assert len(lines) == 1 and (f"proxy socket inherited from hookd-proxy.socket ({unit_proxy}) although "
                                "[hookd] proxy_socket is empty; serving it") in lines[0], lines
    assert f"libvirt proxy on {unit_proxy} (inherited)" in d.log_text()


def test_watchdog_pings_from_the_loop_and_stop_while_hookd_is_stopped(activated):
    """WATCHDOG=1 every WATCHDOG_USEC/2 while the loop runs; none while the process is stopped
    (SIGSTOP), which is what makes systemd (WatchdogSec=) kill and restart it; again after SIGCONT."""
    usec = 600_000                                   # systemd's deadline: 0.6 s without a ping
    d = activated()
    d.hold_sockets()
    d.start(watchdog_usec=usec)
    t0 = time.monotonic()
    wait_for(lambda: len(d.watchdog_pings(t0)) >= 6, 10, "six WATCHDOG=1 pings")
    pings = d.watchdog_pings(t0)
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < usec / 1e6, gaps             # each ping well inside systemd's deadline
    assert min(gaps) > usec / 1e6 / 4, gaps          # and paced (half the deadline), not a flood

    d.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    # Absence can only be shown over a window: 5 deadlines long, systemd would have fired at the first.
    time.sleep(5 * usec / 1e6)
    late = d.watchdog_pings(stopped + 0.05)          # a datagram sent just before the stop may land after it
    assert late == [], f"{len(late)} WATCHDOG=1 while stopped"

    d.signal(signal.SIGCONT)
    resumed = time.monotonic()
    wait_for(lambda: len(d.watchdog_pings(resumed)) >= 2, 10, "pings again after SIGCONT")
    assert ask(d.socket)["pid"] == d.pid


@pytest.mark.parametrize("env,interval", [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),                              # WatchdogSec=30: ping every 15 s
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),           # meant for another process
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "SELF"}, 15.0),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval(monkeypatch, env, interval):
    from hookd.ipc.sdprotocol import watchdog_interval
    for var in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, str(os.getpid()) if value == "SELF" else value)
    assert watchdog_interval() == interval


def test_inherited_descriptors_by_name_and_order(monkeypatch):
    """sd_listen_fds(3) as hookd reads it: names first, other sockets take the free roles in
    descriptor order, the variables are consumed and the descriptors made close-on-exec."""
    from hookd.ipc import sdprotocol
    socks = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    saved = [os.dup(fd) for fd in (3, 4, 5)]
    try:
        for i, s in enumerate(socks):
            os.dup2(s.fileno(), 3 + i)               # inheritable, as a launcher passes them
        cases = [("proxy:hook", {"proxy": 3, "hook": 4}, 2),
                 ("hookd-proxy.socket:hook", {"proxy": 3, "hook": 4}, 2),   # an unknown name: a free role
                 (None, {"hook": 3, "proxy": 4}, 2),                        # no names: descriptor order
                 ("proxy:hook:extra", {"proxy": 3, "hook": 4}, 3)]
        for names, want, n in cases:
            monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
            monkeypatch.setenv("LISTEN_FDS", str(n))
            if names is None:
                monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
            else:
                monkeypatch.setenv("LISTEN_FDNAMES", names)
            for fd in (3, 4, 5):
                os.set_inheritable(fd, True)
            assert sdprotocol.inherited_fds() == want, names
            assert not any(v in os.environ for v in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"))
            assert not any(os.get_inheritable(fd) for fd in range(3, 3 + n))
        monkeypatch.setenv("LISTEN_PID", "1")        # for another process: ignored
        monkeypatch.setenv("LISTEN_FDS", "2")
        assert sdprotocol.inherited_fds() == {}
    finally:
        for i, fd in enumerate(saved):
            os.dup2(fd, 3 + i)
            os.close(fd)
        for s in socks:
            s.close()


class _Loop313:
    """create_unix_server() with Python 3.13's signature (cleanup_socket=True by default)."""

    def __init__(self):
        self.kwargs = None

    async def create_unix_server(self, protocol_factory, path=None, *, sock=None, backlog=100, ssl=None,
                                 ssl_handshake_timeout=None, ssl_shutdown_timeout=None, start_serving=True,
                                 cleanup_socket=True):
        pass


def test_inherited_hook_socket_asks_asyncio_not_to_unlink_it():
    """Issue #17: Python >= 3.13 unlinks a UNIX server's socket file at close unless
    cleanup_socket=False; hookd passes it for an inherited socket when the parameter exists."""
    import asyncio
    from hookd.ipc.listener import keep_socket_file_kwargs
    assert keep_socket_file_kwargs(_Loop313()) == {"cleanup_socket": False}
    loop = asyncio.new_event_loop()
    try:
        want = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
        assert keep_socket_file_kwargs(loop) == want
    finally:
        loop.close()


#: HookServer on an inherited socket under another interpreter; prints what is left of the file.
_CLEANUP_CHILD = r"""
import asyncio, os, socket, sys, types
# hookd.hookpath.server's hook path imports lxml (hookd.xml.safe); this interpreter may not have it,
# and serving a socket never parses XML.
lxml = types.ModuleType("lxml"); lxml.etree = types.SimpleNamespace(XMLParser=lambda **kw: None)
sys.modules.setdefault("lxml", lxml); sys.modules.setdefault("lxml.etree", lxml.etree)
from hookd.hookpath.server import HookServer
path = sys.argv[1]

async def serve(with_fix):
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(8)
    held = os.dup(lsock.fileno())            # the launcher's own copy (systemd's)
    if with_fix:
        server = HookServer(path, None, None, listen_fd=lsock.detach())
        await server.start()
        server.stop_accepting()
    else:                                    # what hookd did before: sock= and the defaults
        server = await asyncio.start_unix_server(lambda r, w: None, sock=lsock)
        server.close()
    await asyncio.sleep(0)
    left = os.path.exists(path)
    os.close(held)
    if left:
        os.unlink(path)
    return left

print(asyncio.run(serve(False)), asyncio.run(serve(True)))
"""


def _python_313_or_later():
    """A real Python >= 3.13 interpreter (not a pyenv shim, which may refuse to run), or None."""
    import glob
    import shutil
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[3-9]*/bin/python3.1[3-9]")))
    found += [shutil.which(f"python3.{minor}") for minor in range(13, 20)]
    for python in filter(None, found):
        if "/shims/" in python:
            continue
        ok = subprocess.run([python, "-c", "import sys; assert sys.version_info >= (3, 13)"],
                            capture_output=True, timeout=30)
        if ok.returncode == 0:
            return python
    return None


def test_inherited_hook_socket_survives_stop_under_python_3_13(short_dir):
    """The same against a real Python >= 3.13: without cleanup_socket=False asyncio unlinks the
    inherited socket's file at close (the bug); hookd's HookServer leaves it."""
    python = _python_313_or_later()
    if python is None:
        pytest.skip("no Python >= 3.13 on this machine (the signature check above still runs)")
    res = subprocess.run([python, "-c", _CLEANUP_CHILD, str(short_dir / "h.sock")], capture_output=True,
                         text=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "True"], res.stdout   # unlinked by default; kept by hookd


@pytest.mark.parametrize("soft,hard,want,soft_after,logged", [
    (4096, 4096, 256, 4096, False),    # the unit's LimitNOFILE: enough, left alone
    (1024, 4096, 256, 1600, False),    # raised to what 256 clients need (2 * 256 + 1088)
    (1200, 1200, 56, 1200, True),      # (1200 - 1088) // 2: fewer clients, said once
])
def test_descriptor_budget_for_proxy_clients(soft, hard, want, soft_after, logged):
    """Run in a child: it lowers its own RLIMIT_NOFILE, which a test process must not."""
    code = ("import logging, resource, sys\n"
            "logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format='%(message)s')\n"
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
            "from hookd.daemon import descriptor_budget\n"
            "print(descriptor_budget(256), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=hookd_env(), timeout=30)
    assert res.returncode == 0, res.stderr
    clients, now_soft = map(int, res.stdout.split())
    assert (clients, now_soft) == (want, soft_after)
    assert ("allows 56 proxy clients, not [hookd] proxy_max_clients = 256" in res.stderr) == logged, res.stderr

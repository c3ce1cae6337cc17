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
import struct
import subprocess
import sys

import pytest

from hookd import shimwire, wire
from tests.conftest import REPO, hookd_env, run_hookctl
from tests.harness.hookcall import ask_prepare, hook_request
from tests.domains import domain
from tests.integration.hookd_proc import HookdProcess


@pytest.fixture
def daemon(tmp_path):
    d = HookdProcess(tmp_path)
    yield d
    d.stop()


def ask(sock_path, msg, timeout=5):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(wire.encode(msg))
        head = s.recv(4, socket.MSG_WAITALL)
        (n,) = struct.unpack(">I", head)
        return wire.decode(head + s.recv(n, socket.MSG_WAITALL))


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
    with pytest.raises(OSError):                 # no new connections
        ask(daemon.socket, {"v": 1, "op": "status"})
    s.sendall(msg[10:])
    assert s.recv(100) == shimwire.encode_reply(shimwire.HookReply("allow"))
    s.close()
    assert daemon.proc.wait(15) == 0
    assert not daemon.socket.exists()


def test_status_fails_when_daemon_is_down(tmp_path):
    res = run_hookctl("status", "--socket", tmp_path / "none.sock")
    assert res.returncode == 1 and res.stderr.decode().startswith("hookctl: error: hookd is not reachable at ")


def test_socket_activation_and_watchdog(tmp_path):
    """An inherited listening fd (LISTEN_FDS) is served; WATCHDOG=1 comes when asked for."""
    d = HookdProcess(tmp_path)
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    notify = tmp_path / "n.sock"
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(str(notify))
    ns.settimeout(20)
    env = hookd_env(NOTIFY_SOCKET=str(notify), LISTEN_FDS="1", LISTEN_FDNAMES="hook", WATCHDOG_USEC="400000")
    fd = listener.fileno()

    def to_fd3():
        os.dup2(fd, 3)
    # LISTEN_PID must be the daemon's own pid: set it in a shell that execs the daemon.
    proc = subprocess.Popen(["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", sys.executable, "-m", "hookd.daemon",
                             "--config", str(d.config)], env=env, preexec_fn=to_fd3, close_fds=False, cwd=str(REPO), stderr=subprocess.DEVNULL)
    try:
        got = []
        while not any("READY=1" in g for g in got):
            got.append(ns.recv(4096).decode())
        while not any("WATCHDOG=1" in g for g in got):
            got.append(ns.recv(4096).decode())
        assert ask(path, {"v": 1, "op": "status"})["pid"] == proc.pid
        assert not d.socket.exists()             # it did not create its own
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        ns.close()
        listener.close()


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

"""hookd.ipc.sdprotocol in this process: socket activation (sd_listen_fds(3)) read from
the environment and real inherited sockets, sd_notify sent to a real AF_UNIX datagram
socket the test reads (a path and an abstract '@' address), the checks of an inherited
socket against hookd.conf, and the watchdog interval.

The passed descriptors are real sockets dup2()'d to free high numbers, with the module's
SD_LISTEN_FDS_START pointed at them, so the test process's own descriptors 3, 4, ...
are left alone. tests/test_daemon.py keeps its table tests of the same functions on
descriptors 3.. (test_inherited_descriptors_by_name_and_order, test_watchdog_interval)
and runs a real hookd on them; tests/integration/test_socket_activation.py does so
under the socket units' names. No sleeps: every receive has a timeout.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import threading
import uuid as uuidlib

import pytest

from hookd.ipc import sdprotocol
from hookd.ipc.sdprotocol import (
    FD_NAME_HOOK,
    FD_NAME_PROXY,
    SD_LISTEN_FDS_START,
    check_inherited_group,
    check_inherited_path,
    inherited_fds,
    inherited_socket_path,
    notify,
    watchdog_interval,
)

ACTIVATION_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
#: Where the test's "passed" descriptors go: far above anything pytest has open, and
#: below the descriptor limit.
BASE = min(900, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 64)


# ------------------------------------------------------------------ socket activation
@pytest.fixture
def passed(monkeypatch):
    """Factory passed(n, pid=None, names=None) -> [fd, ...]: n real AF_UNIX stream sockets
    at descriptors BASE, BASE+1, ... (inheritable, as a launcher leaves them), with the
    LISTEN_* variables set (pid None: this process). The descriptors are closed at teardown."""
    made: list = []

    def make(n: int, *, pid=None, names=None, count=None):
        for var in ACTIVATION_VARS:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(sdprotocol, "SD_LISTEN_FDS_START", BASE)
        fds = []
        for i in range(n):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                os.dup2(s.fileno(), BASE + i, inheritable=True)
            made.append(BASE + i)
            fds.append(BASE + i)
        monkeypatch.setenv("LISTEN_PID", str(os.getpid() if pid is None else pid))
        monkeypatch.setenv("LISTEN_FDS", str(n if count is None else count))
        if names is not None:
            monkeypatch.setenv("LISTEN_FDNAMES", names)
        return fds
    yield make
    for fd in made:
        try:
            os.close(fd)
        except OSError:
            pass


def consumed() -> bool:
    return not any(var in os.environ for var in ACTIVATION_VARS)


def test_descriptors_start_at_three_as_sd_listen_fds_says():
    assert SD_LISTEN_FDS_START == 3
    assert (FD_NAME_HOOK, FD_NAME_PROXY) == ("hook", "proxy")


@pytest.mark.parametrize("names,want", [
    ("hook:proxy", {"hook": 0, "proxy": 1}),
    ("proxy:hook", {"proxy": 0, "hook": 1}),                # the names decide, not the order
    (None, {"hook": 0, "proxy": 1}),                        # no names (older launchers): order
    ("", {"hook": 0, "proxy": 1}),                          # empty LISTEN_FDNAMES: same
    ("proxy", {"proxy": 0, "hook": 1}),                     # fewer names than descriptors
    ("hookd.socket:proxy", {"hook": 0, "proxy": 1}),        # an unknown name takes the free role
    ("other:hook", {"proxy": 0, "hook": 1}),
    ("hook:hook", {"hook": 0, "proxy": 1}),                 # a second "hook" is spare: the free role
])
def test_roles_by_name_then_descriptor_order(passed, names, want):
    fds = passed(2, names=names)
    assert inherited_fds() == {role: fds[i] for role, i in want.items()}
    assert consumed()
    assert not any(os.get_inheritable(fd) for fd in fds)     # the worker never holds them


def test_a_third_descriptor_is_ignored_but_still_close_on_exec(passed, caplog):
    fds = passed(3, names="hook:proxy:metrics")
    with caplog.at_level(logging.WARNING, logger="hookd"):
        assert inherited_fds() == {"hook": fds[0], "proxy": fds[1]}
    assert f"descriptor {fds[2]} (metrics) that hookd has no use for" in caplog.text
    assert not os.get_inheritable(fds[2])


def test_a_descriptor_that_is_not_open_is_skipped(passed, caplog):
    fds = passed(2, names="proxy:hook")
    os.close(fds[1])
    with caplog.at_level(logging.ERROR, logger="hookd"):
        assert inherited_fds() == {"proxy": fds[0]}
    assert f"descriptor {fds[1]} (hook) is not open" in caplog.text


def test_another_processes_variables_are_ignored_and_its_descriptors_left_alone(passed):
    other = os.getppid()
    fds = passed(2, pid=other, names="hook:proxy")
    assert inherited_fds() == {}
    assert consumed()                                       # still removed: never passed on
    assert all(os.get_inheritable(fd) for fd in fds)        # not ours: untouched


@pytest.mark.parametrize("pid,count", [
    ("", "2"),              # LISTEN_FDS without LISTEN_PID
    ("me", "2"),
    (None, "two"),
    (None, "0"),
    (None, "-1"),
])
def test_malformed_or_empty_activation_is_ignored(passed, monkeypatch, pid, count):
    fds = passed(2, names="hook:proxy", count=count)
    if pid is not None:
        monkeypatch.setenv("LISTEN_PID", pid)
    assert inherited_fds() == {}
    assert consumed()
    assert all(os.get_inheritable(fd) for fd in fds)


def test_no_listen_fds_is_no_activation(monkeypatch):
    for var in ACTIVATION_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))      # a stray one is consumed too
    assert inherited_fds() == {}
    assert consumed()


# ------------------------------------------------------------------ inherited sockets
def test_inherited_socket_path_of_a_bound_socket_and_the_descriptor_stays_open(short_dir):
    path = str(short_dir / "hook.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)
        s.listen()
        assert inherited_socket_path(s.fileno()) == path
        assert inherited_socket_path(s.fileno()) == path      # detached, not closed
        assert s.getsockname() == path


def test_inherited_socket_path_is_empty_when_there_is_none(short_dir):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unbound:
        assert inherited_socket_path(unbound.fileno()) == ""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as abstract:
        abstract.bind("\0hookd-test-" + uuidlib.uuid4().hex)
        assert inherited_socket_path(abstract.fileno()) == ""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        assert inherited_socket_path(tcp.fileno()) == ""
    r, w = os.pipe()
    try:
        assert inherited_socket_path(r) == ""                  # not a socket at all
    finally:
        os.close(r)
        os.close(w)
    assert inherited_socket_path(BASE + 50) == ""             # not open


@pytest.fixture
def bound(short_dir):
    path = short_dir / "proxy.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen()
    yield s, path
    s.close()


def test_check_inherited_path_agreeing_is_silent(bound, caplog):
    s, path = bound
    link = path.parent / "via-link.sock"
    os.link(path, link)                                      # another name of the same socket
    with caplog.at_level(logging.WARNING, logger="hookd"):
        assert check_inherited_path("proxy", s.fileno(), "proxy_socket", str(path), "u.socket", "fix") == str(path)
        assert check_inherited_path("proxy", s.fileno(), "proxy_socket", str(link), "u.socket", "fix") == str(path)
    assert caplog.records == []


def test_check_inherited_path_disagreeing_serves_the_inherited_one(bound, caplog):
    s, path = bound
    other = str(path.parent / "elsewhere.sock")
    with caplog.at_level(logging.WARNING, logger="hookd"):
        got = check_inherited_path("proxy", s.fileno(), "proxy_socket", other, "hookd-proxy.socket",
                                   "clients of the other path cannot connect")
    assert got == str(path)
    (rec,) = caplog.records
    assert f"is {path} but [hookd] proxy_socket = {other}; serving {path}" in rec.getMessage()
    assert "Make ListenStream= of hookd-proxy.socket and [hookd] proxy_socket agree" in rec.getMessage()


def test_check_inherited_path_with_nothing_configured(bound, caplog):
    s, path = bound
    with caplog.at_level(logging.WARNING, logger="hookd"):
        assert check_inherited_path("proxy", s.fileno(), "proxy_socket", "", "hookd-proxy.socket", "") == str(path)
    assert "although [hookd] proxy_socket is empty; serving it" in caplog.text
    assert "disable hookd-proxy.socket" in caplog.text


def test_check_inherited_path_of_an_unbound_socket_keeps_the_configured_path(caplog):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, caplog.at_level(logging.WARNING, logger="hookd"):
        fd = s.fileno()
        got = check_inherited_path("hook", fd, "socket", "/run/hookd/hookd.sock", "hookd.socket", "")
    assert got == "/run/hookd/hookd.sock"       # the name the logs use; the descriptor is served
    assert f"(fd {fd}) is not bound to a path; serving it instead of [hookd] socket" in caplog.text


def test_check_inherited_group(bound, caplog):
    _, path = bound
    gid = os.stat(path).st_gid
    with caplog.at_level(logging.WARNING, logger="hookd"):
        check_inherited_group(str(path), gid, "root")
        check_inherited_group(str(path), None, "libvirt")               # no group configured
        check_inherited_group(str(path.parent / "gone.sock"), gid + 1, "x")   # nothing to stat
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="hookd"):
        check_inherited_group(str(path), gid + 1, "libvirt")
    (rec,) = caplog.records
    assert "but [hookd] proxy_group = libvirt" in rec.getMessage()
    assert "SocketGroup= of hookd-proxy.socket" in rec.getMessage()


# ------------------------------------------------------------------ notify
@pytest.fixture
def receiver(short_dir, monkeypatch):
    """A datagram socket bound to a path, named by NOTIFY_SOCKET, as systemd's."""
    path = short_dir / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield s
    s.close()


def test_notify_sends_each_message_as_one_datagram(receiver):
    notify("READY=1")
    notify("STATUS=serving hooks; 3 pins")
    notify("STATUS=héllo")                          # UTF-8 on the wire
    assert receiver.recv(4096) == b"READY=1"
    assert receiver.recv(4096) == b"STATUS=serving hooks; 3 pins"
    assert receiver.recv(4096) == "STATUS=héllo".encode()


def test_notify_to_an_abstract_address(monkeypatch):
    name = "hookd-test-" + uuidlib.uuid4().hex
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notify("READY=1")
        data, sender = s.recvfrom(4096)
    assert data == b"READY=1"


def test_no_notify_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    def no_socket(*a, **kw):
        raise AssertionError("notify made a socket without NOTIFY_SOCKET")
    monkeypatch.setattr(sdprotocol.socket, "socket", no_socket)
    notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    notify("READY=1")


def test_notify_to_nobody_does_not_raise(short_dir, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "nobody.sock"))
    with caplog.at_level(logging.DEBUG, logger="hookd"):
        notify("READY=1")
    assert "notify 'READY=1' failed" in caplog.text


def test_notify_never_blocks_on_a_full_queue(receiver, caplog):
    """A receiver that stops reading: the messages past its queue are dropped, the sender
    goes on (it runs on hookd's event loop). Bounded by a thread join, not a sleep."""
    done = threading.Event()

    def flood():
        for i in range(200):            # far past net.unix.max_dgram_qlen (10 by default)
            notify(f"STATUS={i}")
        done.set()
    with caplog.at_level(logging.DEBUG, logger="hookd"):
        t = threading.Thread(target=flood, daemon=True)
        t.start()
        t.join(10)
    assert done.is_set(), "notify blocked on a full notify socket"
    assert "notify socket full; dropped 'STATUS=199'" in caplog.text
    assert receiver.recv(4096) == b"STATUS=0"           # the first ones arrived


# ------------------------------------------------------------------ watchdog
@pytest.fixture
def watchdog_env(monkeypatch):
    for var in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(var, raising=False)

    def setenv(usec=None, pid=None):
        if usec is not None:
            monkeypatch.setenv("WATCHDOG_USEC", usec)
        if pid is not None:
            monkeypatch.setenv("WATCHDOG_PID", pid)
    return setenv


def test_watchdog_interval_is_half_of_watchdog_usec(watchdog_env):
    watchdog_env("1000000", str(os.getpid()))
    assert watchdog_interval() == 0.5
    watchdog_env("3")
    assert watchdog_interval() == 1.5e-6


@pytest.mark.parametrize("usec,pid", [
    ("", None),                          # set but empty
    ("-5", None),
    ("20000000", "0"),                   # another pid (0 is never this process)
    ("20000000", "self?"),               # not a number: no pings, logged
])
def test_no_watchdog(watchdog_env, usec, pid):
    watchdog_env(usec, pid)
    assert watchdog_interval() is None


def test_watchdog_with_a_malformed_pid_is_logged(watchdog_env, caplog):
    watchdog_env("20000000", "self?")
    with caplog.at_level(logging.WARNING, logger="hookd"):
        assert watchdog_interval() is None
    assert "are not numbers; no watchdog pings" in caplog.text

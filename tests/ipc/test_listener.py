"""hookd.ipc.listener with real UNIX sockets in a short directory under /tmp: creating a
listener (mode, group, stale and live sockets), adopting one, and SO_PEERCRED admission."""

from __future__ import annotations

import logging
import os
import socket
import stat
import subprocess
import sys

import pytest

from hookd.errors import HookdError
from hookd.ipc.listener import (
    SOCKET_DIR_MODE,
    Admission,
    PeerCred,
    adopt_listener,
    admit,
    check_stale,
    create_unix_listener,
    file_identity,
    peer_credentials,
    proc_groups,
    unlink_if_same,
)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (chown, a peer with another uid)")
#: A group no test process is in: nogroup on Debian.
OTHER_GID = 65534


def _connect(path) -> socket.socket:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(5)
    c.connect(str(path))
    return c


def _accept(listener: socket.socket) -> socket.socket:
    listener.settimeout(5)
    conn, _ = listener.accept()
    return conn


def _leftovers(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


# ------------------------------------------------------------------------ creating
def test_new_listener_accepts_and_has_exactly_its_mode(short_dir):
    path = short_dir / "a.sock"
    old = os.umask(0)        # the most open umask: the mode must still be exactly 0600
    try:
        sock = create_unix_listener(str(path), 0o600)
    finally:
        os.umask(old)
    with sock:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        with _connect(path), _accept(sock):
            pass
    assert _leftovers(short_dir) == []


def test_mode_is_not_narrowed_by_a_strict_umask(short_dir):
    path = short_dir / "b.sock"
    old = os.umask(0o077)
    try:
        sock = create_unix_listener(str(path), 0o660)
    finally:
        os.umask(old)
    with sock:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660


@needs_root
def test_group_and_owner_are_set(short_dir):
    path = short_dir / "g.sock"
    with create_unix_listener(str(path), 0o660, OTHER_GID):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, OTHER_GID, 0o660)


def test_missing_parent_directory_is_created_with_its_mode(short_dir):
    path = short_dir / "run" / "sub" / "c.sock"
    old = os.umask(0o077)
    try:
        sock = create_unix_listener(str(path), 0o600)
    finally:
        os.umask(old)
    with sock:
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == SOCKET_DIR_MODE


def test_stale_socket_is_replaced_and_logged(short_dir, caplog):
    path = short_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))      # a socket file nobody listens on (a crashed daemon's)
    before = file_identity(str(path))
    logger = logging.getLogger("test.listener")
    with caplog.at_level(logging.INFO, logger="test.listener"):
        sock = create_unix_listener(str(path), 0o600, logger=logger)
    # (`dead` stays open until here so that its inode number cannot be reused.)
    with sock, dead:
        assert file_identity(str(path)) != before
        assert f"removing stale socket {path}" in caplog.text
        with _connect(path), _accept(sock):
            pass


def test_live_socket_is_refused_naming_the_path(short_dir):
    path = short_dir / "live.sock"
    live = create_unix_listener(str(path), 0o600)
    identity = file_identity(str(path))
    try:
        with pytest.raises(HookdError, match=f"{path} is in use by another process"):
            create_unix_listener(str(path), 0o600, what="proxy")
        # ...and the live one was left alone, still answering.
        assert file_identity(str(path)) == identity
        with _connect(path), _accept(live):
            pass
        assert _leftovers(short_dir) == []
    finally:
        live.close()


def test_live_socket_is_taken_over_with_replace_live(short_dir):
    path = short_dir / "take.sock"
    with create_unix_listener(str(path), 0o600) as old:
        identity = file_identity(str(path))
        with create_unix_listener(str(path), 0o600, replace_live=True) as new:
            assert file_identity(str(path)) != identity
            with _connect(path), _accept(new):
                pass
            old.settimeout(0)
            with pytest.raises(BlockingIOError):
                old.accept()          # the connection went to the new listener


def test_a_file_that_is_not_a_socket_is_never_replaced(short_dir):
    path = short_dir / "file.sock"
    path.write_text("keep me")
    for replace_live in (False, True):
        with pytest.raises(HookdError, match="exists and is not a socket"):
            create_unix_listener(str(path), 0o600, replace_live=replace_live)
    assert path.read_text() == "keep me"


def test_check_stale_on_a_free_path_does_nothing(short_dir):
    check_stale(str(short_dir / "none.sock"))
    assert os.listdir(short_dir) == []


def test_a_failed_bind_is_one_error_and_leaves_nothing(short_dir):
    # The temporary name (<path>.<pid>.tmp) no longer fits in sun_path (108 bytes).
    path = short_dir / ("x" * (100 - len(str(short_dir))))
    with pytest.raises(HookdError, match=rf"cannot create proxy socket {path}: "):
        create_unix_listener(str(path), 0o600, what="proxy")
    assert os.listdir(short_dir) == []


def test_unlink_if_same_leaves_a_replaced_file(short_dir):
    path = str(short_dir / "u.sock")
    # The first stays open throughout, so that its inode number cannot be reused.
    with create_unix_listener(path, 0o600):
        first = file_identity(path)
        with create_unix_listener(path, 0o600, replace_live=True):
            assert unlink_if_same(path, first) is False      # another listener's file now
            assert os.path.exists(path)
            assert unlink_if_same(path, file_identity(path)) is True
            assert not os.path.exists(path)
            assert unlink_if_same(path, first) is False      # gone: nothing to do


# ------------------------------------------------------------------------ adopting
def test_adopt_listener_takes_a_listening_unix_socket(short_dir):
    path = short_dir / "inh.sock"
    original = create_unix_listener(str(path), 0o600)
    fd = os.dup(original.fileno())
    original.close()
    sock = adopt_listener(fd, "hook")
    with sock:
        assert sock.fileno() == fd and sock.getblocking() is False
        with _connect(path):
            sock.setblocking(True)
            _accept(sock).close()


def test_adopt_listener_refuses_other_descriptors(short_dir):
    unbound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with pytest.raises(HookdError, match=rf"inherited proxy socket \(fd {unbound.fileno()}\) is not a "
                                             "listening UNIX stream socket"):
            adopt_listener(unbound.fileno(), "proxy")
        unbound.getsockname()      # still open: a refused descriptor is not closed
    finally:
        unbound.close()
    r, w = os.pipe()
    try:
        with pytest.raises(HookdError, match=rf"inherited hook socket \(fd {r}\) is not a socket"):
            adopt_listener(r, "hook")
    finally:
        os.close(r)
        os.close(w)


# ----------------------------------------------------------------------- admission
def test_peer_credentials_of_a_real_connection(short_dir):
    path = short_dir / "p.sock"
    with create_unix_listener(str(path), 0o600) as ls, _connect(path) as client, _accept(ls) as conn:
        cred = peer_credentials(conn)
        assert isinstance(cred, PeerCred)
        assert cred == (os.getpid(), os.geteuid(), os.getegid())
        assert str(cred) == f"pid={os.getpid()} uid={os.geteuid()} gid={os.getegid()}"
        assert peer_credentials(client).pid == os.getpid()


def test_admit_our_own_connection(short_dir):
    path = short_dir / "q.sock"
    with create_unix_listener(str(path), 0o600) as ls, _connect(path), _accept(ls) as conn:
        me = PeerCred(os.getpid(), os.geteuid(), os.getegid())
        assert admit(conn, (me.uid,)) == Admission(True, "root" if ROOT else f"uid {me.uid}", me)
        refused = admit(conn, (), None)
        assert (refused.allowed, refused.peer, refused.error) == (False, me, None)
        assert refused.reason == "not an allowed uid and no group is allowed"
        assert admit(conn, (), me.gid) == Admission(True, "primary group", me)
        other = admit(conn, (me.uid + 1,), me.gid + 1)
        assert not other.allowed and other.reason == f"neither uid {me.uid + 1} nor in group {me.gid + 1}"
        assert other.who == str(me)


def test_admit_when_so_peercred_fails():
    class Broken:
        def getsockopt(self, *args):
            raise OSError(107, "Transport endpoint is not connected")

    result = admit(Broken(), (0,), 0)
    assert not result.allowed and result.peer is None
    assert isinstance(result.error, OSError)
    assert result.reason.startswith("SO_PEERCRED failed: ") and result.who == "unknown peer"


CLIENT = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
          "print('connected', flush=True); sys.stdin.read()")


class _Peer:
    """A process of another uid/gid (and supplementary groups) connected to `path`."""

    def __init__(self, path, uid: int, gid: int, groups=()):
        self.proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, user=uid, group=gid,
                                     extra_groups=list(groups))
        assert self.proc.stdout.readline().strip() == "connected"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@needs_root
def test_admit_refuses_a_process_of_another_uid_with_the_reason(short_dir):
    short_dir.chmod(0o755)          # let uid 65534 reach the socket
    path = short_dir / "r.sock"
    with create_unix_listener(str(path), 0o666) as ls, _Peer(path, 65534, 65534) as peer:
        with _accept(ls) as conn:
            result = admit(conn, (0,), 4242)
            assert result.peer == (peer.proc.pid, 65534, 65534)
            assert not result.allowed and result.reason == "neither root nor in group 4242"
            assert admit(conn, (0,), None).reason == "not root and no group is allowed"


@needs_root
def test_admit_lets_in_a_supplementary_group_member(short_dir):
    short_dir.chmod(0o755)
    path = short_dir / "s.sock"
    with create_unix_listener(str(path), 0o666) as ls, _Peer(path, 65534, 65534, groups=[4242]) as peer:
        assert 4242 in proc_groups(peer.proc.pid)
        with _accept(ls) as conn:
            assert admit(conn, (0,), 4242) == Admission(True, "supplementary group",
                                                         PeerCred(peer.proc.pid, 65534, 65534))
            assert not admit(conn, (0,), 4243).allowed


def test_proc_groups_of_a_missing_process_is_empty():
    assert proc_groups(2 ** 22 + 12345) == set()

"""Listening UNIX sockets and who may connect to them: shared by the hook socket and the proxy.

This module owns: creating a listening socket at a path with its mode and group
set before anyone can reach it (bound under a temporary name, then renamed into
place, so the umask never matters), the stale-socket check (a socket file
nobody listens on is replaced; a live one is refused, naming the path; a
non-socket is never touched), adopting an inherited (systemd socket-activated)
listening descriptor, the asyncio keyword that keeps such a socket's file at
close (Python >= 3.13), removing a socket file only if it is still the one we
created, and peer admission by SO_PEERCRED (uid, primary and supplementary
group of the connecting process).

It must not do: accept(), reading or writing connections, any protocol, any
policy of its own: who is allowed is the caller's argument (``admit``), and
what a refusal is logged as is the caller's business.
"""

from __future__ import annotations

import asyncio
import grp
import inspect
import logging
import os
import pwd
import socket
import stat
import struct
import sys
from dataclasses import dataclass
from typing import Collection, NamedTuple, Optional

from hookd.errors import HookdError

log = logging.getLogger("hookd.ipc.listener")

#: A hypervisor boot starts dozens of guests at once; each start's prepare hook
#: connects to the hook socket. asyncio re-listens with its own backlog (default
#: 100), so the hook server passes this one; the daemon's descriptor budget counts it.
LISTEN_BACKLOG = 1024
#: Mode of a socket's parent directory when this module has to create it.
SOCKET_DIR_MODE = 0o755
#: How long the stale-socket probe waits for a connect() to a socket file.
STALE_PROBE_TIMEOUT = 1.0

_UCRED = struct.Struct("3i")        # struct ucred: pid, uid, gid


# ----------------------------------------------------------------------- creating
def create_unix_listener(path: str, mode: int, gid: Optional[int] = None,
                         backlog: int = LISTEN_BACKLOG, *, what: str = "unix",
                         replace_live: bool = False,
                         logger: Optional[logging.Logger] = None) -> socket.socket:
    """A listening socket at `path`, already `mode` (and group `gid`) when it appears there.

    The socket is bound under ``<path>.<pid>.tmp``, given its owner (root when we
    are root), group and mode, set listening, and only then renamed to `path`.
    A missing parent directory is created with SOCKET_DIR_MODE. Whatever is at
    `path` is checked first (``check_stale``): a non-socket is refused, a socket
    nobody listens on is replaced, a live one is refused unless `replace_live`
    (the hook socket has always taken the path over). Failures are a HookdError
    naming `what` ("cannot create <what> socket <path>: ...").
    """
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=SOCKET_DIR_MODE, exist_ok=True)
        os.chmod(parent, SOCKET_DIR_MODE)
    check_stale(path, replace_live=replace_live, logger=logger)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(tmp)
        os.chown(tmp, 0 if os.geteuid() == 0 else -1, gid if gid is not None else -1)
        os.chmod(tmp, mode)
        sock.listen(backlog)
        os.rename(tmp, path)
    except OSError as err:
        sock.close()
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise HookdError(f"cannot create {what} socket {path}: {err}") from err
    return sock


def check_stale(path: str, *, replace_live: bool = False,
                logger: Optional[logging.Logger] = None) -> None:
    """Make `path` free for a new socket, or raise a HookdError saying why not.

    Nothing there: nothing to do. Not a socket: refused. A socket: replaced if
    `replace_live`, else probed with connect(): refused ("in use by another
    process") if something accepts, removed (logged at info to `logger`) if not.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise HookdError(f"{path} exists and is not a socket; refusing to replace it")
    if replace_live:
        os.unlink(path)
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(STALE_PROBE_TIMEOUT)
        probe.connect(path)
    except OSError:
        (logger or log).info("removing stale socket %s", path)
        os.unlink(path)
        return
    finally:
        probe.close()
    raise HookdError(f"{path} is in use by another process")


def file_identity(path: str) -> tuple[int, int]:
    """(st_dev, st_ino) of `path`, to recognise our own socket file at close."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def unlink_if_same(path: str, identity: tuple[int, int]) -> bool:
    """Remove `path` if it is still the file `identity` names (another process may
    have replaced it since); True if it was removed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if (st.st_dev, st.st_ino) != identity:
        return False
    os.unlink(path)
    return True


# ---------------------------------------------------------------------- inheriting
def adopt_listener(fd: int, what: str) -> socket.socket:
    """An inherited descriptor as a non-blocking listening socket; a HookdError (one line)
    if it is not a listening UNIX stream socket."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as err:
        raise HookdError(f"inherited {what} socket (fd {fd}) is not a socket: {err.strerror}") from err
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise HookdError(f"inherited {what} socket (fd {fd}) is not a listening UNIX stream socket")
    sock.setblocking(False)
    return sock


def keep_socket_file_kwargs(loop: asyncio.AbstractEventLoop) -> dict:
    """Keyword arguments that stop asyncio from unlinking a UNIX server's socket file at close.

    Since Python 3.13 create_unix_server() (and so start_unix_server()) takes
    cleanup_socket=True by default and unlinks the socket's path when the server
    closes, also for a socket passed with sock=: for an inherited (socket-activated)
    socket that deletes systemd's socket, and clients get ENOENT until the socket unit
    is restarted (issue #17). Older versions have no such parameter and never unlink.
    """
    try:
        params = inspect.signature(loop.create_unix_server).parameters
    except (TypeError, ValueError):         # a loop whose signature cannot be read
        return {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
    return {"cleanup_socket": False} if "cleanup_socket" in params else {}


# ----------------------------------------------------------------------- admission
class PeerCred(NamedTuple):
    """struct ucred of the process at the other end of a UNIX socket (at connect time)."""

    pid: int
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"pid={self.pid} uid={self.uid} gid={self.gid}"


def peer_credentials(sock: socket.socket) -> PeerCred:
    """(pid, uid, gid) of the process at the other end of a UNIX socket; OSError if unknown."""
    return PeerCred._make(_UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        _UCRED.size)))


@dataclass(frozen=True)
class Admission:
    """What ``admit`` decided about one connection, and why.

    ``peer`` is None (and ``error`` the OSError) when SO_PEERCRED itself failed.
    ``reason`` says why it was let in ("root", "primary group", ...) or refused.
    """

    allowed: bool
    reason: str
    peer: Optional[PeerCred] = None
    error: Optional[OSError] = None

    @property
    def who(self) -> str:
        """The peer for a log line: "pid=.. uid=.. gid=..", or "unknown peer"."""
        return str(self.peer) if self.peer is not None else "unknown peer"


def admit(conn: socket.socket, allowed_uids: Collection[int] = (0,),
          allowed_gid: Optional[int] = None) -> Admission:
    """Whether the process behind `conn` may use it: its uid is in `allowed_uids`, or it is
    in group `allowed_gid` (primary, supplementary as the kernel has them in
    /proc/<pid>/status, or as the group database has them)."""
    try:
        peer = peer_credentials(conn)
    except OSError as err:
        return Admission(False, f"SO_PEERCRED failed: {err}", None, err)
    uids = tuple(allowed_uids)
    who = "root" if uids == (0,) else f"uid {'/'.join(map(str, uids))}" if uids else "an allowed uid"
    if peer.uid in uids:
        return Admission(True, "root" if peer.uid == 0 else f"uid {peer.uid}", peer)
    want = allowed_gid
    if want is None:
        return Admission(False, f"not {who} and no group is allowed", peer)
    if peer.gid == want:
        return Admission(True, "primary group", peer)
    if want in proc_groups(peer.pid):
        return Admission(True, "supplementary group", peer)
    try:
        user = pwd.getpwuid(peer.uid)
        if user.pw_gid == want or user.pw_name in grp.getgrgid(want).gr_mem:
            return Admission(True, "group member", peer)
    except KeyError:
        pass
    return Admission(False, f"neither {who} nor in group {want}", peer)


def proc_groups(pid: int) -> set[int]:
    """Supplementary groups of a live process, from /proc/<pid>/status."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:] if g.isdigit()}
    except OSError:
        pass
    return set()

"""systemd's protocols as hookd speaks them, read and written directly (no libsystemd):
socket activation (sd_listen_fds(3): which inherited socket is the hook socket and
which the proxy's, and whether they are where hookd.conf says), readiness and status
(sd_notify(3), never blocking the event loop) and the watchdog interval.

It owns no socket and starts nothing; hookd.daemon calls it. Under no systemd every
function is a no-op that says so (an empty dict, None).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Optional

log = logging.getLogger("hookd")

#: systemd socket-activation names (FileDescriptorName=) for the two sockets.
FD_NAME_HOOK = "hook"
FD_NAME_PROXY = "proxy"
#: The socket units that pass them (packaging/systemd), named in log lines.
UNIT_HOOK = "hookd.socket"
UNIT_PROXY = "hookd-proxy.socket"
#: sd_listen_fds(3): passed descriptors start here.
SD_LISTEN_FDS_START = 3


def notify(message: str) -> None:
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


def inherited_fds() -> dict:
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


def check_inherited_group(path: str, gid: Optional[int], group: str) -> None:
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

"""A running domain's boot key: libvirt's domain id and its QEMU process's start time.

libvirt's API does not give a domain's start time or QEMU pid, so this reads them
the way libvirt itself knows them: libvirt's pid file `/run/libvirt/qemu/<name>.pid`,
seen through `/proc/<libvirtd pid>/root` (the daemon's own mount namespace, which is
not ours inside a container or the test harness), with the QEMU command line's
`-uuid` checked against the domain; else a scan of /proc for that `-uuid`. The
start time is /proc/<pid>/stat's starttime (clock ticks since the kernel booted),
made unique across reboots with the kernel's boot_id. Where the QEMU process is not
visible (it runs as libvirt-qemu and hookd's unit has ProtectProc=invisible), the
pid file's pid and mtime (QEMU writes it as it starts) stand in for it.

When no QEMU process can be found (libvirt in another pid namespace) the key falls
back to boot_id and domain id, which is only as unique as libvirt's domain ids
(libvirt 9.0 keeps counting across its restarts; the API does not promise it).

It reads /proc and one SO_PEERCRED; it never calls libvirt and decides nothing.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
from typing import Optional, Tuple

from hookd.clock import iso_from_epoch

PID_DIR = "/run/libvirt/qemu"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
#: Field 22 of /proc/<pid>/stat (1-based), counted after the ")" that ends the command name.
_STARTTIME_AFTER_COMM = 22 - 3


@dataclasses.dataclass(frozen=True)
class QemuStart:
    pid: int
    #: Its start: clock ticks since the kernel booted (/proc/PID/stat), or when the
    #: process is not visible, "p<pid>.<pid file mtime ns>".
    ticks: str
    since: str          # wall-clock start time, ISO 8601 UTC


def kernel_boot_id() -> str:
    try:
        with open(BOOT_ID) as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def socket_peer_pid(path: str, timeout: float = 1.0) -> Optional[int]:
    """The pid of the process listening on a UNIX socket (0/None when not visible)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            cred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", cred)[0]
    return pid or None


def _cmdline_has_uuid(pid: int, uuid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    want = uuid.lower().encode()
    return any(a == b"-uuid" and i + 1 < len(args) and args[i + 1].lower() == want
               for i, a in enumerate(args))


def start_ticks(pid: int) -> Optional[int]:
    """/proc/PID/stat's starttime: clock ticks after the kernel booted."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[_STARTTIME_AFTER_COMM])
    except (IndexError, ValueError):
        return None


def _pid_file(root: str, name: str) -> Optional[Tuple[int, int]]:
    """(pid, mtime in ns) of libvirt's pid file for the domain: QEMU writes it at its start."""
    try:
        with open(os.path.join(root, PID_DIR.lstrip("/"), f"{name}.pid")) as f:
            return int(f.read().strip()), os.fstat(f.fileno()).st_mtime_ns
    except (OSError, ValueError):
        return None


def _pid_from_file(root: str, name: str) -> Optional[int]:
    found = _pid_file(root, name)
    return found[0] if found is not None else None


def _same_mount_ns(a: int, b: int) -> bool:
    try:
        return os.stat(f"/proc/{a}/ns/mnt").st_ino == os.stat(f"/proc/{b}/ns/mnt").st_ino
    except OSError:
        return False


def find_qemu(uuid: str, name: str, libvirtd_pid: Optional[int]) -> Optional[int]:
    root = f"/proc/{libvirtd_pid}/root" if libvirtd_pid else "/"
    pid = _pid_from_file(root, name)
    if pid is not None and _cmdline_has_uuid(pid, uuid):
        return pid
    found = [int(p) for p in os.listdir("/proc") if p.isdigit() and _cmdline_has_uuid(int(p), uuid)]
    if len(found) > 1 and libvirtd_pid:
        # Two QEMUs of one UUID on one kernel: the two ends of a migration between
        # libvirtds in different mount namespaces (containers, the test harness).
        found = [p for p in found if _same_mount_ns(p, libvirtd_pid)]
    return found[0] if len(found) == 1 else None


def _boot_time() -> Optional[float]:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None




def qemu_start(uuid: str, name: str, libvirtd_pid: Optional[int]) -> Optional[QemuStart]:
    found = _pid_file(f"/proc/{libvirtd_pid}/root" if libvirtd_pid else "/", name)
    # QEMU runs as another user and hookd's unit hides such processes (ProtectProc=
    # invisible): no /proc scan could see it either, but the pid file, root's, still says
    # which QEMU and when it started.
    hidden = found is not None and not os.path.exists(f"/proc/{found[0]}")
    pid = None if hidden else find_qemu(uuid, name, libvirtd_pid)
    ticks = start_ticks(pid) if pid is not None else None
    if pid is not None and ticks is not None:
        btime = _boot_time()
        since = "-" if btime is None else iso_from_epoch(btime + ticks / os.sysconf("SC_CLK_TCK"))
        return QemuStart(pid, f"{ticks}", since)
    if found is None:
        return None
    pid, mtime_ns = found
    return QemuStart(pid, f"p{pid}.{mtime_ns}", iso_from_epoch(mtime_ns / 1e9))


def boot_key(domain_id: int, start: Optional[QemuStart], boot_id: str) -> str:
    """Stable for one run of one QEMU: the same from the STARTED event and from any resync."""
    if start is None:
        return f"{boot_id[:8]}:dom{domain_id}"
    return f"{boot_id[:8]}:{start.ticks}:dom{domain_id}"

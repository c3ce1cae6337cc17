"""Who may talk to hookd: socket owners and modes, peer credentials, and no network exposure.

A real hookd with its proxy in front of a real namespaced libvirtd. Its directory
is traversable by everyone (pytest's own temp dirs are 0700 and would hide the
sockets' own modes), so the sockets' modes and hookd's SO_PEERCRED checks are what
keep strangers out. Clients run as nobody (uid 65534) via setpriv.
"""

from __future__ import annotations

import grp
import os
import shutil
import stat
import tempfile
import pathlib

import pytest

from tests.harness.faults import run_as, run_as_nobody, status_json

pytestmark = pytest.mark.libvirt

PY = "/usr/bin/python3"
HOOK_PROBE = ("import socket,struct,sys\n"
              "s=socket.socket(socket.AF_UNIX); s.settimeout(5)\n"
              "try:\n"
              "    s.connect(sys.argv[1])\n"
              "except PermissionError:\n"
              "    print('EACCES'); sys.exit(0)\n"
              "try:\n"
              "    s.sendall(struct.pack('>I',25)+b'{\"v\":1,\"op\":\"status\"}    ')\n"
              "    print('closed' if s.recv(10) == b'' else 'answered')\n"
              "except (ConnectionResetError, BrokenPipeError):\n"
              "    print('closed')\n")
PROXY_PROBE = ("import libvirt, sys\n"
               "try:\n"
               "    print(libvirt.open(sys.argv[1]).getType())\n"
               "except libvirt.libvirtError as e:\n"
               "    print('Permission denied' if 'Permission denied' in str(e) else 'refused: ' + str(e)[:80])\n")


@pytest.fixture
def public_dir():
    path = pathlib.Path(tempfile.mkdtemp(prefix="hookd-rel-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def socket_inodes(pid: int) -> set:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def net_inodes(pid: int, table: str) -> set:
    """Socket inodes in /proc/<pid>/net/<table> (the process's own network namespace)."""
    with open(f"/proc/{pid}/net/{table}") as f:
        lines = f.read().splitlines()[1:]
    col = 9 if table != "unix" else 6
    return {int(line.split()[col]) for line in lines if len(line.split()) > col}


def children(pid: int) -> list:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return kids


def test_socket_access_and_no_network_listener(libvirt_hosts, hookd_factory, public_dir, record):
    """Hook socket 0600 root and refuses non-root peers; proxy socket 0660 root:libvirt and refuses non-members; hookd (and its worker) own no TCP/UDP socket."""
    from tests.harness.hookd_proc import HookdProcess
    host = libvirt_hosts("a")
    d = HookdProcess(public_dir, proxy=True, libvirt_socket=host.socket_path,
                     config_extra=f"libvirt_uri = {host.uri}\n")
    try:
        d.start()
        libvirt_gid = grp.getgrnam("libvirt").gr_gid
        hs, ps = os.stat(d.socket), os.stat(d.proxy_socket)
        modes = (stat.S_IMODE(hs.st_mode), hs.st_uid, stat.S_IMODE(ps.st_mode), ps.st_uid, ps.st_gid)
        record("socket modes", "hook 0600 root; proxy 0660 root:libvirt (README)",
               f"hook {modes[0]:04o} uid {modes[1]}; proxy {modes[2]:04o} uid {modes[3]} gid {modes[4]}",
               ok=modes == (0o600, 0, 0o660, 0, libvirt_gid))
        assert modes == (0o600, 0, 0o660, 0, libvirt_gid)

        # Hook socket: the mode keeps nobody out; with the mode opened, SO_PEERCRED does.
        by_mode = run_as_nobody([PY, "-c", HOOK_PROBE, str(d.socket)]).stdout.strip()
        os.chmod(d.socket, 0o666)
        by_cred = run_as_nobody([PY, "-c", HOOK_PROBE, str(d.socket)]).stdout.strip()
        os.chmod(d.socket, 0o600)
        refused = status_json(d)["hook_refused"]
        logged = "refused connection from pid" in d.log_text() and "uid 65534" in d.log_text()
        record("non-root client on the hook socket", "refused by the socket mode, and by hookd's peer check",
               f"mode 0600: {by_mode}; mode opened to 0666: {by_cred}, hook_refused {refused}, logged {logged}",
               ok=by_mode == "EACCES" and by_cred == "closed" and refused == 1 and logged)
        assert by_mode == "EACCES" and by_cred == "closed" and refused == 1 and logged

        # Proxy socket: nobody is kept out by the mode, then by hookd; a libvirt member gets in.
        uri = f"qemu+unix:///system?socket={d.proxy_socket}"
        by_mode = run_as_nobody([PY, "-c", PROXY_PROBE, uri]).stdout.strip()
        os.chmod(d.proxy_socket, 0o666)
        by_cred = run_as_nobody([PY, "-c", PROXY_PROBE, uri]).stdout.strip()
        os.chmod(d.proxy_socket, 0o660)
        res = run_as(65534, libvirt_gid, [PY, "-c", PROXY_PROBE, uri])
        member = res.stdout.strip() or res.stderr.strip()[-200:]
        pst = status_json(d)["proxy"]
        record("non-member of the proxy group on the proxy socket", "refused (mode, then hookd's peer check); "
               "a libvirt-group member is let through",
               f"mode 0660: {by_mode}; mode 0666: {by_cred[:40]}, clients_refused {pst['clients_refused']}; "
               f"member: {member}",
               ok=by_mode == "Permission denied" and by_cred.startswith("refused") and member == "QEMU"
               and pst["clients_refused"] == 1)
        assert by_mode == "Permission denied" and by_cred.startswith("refused") and member == "QEMU"
        assert pst["clients_refused"] == 1

        # Network exposure: map every socket hookd (and its worker) holds to the kernel's tables.
        pids = [d.pid] + children(d.pid)
        owned = set().union(*(socket_inodes(p) for p in pids))
        inet = {t: owned & net_inodes(d.pid, t) for t in ("tcp", "tcp6", "udp", "udp6")}
        unix = owned & net_inodes(d.pid, "unix")
        record("network exposure", "no TCP (or UDP) socket owned by hookd or its worker",
               f"pids {pids}: {len(owned)} sockets, {len(unix)} of them AF_UNIX; "
               + ", ".join(f"{t}: {len(v)}" for t, v in inet.items()),
               ok=not any(inet.values()) and len(unix) >= 2)
        # the positive control: the mapping does see hookd's two listening UNIX sockets
        assert len(unix) >= 2 and not any(inet.values()), inet
    finally:
        d.stop()

"""hookd.virt.qemuproc: the boot key from /proc (a real process standing in for QEMU)."""

import os
import subprocess
import uuid as uuidlib

from hookd.virt import qemuproc
from tests.harness.waiting import wait_for


def fake_qemu(uuid: str) -> subprocess.Popen:
    """A process whose command line carries `-uuid UUID`, as QEMU's does. Popen returns
    once execve has closed the child's descriptors, which is before the kernel has set up
    its argument pages: /proc/PID/cmdline reads empty for a moment after (seen under CPU
    load), so wait until it shows the arguments. A real QEMU has long run by then."""
    proc = subprocess.Popen(["/bin/sh", "-c", "read x", "-uuid", uuid], stdin=subprocess.PIPE)

    def exec_done():
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            return uuid.encode() in f.read()
    wait_for(exec_done, 10, f"pid {proc.pid}'s command line")
    return proc


def test_finds_the_process_by_uuid_and_keys_are_stable_and_distinct():
    u = str(uuidlib.uuid4())
    procs = [fake_qemu(u)]
    other = fake_qemu(str(uuidlib.uuid4()))
    try:
        start = qemuproc.qemu_start(u, "no-such-domain", os.getpid())
        assert start is not None and start.pid == procs[0].pid
        again = qemuproc.qemu_start(u.upper(), "no-such-domain", None)
        boot_id = qemuproc.kernel_boot_id()
        assert qemuproc.boot_key(3, start, boot_id) == qemuproc.boot_key(3, again, boot_id)
        assert qemuproc.boot_key(3, start, boot_id) != qemuproc.boot_key(4, start, boot_id)
        assert start.since[:4].isdigit()
    finally:
        for p in procs + [other]:
            p.kill()
            p.wait()
    assert qemuproc.qemu_start(u, "no-such-domain", None) is None


def test_pid_file_in_libvirtds_root_is_used_and_checked_against_the_uuid(tmp_path, monkeypatch):
    u = str(uuidlib.uuid4())
    proc = fake_qemu(u)
    try:
        piddir = tmp_path / qemuproc.PID_DIR.lstrip("/")
        piddir.mkdir(parents=True)
        (piddir / "dom.pid").write_text(f"{proc.pid}\n")
        assert qemuproc._pid_from_file(str(tmp_path), "dom") == proc.pid
        (piddir / "dom.pid").write_text(f"{os.getpid()}\n")     # a stale pid file: not QEMU of u
        monkeypatch.setattr(qemuproc, "_pid_from_file", lambda root, name: os.getpid())
        assert qemuproc.find_qemu(u, "dom", None) == proc.pid   # the /proc scan finds the right one
    finally:
        proc.kill()
        proc.wait()


def test_socket_peer_pid(tmp_path):
    import socket
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(path)
        srv.listen(1)
        assert qemuproc.socket_peer_pid(path) == os.getpid()
    assert qemuproc.socket_peer_pid(str(tmp_path / "missing")) is None


def test_invisible_qemu_falls_back_to_the_pid_file(tmp_path, monkeypatch):
    """As under hookd's unit (ProtectProc=invisible, QEMU another user): /proc/<qemu> hidden."""
    piddir = tmp_path / "run-libvirt-qemu"
    piddir.mkdir()
    monkeypatch.setattr(qemuproc, "PID_DIR", str(piddir))     # under "/", the root without libvirtd's pid
    pidfile = piddir / "dom.pid"
    pidfile.write_text("4242\n")
    os.utime(pidfile, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    monkeypatch.setattr(qemuproc, "find_qemu", lambda uuid, name, pid: None)
    start = qemuproc.qemu_start(str(uuidlib.uuid4()), "dom", None)
    assert (start.pid, start.ticks, start.since) == (4242, "p4242.1700000000000000000",
                                                     "2023-11-14T22:13:20.000+00:00")
    key = qemuproc.boot_key(7, start, "0123456789")
    assert key == "01234567:p4242.1700000000000000000:dom7"
    os.utime(pidfile, ns=(1_700_000_000_000_000_001,) * 2)      # QEMU started again
    assert qemuproc.boot_key(7, qemuproc.qemu_start("u", "dom", None), "0123456789") != key

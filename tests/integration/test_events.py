"""libvirt lifecycle events on a real libvirtd: hookd's worker turns them into audit rows.

Each test starts a namespaced libvirtd with hookd's shim installed and a real hookd
whose `[hookd] libvirt_uri` is that libvirtd. The worker (hookd.virt.worker)
subscribes to lifecycle events; rows are read from the audit log the daemon
writes. Waits are bounded polls on conditions, never sleeps.
"""

from __future__ import annotations

import os
import signal
import time
import uuid as uuidlib

import pytest

from tests.harness.lifecycle import HOST_SERIAL, NO_RECONCILE, define, drive, host_and_hookd, ops, status
from tests.harness.waiting import wait_for
from tests.harness.guest import nova_domain_xml

pytestmark = pytest.mark.libvirt


def test_lifecycle_events_become_audit_rows(libvirt_hosts, hookd_factory, tmp_path):
    """define, start, destroy, undefine: one row each, with the serial each one saw."""
    host, d = host_and_hookd(libvirt_hosts, hookd_factory, NO_RECONCILE)
    name, uid = define(host, tmp_path, serial=HOST_SERIAL)
    rows = drive(d, host, uid, [
        (None, [("defined", "added")]),
        (("start", name), [("prepare", "warn"), ("started", "booted")]),
        (("destroy", name), [("stopped", "destroyed")]),
        (("undefine", name), [("undefined", "removed")])])
    defined, prepare, started, stopped, undefined = rows
    assert (defined["serial_seen"], defined["serial_wanted"], defined["verdict"]) == (HOST_SERIAL, uid, "rewrite")
    assert defined["domain"] == name and defined["nova_name"] == "vm-1" and defined["flavor"] == "m1.tiny"
    assert "DEFINED/ADDED" in defined["detail"]
    assert started["serial_seen"] == HOST_SERIAL and "running guest" in started["detail"]
    assert stopped["serial_seen"] == HOST_SERIAL and stopped["nova_name"] == "vm-1"
    assert undefined["domain"] == name
    # Every row is in time order, and `hookctl audit` tells the same story.
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
    out = d.hookctl("audit", "--state-dir", d.state_dir, "--instance", uid).stdout.decode()
    for op in ("defined", "prepare", "started", "stopped", "undefined"):
        assert op in out
    st = status(d)["events"]
    assert st["uri"] == host.uri and st["connected"] and st["reconnects"] == 0
    assert st["events"] >= 5        # + RESUMED after the start


def test_redefine_and_names_of_stop_reasons(libvirt_hosts, hookd_factory, tmp_path):
    """A redefinition is DEFINED/UPDATED with the new saved serial; save is STOPPED/SAVED,
    restore is STARTED/RESTORED."""
    host, d = host_and_hookd(libvirt_hosts, hookd_factory, NO_RECONCILE)
    name, uid = define(host, tmp_path, serial=HOST_SERIAL)
    path = tmp_path / "again.xml"
    path.write_text(nova_domain_xml(name=name, uuid=uid, serial=uid, image=None, console_log=None))
    image = tmp_path / "saved.img"
    rows = drive(d, host, uid, [
        (None, [("defined", "added")]),
        (("define", path), [("defined", "updated")]),
        (("start", name), [("prepare", "allow"), ("started", "booted")]),
        (("save", name, image), [("stopped", "saved")]),
        (("restore", image), [("restore", "allow"), ("prepare", "allow"), ("started", "restored")])])
    assert rows[0]["serial_seen"] == HOST_SERIAL and rows[1]["serial_seen"] == uid
    assert rows[1]["verdict"] == "compliant"
    assert rows[7]["serial_seen"] == uid


def test_libvirtd_restart_reconnects_resubscribes_and_sweeps(libvirt_hosts, hookd_factory, tmp_path):
    """libvirtd killed and started again while hookd runs: the worker reconnects, resubscribes
    (one row per event, none lost, none twice) and sweeps; status shows the reconnect."""
    host, d = host_and_hookd(libvirt_hosts, hookd_factory)
    running, running_uid = define(host, tmp_path, serial=None)
    host.virsh("start", running)
    sweeps = wait_for(lambda: status(d)["reconcile"]["sweeps"], 15, "the first sweep")
    pid = status(d)["events"]["worker_pid"]

    host.kill_libvirtd()
    wait_for(lambda: not status(d)["events"]["connected"], 15, "the worker noticed libvirtd is gone")
    assert status(d)["events"]["last_error"]
    host.start_libvirtd()
    st = wait_for(lambda: (s := status(d))["events"]["connected"] and s, 20, "reconnected")
    assert st["events"]["reconnects"] == 1 and st["events"]["last_error"] is None
    assert st["events"]["worker_pid"] == pid        # the same worker: it reconnected itself
    wait_for(lambda: status(d)["reconcile"]["sweeps"] > sweeps, 15, "a sweep after the reconnect")
    assert "reconnected to libvirt" in d.log_text()

    # The guest kept running through the restart, and new events arrive exactly once.
    assert host.virsh("domstate", running).stdout.strip() == "running"
    uid = str(uuidlib.uuid4())
    name = f"instance-{uid[:8]}"
    path = tmp_path / "after.xml"
    path.write_text(nova_domain_xml(name=name, uuid=uid, serial=uid, image=None, console_log=None))
    # Events are delivered in order: a duplicate would show before the next step's row.
    rows = drive(d, host, uid, [
        (("define", path), [("defined", "added")]),
        (("start", name), [("prepare", "allow"), ("started", "booted")]),
        (("destroy", name), [("stopped", "destroyed")])])
    assert rows[2]["serial_seen"] == uid


def test_hung_worker_does_not_hold_hooks_and_killed_worker_is_restarted(libvirt_hosts, hookd_factory,
                                                                          tmp_path):
    """The worker is best-effort: stopped (SIGSTOP), hooks and status are still answered at
    once; killed, it is restarted with its events resubscribed."""
    host, d = host_and_hookd(libvirt_hosts, hookd_factory, NO_RECONCILE)
    pid = status(d)["events"]["worker_pid"]
    name, uid = define(host, tmp_path, serial=HOST_SERIAL)
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        host.virsh("start", name)                  # its hook is answered by the daemon alone
        assert time.monotonic() - t0 < 3
        assert [r["action"] for r in d.audit(instance=uid, operation="prepare")] == ["warn"]
        assert status(d)["events"]["worker_pid"] == pid
    finally:
        os.kill(pid, signal.SIGCONT)
    # What it missed while stopped was queued by libvirt, not lost.
    wait_for(lambda: ("started", "booted") in ops(d, uid), 15, "the started row after SIGCONT")

    os.kill(pid, signal.SIGKILL)
    st = wait_for(lambda: (s := status(d))["events"]["worker_pid"] not in (None, pid)
                  and s["events"]["connected"] and s, 20, "the worker restarted and connected")
    assert st["events"]["worker_restarts"] == 1
    assert f"libvirt worker (pid {pid}) exited with signal SIGKILL" in d.log_text()
    host.virsh("destroy", name)
    wait_for(lambda: ("stopped", "destroyed") in ops(d, uid), 15, "events from the new worker")
    assert ops(d, uid).count(("started", "booted")) == 1


def test_unreachable_libvirt_is_reported_not_fatal(hookd_factory, tmp_path):
    """No libvirtd at libvirt_uri: hookd runs, status says why, reconcile fails with the reason."""
    uri = f"qemu+unix:///system?socket={tmp_path}/nothing-here"
    d = hookd_factory(config_extra=f"libvirt_uri = {uri}\n")
    d.start()
    ev = wait_for(lambda: (e := status(d)["events"])["last_error"] and e, 10, "the connection error")
    assert ev["connected"] is False and ev["uri"] == uri and ev["worker_pid"]
    res = d.hookctl("reconcile", "--socket", d.socket, "--dry-run")
    assert res.returncode == 1
    assert f"reconcile: not connected to libvirt at {uri}" in res.stderr.decode()
    assert d.log_text().count("cannot connect to libvirt") == 1        # once, not per retry


def test_worker_dies_with_a_killed_daemon_even_when_stopped(libvirt_hosts, hookd_factory, tmp_path):
    """Outside systemd nothing kills the worker with a SIGKILLed daemon's cgroup; a stopped
    worker never reads its channel's EOF. PDEATHSIG ends it."""
    host, d = host_and_hookd(libvirt_hosts, hookd_factory, NO_RECONCILE)
    pid = status(d)["events"]["worker_pid"]
    os.kill(pid, signal.SIGSTOP)
    d.signal(signal.SIGKILL)
    d.proc.wait(10)

    def gone():
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ")[1][0] == "Z"   # a zombie until its reaper waits
        except FileNotFoundError:
            return True
    try:
        wait_for(gone, 10, "the stopped worker to die with the daemon")
    finally:
        if not gone():
            os.kill(pid, signal.SIGKILL)

"""The boot ledger on a real libvirtd: every boot recorded exactly once across outages.

libvirt does not replay lifecycle events a client missed. Here hookd's worker, hookd
itself and libvirtd are each taken away while guests start and stop; after recovery
`hookctl audit --boots` must hold exactly one boot per guest start, with the serial
the guest printed from its own DMI table, and the stops that happened meanwhile.
Boots found after the fact are `observed` rows; stops found after the fact are
`stopped` rows with action `resync`. A second resync adds nothing. One test runs with
a real etcd as the pin store: the boot found after the fact is the last boot there. The reconciler
is off so that each guest keeps the serial its definition has (S-<label>, not the
policy's): the ledger must record what the guest runs with.
"""

from __future__ import annotations

import json
import os
import signal
import uuid as uuidlib

import pytest

from tests.harness.guest import nova_domain_xml, read_guest_serial
from tests.harness.lifecycle import store_conf
from tests.harness.lifecycle import NO_RECONCILE, host_and_hookd, start_hookd, status
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.libvirt


class Guests:
    def __init__(self, host, tmp_path, image):
        self.host, self.tmp, self.image = host, tmp_path, image
        self.console = {}

    def define(self, label, *, boots_linux=False):
        """A Nova guest whose definition carries its own serial (S-<label>): what it prints."""
        uid = str(uuidlib.uuid4())
        name = f"instance-{label}"
        console = self.tmp / f"{label}.console" if boots_linux else None
        xml = nova_domain_xml(name=name, uuid=uid, serial=f"S-{label}", image=self.image if boots_linux else None,
                              console_log=console)
        path = self.tmp / f"{label}.xml"
        path.write_text(xml)
        self.host.virsh("define", path)
        self.console[uid] = console
        return name, uid

    def printed(self, uid):
        return read_guest_serial(self.console[uid], timeout=180)


def boots(d) -> list:
    res = d.hookctl("audit", "--boots", "--json", "--config", str(d.config))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def boots_of(d, uid) -> list:
    return [b for b in boots(d) if b["instance_uuid"] == uid]


def resyncs(d) -> int:
    return status(d)["events"]["resyncs"]


def wait_resync(d, after: int) -> None:
    wait_for(lambda: status(d)["events"]["connected"] and resyncs(d) > after, 30, "a boot-ledger resync")


def test_worker_killed_while_guests_start_and_stop(libvirt_hosts, hookd_factory, tmp_path, guest_image):
    host, d = host_and_hookd(libvirt_hosts, hookd_factory, NO_RECONCILE)
    g = Guests(host, tmp_path, guest_image)
    a, a_uid = g.define("a")
    b, b_uid = g.define("b", boots_linux=True)
    host.virsh("start", a)
    wait_for(lambda: len(boots_of(d, a_uid)) == 1, 15, "a's boot")
    pid = status(d)["events"]["worker_pid"]
    # Stopped, the worker reads none of the events libvirt sends; killed, they are lost.
    os.kill(pid, signal.SIGSTOP)
    try:
        host.virsh("start", b)
        host.virsh("destroy", a)
    finally:
        os.kill(pid, signal.SIGKILL)
    before = resyncs(d)
    wait_for(lambda: status(d)["events"]["worker_pid"] not in (None, pid), 20, "a new worker")
    wait_resync(d, before)
    printed = g.printed(b_uid)
    [boot_b] = boots_of(d, b_uid)
    assert (boot_b["serial"], boot_b["seen"], boot_b["stopped"]) == (printed, "after the fact", None)
    assert printed == "S-b"
    [boot_a] = boots_of(d, a_uid)
    assert (boot_a["seen"], boot_a["stop_seen"], boot_a["serial"]) == ("event", "after the fact", "S-a")
    observed = d.audit(instance=b_uid, operation="observed")
    assert len(observed) == 1 and observed[0]["action"] == "resync" and observed[0]["since"]

    # A later stop of the observed boot is its event; a restart of the worker adds nothing.
    pid = status(d)["events"]["worker_pid"]
    os.kill(pid, signal.SIGKILL)
    wait_resync(d, resyncs(d))
    host.virsh("destroy", b)
    wait_for(lambda: boots_of(d, b_uid)[0]["stopped"], 15, "b's stop")
    assert [(x["seen"], x["stop_seen"]) for x in boots_of(d, b_uid)] == [("after the fact", "event")]
    assert len(boots(d)) == 2


def test_hookd_killed_while_guests_start_and_stop(libvirt_hosts, hookd_factory, tmp_path, guest_image, etcd):
    """With the etcd store: the boot found after the fact is also the instance's last boot there."""
    host, d = host_and_hookd(libvirt_hosts, hookd_factory, NO_RECONCILE + store_conf(etcd))
    g = Guests(host, tmp_path, guest_image)
    a, a_uid = g.define("a")
    c, c_uid = g.define("c", boots_linux=True)
    host.virsh("start", a)
    wait_for(lambda: len(boots_of(d, a_uid)) == 1, 15, "a's boot")
    d.signal(signal.SIGKILL)
    d.proc.wait(10)
    # hookd down: the shim lets the start go ahead unchecked; nothing records it now.
    host.virsh("start", c)
    host.virsh("destroy", a)
    start_hookd(d)
    wait_resync(d, 0)
    printed = g.printed(c_uid)
    [boot_c] = boots_of(d, c_uid)
    assert (boot_c["serial"], boot_c["seen"], boot_c["stopped"]) == (printed, "after the fact", None)
    [boot_a] = boots_of(d, a_uid)
    assert boot_a["stop_seen"] == "after the fact" and boot_a["stopped"]
    key = f"/hookd/lastboot/{c_uid}"
    wait_for(lambda: etcd.get_prefix(key).get(key), 15, "c's last boot in etcd")
    last = etcd.get_prefix(key)[key]
    assert (last["serial"], last["operation"], last["boot"]) == (printed, "observed", boot_c["boot"])

    # hookd restarted cleanly: its resync finds every boot already recorded.
    d.stop()
    start_hookd(d)
    wait_resync(d, 0)
    assert [b["instance_uuid"] for b in boots(d)] == [a_uid, c_uid]
    assert len([r for r in d.audit() if r["operation"] in ("observed", "started", "stopped")]) == 3
    assert "boot ledger resync after the worker's start: 1 running, 0 boots recorded" in d.log_text()


def test_libvirtd_killed_guests_started_before_the_worker_reconnects(libvirt_hosts, hookd_factory,
                                                                      tmp_path, guest_image):
    """The flaky test's race, held open: guests started after libvirtd came back and before
    the worker reconnected. And a boot whose stop nobody saw: a's QEMU dies while libvirtd
    is down and a starts again before the worker is back; the resync must tell the two
    boots apart (another QEMU start time, another domain id) and close the first."""
    host, d = host_and_hookd(libvirt_hosts, hookd_factory, NO_RECONCILE)
    g = Guests(host, tmp_path, guest_image)
    a, a_uid = g.define("a", boots_linux=True)
    e, e_uid = g.define("e")
    host.virsh("start", a)
    wait_for(lambda: len(boots_of(d, a_uid)) == 1, 15, "a's boot")
    first_id = host.virsh("domid", a).stdout.strip()
    qemu = host.qemu_pids()[a]
    pid = status(d)["events"]["worker_pid"]
    before = resyncs(d)
    host.kill_libvirtd()
    wait_for(lambda: not status(d)["events"]["connected"], 20, "the worker noticed libvirtd is gone")
    # Held stopped so that it cannot reconnect before the starts below.
    os.kill(pid, signal.SIGSTOP)
    try:
        os.kill(qemu, signal.SIGKILL)
        wait_for(lambda: not os.path.exists(f"/proc/{qemu}"), 10, "a's QEMU gone")
        host.start_libvirtd()
        offset = g.console[a_uid].stat().st_size
        host.virsh("start", a)
        host.virsh("start", e)
        second_id = host.virsh("domid", a).stdout.strip()
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_resync(d, before)
    assert status(d)["events"]["worker_pid"] == pid
    printed = read_guest_serial(g.console[a_uid], timeout=180, after_offset=offset)
    old, new = boots_of(d, a_uid)
    assert old["stop_seen"] == "after the fact" and old["boot"] != new["boot"]
    # libvirt 9.0 went on counting across its restart (measured); the key has both.
    assert old["boot"].endswith(f":dom{first_id}") and new["boot"].endswith(f":dom{second_id}")
    assert old["boot"].count(":") == 2      # the QEMU start time was found, not the fallback
    assert (new["serial"], new["seen"], new["stopped"]) == (printed, "after the fact", None)
    [boot_e] = boots_of(d, e_uid)
    assert (boot_e["serial"], boot_e["seen"]) == ("S-e", "after the fact")
    # Events flow again, once each.
    host.virsh("destroy", e)
    host.virsh("start", e)
    wait_for(lambda: len(boots_of(d, e_uid)) == 2, 20, "e's second boot")
    first, second = boots_of(d, e_uid)
    assert (first["stop_seen"], second["seen"]) == ("event", "event") and first["boot"] != second["boot"]

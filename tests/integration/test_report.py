"""`hookctl report` against real components: namespaced libvirtds booting real QEMU guests
(one a Linux guest that prints the serial from its own DMI table) so that the audit logs
hold real rows, and a real etcd shared by two hookd hypervisors with host names of their
own (tests.harness.fleet: a UTS namespace each) for the fleet's view.

The reconciler is off so that each guest boots with the serial its definition carries,
which is what the report must show.
"""

from __future__ import annotations

import csv
import io
import json
import socket
import uuid as uuidlib

import pytest

from tests.harness.fleet import NamedHookd
from tests.harness.guest import nova_domain_xml, read_guest_serial
from tests.harness.lifecycle import NO_RECONCILE, host_and_hookd, start_hookd, status, store_conf
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.libvirt


def define(host, tmp_path, label, *, serial=None, uid=None, image=None, nova=True):
    """Define a guest; serial None means its own UUID (what the default policy wants).
    With `image`, a Linux guest whose console log gets the serial it reads from DMI."""
    uid = uid or str(uuidlib.uuid4())
    console = tmp_path / f"{label}-{host.name}.console" if image is not None else None
    xml = nova_domain_xml(name=f"instance-{label}", uuid=uid, serial=serial or uid, image=image,
                          console_log=console, nova_name=f"vm-{label}", with_nova_metadata=nova)
    path = tmp_path / f"{label}-{host.name}.xml"
    path.write_text(xml)
    host.virsh("define", path)
    return uid, console


def rows(d, uid, op):
    return d.audit(instance=uid, operation=op)


def boot(host, d, label, uid, n=1):
    """Start the guest and wait for its n-th boot in the audit log."""
    host.virsh("start", f"instance-{label}")
    wait_for(lambda: len(rows(d, uid, "started")) == n, 30, f"boot {n} of {label}")


def stop(host, d, label, uid, n=1):
    host.virsh("destroy", f"instance-{label}")
    wait_for(lambda: len(rows(d, uid, "stopped")) == n, 30, f"stop {n} of {label}")


def report(d, *args):
    return d.hookctl("report", *args, "--config", d.config)


def report_json(d, *args) -> dict:
    res = report(d, "--json", *args)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    doc["by"] = {line["instance_uuid"]: line for line in doc["instances"]}
    return doc


def test_local_report_of_real_boots(libvirt_hosts, hookd_factory, tmp_path, guest_image):
    """One host, the SQLite store: a compliant instance whose serial changed once with a
    pin (a decision, not drift), one that booted with a serial out of policy, and a guest
    that is not Nova's (no decision: unknown)."""
    host, d = host_and_hookd(libvirt_hosts, hookd_factory, NO_RECONCILE)
    ok, console = define(host, tmp_path, "ok", image=guest_image)
    boot(host, d, "ok", ok)
    printed = read_guest_serial(console, timeout=180)
    assert printed == ok
    stop(host, d, "ok", ok)
    assert d.hookctl("pin", ok, "PIN-OK", "--config", d.config).returncode == 0
    define(host, tmp_path, "ok", uid=ok, serial="PIN-OK")
    boot(host, d, "ok", ok, n=2)
    bad, _ = define(host, tmp_path, "bad", serial="HOST-SERIAL-1")
    boot(host, d, "bad", bad)
    odd, _ = define(host, tmp_path, "odd", nova=False)
    boot(host, d, "odd", odd)

    res = report(d)
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode().splitlines()
    assert out[0] == "3 instances: 1 compliant, 1 drifted, 1 unknown"
    assert [line.split()[:2] for line in out[4:]] == [["drifted", bad], ["unknown", odd], ["compliant", ok]]

    doc = report_json(d)
    assert doc["sources"]["lastboot"] is None
    me = socket.gethostname()
    line = doc["by"][ok]
    assert (line["status"], line["serials"], line["changes"], line["boots"], line["hosts"]) == \
        ("compliant", [printed, "PIN-OK"], 1, 2, [me])
    first, second = line["boot_list"]
    assert first["stopped"] and second["stopped"] is None and second["decided"] == "PIN-OK"
    assert line["first_seen"] == first["started"] and line["last_seen"] == second["started"]
    line = doc["by"][bad]
    assert (line["status"], line["serials"], line["decided"], line["drift"]) == \
        ("drifted", ["HOST-SERIAL-1"], bad, 1)
    assert "not a Nova guest" in doc["by"][odd]["why"] and doc["by"][odd]["status"] == "unknown"

    table = list(csv.DictReader(io.StringIO(report(d, "--csv").stdout.decode())))
    assert {r["instance_uuid"]: r["serials"] for r in table}[ok] == f"{printed};PIN-OK"
    assert report(d, "--fail-on-drift").returncode == 3
    # Since ok's second boot started: its first boot (stopped before) is out of range.
    since = report_json(d, "--since", second["started"])
    assert since["summary"]["instances"] == 3 and since["by"][ok]["boots"] == 1
    assert (since["by"][ok]["serials"], since["by"][ok]["changes"]) == (["PIN-OK"], 0)


@pytest.fixture
def named_hookds(tmp_path):
    """Factory make(name, config_extra) -> NamedHookd with host name hv-<name> (not started);
    every one is stopped by pid at teardown."""
    made = []

    def make(name, config_extra):
        d = NamedHookd(tmp_path / "d", name=f"hookd-{name}", hostname=f"hv-{name}", config_extra=config_extra)
        made.append(d)
        return d
    yield make
    for d in made:
        d.stop()


def hypervisor(libvirt_hosts, named_hookds, name, etcd):
    d = named_hookds(name, NO_RECONCILE + store_conf(etcd))
    host = libvirt_hosts(name, setup_hooks=d.install_hook)
    d.follow(host)
    start_hookd(d)
    return host, d


def last_boot_on(etcd, uid, hostname):
    key = f"/hookd/lastboot/{uid}"
    wait_for(lambda: etcd.get_prefix(key).get(key, {}).get("host") == hostname, 15,
             f"{uid}'s last boot on {hostname} in etcd")


def test_fleet_report_from_two_hosts_sharing_etcd(libvirt_hosts, named_hookds, etcd, tmp_path, guest_image):
    """hv-a and hv-b share etcd. moved: pinned, booted on hv-a (a Linux guest printing its
    serial), then on hv-b. drift: pinned, booted on hv-b with another serial. far: unpinned,
    on hv-b only. here: unpinned, on hv-a only. Each host's report has its own audit's
    every boot, and of the others only the last boot etcd holds."""
    host_a, a = hypervisor(libvirt_hosts, named_hookds, "a", etcd)
    host_b, b = hypervisor(libvirt_hosts, named_hookds, "b", etcd)
    moved, drift = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    for uid, pin in ((moved, "PIN-MOVED"), (drift, "PIN-DRIFT")):
        assert a.hookctl("pin", uid, pin, "--config", a.config).returncode == 0
    for d in (a, b):
        wait_for(lambda d=d: status(d)["store"]["cached"] == 2, 15, "both pins in the daemon's cache")

    _, console = define(host_a, tmp_path, "moved", uid=moved, serial="PIN-MOVED", image=guest_image)
    boot(host_a, a, "moved", moved)
    assert read_guest_serial(console, timeout=180) == "PIN-MOVED"
    last_boot_on(etcd, moved, "hv-a")
    stop(host_a, a, "moved", moved)
    define(host_b, tmp_path, "moved", uid=moved, serial="PIN-MOVED")
    boot(host_b, b, "moved", moved)
    define(host_b, tmp_path, "drift", uid=drift, serial="OTHER-SERIAL")
    boot(host_b, b, "drift", drift)
    far, _ = define(host_b, tmp_path, "far")
    boot(host_b, b, "far", far)
    here, _ = define(host_a, tmp_path, "here")
    boot(host_a, a, "here", here)
    for uid, on in ((moved, "hv-b"), (drift, "hv-b"), (far, "hv-b"), (here, "hv-a")):
        last_boot_on(etcd, uid, on)

    res = report(a)
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode().splitlines()
    assert out[0] == "4 instances: 2 compliant, 1 drifted, 1 unknown"
    assert out[2] == (f"source lastboot: etcd {etcd.url} /hookd/lastboot/, judged against /hookd/pins/ "
                      "(only each instance's last boot, on any host; no per-event history)")
    doc = report_json(a)
    assert doc["sources"]["lastboot"]["instances"] == 4
    line = doc["by"][moved]
    assert (line["status"], line["hosts"], line["sources"], line["serials"], line["boots"]) == \
        ("compliant", ["hv-a", "hv-b"], ["audit", "lastboot"], ["PIN-MOVED"], 2)
    line = doc["by"][drift]
    assert (line["status"], line["hosts"], line["sources"]) == ("drifted", ["hv-b"], ["lastboot"])
    assert "serial 'OTHER-SERIAL', pinned 'PIN-DRIFT'" in line["why"]
    assert doc["by"][far]["status"] == "unknown" and "the audit of hv-b has it" in doc["by"][far]["why"]
    assert (doc["by"][here]["status"], doc["by"][here]["sources"]) == ("compliant", ["audit+lastboot"])
    assert report(a, "--fail-on-drift").returncode == 3

    # hv-b's view: its own boots with their decisions; of moved only the boot it ran (etcd
    # keeps no history of hv-a's), and here, unpinned and elsewhere, is unknown.
    doc = report_json(b)
    assert doc["summary"] == {"instances": 4, "compliant": 2, "drifted": 1, "unknown": 1}
    assert (doc["by"][moved]["hosts"], doc["by"][moved]["boots"]) == (["hv-b"], 1)
    assert (doc["by"][far]["status"], doc["by"][far]["sources"]) == ("compliant", ["audit+lastboot"])
    assert doc["by"][drift]["boot_list"][0]["judgement"] == "drift"
    assert doc["by"][here]["status"] == "unknown"
    # --local: hv-a's audit alone.
    local = report_json(a, "--local")
    assert set(local["by"]) == {moved, here} and local["sources"]["lastboot"] is None
    # A node that runs no guests (no audit log): the fleet's last boots alone.
    empty = tmp_path / "no-guests"
    empty.mkdir()
    res = report(a, "--state-dir", empty)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().splitlines()[:2] == [
        "4 instances: 1 compliant, 1 drifted, 2 unknown",
        f"source audit: none (no audit log in {empty}: this node recorded no boots)"]

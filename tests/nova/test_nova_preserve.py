"""Rolling hookd out over guests Nova booted before it, through Nova's own LibvirtDriver:
``hookctl adopt`` pins each guest to the serial it runs with, hookd runs with ``[policy]
mode = preserve`` and the etcd pin store (README "Keeping the serials guests already have"),
and Nova's later operations -- a hard reboot on the same host, a resize to the other host --
keep that legacy serial, although Nova now writes its host serial into every definition.

The legacy guest: spawned by a Nova configured as older Novas were by default
(``sysinfo_serial = auto``, i.e. ``os``: the host's /etc/machine-id, as a UUID -- the same
serial for every guest of that host), on libvirt's own socket, while hookd was stopped (the
shim, ``on_unreachable = allow``, lets the start through). Then nova-compute is switched to
hookd's proxy and ``sysinfo_serial = hardware`` (a second driver process on host A for the
same instance, as a restart of nova-compute with the new nova.conf).

Pins are per host in SQLite; a resize moves the guest to a host that never saw it, so both
hosts' hookds use one real etcd (tests/harness/etcd_proc.py).
"""

from __future__ import annotations

import pathlib
import uuid as uuidlib

import pytest

from tests.harness.lifecycle import store_conf
from tests.harness.nova import HOST_SERIAL, NovaCompute
from tests.harness.run import run_hookctl
from tests.harness.novacheck import B_IP, HOST_SERIAL_B, defines, guest_serial, memory_kib, prepares, wrote

pytestmark = pytest.mark.libvirt


def machine_id_serial() -> str:
    """What Nova's sysinfo_serial = os writes (driver._get_host_sysinfo_serial_os)."""
    return str(uuidlib.UUID(pathlib.Path("/etc/machine-id").read_text().split()[0]))


def test_adopted_legacy_serial_survives_hard_reboot_and_resize_to_the_other_host(
        nova_stack, nova_python, guest_image, etcd, tmp_path, record_property):
    legacy = machine_id_serial()
    assert legacy not in (HOST_SERIAL, HOST_SERIAL_B)
    conf = "[policy]\nmode = preserve\n" + store_conf(etcd)
    uid = str(uuidlib.uuid4())
    instances = tmp_path / "instances"                           # shared by A and B, as over NFS
    hb, db, nb = nova_stack(name="b", uuid=uid, host_uuid=HOST_SERIAL_B, my_ip=B_IP, instances=instances,
                            config_extra=conf)
    nb.boots_read = 100
    ha, da, old = nova_stack(via="libvirt", name="a", uuid=uid, instances=instances, sysinfo_serial="os",
                             config_extra=conf)

    # Before hookd: its daemon is stopped, the shim lets the start through; Nova's own serial
    da.stop()
    old.call("spawn")
    assert guest_serial(ha, old, expected=legacy) == legacy
    assert defines(da, uid) == [] and prepares(da, uid) == []   # hookd saw nothing of it
    res = run_hookctl("adopt", "--config", da.config, "--libvirt-uri", ha.uri)
    assert res.returncode == 0, res.stderr
    assert f"pinned    {old.instance_name}" in res.stdout.decode(), res.stdout
    pins = run_hookctl("pins", "--json", "--config", db.config)   # B reads the same etcd
    assert legacy in pins.stdout.decode(), pins
    da.start()
    old.stop()

    # nova-compute restarted on A with hookd's proxy and sysinfo_serial = hardware
    na = NovaCompute(nova_python, tmp_path / "nova-a-proxy", guest_image=guest_image, instance_uuid=uid,
                     connection_uri=f"qemu+unix:///system?socket={da.proxy_socket}", host="compute-a",
                     instances=instances)
    nova_stack.made.append(na)                                   # stopped at teardown
    na.boots_read = old.boots_read
    na.start()
    na.call("reboot", type="HARD")
    assert wrote(na, HOST_SERIAL) == 1                           # Nova asked for A's host serial
    assert guest_serial(ha, na, expected=legacy) == legacy               # the guest keeps its legacy one
    (define,) = da.audit(instance=uid, operation="define")
    assert (define["action"], define["serial_seen"], define["serial_wanted"], define["rule"]) \
        == ("rewritten", HOST_SERIAL, legacy, "pin")
    assert prepares(da, uid) == [("allow", legacy)]              # deny mode: the pin is the policy

    # resize to B: B's Nova writes B's host serial, B's hookd finds the pin in etcd
    disk_info = na.call("migrate_disk_and_power_off", dest=B_IP, memory_mb=192)["disk_info"]
    nb.call("finish_migration", disk_info=disk_info, source="compute-a", memory_mb=192)
    assert memory_kib(hb, na.instance_name) == str(192 * 1024)
    assert wrote(nb, HOST_SERIAL_B) == 1
    assert guest_serial(hb, nb, expected=legacy) == legacy
    (define,) = db.audit(instance=uid, operation="define")
    assert (define["action"], define["serial_seen"], define["serial_wanted"], define["rule"]) \
        == ("rewritten", HOST_SERIAL_B, legacy, "pin")
    assert prepares(db, uid) == [("allow", legacy)]
    record_property("nova_seconds", {"a-legacy": old.timings, "a": na.timings, "b": nb.timings})


def test_adopted_legacy_serial_survives_power_cycle_rescue_and_suspend(
        nova_stack, nova_python, ttys0_guest_image, tmp_path, record_property):
    """The rest of the one-host matrix for an adopted legacy guest, with the SQLite pin store
    (one host): power off/on and rescue make Nova write a new XML with its host serial, and
    hookd's pin puts the legacy serial back; unrescue defines the saved unrescue.xml and
    resume restores the managed-save image, both carrying the legacy serial already. The
    ttyS0 guest: rescue forces console=hvc0 (see tests/harness/ttys0_guest.py)."""
    legacy = machine_id_serial()
    uid = str(uuidlib.uuid4())
    instances = tmp_path / "instances"
    ha, da, old = nova_stack(via="libvirt", image=ttys0_guest_image, uuid=uid, instances=instances,
                             sysinfo_serial="os", config_extra="[policy]\nmode = preserve\n")
    da.stop()
    old.call("spawn")
    assert guest_serial(ha, old, expected=legacy) == legacy
    res = run_hookctl("adopt", "--config", da.config, "--libvirt-uri", ha.uri)
    assert res.returncode == 0, res.stderr
    da.start()
    old.stop()
    na = NovaCompute(nova_python, tmp_path / "nova-a-proxy", guest_image=ttys0_guest_image, instance_uuid=uid,
                     connection_uri=f"qemu+unix:///system?socket={da.proxy_socket}", host="compute-a",
                     instances=instances)
    nova_stack.made.append(na)
    na.boots_read = old.boots_read
    na.start()

    na.call("power_off")
    assert ha.virsh("domstate", na.instance_name).stdout.strip() == "shut off"
    na.call("power_on")                                          # Nova: a hard reboot, a new XML
    assert wrote(na) == 1
    assert guest_serial(ha, na, expected=legacy) == legacy
    na.call("rescue")                                            # a new XML again (rescue disk first)
    assert wrote(na) == 2
    assert "disk.rescue" in ha.virsh("dumpxml", na.instance_name).stdout
    assert guest_serial(ha, na, expected=legacy) == legacy
    na.call("unrescue")
    assert guest_serial(ha, na, expected=legacy) == legacy
    na.call("suspend")
    assert "Managed save:   yes" in ha.virsh("dominfo", na.instance_name).stdout
    na.call("resume")
    assert guest_serial(ha, na, expected=legacy) == legacy       # the restored guest, still printing
    assert wrote(na) == 2                                        # unrescue and resume write no XML
    rows = [(r["action"], r["serial_seen"], r["serial_wanted"], r["rule"])
            for r in da.audit(instance=uid, operation="define")]
    assert rows[:2] == [("rewritten", HOST_SERIAL, legacy, "pin")] * 2
    assert all(r[1:3] == (legacy, legacy) and r[0] == "unchanged" for r in rows[2:]) and len(rows) >= 3, rows
    assert {a for a, _ in prepares(da, uid)} == {"allow"} and {s for _, s in prepares(da, uid)} == {legacy}
    record_property("nova_seconds", {"a-legacy": old.timings, "a": na.timings})

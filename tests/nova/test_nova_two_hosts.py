"""Issue #15's moves between two compute hosts, through Nova's own LibvirtDriver: resize /
cold migration (and its revert), live migration, and evacuate (which, as unshelve, is a
spawn on the other host).

Two namespaced libvirtds with different host UUIDs (HOST_SERIAL on A, HOST_SERIAL_B on
B: ``sysinfo_serial = hardware`` makes each Nova write its own host's), each fronted by its
own hookd (proxy, shim in deny mode), each driven by its own Nova driver process
(tests/harness/nova_compute.py), as compute-a (my_ip 127.0.0.1) and compute-b (127.0.0.2).
The test plays the compute manager's part: it calls the driver methods on the host the
manager would, in the manager's order, passing along what one returns to the other.

Storage: for the migrations both hosts share one instances_path, as over NFS, and Nova
finds that out itself (it creates a file "on the destination" through its remote
filesystem -- stubbed to run here, tests/harness/nova_compute.py stub_remotefs -- and sees
it locally). So the resize copies the disk locally, and the live migration needs no block
migration; libvirt, which sees a local file system, still calls the migration unsafe unless
told otherwise (see the live migration test).
"""

from __future__ import annotations

import uuid as uuidlib

import pytest

from tests.harness.libvirt_host import pid_alive
from tests.harness.nova import HOST_SERIAL
from tests.harness.novacheck import B_IP, HOST_SERIAL_B, defines, guest_serial, memory_kib, prepares, wrote

pytestmark = pytest.mark.libvirt

def two_hosts(nova_stack, tmp_path, *, shared: bool, peer: bool = False):
    """(A, B) as (host, hookd, nova) for one instance; B is made first so that A's Nova can be
    told where B's libvirtd listens (for live migration's peer-to-peer connection)."""
    uid = str(uuidlib.uuid4())
    instances = tmp_path / "instances" if shared else None
    b = nova_stack(name="b", uuid=uid, host_uuid=HOST_SERIAL_B, my_ip=B_IP, instances=instances)
    a = nova_stack(name="a", uuid=uid, instances=instances,
                   peer_libvirt_uris={B_IP: b[0].uri} if peer else None)
    b[2].boots_read = 100          # distinct names for the console logs it moves aside (shared dir)
    return a, b


def test_resize_to_the_other_host_and_revert(nova_stack, tmp_path, record_property):
    """migrate_disk_and_power_off on A, finish_migration on B (a NEW XML, B's host serial,
    rewritten by B's proxy), then the revert: destroy on B, finish_revert_migration on A (a
    new XML again, A's host serial, rewritten by A's proxy)."""
    (ha, da, na), (hb, db, nb) = two_hosts(nova_stack, tmp_path, shared=True)
    uid, name = na.uuid, na.instance_name
    na.call("spawn")
    assert guest_serial(ha, na) == uid
    # power_off's timeout=0: the busybox guest ignores ACPI, a clean shutdown would wait
    # the whole shutdown_timeout
    disk_info = na.call("migrate_disk_and_power_off", dest=B_IP, memory_mb=192)["disk_info"]
    assert name not in ha.qemu_pids()
    assert (tmp_path / "instances" / f"{uid}_resize").is_dir()   # Nova saw the storage shared
    nb.call("finish_migration", disk_info=disk_info, source="compute-a", memory_mb=192)
    assert memory_kib(hb, name) == str(192 * 1024)               # the new flavor: a resize
    assert wrote(nb, HOST_SERIAL_B) == 1                         # B's Nova asked for B's serial
    assert guest_serial(hb, nb) == uid
    assert defines(db, uid) == [("rewritten", HOST_SERIAL_B, uid)]
    assert prepares(db, uid) == [("allow", uid)]
    # revert: the manager destroys the guest on the destination (storage shared: disks kept)
    # and finishes the revert on the source
    nb.call("destroy", destroy_disks=False)
    na.call("finish_revert_migration")
    assert memory_kib(ha, name) == str(128 * 1024)
    assert wrote(na, HOST_SERIAL) == 2
    assert guest_serial(ha, na) == uid
    assert defines(da, uid) == [("rewritten", HOST_SERIAL, uid)] * 2
    assert prepares(da, uid) == [("allow", uid)] * 2
    record_property("nova_seconds", {"a": na.timings, "b": nb.timings})


def test_evacuate_spawns_on_the_other_host_with_the_policy_serial(nova_stack, tmp_path, record_property):
    """Evacuate (and unshelve after shelve-offload): the libvirt driver has no rebuild, so
    the compute manager on B calls spawn for the instance; A is down (its Nova, libvirtd and
    guest gone). Storage not shared: B builds the disk from its image cache."""
    (ha, da, na), (hb, db, nb) = two_hosts(nova_stack, tmp_path, shared=False)
    uid = na.uuid
    na.call("spawn")
    assert guest_serial(ha, na) == uid
    qemu = ha.qemu_pids()[na.instance_name]
    na.stop()
    ha.stop()                                                    # host A down: guest, libvirtd
    da.stop()
    assert not pid_alive(qemu)
    nb.call("spawn")
    assert wrote(nb, HOST_SERIAL_B) == 1
    assert guest_serial(hb, nb) == uid
    assert defines(db, uid) == [("rewritten", HOST_SERIAL_B, uid)]
    assert prepares(db, uid) == [("allow", uid)]
    record_property("nova_seconds", {"a": na.timings, "b": nb.timings})


def test_live_migration_then_hard_reboot_on_the_target(nova_stack, tmp_path, record_property):
    """The compute manager's live migration, driver call by driver call:
    check_can_live_migrate_destination (B) -> check_can_live_migrate_source (A) ->
    pre_live_migration (B) -> live_migration (A: migrateToURI3 peer-to-peer to B's libvirtd,
    through A's proxy, which sees the persistent_xml) -> post_method ->
    post_live_migration_at_destination (B). The running guest keeps its serial (libvirt
    forbids a change); then a hard reboot on B regenerates the XML with B's host serial, and
    B's proxy rewrites it."""
    (ha, da, na), (hb, db, nb) = two_hosts(nova_stack, tmp_path, shared=True, peer=True)
    uid, name = na.uuid, na.instance_name
    na.call("spawn")
    assert guest_serial(ha, na) == uid
    md = nb.call("check_can_live_migrate_destination", src_cpu_info=na.call("cpu_info")["cpu_info"])
    md = na.call("check_can_live_migrate_source", migrate_data=md["migrate_data"])
    data = md["migrate_data"]["nova_object.data"]
    assert (data["is_shared_instance_path"], data["is_shared_block_storage"]) == (True, True)
    md = nb.call("pre_live_migration", migrate_data=md["migrate_data"])
    done = na.call("live_migration", dest="compute-b", migrate_data=md["migrate_data"], timeout=240)
    assert (done["post"], done["recover"]) == (True, False)      # Nova's monitor saw it complete
    nb.call("post_live_migration_at_destination")
    assert hb.virsh("domstate", name).stdout.strip() == "running"
    assert ha.virsh("list", "--all", "--name").stdout.split() == []
    assert guest_serial(hb, nb) == uid                           # the migrated guest, still printing
    assert wrote(nb, HOST_SERIAL_B) == 0                         # no XML generated on B yet
    assert [r["action"] for r in db.audit(instance=uid, operation="migrate")] == ["allow"]
    assert prepares(db, uid) == [("allow", uid)]                 # deny mode lets it in
    persist = da.audit(instance=uid, operation="migrate-persistent")
    assert [(r["serial_seen"], r["serial_wanted"]) for r in persist] == [(uid, uid)]
    saved = hb.virsh("dumpxml", "--inactive", name).stdout
    assert f"<entry name='serial'>{uid}</entry>" in saved
    nb.call("reboot", type="HARD")
    assert wrote(nb, HOST_SERIAL_B) == 1
    assert guest_serial(hb, nb) == uid
    assert defines(db, uid) == [("rewritten", HOST_SERIAL_B, uid)]
    record_property("nova_seconds", {"a": na.timings, "b": nb.timings})

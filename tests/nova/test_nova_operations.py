"""Issue #15's remaining operations through Nova's own LibvirtDriver (one host): rescue /
unrescue and suspend / resume. Same setup as test_nova_driver.py: ``sysinfo_serial =
hardware`` (Nova writes the host serial), hookd's proxy in front, the shim in deny mode."""

from __future__ import annotations

import pytest

from tests.harness.novacheck import defines, guest_serial, nova_wrote_host_serial, prepares, qemu_pid
from tests.harness.nova import HOST_SERIAL
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.libvirt


def test_rescue_and_unrescue(nova_stack, ttys0_guest_image, record_property):
    """Rescue: Nova saves the running definition to unrescue.xml, destroys the guest and
    defines + starts a NEW XML (rescue disk first, regenerated with the host serial); unrescue
    defines + starts the saved unrescue.xml (the definition hookd rewrote at spawn)."""
    host, d, nova = nova_stack(image=ttys0_guest_image)
    nova.call("spawn")
    assert guest_serial(host, nova) == nova.uuid
    before = qemu_pid(host, nova)
    nova.call("rescue")
    assert qemu_pid(host, nova) != before
    assert nova_wrote_host_serial(nova) == 2                     # the rescue XML is a new one
    live = host.virsh("dumpxml", nova.instance_name).stdout
    assert "disk.rescue" in live                                 # it really is the rescue guest
    assert guest_serial(host, nova) == nova.uuid
    assert defines(d, nova.uuid) == [("rewritten", HOST_SERIAL, nova.uuid)] * 2
    saved = (nova.instances / nova.uuid / "unrescue.xml").read_text()
    assert f"<entry name='serial'>{nova.uuid}</entry>" in saved  # what unrescue will define
    nova.call("unrescue")
    assert "disk.rescue" not in host.virsh("dumpxml", nova.instance_name).stdout
    assert guest_serial(host, nova) == nova.uuid
    assert nova_wrote_host_serial(nova) == 2                     # unrescue generates no XML
    # the third define is unrescue.xml's: it already had the policy serial
    assert defines(d, nova.uuid) == [("rewritten", HOST_SERIAL, nova.uuid)] * 2 + [("unchanged", nova.uuid, nova.uuid)]
    assert prepares(d, nova.uuid) == [("allow", nova.uuid)] * 3
    record_property("nova_seconds", nova.timings)


def test_suspend_and_resume_keep_the_serial(nova_stack, record_property):
    """Suspend = libvirt's managed save; resume = Nova redefines the domain's existing XML
    and starts it, which restores the saved memory image (the restore hook runs, then
    prepare/start in deny mode: the image has the policy serial, so the start is allowed)."""
    host, d, nova = nova_stack()
    nova.call("spawn")
    assert guest_serial(host, nova) == nova.uuid
    nova.call("suspend")
    assert host.virsh("domstate", nova.instance_name).stdout.strip() == "shut off"
    assert "Managed save:   yes" in host.virsh("dominfo", nova.instance_name).stdout
    wait_for(lambda: [r for r in d.audit(instance=nova.uuid, operation="stopped") if r["action"] == "saved"],
             15, "hookd's stopped/saved row")
    nova.call("resume")
    assert host.virsh("domstate", nova.instance_name).stdout.strip() == "running"
    assert "Managed save:   no" in host.virsh("dominfo", nova.instance_name).stdout
    assert guest_serial(host, nova) == nova.uuid                 # the restored guest, still printing
    assert nova_wrote_host_serial(nova) == 1                     # resume reuses the domain's own XML
    assert defines(d, nova.uuid) == [("rewritten", HOST_SERIAL, nova.uuid), ("unchanged", nova.uuid, nova.uuid)]
    assert [(r["action"], r["serial_seen"]) for r in d.audit(instance=nova.uuid, operation="restore")] \
        == [("allow", nova.uuid)]
    assert prepares(d, nova.uuid) == [("allow", nova.uuid)] * 2  # deny mode let the restore start
    started = wait_for(lambda: [r["action"] for r in d.audit(instance=nova.uuid, operation="started")][1:],
                       15, "hookd's second started row")
    assert started == ["restored"]                               # a restore, not a boot
    record_property("nova_seconds", nova.timings)

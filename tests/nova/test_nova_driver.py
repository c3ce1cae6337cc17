"""Nova's own LibvirtDriver (PyPI nova, pinned in tests/harness/nova.py) through hookd's proxy.

Nova is configured with ``[libvirt] sysinfo_serial = hardware``, so every domain definition
it generates carries the libvirtd's host UUID (HOST_SERIAL) as the SMBIOS system serial.
hookd's proxy must replace it with the policy serial (the instance UUID under the default
policy) before libvirt stores it; the shim runs with ``on_mismatch = deny``, so a guest
whose definition still had the host serial would not start at all. After each operation
the busybox guest prints its own DMI serial on the console Nova configured, and hookd's
audit shows the rewrite of Nova's definition.
"""

from __future__ import annotations

import pytest

from tests.harness.nova import HOST_SERIAL, NovaError
from tests.harness.novacheck import defines, guest_serial, nova_wrote_host_serial, prepares, proxy_status, qemu_pid
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.libvirt


def test_spawn_boots_the_guest_with_the_policy_serial(nova_stack, record_property):
    host, d, nova = nova_stack()
    nova.call("spawn")
    assert nova_wrote_host_serial(nova) == 1                     # Nova asked for the host serial
    assert guest_serial(host, nova) == nova.uuid                 # the guest sees the policy serial
    saved = host.virsh("dumpxml", "--inactive", nova.instance_name).stdout
    assert f"<entry name='serial'>{nova.uuid}</entry>" in saved and HOST_SERIAL not in saved
    assert defines(d, nova.uuid) == [("rewritten", HOST_SERIAL, nova.uuid)]
    assert prepares(d, nova.uuid) == [("allow", nova.uuid)]
    st = proxy_status(d)                                         # Nova's one connection is the proxy's
    assert (st["clients_connected"], st["definitions_rewritten"]) == (1, 1)
    started = wait_for(lambda: d.audit(instance=nova.uuid, operation="started"), 15, "hookd's started row")
    assert (started[0]["action"], started[0]["serial_seen"]) == ("booted", nova.uuid)
    # libvirt's domain events reach Nova through the proxy (its power-state sync needs them)
    wait_for(lambda: (nova.uuid, "Started") in nova.lifecycle_events(), 15, "Nova's Started lifecycle event")
    record_property("nova_seconds", nova.timings)


def test_hard_reboot_regenerates_the_host_serial_and_the_guest_keeps_the_policy_one(nova_stack, record_property):
    host, d, nova = nova_stack()
    nova.call("spawn")
    assert guest_serial(host, nova) == nova.uuid
    before = qemu_pid(host, nova)
    nova.call("reboot", type="HARD")
    assert qemu_pid(host, nova) != before                        # a new QEMU, a new boot
    assert nova_wrote_host_serial(nova) == 2                     # Nova regenerated the XML
    assert guest_serial(host, nova) == nova.uuid
    assert defines(d, nova.uuid) == [("rewritten", HOST_SERIAL, nova.uuid)] * 2
    assert prepares(d, nova.uuid) == [("allow", nova.uuid)] * 2
    assert proxy_status(d)["definitions_rewritten"] == 2
    record_property("nova_seconds", nova.timings)


def test_power_off_then_power_on(nova_stack, record_property):
    host, d, nova = nova_stack()
    nova.call("spawn")
    assert guest_serial(host, nova) == nova.uuid
    nova.call("power_off")
    assert host.virsh("domstate", nova.instance_name).stdout.strip() == "shut off"
    wait_for(lambda: (nova.uuid, "Stopped") in nova.lifecycle_events(), 30,
             "Nova's Stopped lifecycle event (nova-compute delays it 15 s)")
    assert nova.instance_name not in host.qemu_pids()
    nova.call("power_on")                                        # Nova: a hard reboot of a stopped guest
    assert nova_wrote_host_serial(nova) == 2
    assert guest_serial(host, nova) == nova.uuid
    assert defines(d, nova.uuid) == [("rewritten", HOST_SERIAL, nova.uuid)] * 2
    assert prepares(d, nova.uuid) == [("allow", nova.uuid)] * 2
    record_property("nova_seconds", nova.timings)


def test_soft_reboot_shuts_down_and_starts_the_saved_definition(nova_stack, acpi_guest_image, record_property):
    """Nova's real soft reboot: shutdown (the ACPI guest powers off), then start of the
    definition libvirt saved at spawn -- no new XML, so hookd's rewrite at define must last."""
    host, d, nova = nova_stack(image=acpi_guest_image)
    nova.call("spawn")
    assert guest_serial(host, nova) == nova.uuid
    assert "HOOKD-ACPI-READY=" in nova.console_log.with_name("console.log.read-0").read_text(errors="replace")
    before = qemu_pid(host, nova)
    nova.call("reboot", type="SOFT")
    log = nova.log.read_text(errors="replace")
    assert "Instance shutdown successfully." in log and "Instance soft rebooted successfully." in log
    assert "Trying hard reboot" not in log
    assert "HOOKD-ACPI-POWER-BUTTON" in nova.console_log.with_name("console.log.read-0").read_text(errors="replace")
    assert qemu_pid(host, nova) != before
    assert nova_wrote_host_serial(nova) == 1                     # no regenerated XML
    assert guest_serial(host, nova) == nova.uuid
    assert defines(d, nova.uuid) == [("rewritten", HOST_SERIAL, nova.uuid)]
    assert prepares(d, nova.uuid) == [("allow", nova.uuid)] * 2
    record_property("nova_seconds", nova.timings)


def test_soft_reboot_falls_back_to_hard_reboot_with_the_policy_serial(nova_stack, record_property):
    """The busybox guest ignores ACPI shutdown, so Nova's soft reboot (shutdown, wait
    ``wait_soft_reboot_seconds`` = 5) gives up and hard-reboots: a regenerated XML again."""
    host, d, nova = nova_stack()
    nova.call("spawn")
    assert guest_serial(host, nova) == nova.uuid
    before = qemu_pid(host, nova)
    nova.call("reboot", type="SOFT")
    assert "Failed to soft reboot instance. Trying hard reboot." in nova.log.read_text(errors="replace")
    assert qemu_pid(host, nova) != before
    assert guest_serial(host, nova) == nova.uuid
    assert defines(d, nova.uuid) == [("rewritten", HOST_SERIAL, nova.uuid)] * 2
    record_property("nova_seconds", nova.timings)


def test_bypassing_the_proxy_nova_cannot_start_the_guest(nova_stack):
    """Contrast: the same Nova with connection_uri = libvirt's own socket. Its definition
    keeps the host serial, and the shim (deny) refuses the start; Nova cleans up.

    hookd's reconciler is off here: on, it races Nova. It redefines the saved definition on
    libvirt's DEFINED event, and that can land between Nova's define and its create (tens of
    ms apart in _create_guest): then the guest starts with the policy serial even without
    the proxy (seen under load: prepare 'allow' with the policy serial, and a reconcile
    'fixed' row "after defined/added event"). Without the proxy that race is all there is."""
    host, d, nova = nova_stack(via="libvirt", config_extra="[reconcile]\nenabled = false\n")
    with pytest.raises(NovaError) as err:
        nova.call("spawn")
    assert "Hook script execution failed" in str(err.value)
    assert f"has serial '{HOST_SERIAL}'" in str(err.value)
    assert nova.instance_name not in host.qemu_pids()
    assert defines(d, nova.uuid) == []                           # hookd never saw the definition
    assert prepares(d, nova.uuid)[0][0] == "deny"

"""A small libvirt client that drives guests the way Nova's libvirt driver does.

Same calls, same order (nova/virt/libvirt/driver.py, guest.py): spawn = define,
then create paused while Neutron's vif-plugged events are awaited, then resume;
hard reboot = destroy, undefine, define the regenerated XML, create; soft reboot =
shutdown, and create of the saved definition once it is off (Nova falls back to a
hard reboot when the guest ignores ACPI, as the busybox guest does: destroy). Used
to show that definitions Nova sends through hookd's proxy carry the policy serial.
"""

from __future__ import annotations

import time

import libvirt


class NovaFlowDriver:
    def __init__(self, uri: str):
        self.conn = libvirt.open(uri)

    def close(self) -> None:
        self.conn.close()

    def spawn(self, xml: str, vif_plug_delay: float = 0.2):
        dom = self.conn.defineXML(xml)
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        # Nova waits for network-vif-plugged before resuming; a short wait stands in.
        deadline = time.monotonic() + vif_plug_delay
        while time.monotonic() < deadline:
            self.conn.getVersion()
        dom.resume()
        return dom

    def hard_reboot(self, name: str, regenerated_xml: str):
        dom = self.conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        dom = self.conn.defineXML(regenerated_xml)
        dom.createWithFlags(0)
        return dom

    def soft_reboot(self, name: str, shutdown_timeout: float = 2.0):
        dom = self.conn.lookupByName(name)
        dom.shutdown()
        deadline = time.monotonic() + shutdown_timeout
        while dom.isActive() and time.monotonic() < deadline:
            self.conn.getVersion()
        if dom.isActive():
            dom.destroy()
        dom.create()
        return dom

    def cold_migrate_finish(self, xml: str):
        """The target side of resize/cold-migrate: define the regenerated XML, then power on."""
        dom = self.conn.defineXML(xml)
        dom.createWithFlags(0)
        return dom

"""A migrated VM keeps the serial it had on VMware: imported as a pin while hookd runs, it is
what the guest reads from its own SMBIOS table.

Real components: a namespaced libvirtd with hookd's shim (on_mismatch = deny), a hookd whose
proxy fronts it (the SQLite pin store), `hookctl pins --import` run as an operator would while
the daemon serves, Nova's calls through the proxy (tests/harness/novaflow) and a busybox guest
that prints `dmidecode`'s system serial. VMware's form (spaces and a dash) must reach the
guest verbatim: QEMU's -smbios option and libvirt's sysinfo carry it as it is.
"""

from __future__ import annotations

import uuid as uuidlib

import pytest

from tests.harness.guest import nova_domain_xml, read_guest_serial
from tests.harness.novaflow import NovaFlowDriver

pytestmark = pytest.mark.libvirt

VMWARE_SERIAL = "VMware-42 3e fd 8c 1a 2b 3c 4d-5e 6f 70 81 92 a3 b4 c5"
HOST_SERIAL = "4c4c4544-0054-3510-8052-b7c04f564732"     # what Nova's sysinfo_serial=hardware writes


def test_imported_vmware_serial_is_what_the_guest_reads(hookd_stack, tmp_path, guest_image):
    host, d = hookd_stack(config_extra="[enforce]\non_mismatch = deny\n")
    uid, other = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    rows = tmp_path / "v2v.csv"
    rows.write_text(f"instance_uuid,serial\n{uid},{VMWARE_SERIAL}\n{other},LEGACY-0042\n")
    dry = d.hookctl("pins", "--import", rows, "--dry-run", "--config", d.config)
    assert dry.returncode == 0, dry.stderr
    assert d.hookctl("pins", "--export", "--config", d.config).stdout == b"instance_uuid,serial\n"
    res = d.hookctl("pins", "--import", rows, "--config", d.config)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().splitlines()[-1].endswith(": 2 rows: 2 imported, 0 already pinned to the same serial, "
                                                         "0 already pinned to a different serial (kept), 0 invalid (sqlite store)")

    console = tmp_path / "console.log"
    xml = nova_domain_xml(name="instance-000000v1", uuid=uid, serial=HOST_SERIAL, image=guest_image,
                          console_log=console)
    nova = NovaFlowDriver(f"qemu+unix:///system?socket={d.proxy_socket}")
    try:
        nova.spawn(xml)
        saved = host.virsh("dumpxml", "--inactive", "instance-000000v1").stdout
        assert f"<entry name='serial'>{VMWARE_SERIAL}</entry>" in saved and HOST_SERIAL not in saved
        assert read_guest_serial(console, timeout=90) == VMWARE_SERIAL
    finally:
        nova.close()
    define = [r for r in d.audit(instance=uid) if r["operation"] == "define"]
    assert [(r["action"], r["serial_seen"], r["serial_wanted"]) for r in define] == \
        [("rewritten", HOST_SERIAL, VMWARE_SERIAL)]
    prepare = [r["action"] for r in d.audit(instance=uid, operation="prepare")]
    assert prepare == ["allow"]                  # deny mode: the pinned serial is in policy
    # A second import of the same file changes nothing: first writer wins.
    again = d.hookctl("pins", "--import", rows, "--config", d.config)
    assert again.returncode == 0 and b"2 already pinned to the same serial" in again.stdout

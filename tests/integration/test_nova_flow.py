"""Define-time enforcement: Nova's calls through hookd's libvirt proxy, real libvirt and QEMU.

hookd runs with its real policy and its proxy in front of a namespaced libvirtd;
the hooks are installed with on_mismatch = deny, so a guest only starts if the
definition that reached libvirt already carried the policy serial.
"""

from __future__ import annotations

import json
import os
import stat
import uuid as uuidlib

import pytest

from tests.harness.guest import nova_domain_xml, read_guest_serial
from tests.harness.novaflow import NovaFlowDriver

pytestmark = pytest.mark.libvirt

HOST_A_SERIAL = "4c4c4544-0054-3510-8052-b7c04f564732"     # what sysinfo_serial=auto gives on host A
HOST_B_SERIAL = "8f0e1d2c-3b4a-5968-7a6b-5c4d3e2f1a0b"


def proxy_uri(d) -> str:
    return f"qemu+unix:///system?socket={d.proxy_socket}"


@pytest.fixture
def stack(hookd_stack):
    """A libvirtd with hookd's shim (deny) and a hookd whose proxy fronts that libvirtd."""
    return hookd_stack(config_extra="[enforce]\non_mismatch = deny\n")


def test_nova_spawn_through_proxy_boots_with_policy_serial(stack, tmp_path, guest_image):
    """Spawn (define, create paused, resume) of a host-serial XML: the guest reads its instance UUID."""
    host, d = stack
    uid = str(uuidlib.uuid4())
    console = tmp_path / "console.log"
    xml = nova_domain_xml(name="instance-0000000a", uuid=uid, serial=HOST_A_SERIAL, image=guest_image,
                          console_log=console)
    nova = NovaFlowDriver(proxy_uri(d))
    try:
        nova.spawn(xml)
        # libvirt's own socket sees the rewritten definition
        saved = host.virsh("dumpxml", "--inactive", "instance-0000000a").stdout
        assert f"<entry name='serial'>{uid}</entry>" in saved and HOST_A_SERIAL not in saved
        assert f"serial={uid}" in ",".join(host.qemu_cmdline("instance-0000000a"))
        assert read_guest_serial(console, timeout=90) == uid
        st = json.loads(d.hookctl("status", "--socket", d.socket, "--json").stdout)
        assert st["proxy"]["clients_connected"] == 1 and st["proxy"]["definitions_rewritten"] == 1
    finally:
        nova.close()
    rows = d.audit(instance=uid)
    ops = [(r["operation"], r["action"], r["serial_seen"], r["serial_wanted"]) for r in rows
           if r["operation"] in ("define", "prepare")]
    assert ops == [("define", "rewritten", HOST_A_SERIAL, uid), ("prepare", "allow", uid, uid)]
    # libvirt's own STARTED event (hookd's worker) confirms what the guest booted with
    from tests.harness.waiting import wait_for
    started = wait_for(lambda: [r for r in d.audit(instance=uid, operation="started")], 15, "the started row")
    assert (started[0]["action"], started[0]["serial_seen"]) == ("booted", uid)


def test_hard_reboot_and_soft_reboot_keep_policy_serial(stack, tmp_path):
    """Hard reboot regenerates the XML (with the host serial again); soft reboot boots the saved one."""
    host, d = stack
    uid = str(uuidlib.uuid4())
    xml = nova_domain_xml(name="instance-0000000b", uuid=uid, serial=HOST_A_SERIAL, image=None, console_log=None)
    nova = NovaFlowDriver(proxy_uri(d))
    try:
        nova.spawn(xml)
        nova.hard_reboot("instance-0000000b", xml)
        assert f"serial={uid}" in ",".join(host.qemu_cmdline("instance-0000000b"))
        nova.soft_reboot("instance-0000000b")
        assert f"serial={uid}" in ",".join(host.qemu_cmdline("instance-0000000b"))
    finally:
        nova.close()
    prepares = [r["action"] for r in d.audit(instance=uid, operation="prepare")]
    assert prepares == ["allow", "allow", "allow"]           # deny mode: none refused
    defines = [r["action"] for r in d.audit(instance=uid, operation="define")]
    assert defines == ["rewritten", "rewritten"]


def test_same_xml_on_libvirts_own_socket_is_refused_by_the_hook(stack, tmp_path):
    """Contrast: the definition that bypasses the proxy keeps the host serial, and deny refuses it."""
    host, d = stack
    uid = str(uuidlib.uuid4())
    f = tmp_path / "x.xml"
    f.write_text(nova_domain_xml(name="instance-0000000c", uuid=uid, serial=HOST_A_SERIAL, image=None,
                                 console_log=None))
    host.virsh("define", str(f))
    res = host.virsh("start", "instance-0000000c", check=False)
    assert res.returncode != 0 and f"has serial '{HOST_A_SERIAL}'" in res.stderr


def test_non_nova_and_compliant_definitions_pass_unchanged(stack, tmp_path):
    host, d = stack
    nova = NovaFlowDriver(proxy_uri(d))
    uid = str(uuidlib.uuid4())
    try:
        nova.conn.defineXML(nova_domain_xml(name="plain", uuid=uid, serial=HOST_B_SERIAL, image=None,
                                            console_log=None, with_nova_metadata=False))
        good = str(uuidlib.uuid4())
        nova.conn.defineXML(nova_domain_xml(name="good", uuid=good, serial=good, image=None, console_log=None))
    finally:
        nova.close()
    assert f"<entry name='serial'>{HOST_B_SERIAL}</entry>" in host.virsh("dumpxml", "plain").stdout
    (row,) = d.audit(instance=uid)
    assert (row["verdict"], row["action"]) == ("not-nova", "unchanged")
    (row,) = d.audit(instance=good)
    assert (row["verdict"], row["action"]) == ("compliant", "unchanged")


def test_proxy_socket_mode_and_group(stack):
    host, d = stack
    st = os.stat(d.proxy_socket)
    import grp
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_uid == 0
    assert st.st_gid == grp.getgrnam("libvirt").gr_gid

"""Keeping an existing guest's serial across hosts: adopt on A, cold-migrate to B (etcd store).

Two namespaced libvirt hosts, a hookd with its proxy on each, one real etcd. The
instance runs on A with its legacy serial; `hookctl adopt` pins it; Nova then
cold-migrates it: B's regenerated XML carries B's host serial, defined through B's
proxy. The busybox guest must print the serial it had on A.
"""

from __future__ import annotations

import uuid as uuidlib

import pytest

from tests.harness.run import run_hookctl
from tests.harness.guest import nova_domain_xml, read_guest_serial
from tests.harness.novaflow import NovaFlowDriver

pytestmark = pytest.mark.libvirt

LEGACY_A = "VMW-56 4d 2a 1f 9c 0b 7e 31"          # the serial the licence server knows
HOST_B = "4c4c4544-0042-3510-8052-b7c04f564242"


def test_adopted_serial_survives_cold_migration(hookd_stack, etcd, tmp_path, guest_image):
    conf = f"[store]\nbackend = etcd\nendpoints = {etcd.url}\n[enforce]\non_mismatch = deny\n"
    # The documented rollout onto a host with licensed guests: mode = preserve until
    # `hookctl adopt` has run (with unique, the reconciler would give a stopped guest's
    # saved definition its UUID before adopt could pin its serial). B keeps the default.
    a, da = hookd_stack("a", config_extra=conf + "[policy]\nmode = preserve\n")
    b, db = hookd_stack("b", config_extra=conf)
    daemons = {"a": da, "b": db}

    uid = str(uuidlib.uuid4())
    console = tmp_path / "console.log"
    # The guest existed before hookd: defined on libvirt's own socket with its legacy serial.
    xml_a = nova_domain_xml(name="instance-legacy", uuid=uid, serial=LEGACY_A, image=guest_image,
                            console_log=console)
    (tmp_path / "a.xml").write_text(xml_a)
    a.virsh("define", str(tmp_path / "a.xml"))

    res = run_hookctl("adopt", "--dry-run", "--config", daemons["a"].config, "--libvirt-uri", a.uri)
    assert res.returncode == 0 and "would pin instance-legacy" in res.stdout.decode(), res.stderr
    assert run_hookctl("pins", "--json", "--config", daemons["a"].config).stdout.strip() == b"{}"
    res = run_hookctl("adopt", "--config", daemons["a"].config, "--libvirt-uri", a.uri)
    assert res.returncode == 0 and "pinned    instance-legacy" in res.stdout.decode(), res.stdout

    # deny mode on A: the legacy serial is now the policy serial, so it starts
    a.virsh("start", "instance-legacy")
    assert read_guest_serial(console, timeout=90) == LEGACY_A

    # Nova cold migration: stop on A, undefine there, define the regenerated XML on B
    # (with B's host serial) through B's proxy, power on.
    a.virsh("destroy", "instance-legacy")
    a.virsh("undefine", "instance-legacy")
    offset = console.stat().st_size
    nova = NovaFlowDriver(f"qemu+unix:///system?socket={daemons['b'].proxy_socket}")
    try:
        nova.cold_migrate_finish(nova_domain_xml(name="instance-legacy", uuid=uid, serial=HOST_B,
                                                 image=guest_image, console_log=console))
    finally:
        nova.close()
    assert read_guest_serial(console, timeout=90, after_offset=offset) == LEGACY_A
    (define,) = daemons["b"].audit(instance=uid, operation="define")
    assert (define["serial_seen"], define["serial_wanted"], define["rule"]) == (HOST_B, LEGACY_A, "pin")

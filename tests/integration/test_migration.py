"""Live migration between two real libvirt hosts, each with its own hookd.

Host A runs a guest that still has a legacy (host-derived) serial; A's reconciler is
off, as on a host where nobody fixed it. The guest moves to B, once through A's
hookd proxy (Nova's shape: destination_xml + persistent_xml, and the proxy rewrites
only the persistent one) and once directly on A's libvirt socket (then B's
reconciler has to fix B's saved definition). Either way: libvirt accepts the
migration with hookd's hooks on both sides, the running guest keeps its serial (it
prints it on its console every second), the target's saved definition carries the
policy serial, and the guest's next cold boot on B shows it.
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid as uuidlib

import pytest

from tests.harness.guest import nova_domain_xml, read_guest_serial
from tests.harness.lifecycle import host_and_hookd, status
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.libvirt

HOST_SERIAL = "4c4c4544-0054-3510-8052-b7c04f564732"
SERIAL_RE = re.compile(r"<entry name='serial'>([^<]*)</entry>")
LEGACY_HOST = "[reconcile]\nenabled = false\n"


def saved_serial(host, name):
    res = host.virsh("dumpxml", "--inactive", name, check=False)
    m = SERIAL_RE.search(res.stdout) if res.returncode == 0 else None
    return m.group(1) if m else None


def two_hosts(libvirt_hosts, hookd_factory, *, b_config=""):
    a, da = host_and_hookd(libvirt_hosts, hookd_factory, LEGACY_HOST, name="a", proxy=True)
    b, db = host_and_hookd(libvirt_hosts, hookd_factory, b_config, name="b", proxy=True)
    assert a.host_uuid != b.host_uuid
    return a, da, b, db


def legacy_guest(host, tmp_path, *, image=None, console=None):
    uid = str(uuidlib.uuid4())
    name = f"instance-{uid[:8]}"
    path = tmp_path / f"{name}.xml"
    path.write_text(nova_domain_xml(name=name, uuid=uid, serial=HOST_SERIAL, image=image, console_log=console))
    host.virsh("define", path)          # directly on libvirt's socket: no proxy, legacy serial
    host.virsh("start", name)
    return name, uid


def ops(d, uid):
    return [(r["operation"], r["action"]) for r in d.audit(instance=uid)]


def check_after_migration(a, da, b, db, name, uid, console, offset):
    """What every migration must leave behind."""
    assert b.virsh("domstate", name).stdout.strip() == "running"
    assert a.virsh("list", "--all", "--name").stdout.split() == []        # --undefinesource
    # Hooks ran on the target and let the legacy guest in (drift, recorded).
    assert [(r["operation"], r["action"]) for r in db.audit(instance=uid) if r["operation"] in ("migrate", "prepare")] \
        == [("migrate", "drift"), ("prepare", "drift")]
    # The running guest keeps its serial: the ABI check forbids a change, and it says so itself.
    assert read_guest_serial(console, timeout=30, after_offset=offset) == HOST_SERIAL
    assert f"serial={HOST_SERIAL}" in ",".join(b.qemu_cmdline(name))
    wait_for(lambda: ("started", "migrated") in ops(db, uid), 15, "B's started/migrated row")
    started = db.audit(instance=uid, operation="started")[0]
    assert started["serial_seen"] == HOST_SERIAL
    wait_for(lambda: ("stopped", "migrated") in ops(da, uid), 15, "A's stopped/migrated row")


def cold_boot_shows_policy_serial(b, db, name, uid, console):
    b.virsh("destroy", name)
    offset = console.stat().st_size
    b.virsh("start", name)
    assert read_guest_serial(console, timeout=90, after_offset=offset) == uid
    assert db.audit(instance=uid, operation="prepare")[-1]["verdict"] == "compliant"


def test_live_migration_through_the_proxy(libvirt_hosts, hookd_factory, tmp_path, guest_image):
    """Through A's proxy the persistent_xml gets the policy serial; B's saved definition
    arrives compliant, so B's reconciler has nothing to do."""
    a, da, b, db = two_hosts(libvirt_hosts, hookd_factory)
    console = tmp_path / "console.log"
    name, uid = legacy_guest(a, tmp_path, image=guest_image, console=console)
    assert read_guest_serial(console, timeout=90) == HOST_SERIAL
    live, persist = tmp_path / "live.xml", tmp_path / "persist.xml"
    live.write_text(a.virsh("dumpxml", "--migratable", name).stdout)
    persist.write_text(a.virsh("dumpxml", "--inactive", "--migratable", name).stdout)
    assert SERIAL_RE.search(persist.read_text()).group(1) == HOST_SERIAL
    proxy_uri = f"qemu+unix:///system?socket={da.proxy_socket}"
    # What nova-compute does (migrateToURI3, peer-to-peer), through hookd's proxy on A.
    a.virsh("migrate", "--live", "--p2p", "--persistent", "--undefinesource", "--xml", live,
            "--persistent-xml", persist, name, b.uri, "--migrateuri", "tcp://127.0.0.1",
            uri=proxy_uri, timeout=120)
    offset = console.stat().st_size
    check_after_migration(a, da, b, db, name, uid, console, offset)
    assert saved_serial(b, name) == uid
    (row,) = da.audit(instance=uid, operation="migrate-persistent")
    assert (row["action"], row["serial_seen"], row["serial_wanted"]) == ("rewritten", HOST_SERIAL, uid)
    wait_for(lambda: ("defined", "added") in ops(db, uid), 15, "B's defined row")
    assert db.audit(instance=uid, operation="defined")[0]["serial_seen"] == uid
    assert db.audit(instance=uid, operation="reconcile") == []
    cold_boot_shows_policy_serial(b, db, name, uid, console)


def test_live_migration_direct_target_reconciles_under_deny(libvirt_hosts, hookd_factory, tmp_path,
                                                           guest_image):
    """Directly on A's libvirt socket the legacy serial reaches B's saved definition; B's
    reconciler fixes it once the migration is over. B runs on_mismatch = deny, which never
    refuses an incoming migration, and the cold boot then passes it."""
    a, da, b, db = two_hosts(libvirt_hosts, hookd_factory, b_config="[enforce]\non_mismatch = deny\n")
    console = tmp_path / "console.log"
    name, uid = legacy_guest(a, tmp_path, image=guest_image, console=console)
    assert read_guest_serial(console, timeout=90) == HOST_SERIAL
    a.virsh("migrate", "--live", "--p2p", "--persistent", "--undefinesource", name, b.uri,
            "--migrateuri", "tcp://127.0.0.1", timeout=120)
    offset = console.stat().st_size
    check_after_migration(a, da, b, db, name, uid, console, offset)
    wait_for(lambda: saved_serial(b, name) == uid, 15, "B's reconciler fixed the saved definition")
    (row,) = db.audit(instance=uid, operation="reconcile")
    assert (row["action"], row["serial_seen"], row["serial_wanted"]) == ("fixed", HOST_SERIAL, uid)
    # It waited for the migration to finish: the fix comes after the started and defined rows.
    story = ops(db, uid)
    assert story.index(("reconcile", "fixed")) > story.index(("started", "migrated"))
    assert story.index(("reconcile", "fixed")) > story.index(("defined", "added"))
    assert f"serial={HOST_SERIAL}" in ",".join(b.qemu_cmdline(name))   # still untouched
    cold_boot_shows_policy_serial(b, db, name, uid, console)
    assert status(db)["reconcile"]["fixed"] == 1
    # The licence report: every serial this instance booted with on B, and when.
    wait_for(lambda: ("started", "booted") in ops(db, uid), 15, "B's started/booted row")
    res = db.hookctl("audit", "--state-dir", db.state_dir, "--instance", uid, "--operation", "started", "--csv")
    booted = [(r["action"], r["serial_seen"], bool(r["time"])) for r in csv.DictReader(io.StringIO(res.stdout.decode()))]
    assert booted == [("migrated", HOST_SERIAL, True), ("booted", uid, True)]
    assert [(r["action"], r["serial_seen"]) for r in da.audit(instance=uid, operation="started")] == \
        [("booted", HOST_SERIAL)]


def test_transient_migration_under_deny_is_not_refused_nor_defined(libvirt_hosts, hookd_factory, tmp_path):
    """Without --persistent the guest is transient on B: not refused under deny, and the
    reconciler leaves it alone (there is no saved definition to fix, and it must not make one)."""
    a, da, b, db = two_hosts(libvirt_hosts, hookd_factory, b_config="[enforce]\non_mismatch = deny\n")
    name, uid = legacy_guest(a, tmp_path)
    a.virsh("migrate", "--live", "--p2p", name, b.uri, "--migrateuri", "tcp://127.0.0.1", timeout=120)
    assert b.virsh("domstate", name).stdout.strip() == "running"
    assert b.virsh("dominfo", name).stdout.split("Persistent:")[1].split()[0] == "no"
    wait_for(lambda: ("started", "migrated") in ops(db, uid), 15, "B's started/migrated row")
    assert [o for o in ops(db, uid) if o[0] in ("migrate", "prepare")] == [("migrate", "drift"),
                                                                          ("prepare", "drift")]
    items = {i["instance_uuid"]: i for i in json.loads(db.hookctl(
        "reconcile", "--socket", db.socket, "--json").stdout)["items"]}
    assert uid not in items           # sweeps list persistent domains only
    assert b.virsh("dominfo", name).stdout.split("Persistent:")[1].split()[0] == "no"
    assert db.audit(instance=uid, operation="reconcile") == []

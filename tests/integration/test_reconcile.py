"""The reconciler on a real libvirtd: saved definitions get the policy serial for the next
cold boot, while running guests keep running untouched.

A guest defined directly on libvirt's socket (not through hookd's proxy) with a
host-derived serial is what the reconciler is for. The proof of the fix is the
busybox guest's own view after a cold boot; the proof that the running guest was
left alone is its QEMU pid and command line.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid as uuidlib

import pytest

from tests.harness.run import hookd_env
from tests.harness.guest import nova_domain_xml, read_guest_serial
from tests.harness.libvirt_host import VIRSH
from tests.harness.lifecycle import drive, host_and_hookd, start_hookd, status
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.libvirt

HOST_SERIAL = "4c4c4544-0054-3510-8052-b7c04f564732"
SERIAL_RE = re.compile(r"<entry name='serial'>([^<]*)</entry>")


def saved_serial(host, name):
    m = SERIAL_RE.search(host.virsh("dumpxml", "--inactive", name).stdout)
    return m.group(1) if m else None


def define(host, tmp_path, *, serial, image=None, console=None, nova=True):
    uid = str(uuidlib.uuid4())
    name = f"instance-{uid[:8]}"
    path = tmp_path / f"{name}.xml"
    path.write_text(nova_domain_xml(name=name, uuid=uid, serial=serial, image=image, console_log=console,
                                    with_nova_metadata=nova))
    host.virsh("define", path)
    return name, uid


def reconcile(d, *args):
    res = d.hookctl("reconcile", "--socket", d.socket, "--json", *args, timeout=130)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def by_uuid(reply):
    return {i["instance_uuid"]: i for i in reply["items"]}


def set_reconcile(d, enabled: bool, interval: float = 600):
    text = re.sub(r"\[reconcile\][^\[]*", "", d.config.read_text())
    d.config.write_text(text + f"[reconcile]\nenabled = {str(enabled).lower()}\ninterval = {interval:g}\n")


def test_dry_run_lists_then_reload_fixes_running_guest_for_next_cold_boot(
        libvirt_hosts, hookd_factory, tmp_path, guest_image):
    """With [reconcile] enabled = false a dry run lists the legacy guest and changes nothing;
    enabled by a reload, the saved definition is fixed within seconds while the guest runs on
    (same QEMU, same serial); its next cold boot shows the policy serial in the guest."""
    host, d = host_and_hookd(libvirt_hosts, hookd_factory, "[reconcile]\nenabled = false\n")
    console = tmp_path / "console.log"
    name, uid = define(host, tmp_path, serial=HOST_SERIAL, image=guest_image, console=console)
    host.virsh("start", name)
    assert read_guest_serial(console, timeout=90) == HOST_SERIAL
    pid = host.qemu_pids()[name]
    before = host.virsh("dumpxml", "--inactive", name).stdout

    reply = reconcile(d, "--dry-run")
    item = by_uuid(reply)[uid]
    assert item == {"action": "would-fix", "domain": name, "instance_uuid": uid, "serial_saved": HOST_SERIAL,
                    "serial_policy": uid, "detail": item["detail"]}
    text = d.hookctl("reconcile", "--socket", d.socket, "--dry-run").stdout.decode()
    assert f"would-fix  {name}" in text and "1 would change" in text
    assert host.virsh("dumpxml", "--inactive", name).stdout == before
    assert d.audit(instance=uid, operation="reconcile") == []

    set_reconcile(d, enabled=True)
    d.signal(signal.SIGHUP)
    wait_for(lambda: saved_serial(host, name) == uid, 10, "the saved definition fixed")
    (row,) = d.audit(instance=uid, operation="reconcile")
    assert (row["action"], row["serial_seen"], row["serial_wanted"]) == ("fixed", HOST_SERIAL, uid)
    assert "configuration reloaded" in row["detail"] and "running guest keeps its serial" in row["detail"]
    # The running guest was not touched: same QEMU process, same SMBIOS on its command line.
    assert host.qemu_pids()[name] == pid
    assert f"serial={HOST_SERIAL}" in ",".join(host.qemu_cmdline(name))
    assert SERIAL_RE.search(host.virsh("dumpxml", name).stdout).group(1) == HOST_SERIAL
    assert host.virsh("domstate", name).stdout.strip() == "running"

    host.virsh("destroy", name)
    offset = console.stat().st_size
    host.virsh("start", name)
    assert read_guest_serial(console, timeout=90, after_offset=offset) == uid
    prepares = d.audit(instance=uid, operation="prepare")
    assert [r["action"] for r in prepares] == ["warn", "allow"]
    assert status(d)["reconcile"]["fixed"] == 1


def test_start_sweep_fixes_guests_defined_before_hookd(libvirt_hosts, hookd_factory, tmp_path):
    """Guests that were there before hookd: the worker's first sweep fixes the Nova ones' saved
    definitions and leaves non-Nova and compliant ones alone; running ones keep running."""
    host, d = host_and_hookd(libvirt_hosts, hookd_factory, start=False)
    legacy, legacy_uid = define(host, tmp_path, serial=HOST_SERIAL)
    running, running_uid = define(host, tmp_path, serial=None)
    good, good_uid = define(host, tmp_path, serial=None)
    other, other_uid = define(host, tmp_path, serial=HOST_SERIAL, nova=False)
    path = tmp_path / "good.xml"
    path.write_text(nova_domain_xml(name=good, uuid=good_uid, serial=good_uid, image=None, console_log=None))
    host.virsh("define", path)
    host.virsh("start", running)                  # hookd down: the shim lets it start
    pid = host.qemu_pids()[running]
    start_hookd(d)
    wait_for(lambda: saved_serial(host, legacy) == legacy_uid and saved_serial(host, running) == running_uid,
             10, "both fixed")
    assert saved_serial(host, other) == HOST_SERIAL and saved_serial(host, good) == good_uid
    assert host.qemu_pids()[running] == pid
    assert "serial=" not in ",".join(host.qemu_cmdline(running))
    fixed = {r["instance_uuid"]: r for r in d.audit(operation="reconcile")}
    assert set(fixed) == {legacy_uid, running_uid}
    assert "worker start" in fixed[legacy_uid]["detail"]
    # A manual sweep now finds nothing to do.
    items = by_uuid(reconcile(d))
    assert {u: i["action"] for u, i in items.items()} == {
        legacy_uid: "compliant", running_uid: "compliant", good_uid: "compliant", other_uid: "skipped"}
    assert items[other_uid]["detail"].startswith("not-nova")


def test_define_event_fix_is_idempotent_and_lets_deny_start(libvirt_hosts, hookd_factory, tmp_path):
    """A legacy definition written directly is fixed after its DEFINED event, once: our own
    redefinition's DEFINED event finds it compliant (no loop). Then even on_mismatch = deny
    starts it."""
    host, d = host_and_hookd(libvirt_hosts, hookd_factory, "[enforce]\non_mismatch = deny\n")
    name, uid = define(host, tmp_path, serial=HOST_SERIAL)
    # Worker rows arrive in event order: a define loop would put more rows before the next ones.
    drive(d, host, uid, [
        (None, [("defined", "added"), ("reconcile", "fixed"), ("defined", "updated")]),
        (("start", name), [("prepare", "allow"), ("started", "booted")]),
        (("destroy", name), [("stopped", "destroyed")])])
    assert saved_serial(host, name) == uid
    assert status(d)["reconcile"]["fixed"] == 1
    started = d.audit(instance=uid, operation="started")[0]
    assert started["serial_seen"] == uid


def test_manual_reconcile_fixes_when_automatic_fixes_are_off(libvirt_hosts, hookd_factory, tmp_path):
    """`hookctl reconcile` fixes on request even with enabled = false; nothing happens by itself."""
    host, d = host_and_hookd(libvirt_hosts, hookd_factory, "[reconcile]\nenabled = false\ninterval = 1\n")
    name, uid = define(host, tmp_path, serial=HOST_SERIAL)
    wait_for(lambda: d.audit(instance=uid, operation="defined"), 10, "the defined row")
    assert saved_serial(host, name) == HOST_SERIAL
    assert status(d)["reconcile"]["sweeps"] == 0       # no automatic sweep at all
    item = by_uuid(reconcile(d))[uid]
    assert (item["action"], item["serial_saved"], item["serial_policy"]) == ("fixed", HOST_SERIAL, uid)
    assert saved_serial(host, name) == uid
    assert by_uuid(reconcile(d, "--dry-run"))[uid]["action"] == "compliant"
    rec = status(d)["reconcile"]
    assert rec["sweeps"] == 2 and rec["fixed"] == 1 and rec["last_sweep"]["dry_run"] is True


def test_periodic_sweeps(libvirt_hosts, hookd_factory, tmp_path):
    """interval = N: a sweep every N seconds besides the one at start."""
    host, d = host_and_hookd(libvirt_hosts, hookd_factory, "[reconcile]\ninterval = 0.5\n")
    define(host, tmp_path, serial=None)
    st = wait_for(lambda: (s := status(d)["reconcile"])["sweeps"] >= 3 and s, 10, "three sweeps")
    assert st["last_sweep"]["why"] == "periodic" and st["last_sweep"]["checked"] == 1


def test_pinned_instances_get_their_pin_not_the_mode(libvirt_hosts, hookd_factory, tmp_path):
    """A pin (hookctl pin) comes before the mode, in the reconciler as on the hook path: the
    saved definition gets the pinned serial, and a definition that has it is left alone."""
    host, d = host_and_hookd(libvirt_hosts, hookd_factory, "[reconcile]\nenabled = false\n")
    legacy, legacy_uid = define(host, tmp_path, serial=HOST_SERIAL)
    kept, kept_uid = define(host, tmp_path, serial="LIC-0002")
    for uid, serial in ((legacy_uid, "LIC-0001"), (kept_uid, "LIC-0002")):
        res = d.hookctl("pin", "--config", d.config, uid, serial)
        assert res.returncode == 0, res.stderr
    items = by_uuid(reconcile(d))
    assert (items[legacy_uid]["action"], items[legacy_uid]["serial_policy"]) == ("fixed", "LIC-0001")
    assert (items[kept_uid]["action"], items[kept_uid]["serial_policy"]) == ("compliant", "LIC-0002")
    assert saved_serial(host, legacy) == "LIC-0001" and saved_serial(host, kept) == "LIC-0002"
    (row,) = d.audit(instance=legacy_uid, operation="reconcile")
    assert (row["rule"], row["serial_wanted"]) == ("pin", "LIC-0001")
    # The hook path agrees: the next start is in policy.
    host.virsh("start", legacy)
    assert d.audit(instance=legacy_uid, operation="prepare")[0]["verdict"] == "compliant"


def test_worker_blocked_by_a_hook_does_not_block_the_daemon(libvirt_hosts, hookd_factory, tmp_path):
    """While a qemu hook runs, libvirt locks its domain and list calls block. The worker's
    sweep waits for it; the daemon (serving that very hook, and hookctl) does not."""
    marker = tmp_path / "slow-hook-running"
    d = hookd_factory(name="hookd-a", config_extra="[reconcile]\nenabled = false\n")

    def hooks(hooks_dir):
        slow = hooks_dir / "40-slow"          # runs before hookd's 50-hookd
        slow.write_text(f"#!/bin/sh\ncat >/dev/null\n[ \"$2\" = prepare ] || exit 0\n"
                        f"touch '{marker}'\nsleep 3\n")
        slow.chmod(0o755)
        d.install_hook(hooks_dir)

    host = libvirt_hosts("a", setup_hooks=hooks)
    d.follow(host)
    start_hookd(d)
    name, uid = define(host, tmp_path, serial=None)
    starting = subprocess.Popen([VIRSH, "-q", "-c", host.uri, "start", name], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    procs = [starting]
    try:
        wait_for(marker.exists, 10, "the slow hook running")
        sweeping = subprocess.Popen([sys.executable, "-m", "hookd.cli", "reconcile", "--socket", str(d.socket),
                                     "--dry-run", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=hookd_env())
        procs.append(sweeping)
        t0 = time.monotonic()
        st = status(d)                          # answered while the worker waits on libvirt
        assert time.monotonic() - t0 < 1.5
        assert st["events"]["connected"]
        assert sweeping.poll() is None          # the sweep is still waiting for the hook
        out, err = sweeping.communicate(timeout=30)
        assert sweeping.returncode == 0, err
        item = by_uuid(json.loads(out))[uid]
        # Listed once the hook let go: held back if its prepare note came first, else read.
        assert item["action"] in ("would-fix", "skipped"), item
        assert starting.wait(30) == 0, starting.stderr.read()
    finally:
        for p in procs:                         # by pid, whatever happened
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [r["action"] for r in d.audit(instance=uid, operation="prepare")] == ["warn"]

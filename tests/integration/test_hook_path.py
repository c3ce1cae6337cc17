"""The hook path on a real libvirtd + QEMU: libvirt runs hookd's shim, hookd decides.

Each test starts a namespaced libvirtd with the shim installed by
`hookctl install-hook` (before libvirtd starts: libvirt only sees hook files
present at its start) and a real hookd on a socket in the test's temp dir.
"""

from __future__ import annotations

import signal
import socket
import time
import uuid as uuidlib

import pytest

from tests.harness.guest import nova_domain_xml, read_guest_serial

pytestmark = pytest.mark.libvirt

HOST_SERIAL = "4c4c4544-0054-3510-8052-b7c04f564732"


def define(host, tmp_path, *, serial, nova=True, image=None, console=None, name=None):
    uid = str(uuidlib.uuid4())
    name = name or f"instance-{uid[:8]}"
    xml = nova_domain_xml(name=name, uuid=uid, serial=serial, image=image, console_log=console,
                          with_nova_metadata=nova)
    f = tmp_path / f"{name}.xml"
    f.write_text(xml)
    host.virsh("define", str(f))
    return name, uid


def start_pair(libvirt_hosts, hookd_factory, *, on_mismatch="warn", timeout=5.0, on_unreachable="allow",
          start_daemon=True, hook_socket=None):
    d = hookd_factory(config_extra=f"[enforce]\non_mismatch = {on_mismatch}\n")
    if start_daemon:
        d.start()
    host = libvirt_hosts("a", setup_hooks=lambda hooks: d.install_hook(
        hooks, timeout=timeout, on_unreachable=on_unreachable, socket_path=hook_socket))
    return d, host


def rows(d, instance, operation=None):
    return d.audit(instance=instance, operation=operation)


def test_warn_guest_with_host_serial_starts_and_drift_is_recorded(libvirt_hosts, hookd_factory, tmp_path):
    """warn: a Nova guest with a host-derived serial starts; the audit holds the drift."""
    d, host = start_pair(libvirt_hosts, hookd_factory, on_mismatch="warn")
    name, uid = define(host, tmp_path, serial=HOST_SERIAL)
    host.virsh("start", name)
    assert host.virsh("domstate", name).stdout.strip() == "running"
    (row,) = rows(d, uid, "prepare")
    assert (row["action"], row["verdict"], row["serial_seen"], row["serial_wanted"], row["rule"]) == \
        ("warn", "rewrite", HOST_SERIAL, uid, "default")
    assert row["domain"] == name and row["nova_name"] == "vm-1" and row["flavor"] == "m1.tiny"
    assert f"prepare instance {uid}" in d.log_text() and "on_mismatch = warn" in d.log_text()


def test_deny_refuses_start_with_hookd_reason(libvirt_hosts, hookd_factory, tmp_path):
    """deny: libvirt refuses the start and virsh's error carries hookd's one-line reason."""
    d, host = start_pair(libvirt_hosts, hookd_factory, on_mismatch="deny")
    name, uid = define(host, tmp_path, serial=HOST_SERIAL)
    res = host.virsh("start", name, check=False)
    assert res.returncode != 0
    assert "Hook script execution failed" in res.stderr
    assert f"hookd: instance {uid} ('vm-1', domain {name}) has serial '{HOST_SERIAL}' " \
           f"but policy (default) wants '{uid}'" in res.stderr
    assert host.virsh("domstate", name).stdout.strip() == "shut off"
    (row,) = rows(d, uid, "prepare")
    assert row["action"] == "deny"


def test_compliant_and_non_nova_guests_start_under_deny(libvirt_hosts, hookd_factory, tmp_path):
    """A compliant guest and a non-Nova guest start even with on_mismatch = deny; both recorded."""
    d, host = start_pair(libvirt_hosts, hookd_factory, on_mismatch="deny")
    good, good_uid = define(host, tmp_path, serial=None)
    good_uid_serial_name, good_uid2 = define(host, tmp_path, serial="placeholder")
    # the compliant one: serial == instance UUID
    xml = nova_domain_xml(name="instance-good", uuid=good_uid2, serial=good_uid2, image=None, console_log=None)
    (tmp_path / "good.xml").write_text(xml)
    host.virsh("undefine", good_uid_serial_name)
    host.virsh("define", str(tmp_path / "good.xml"))
    host.virsh("start", "instance-good")
    other, other_uid = define(host, tmp_path, serial=HOST_SERIAL, nova=False)
    host.virsh("start", other)
    assert rows(d, good_uid2, "prepare")[0]["verdict"] == "compliant"
    assert rows(d, good_uid2, "prepare")[0]["action"] == "allow"
    (row,) = rows(d, other_uid, "prepare")
    assert (row["verdict"], row["rule"], row["action"]) == ("not-nova", "not-nova", "allow")
    # a guest without any serial is out of policy too, and refused
    assert host.virsh("start", good, check=False).returncode != 0


def test_real_guest_prints_its_own_serial(libvirt_hosts, hookd_factory, tmp_path, guest_image):
    """A real Linux guest reads its DMI serial from sysfs and prints it: the guest's own view."""
    d, host = start_pair(libvirt_hosts, hookd_factory, on_mismatch="deny")
    uid = str(uuidlib.uuid4())
    console = tmp_path / "console.log"
    xml = nova_domain_xml(name="instance-linux", uuid=uid, serial=uid, image=guest_image, console_log=console)
    (tmp_path / "linux.xml").write_text(xml)
    host.virsh("define", str(tmp_path / "linux.xml"))
    host.virsh("start", "instance-linux")
    assert read_guest_serial(console, timeout=90) == uid
    assert f"serial={uid}" in ",".join(host.qemu_cmdline("instance-linux"))
    assert rows(d, uid, "prepare")[0]["verdict"] == "compliant"


def test_save_restore_and_managedsave_pass_through(libvirt_hosts, hookd_factory, tmp_path):
    """save/restore and managedsave/start work with hookd, even under deny: serial unchanged."""
    d, host = start_pair(libvirt_hosts, hookd_factory, on_mismatch="warn")
    name, uid = define(host, tmp_path, serial=HOST_SERIAL)
    host.virsh("start", name)
    # Switch to deny by a reload: a legacy guest must still survive save/restore.
    cfg = d.config.read_text().replace("on_mismatch = warn", "on_mismatch = deny")
    d.config.write_text(cfg)
    d.signal(signal.SIGHUP)
    d.wait_notification("READY=1")
    assert "on_mismatch deny" in d.log_text()

    image = tmp_path / "saved.img"
    host.virsh("save", name, str(image))
    host.virsh("restore", str(image))
    assert host.virsh("domstate", name).stdout.strip() == "running"
    assert f"serial={HOST_SERIAL}" in ",".join(host.qemu_cmdline(name))
    restore = rows(d, uid, "restore")
    assert len(restore) == 1 and restore[0]["action"] == "drift"
    assert rows(d, uid, "prepare")[-1]["action"] == "drift"

    host.virsh("managedsave", name)
    assert host.virsh("domstate", name).stdout.strip() == "shut off"
    host.virsh("start", name)
    assert host.virsh("domstate", name).stdout.strip() == "running"
    assert f"serial={HOST_SERIAL}" in ",".join(host.qemu_cmdline(name))
    assert len(rows(d, uid, "restore")) == 2
    assert [r["action"] for r in rows(d, uid, "prepare")] == ["warn", "drift", "drift"]


def timed_start(host, name):
    t0 = time.monotonic()
    res = host.virsh("start", name, check=False)
    return res, time.monotonic() - t0


@pytest.mark.parametrize("policy", ["allow", "deny"])
def test_daemon_stopped(libvirt_hosts, hookd_factory, tmp_path, policy):
    """hookd not running: allow starts at once, deny refuses with its reason, within timeout+1 s."""
    d, host = start_pair(libvirt_hosts, hookd_factory, timeout=2.0, on_unreachable=policy, start_daemon=False)
    name, _ = define(host, tmp_path, serial=HOST_SERIAL)
    res, elapsed = timed_start(host, name)
    assert elapsed < 2.0 + 1.0
    if policy == "allow":
        assert res.returncode == 0, res.stderr
    else:
        assert res.returncode != 0
        assert f"hookd: refusing {name}: hookd is unreachable at {d.socket}" in res.stderr
        assert "on_unreachable = deny" in res.stderr


@pytest.mark.parametrize("policy", ["allow", "deny"])
def test_daemon_hung(libvirt_hosts, hookd_factory, tmp_path, policy):
    """A daemon that accepts and never answers: libvirt waits no longer than the timeout."""
    hung = tmp_path / "hung.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(hung))
    listener.listen(16)             # the kernel accepts; nobody ever answers
    try:
        d, host = start_pair(libvirt_hosts, hookd_factory, timeout=2.0, on_unreachable=policy,
                        start_daemon=False, hook_socket=hung)
        name, _ = define(host, tmp_path, serial=HOST_SERIAL)
        res, elapsed = timed_start(host, name)
        assert 2.0 <= elapsed < 2.0 + 1.0, elapsed
        if policy == "allow":
            assert res.returncode == 0, res.stderr
        else:
            assert res.returncode != 0 and "hookd is unreachable" in res.stderr and "(no answer within 2s)" in res.stderr
    finally:
        listener.close()


def test_fast_path_operations_never_reach_the_daemon(libvirt_hosts, hookd_factory, tmp_path):
    """start/started/stopped/release take the shim's fast path (an exit at once): hookd sees only prepare."""
    d, host = start_pair(libvirt_hosts, hookd_factory)
    name, uid = define(host, tmp_path, serial=None)
    host.virsh("start", name)
    host.virsh("destroy", name)
    host.virsh("start", name)
    st = d.hookctl("status", "--socket", d.socket, "--json")
    import json
    status = json.loads(st.stdout)
    assert status["hook_requests"] == 2          # two prepares, nothing else
    assert [r["operation"] for r in d.audit(instance=uid)] == ["prepare", "prepare"]

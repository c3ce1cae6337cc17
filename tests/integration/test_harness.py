"""Smoke tests proving the real-libvirt harness (tests/harness/) itself works.

Each test drives a REAL namespaced libvirtd + QEMU (TCG): hooks placed before
start are executed, the busybox guest reports the serial set in its XML, live
migration between two hosts works, libvirtd survives a kill/restart with a
guest running, and stop() leaves no process behind.
"""

from __future__ import annotations

import pathlib
import signal
import uuid

import pytest

from tests.harness.guest import nova_domain_xml, read_guest_serial
from tests.harness.libvirt_host import LibvirtHost, LibvirtHostError, pid_alive

pytestmark = pytest.mark.libvirt


def define_and_start(host: LibvirtHost, tmp_path: pathlib.Path, xml: str, name: str) -> None:
    path = tmp_path / f"{name}.xml"
    path.write_text(xml)
    host.virsh("define", path)
    host.virsh("start", name)


def recording_hook(record: pathlib.Path):
    """setup_hooks callback: install a qemu.d hook that appends its argv to record."""
    def setup(hooks_dir: pathlib.Path) -> None:
        hook = hooks_dir / "10-record"
        hook.write_text(f"#!/bin/sh\ncat >/dev/null\necho \"$*\" >> '{record}'\nexit 0\n")
        hook.chmod(0o755)
    return setup


def test_diskless_guest_lifecycle_runs_hooks(libvirt_hosts, tmp_path):
    record = tmp_path / "hook-calls.txt"
    host = libvirt_hosts("a", setup_hooks=recording_hook(record))
    assert "QEMU" in host.virsh("version").stdout

    dom_uuid = str(uuid.uuid4())
    define_and_start(host, tmp_path, nova_domain_xml(
        name="instance-00000001", uuid=dom_uuid, serial=dom_uuid, image=None, console_log=None),
        "instance-00000001")
    assert host.virsh("domstate", "instance-00000001").stdout.strip() == "running"
    assert "instance-00000001" in host.qemu_pids()

    host.virsh("destroy", "instance-00000001")
    assert host.virsh("domstate", "instance-00000001").stdout.strip() == "shut off"
    calls = record.read_text().splitlines()
    assert "instance-00000001 prepare begin -" in calls
    assert calls.index("instance-00000001 prepare begin -") < calls.index("instance-00000001 started begin -")
    # Debian 13's libvirt 11.3 passes the shutoff reason as release's last argument
    # ("destroyed"); Debian 12's 9.0 passes "-".
    assert {"instance-00000001 release end -", "instance-00000001 release end destroyed"} & set(calls), calls


def test_sighup_makes_libvirtd_see_a_new_hook(libvirt_hosts, tmp_path):
    host = libvirt_hosts("a")
    record = tmp_path / "hook-calls.txt"
    recording_hook(record)(host.hooks_dir)  # added after start: invisible until SIGHUP
    name = "instance-00000007"
    xml = tmp_path / "d.xml"
    xml.write_text(nova_domain_xml(name=name, uuid=str(uuid.uuid4()), serial="s7", image=None,
                                   console_log=None))
    host.virsh("define", xml)
    host.sighup_libvirtd()
    host.virsh("start", name)
    assert f"{name} prepare begin -" in record.read_text().splitlines()


def test_busybox_guest_reports_the_serial_from_its_xml(libvirt_hosts, guest_image, tmp_path):
    host = libvirt_hosts("a")
    serial = "hookd-" + uuid.uuid4().hex[:12]
    console = tmp_path / "console.log"
    define_and_start(host, tmp_path, nova_domain_xml(
        name="instance-00000002", uuid=str(uuid.uuid4()), serial=serial, image=guest_image,
        console_log=console), "instance-00000002")

    smbios = [a for a in host.qemu_cmdline("instance-00000002") if a.startswith("type=1,")]
    assert len(smbios) == 1 and f"serial={serial}," in smbios[0] + ","
    assert read_guest_serial(console, timeout=60) == serial


def test_live_migration_keeps_the_guest_printing_its_serial(libvirt_hosts, guest_image, tmp_path):
    a = libvirt_hosts("a")
    b = libvirt_hosts("b")
    assert a.host_uuid != b.host_uuid
    serial = "mig-" + uuid.uuid4().hex[:12]
    console = tmp_path / "console.log"
    name = "instance-00000003"
    define_and_start(a, tmp_path, nova_domain_xml(
        name=name, uuid=str(uuid.uuid4()), serial=serial, image=guest_image, console_log=console), name)
    assert read_guest_serial(console, timeout=60) == serial

    a.virsh("migrate", "--live", "--p2p", "--persistent", name, b.uri, "--migrateuri", "tcp://127.0.0.1")
    # Noted after the migration returned: the source is stopped, so new lines come from the target.
    offset = console.stat().st_size
    assert b.virsh("domstate", name).stdout.strip() == "running"
    assert a.virsh("domstate", name).stdout.strip() == "shut off"
    assert name in b.qemu_pids() and name not in a.qemu_pids()
    assert read_guest_serial(console, timeout=30, after_offset=offset) == serial


def test_guest_survives_libvirtd_kill_and_restart(libvirt_hosts, tmp_path):
    host = libvirt_hosts("a")
    name = "instance-00000004"
    define_and_start(host, tmp_path, nova_domain_xml(
        name=name, uuid=str(uuid.uuid4()), serial="s4", image=None, console_log=None), name)
    qemu_pid = host.qemu_pids()[name]
    old_libvirtd = host.libvirtd_pid

    host.kill_libvirtd(signal.SIGKILL)
    assert not pid_alive(old_libvirtd)
    assert pid_alive(qemu_pid)
    host.start_libvirtd()
    assert host.libvirtd_pid != old_libvirtd
    assert host.virsh("domstate", name).stdout.strip() == "running"
    assert host.qemu_pids() == {name: qemu_pid}


def test_stop_leaves_no_process_behind(libvirt_env, tmp_path):
    host = LibvirtHost(tmp_path / "h", "a")
    stray = tmp_path / "stray.pid"
    hook = host.hooks_dir / "50-stray"  # leaves a background process behind, as a buggy hook might
    hook.write_text(f"#!/bin/sh\ncat >/dev/null\n[ -e '{stray}' ] || {{ sleep 1000 </dev/null >/dev/null 2>&1 & "
                    f"echo $! > '{stray}'; }}\nexit 0\n")
    hook.chmod(0o755)
    try:
        host.start()
        for n in ("instance-00000005", "instance-00000006"):
            define_and_start(host, tmp_path, nova_domain_xml(
                name=n, uuid=str(uuid.uuid4()), serial=n, image=None, console_log=None), n)
            # a QEMU whose libvirtd died: stop() cannot destroy it via virsh and must kill it by pid
            host.kill_libvirtd()
            if n == "instance-00000005":
                host.start_libvirtd()
        pids = host.started_pids()
        qemus = sorted(host.qemu_pids().values())
        assert len(qemus) == 2 and all(pid_alive(p) for p in qemus)
        assert pid_alive(host.holder_pid) and pid_alive(host.virtlogd_pid)
        assert len(pids) == 6  # holder, virtlogd, 2 x libvirtd, 2 x QEMU
    finally:
        host.stop()
    stray_pid = int(stray.read_text())
    alive = [p for p in pids + [stray_pid] if pid_alive(p)]
    assert alive == [], f"still alive after stop(): {alive}"
    host.stop()  # idempotent


def test_failed_start_reports_libvirtd_log(libvirt_env, tmp_path):
    host = LibvirtHost(tmp_path / "h", "bad")
    with open(host.etc_dir / "qemu.conf", "a") as f:
        f.write('migration_address = "127.0.0.1"\n')  # libvirtd refuses a local migration_address
    with pytest.raises(LibvirtHostError, match="migration_address"):
        host.start(timeout=15)
    pids = host.started_pids()
    assert pids and not any(pid_alive(p) for p in pids)

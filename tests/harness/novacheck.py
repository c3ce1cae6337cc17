"""What the tests/nova tests read back after a Nova operation: the guest's own DMI serial,
hookd's audit rows, the proxy's status, what Nova wrote, libvirt's view of the domain.

Shared by every tests/nova module (test modules never import each other). It reads only;
starting and driving Nova is tests/harness/nova.py's.
"""

from __future__ import annotations

import json

from tests.harness.guest import read_guest_serial
from tests.harness.nova import HOST_SERIAL

#: Host B of the two-host tests: its libvirtd's host UUID (what sysinfo_serial = hardware
#: writes there) and the address its Nova is known by.
HOST_SERIAL_B = "4c4c4544-0042-3810-8036-c2c04f4b5a42"
B_IP = "127.0.0.2"


def wrote(nova, serial: str = HOST_SERIAL) -> int:
    """How many domain XMLs this Nova generated with that host serial (its own debug log of them)."""
    return nova.log.read_text(errors="replace").count(f'<entry name="serial">{serial}</entry>')


def nova_wrote_host_serial(nova) -> int:
    return wrote(nova, HOST_SERIAL)


def defines(d, uid):
    return [(r["action"], r["serial_seen"], r["serial_wanted"]) for r in d.audit(instance=uid, operation="define")]


def prepares(d, uid):
    return [(r["action"], r["serial_seen"]) for r in d.audit(instance=uid, operation="prepare")]


def guest_serial(host, nova, timeout: float = 90, expected: str | None = None) -> str:
    """The serial the running guest reads from its own DMI table, on the console Nova set up
    (console.log, written by virtlogd), then moves that log aside: virtlogd keeps writing
    the old boot into the moved file, and the next QEMU start creates console.log anew, so
    the next call can only read a line of the next boot. QEMU's command line must carry
    `expected` (default: the instance UUID)."""
    want = nova.uuid if expected is None else expected
    assert f"serial={want}" in ",".join(host.qemu_cmdline(nova.instance_name))
    serial = read_guest_serial(nova.console_log, timeout=timeout)
    nova.console_log.rename(nova.console_log.with_name(f"console.log.read-{nova.boots_read}"))
    nova.boots_read += 1
    return serial


def proxy_status(d) -> dict:
    return json.loads(d.hookctl("status", "--socket", d.socket, "--json").stdout)["proxy"]


def qemu_pid(host, nova) -> int:
    return host.qemu_pids()[nova.instance_name]


def memory_kib(host, name) -> str:
    return host.virsh("dumpxml", name).stdout.split("<memory unit='KiB'>", 1)[1].split("<", 1)[0]

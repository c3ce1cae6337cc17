"""`make demo`: one Nova-style instance, two hypervisors with hookd, one without.

Starts isolated libvirt hosts (private mount namespaces, distinct host UUIDs; the
same harness as the tests), a hookd with its libvirt proxy on hosts A and B, and
walks one instance through its life. After each step it prints what the guest
itself reports on its serial console (a busybox Linux guest reading
/sys/class/dmi/id/product_serial), not what libvirt says. It exits non-zero, naming
the step, if any row is not what it should be: the demo is also a test. Leaves
nothing running and never touches the host's /etc/libvirt.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness.guest import ensure_guest_image, nova_domain_xml, read_guest_serial  # noqa: E402
from tests.harness.libvirt_host import LibvirtHost  # noqa: E402
from tests.harness.hookd_proc import HookdProcess  # noqa: E402
from tests.harness.novaflow import NovaFlowDriver  # noqa: E402

# What Nova's [libvirt]/sysinfo_serial = auto gives on each host (host-derived).
HOST_SERIAL = {"A": "4c4c4544-0041-3510-8052-b7c04f564141",
               "B": "4c4c4544-0042-3510-8052-b7c04f564242",
               "C": "4c4c4544-0043-3510-8052-b7c04f564343"}


class DemoFailure(Exception):
    pass


def short(serial: str, uid: str) -> str:
    if serial == uid:
        return f"{serial[:13]}… (instance UUID)"
    for host, s in HOST_SERIAL.items():
        if serial == s:
            return f"{serial[:13]}… (host {host} serial)"
    return serial


class Table:
    HEAD = ("step", "host", "libvirt was given", "guest reports", "result")
    WIDTH = (44, 4, 36, 32, 6)

    def __init__(self):
        self.rows = []
        print("  ".join(h.ljust(w) for h, w in zip(self.HEAD, self.WIDTH)))
        print("  ".join("-" * w for w in self.WIDTH))

    def row(self, step, host, given, reported, ok):
        cells = (step, host, given, reported, "OK" if ok else "FAIL")
        print("  ".join(str(c).ljust(w) for c, w in zip(cells, self.WIDTH)), flush=True)
        if not ok:
            raise DemoFailure(f"step {step!r} on host {host}: the guest reports {reported}")


def main() -> int:
    if os.geteuid() != 0:
        print("demo: error: run as root (it starts isolated libvirt daemons in private mount namespaces)",
              file=sys.stderr)
        return 1
    t0 = time.monotonic()
    print("demo: building (or reusing) the busybox guest image ...", flush=True)
    image = ensure_guest_image()
    with tempfile.TemporaryDirectory(prefix="hookd-demo-") as tmp:
        base = pathlib.Path(tmp)
        hosts, daemons = {}, {}
        try:
            for name in ("A", "B", "C"):
                hosts[name] = LibvirtHost(base / "h", name.lower(), str(uuidlib.uuid4()))
            for name in ("A", "B"):
                d = HookdProcess(base / "d", name=f"hookd-{name.lower()}", proxy=True,
                                 libvirt_socket=hosts[name].socket_path)
                d.install_hook(hosts[name].hooks_dir)
                daemons[name] = d
            for name, host in hosts.items():
                host.start()
            for d in daemons.values():
                d.start()
            print(f"demo: hosts A and B run libvirtd + hookd (proxy at <hookd>/libvirt-sock); "
                  f"host C runs libvirtd only ({time.monotonic() - t0:.1f} s)\n", flush=True)
            uid = str(uuidlib.uuid4())
            walk(hosts, daemons, image, base, uid)
            print(f"\ndemo: the audit story of instance {uid} (hookctl audit --instance {uid}):")
            for name, d in daemons.items():
                print(f"--- host {name}")
                res = subprocess.run([sys.executable, "-m", "hookd.cli", "audit", "--instance", uid,
                                      "--state-dir", str(d.state_dir)], capture_output=True, text=True,
                                     env=dict(os.environ, PYTHONPATH=str(REPO)))
                print(res.stdout.rstrip() or res.stderr.rstrip())
        except DemoFailure as err:
            print(f"\ndemo: FAILED: {err}", file=sys.stderr)
            return 1
        finally:
            for d in daemons.values():
                d.stop()
            for host in hosts.values():
                host.stop()
    print(f"\ndemo: done in {time.monotonic() - t0:.1f} s; every row is what the guest itself printed.")
    return 0


def walk(hosts, daemons, image, base, uid):
    name = "instance-00000001"
    console = base / "console.log"
    table = Table()

    def nova_xml(host_serial, log=console):
        return nova_domain_xml(name=name, uuid=uid, serial=host_serial, image=image, console_log=log,
                               nova_name="licensed-db-1", flavor_name="m1.small")

    def proxy(h):
        return f"qemu+unix:///system?socket={daemons[h].proxy_socket}"

    # 1. Nova on A spawns the instance through hookd's proxy with A's host-derived serial.
    nova = NovaFlowDriver(proxy("A"))
    try:
        nova.spawn(nova_xml(HOST_SERIAL["A"]))
    finally:
        nova.close()
    seen = read_guest_serial(console, timeout=90)
    table.row("1 spawned through hookd (Nova: serial=auto)", "A", short(HOST_SERIAL["A"], uid),
              short(seen, uid), seen == uid)

    # 2. Live migration A -> B, peer to peer, as Nova does it, through A's proxy.
    subprocess.run(["virsh", "-q", "-c", proxy("A"), "migrate", "--live", "--p2p", "--persistent", name,
                    hosts["B"].uri, "--migrateuri", "tcp://127.0.0.1"], check=True, capture_output=True,
                   timeout=120)
    offset = console.stat().st_size
    seen = read_guest_serial(console, timeout=60, after_offset=offset)
    table.row("2 live-migrated to B (still running)", "B", "(migration keeps the running serial)", short(seen, uid),
              seen == uid)

    # 3. Cold boot on B: Nova regenerates the XML on B with B's host serial (hard reboot /
    #    resize finish), through B's proxy.
    nova = NovaFlowDriver(proxy("B"))
    try:
        offset = console.stat().st_size
        nova.hard_reboot(name, nova_xml(HOST_SERIAL["B"]))
    finally:
        nova.close()
    seen = read_guest_serial(console, timeout=90, after_offset=offset)
    table.row("3 cold boot on B (Nova regenerates the XML)", "B", short(HOST_SERIAL["B"], uid),
              short(seen, uid), seen == uid)

    # 4. Contrast: the same instance on a host without hookd.
    hosts["B"].virsh("destroy", name)
    console_c = base / "console-c.log"
    xml_file = base / "c.xml"
    xml_file.write_text(nova_xml(HOST_SERIAL["C"], log=console_c))
    hosts["C"].virsh("define", str(xml_file))
    hosts["C"].virsh("start", name)
    seen = read_guest_serial(console_c, timeout=90)
    table.row("4 same instance on host C, no hookd", "C", short(HOST_SERIAL["C"], uid), short(seen, uid),
              seen == HOST_SERIAL["C"])


if __name__ == "__main__":
    sys.exit(main())

"""Nova's own libvirt driver (``nova.virt.libvirt.driver.LibvirtDriver`` from PyPI's nova,
pinned to NOVA_VERSION) driving a real namespaced libvirtd, for tests/nova.

This module owns :func:`ensure_nova_venv` (the test-only venv Nova is installed in) and
:class:`NovaCompute` (one compute host's driver process: tests/harness/nova_compute.py
run by that venv's python, which the test sends operations to, one JSON line each).

The venv: ``/usr/bin/python3 -m venv --system-site-packages`` (so Debian's python3-libvirt
9.0 is the binding Nova uses, as on a Debian compute node) in
$HOOKD_TEST_CACHE/nova-<version> (default /var/cache/hookd-tests), built once per machine
under a file lock by tests/harness/venv.py and reused while ``import nova.virt.libvirt.driver``
works there. Nova's dependencies pull a cryptography newer than Debian's, with which
Debian's pyOpenSSL 23 fails at import (eventlet imports OpenSSL.SSL): a newer pyOpenSSL
goes into the venv too. No PyPI -> the test FAILS with one line (pip's last error).
To move the pin: change NOVA_VERSION (the venv directory is named after it, so the next
run builds a fresh one; delete the old directory by hand).

Real in these tests: Nova's LibvirtDriver (init_host, spawn, reboot, power_off/on,
destroy, rescue/unrescue, suspend/resume, migrate_disk_and_power_off, finish_migration,
finish_revert_migration, check_can_live_migrate_destination/source, pre_live_migration,
live_migration with its monitor, post_live_migration_at_destination), its XML generation
(``[libvirt] sysinfo_serial = hardware``: the serial is the libvirtd's host UUID), its image
backend (``images_type = raw``, i.e. Flat: the disk, kernel and initrd are copied from its
image cache into the instance directory), its shared-storage detection, its oslo.config
configuration, its concurrency mode (``[DEFAULT] concurrency_backend``: threading, as
nova-compute defaults to, or eventlet, chosen per driver process), libvirtd, virtlogd, QEMU (TCG), hookd with its proxy, and the shim with
``on_mismatch = deny``, and the lifecycle events Nova's driver makes of libvirt's domain
events (through the proxy; the test reads what would reach the compute manager). A second
compute host is a second libvirtd (another host UUID), hookd and driver process
(``host``/``my_ip`` compute-b/127.0.0.2); for the migrations the two share one
instances_path (``instances``), as over NFS. The test plays the compute manager: it calls
the driver methods in the manager's order on the host the manager would, and sets what the
manager sets on the instance (old/new flavor, the Migration record).
The guest is the busybox guest of tests/harness/guest.py (or its ACPI-aware variant,
tests/harness/acpi_guest.py, which powers off on a shutdown request, or its ttyS0 variant,
tests/harness/ttys0_guest.py, for rescue's forced console=hvc0) booted the way Nova
boots an AMI-style image (the image's ``kernel_id``/``ramdisk_id``, ``os_command_line =
console=ttyS0 quiet``), printing its DMI serial into Nova's console.log.

Not exercised: the paused start of spawn (Nova pauses only while it waits for Neutron's
vif-plugged events, and there are no ports), rebuild (the libvirt driver has none: the
compute manager destroys and spawns), shelve/unshelve as such (snapshot upload to Glance,
then spawn: the test spawns on the other host), confirm_migration, block migration (the
hosts share storage), and live migration's rollback.

Changed in what Nova asks libvirt (``add_unsafe_to_live_migration_flags``): VIR_MIGRATE_UNSAFE
is added to Nova's live migration flags, because the shared instances_path is a local file
system, which libvirt refuses ("Unsafe migration: Migration without shared storage is
unsafe"); on real NFS it would not.

Stubbed, each in one function of nova_compute.py, because it is not libvirt:

* ``stub_glance`` -- Glance's image download: the three images (an empty 1 MiB raw root
  disk, the kernel, the initrd) are pre-placed in ``<instances_path>/_base`` under Nova's
  own cache names; any download attempt raises.
* ``StubVirtAPI`` -- nova-compute's ComputeVirtAPI (Neutron's vif-plugged events,
  placement): the instance has no ports (``network_info = []``), so Nova never waits for
  an event and spawn does not start the guest paused; asking for placement raises.
* ``stub_persistence`` -- the DB/conductor/objects persistence: ``Instance.save`` and
  ``Migration.save`` keep changes in memory; the compute service record is found, enabled (each
  change the driver saves to it is kept in a list the test reads: Nova disables it when its
  libvirt connection is lost); the instance's block
  device mappings, virtual interfaces and share mappings are none. No database is
  configured, so any other persistence call fails the operation loudly (oslo.db's
  "No sql_connection parameter is established").
* the instance itself is built in memory (``make_instance``) as nova-conductor would have
  created it: flavor m1.nano (128 MiB, 1 vCPU, root_gb 0), the image's metadata in its
  system_metadata as the API puts it there.
* ``stub_remotefs`` -- Nova's ssh/rsync remote filesystem (cold migration's "create the
  instance directory on the destination", its shared-storage probe, its disk copy): both
  hosts are this machine, so each command runs locally on the path after ``host:``. With
  the shared instances_path Nova's own probe finds the storage shared, so the disk copy is
  a local ``cp`` by Nova itself and no ssh command is ever needed.
* ``stub_host_network`` -- what lies between the hosts: Nova's ``qemu+tcp://ADDR/system``
  for live migration's peer-to-peer connection becomes the destination libvirtd's unix
  socket (``peer_libvirt_uris``, by the address ``live_migration_inbound_addr`` gives);
  QEMU's own migration stream is real TCP (``tcp://127.0.0.2``). Neutron's port-binding
  extension is absent (no ports).
* ``run_privsep_in_process`` -- oslo.privsep's rootwrap'd helper daemon: the driver
  process is root, so privileged calls run in-process.
"""

from __future__ import annotations

import json
import os
import pathlib
import select
import signal
import subprocess
import time
import uuid as uuidlib
from typing import Optional

import pytest

from tests.harness.libvirt_host import cache_root
from tests.harness.run import REPO
from tests.harness.venv import ensure_venv

NOVA_VERSION = "34.0.0"
NOVA_PACKAGES = (f"nova=={NOVA_VERSION}", "pyOpenSSL>=24.2")
NOVA_CHECK = ("-c", "import OpenSSL.SSL, eventlet, libvirt, nova.virt.libvirt.driver")
DRIVER_SCRIPT = REPO / "tests" / "harness" / "nova_compute.py"
ROOT_DISK_BYTES = 1 << 20
#: The namespaced libvirtd's host UUID: what `sysinfo_serial = hardware` makes Nova write.
HOST_SERIAL = "4c4c4544-0054-3510-8052-b7c04f564732"


def nova_venv_dir() -> pathlib.Path:
    return cache_root() / f"nova-{NOVA_VERSION}"


def ensure_nova_venv() -> pathlib.Path:
    """The venv's python with Nova installed (built once per machine under a file lock).
    pytest.fail with ONE line (pip's last error) if it cannot be built, e.g. without PyPI."""
    try:
        return ensure_venv(nova_venv_dir(), NOVA_PACKAGES, NOVA_CHECK, f"Nova {NOVA_VERSION}")
    except pytest.fail.Exception as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")] or lines[-1:]
    pytest.fail(f"cannot build the Nova {NOVA_VERSION} venv in {nova_venv_dir()} with "
                f"pip install {' '.join(NOVA_PACKAGES)} (is PyPI reachable?): {errors[-1]}", pytrace=False)


class NovaError(AssertionError):
    """A driver operation failed (the message has Nova's error and the traceback's tail)."""


class NovaCompute:
    """One nova-compute's libvirt driver, in its own process, for one instance.

    ``connection_uri`` is what ``[libvirt] connection_uri`` says (hookd's proxy, or libvirt's
    own socket for a contrast test). Files live in ``workdir``: nova.conf, nova.log,
    instances/ (``[DEFAULT] instances_path``; the image cache is instances/_base).
    """

    def __init__(self, python: pathlib.Path, workdir: pathlib.Path, *, connection_uri: str, guest_image,
                 instance_uuid: Optional[str] = None, instance_id: int = 1, host: str = "compute-a",
                 my_ip: str = "127.0.0.1", instances: Optional[pathlib.Path] = None,
                 peer_libvirt_uris: Optional[dict] = None, concurrency: str = "threading",
                 sysinfo_serial: str = "hardware"):
        self.python = python
        self.dir = pathlib.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.uuid = instance_uuid or str(uuidlib.uuid4())
        self.host = host
        self.my_ip = my_ip
        # a second host given the first one's instances path shares it (as over NFS)
        self.instances = pathlib.Path(instances) if instances else self.dir / "instances"
        self.log = self.dir / "nova.log"
        self.config = self.dir / "nova.conf"
        self.setup = self.dir / "setup.json"
        self.proc: Optional[subprocess.Popen] = None
        self.instance_name: Optional[str] = None
        self.timings: dict = {}
        self.concurrency = concurrency
        self.concurrency_seen: dict = {}     # what the driver process reported at init_host
        self.boots_read = 0                 # console logs read (and moved aside) by the test
        root_disk = self.dir / "root-disk.raw"
        with open(root_disk, "wb") as f:
            f.truncate(ROOT_DISK_BYTES)
        # derived from the instance: the same instance on a second host has the same images
        image_id, kernel_id, ramdisk_id = (str(uuidlib.uuid5(uuidlib.UUID(self.uuid), k))
                                           for k in ("image", "kernel", "ramdisk"))
        self.config.write_text(f"""[DEFAULT]
host = {host}
instances_path = {self.instances}
state_path = {self.dir / 'state'}
compute_driver = libvirt.LibvirtDriver
concurrency_backend = {concurrency}
my_ip = {my_ip}
debug = true
log_file = {self.log}
use_stderr = false
[oslo_concurrency]
lock_path = {self.dir / 'locks'}
[libvirt]
connection_uri = {connection_uri}
virt_type = qemu
sysinfo_serial = {sysinfo_serial}
images_type = raw
wait_soft_reboot_seconds = 5
live_migration_inbound_addr = {my_ip}
[vnc]
enabled = false
[workarounds]
""")
        self.setup.write_text(json.dumps({
            "uuid": self.uuid, "instance_id": instance_id, "display_name": "vm-1",
            "peer_libvirt_uris": peer_libvirt_uris or {},
            "image_id": image_id, "kernel_id": kernel_id, "ramdisk_id": ramdisk_id,
            "files": {"image": str(root_disk), "kernel": str(guest_image.kernel),
                      "ramdisk": str(guest_image.initrd)},
            "image_meta": {"id": image_id, "name": "busybox-dmi", "disk_format": "raw",
                           "container_format": "bare", "size": ROOT_DISK_BYTES, "min_disk": 0,
                           "min_ram": 0, "status": "active",
                           "properties": {"kernel_id": kernel_id, "ramdisk_id": ramdisk_id,
                                          "os_command_line": "console=ttyS0 quiet"}},
        }, indent=1))

    @property
    def console_log(self) -> pathlib.Path:
        """Where Nova points the guest's serial console (virtlogd writes it)."""
        return self.instances / self.uuid / "console.log"

    def start(self, timeout: float = 120) -> "NovaCompute":
        """Start the driver process; returns once init_host has completed."""
        self._stderr = open(self.dir / "driver.stderr", "ab")
        self.proc = subprocess.Popen(
            [str(self.python), "-P", str(DRIVER_SCRIPT), "--config-file", str(self.config), "--setup", str(self.setup)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, cwd=str(self.dir),
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(self.dir),
                 "LC_ALL": "C.UTF-8"})
        answer = self._answer("init_host", timeout)
        self.instance_name = answer["instance_name"]
        self.concurrency_seen = answer["concurrency"]
        return self

    def call(self, op: str, timeout: float = 180, **kw) -> dict:
        """Run one driver operation; NovaError if Nova raised, AssertionError on timeout."""
        assert self.proc is not None and self.proc.poll() is None, self._failure(f"{op}: driver not running")
        self.proc.stdin.write((json.dumps({"op": op, **kw}) + "\n").encode())
        self.proc.stdin.flush()
        return self._answer(op, timeout)

    def lifecycle_events(self) -> list:
        """(instance uuid, transition) of every lifecycle event Nova's driver emitted so far
        (it turns libvirt's domain events, relayed by the proxy, into these)."""
        return [(e["uuid"], e["transition"]) for e in self.call("events", timeout=30)["events"]]

    def _answer(self, op: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                self.proc.send_signal(signal.SIGUSR1)    # its threads' stacks into driver.stderr
                time.sleep(0.5)                          # (best effort: only for the message)
                raise AssertionError(self._failure(f"no answer to {op} within {timeout}s"))
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(self._failure(f"driver exited ({self.proc.wait(5)}) during {op}"))
                buf += chunk
        answer = json.loads(buf)
        if op != "events":
            self.timings.setdefault(op, []).append(answer.get("seconds"))
        if not answer["ok"]:
            raise NovaError(f"Nova's {op} failed: {answer['error']}\n{answer['traceback'][-3000:]}")
        return answer

    def _failure(self, what: str) -> str:
        def tail(p, n=3000):
            try:
                return pathlib.Path(p).read_text(errors="replace")[-n:]
            except FileNotFoundError:
                return ""
        return f"{what}\n--- driver stderr:\n{tail(self.dir / 'driver.stderr')}\n--- nova.log:\n{tail(self.log)}"

    def stop(self, timeout: float = 10) -> None:
        """quit, then SIGTERM/SIGKILL by pid if it does not exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()
        self._stderr.close()
        self.proc = None

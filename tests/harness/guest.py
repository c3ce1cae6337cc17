"""The tiny real Linux test guest and Nova-shaped domain XML.

This module owns:

* :func:`ensure_guest_image` -- builds (once per machine, cached) a bootable
  guest: Debian's cloud kernel (downloaded with ``apt-get download``, never
  installed) and a gzip'd newc initramfs containing busybox-static and the
  ``/init`` in ``tests/harness/guest/init``, which prints
  ``HOOKD-DMI-SERIAL=<product_serial>`` on the serial console once a second.
* :func:`nova_domain_xml` -- a domain XML shaped like the one Nova's libvirt
  driver writes for an x86 guest (TCG), diskless or booting that image.
* :func:`read_guest_serial` -- waits for the guest's serial line in a console log.
"""

from __future__ import annotations

import datetime
import fcntl
import gzip
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from tests.harness.libvirt_host import cache_root

__all__ = ["GuestImage", "ensure_guest_image", "nova_domain_xml", "read_guest_serial",
           "NOVA_NS", "SERIAL_LINE_PREFIX"]

NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
SERIAL_LINE_PREFIX = "HOOKD-DMI-SERIAL="
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
INIT_SCRIPT = pathlib.Path(__file__).with_name("guest") / "init"
_BUILDER_VERSION = "1"  # bump when the image layout changes


@dataclass(frozen=True)
class GuestImage:
    kernel: pathlib.Path
    initrd: pathlib.Path


# --------------------------------------------------------------------------- image build

def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r


def _resolve_kernel_package() -> str:
    """linux-image-cloud-amd64 -> the versioned linux-image-X-cloud-amd64 it depends on."""
    out = _run(["apt-cache", "depends", KERNEL_METAPACKAGE]).stdout
    m = re.search(r"^\s*Depends:\s*(linux-image-\S+-cloud-amd64)\s*$", out, re.M)
    if not m:
        raise RuntimeError(f"cannot resolve {KERNEL_METAPACKAGE} to a kernel package:\n{out}")
    return m.group(1)


def _apt_download(pkg: str, dest: pathlib.Path) -> pathlib.Path:
    os.chmod(dest, 0o777)  # apt drops to user _apt for downloads
    _run(["apt-get", "download", "-q", pkg], cwd=dest)
    debs = sorted(dest.glob(f"{pkg.split(':')[0]}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {pkg} left no .deb in {dest}")
    return debs[-1]


def _extract_members(deb: pathlib.Path, wanted) -> dict[str, bytes]:
    """Stream the deb's data tarball (dpkg-deb --fsys-tarfile) and return members for which wanted(name)."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if member.isfile() and wanted(name):
                    f = tar.extractfile(member)
                    assert f is not None
                    found[name] = f.read()
    finally:
        assert proc.stdout is not None
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        rc = proc.wait()
    if rc != 0 and not found:
        raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb} failed: {err}")
    return found


class _Newc:
    """Minimal writer of the kernel's initramfs format (cpio "newc")."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nameb = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
                  0, 0, rdev[0], rdev[1], len(nameb), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.buf.write(hdr + nameb)
        self.buf.write(b"\0" * (-(len(hdr) + len(nameb)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self.ino = 0
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def _build_initrd(busybox: bytes, init: bytes) -> bytes:
    c = _Newc()
    for d in ("bin", "dev", "proc", "sys", "tmp"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.file("bin/busybox", busybox, 0o755)
    c.symlink("bin/sh", "busybox")
    c.file("init", init, 0o755)
    return gzip.compress(c.finish(), compresslevel=6, mtime=0)


def _recipe_key() -> str:
    h = hashlib.sha256()
    h.update(_BUILDER_VERSION.encode())
    h.update(INIT_SCRIPT.read_bytes())
    return h.hexdigest()[:12]


def _apt_with_update(fn):
    """Run fn(); if apt's lists are missing or stale, apt-get update once and retry."""
    try:
        return fn()
    except RuntimeError:
        _run(["apt-get", "update", "-qq"], timeout=600)
        return fn()


def ensure_guest_image(cache_dir: pathlib.Path | None = None) -> GuestImage:
    """Return the cached guest image, building it first if needed (atomic, concurrency-safe).

    cache_dir defaults to $HOOKD_TEST_CACHE/guest (/var/cache/hookd-tests/guest).
    """
    guest_dir = pathlib.Path(cache_dir) if cache_dir is not None else cache_root() / "guest"
    return build_cached_image(guest_dir / f"img-{_recipe_key()}", _build_into)


def build_cached_image(final: pathlib.Path, build_into) -> GuestImage:
    """The image in directory `final`, built first by build_into(tmpdir) if it has no
    manifest.json yet: one builder at a time (a lock beside it), into a temporary directory
    renamed into place, so a reader never sees half an image."""
    guest_dir = final.parent
    image = GuestImage(kernel=final / "vmlinuz", initrd=final / "initrd.img")
    if (final / "manifest.json").exists():
        return image
    guest_dir.mkdir(parents=True, exist_ok=True)
    with open(guest_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; others wait, then find it built
        if (final / "manifest.json").exists():
            return image
        for stale in guest_dir.glob(".build-*"):  # left by an interrupted builder (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        build = pathlib.Path(tempfile.mkdtemp(prefix=".build-", dir=guest_dir))
        try:
            build_into(build)
            os.chmod(build, 0o755)
            os.rename(build, final)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    return image


def _build_into(build: pathlib.Path) -> None:
    t0 = time.monotonic()
    dl = build / "dl"
    dl.mkdir()
    kpkg = _apt_with_update(_resolve_kernel_package)
    kdeb = _apt_with_update(lambda: _apt_download(kpkg, dl))
    bdeb = _apt_with_update(lambda: _apt_download(BUSYBOX_PACKAGE, dl))

    kfiles = _extract_members(kdeb, lambda n: re.fullmatch(r"boot/vmlinuz-.*", n) is not None)
    if len(kfiles) != 1:
        raise RuntimeError(f"expected one boot/vmlinuz-* in {kdeb.name}, found {sorted(kfiles)}")
    (kname, kernel), = kfiles.items()
    # bin/busybox up to bookworm; usr/bin/busybox from trixie on (merged /usr in the .deb).
    bfiles = _extract_members(bdeb, lambda n: n in ("bin/busybox", "usr/bin/busybox"))
    if len(bfiles) != 1:
        raise RuntimeError(f"expected one bin/busybox or usr/bin/busybox in {bdeb.name}, found {sorted(bfiles)}")
    (_, busybox), = bfiles.items()

    (build / "vmlinuz").write_bytes(kernel)
    (build / "initrd.img").write_bytes(_build_initrd(busybox, INIT_SCRIPT.read_bytes()))
    shutil.rmtree(dl)
    (build / "manifest.json").write_text(json.dumps({
        "kernel_deb": kdeb.name, "kernel_file": kname, "busybox_deb": bdeb.name,
        "recipe": _recipe_key(), "built": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "build_seconds": round(time.monotonic() - t0, 1),
    }, indent=1) + "\n")


# --------------------------------------------------------------------------- domain XML

def nova_domain_xml(*, name: str, uuid: str, serial: str | None, image: GuestImage | None,
                    console_log: pathlib.Path | None, nova_name: str = "vm-1",
                    flavor_name: str = "m1.tiny",
                    project_uuid: str = "6f70656e-7374-6163-6b20-70726f6a6563",
                    user_uuid: str = "75736572-2020-2020-2020-202020202020",
                    memory_mib: int = 128, extra_specs: dict | None = None,
                    with_nova_metadata: bool = True,
                    host_serial_family: str = "Virtual Machine",
                    image_uuid: str = "155d900f-4e14-4e4c-a73d-069cbf4541e6",
                    nova_version: str = "27.1.0") -> str:
    """A domain XML like Nova's libvirt driver emits for an x86 TCG guest (see module docstring)."""
    e, a = escape, quoteattr
    vcpus = 1
    meta = ""
    if with_nova_metadata:
        specs = ""
        if extra_specs:
            specs = ("\n        <nova:extraSpecs>" + "".join(
                f"\n          <nova:extraSpec name={a(str(k))}>{e(str(v))}</nova:extraSpec>"
                for k, v in extra_specs.items()) + "\n        </nova:extraSpecs>")
        created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        meta = f"""
  <metadata>
    <nova:instance xmlns:nova="{NOVA_NS}">
      <nova:package version={a(nova_version)}/>
      <nova:name>{e(nova_name)}</nova:name>
      <nova:creationTime>{created}</nova:creationTime>
      <nova:flavor name={a(flavor_name)}>
        <nova:memory>{memory_mib}</nova:memory>
        <nova:disk>1</nova:disk>
        <nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral>
        <nova:vcpus>{vcpus}</nova:vcpus>{specs}
      </nova:flavor>
      <nova:owner>
        <nova:user uuid={a(user_uuid)}>admin</nova:user>
        <nova:project uuid={a(project_uuid)}>admin</nova:project>
      </nova:owner>
      <nova:root type="image" uuid={a(image_uuid)}/>
      <nova:ports/>
    </nova:instance>
  </metadata>"""
    serial_entry = f"\n      <entry name='serial'>{e(serial)}</entry>" if serial is not None else ""
    if image is not None:
        boot = (f"\n    <kernel>{e(str(image.kernel))}</kernel>"
                f"\n    <initrd>{e(str(image.initrd))}</initrd>"
                f"\n    <cmdline>console=ttyS0 quiet</cmdline>")
    else:
        boot = "\n    <boot dev='hd'/>"
    if console_log is not None:
        src = f"<source path={a(str(console_log))} append='on'/>"
        chardevs = (f"\n    <serial type='file'>{src}<target port='0'/></serial>"
                    f"\n    <console type='file'>{src}<target type='serial' port='0'/></console>")
    else:
        chardevs = ("\n    <serial type='pty'><target port='0'/></serial>"
                    "\n    <console type='pty'><target type='serial' port='0'/></console>")
    return f"""<domain type='qemu'>
  <uuid>{e(uuid)}</uuid>
  <name>{e(name)}</name>
  <memory unit='KiB'>{memory_mib * 1024}</memory>
  <vcpu>{vcpus}</vcpu>{meta}
  <sysinfo type='smbios'>
    <system>
      <entry name='manufacturer'>OpenStack Foundation</entry>
      <entry name='product'>OpenStack Nova</entry>
      <entry name='version'>{e(nova_version)}</entry>{serial_entry}
      <entry name='uuid'>{e(uuid)}</entry>
      <entry name='family'>{e(host_serial_family)}</entry>
    </system>
  </sysinfo>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>{boot}
    <smbios mode='sysinfo'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <clock offset='utc'>
    <timer name='pit' tickpolicy='delay'/>
    <timer name='rtc' tickpolicy='catchup'/>
    <timer name='hpet' present='no'/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>{chardevs}
    <memballoon model='virtio'>
      <stats period='10'/>
    </memballoon>
  </devices>
</domain>
"""


# --------------------------------------------------------------------------- reading the guest

_SERIAL_RE = re.compile(rb"HOOKD-DMI-SERIAL=([^\r\n]*)\r?\n")


def read_guest_serial(console_log: pathlib.Path, timeout: float = 90, after_offset: int = 0) -> str:
    """Wait for a complete ``HOOKD-DMI-SERIAL=...`` line at or after byte after_offset; return the serial."""
    console_log = pathlib.Path(console_log)
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        try:
            with open(console_log, "rb") as f:
                f.seek(after_offset)
                data = f.read()
        except FileNotFoundError:
            data = b""
        m = _SERIAL_RE.search(data)
        if m:
            return m.group(1).decode(errors="replace")
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"no {SERIAL_LINE_PREFIX} line in {console_log} after offset {after_offset} within "
                f"{timeout}s; last 2 KB:\n{data[-2048:].decode(errors='replace')}")
        time.sleep(0.1)

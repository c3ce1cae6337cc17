"""The ACPI-aware variant of the busybox test guest: one that powers off on libvirt's
``shutdown`` (the ACPI power button), so Nova's soft reboot takes its real path (shutdown,
then start of the saved definition) instead of falling back to a hard reboot.

This module owns :func:`ensure_acpi_guest_image`: built once per machine, cached in
$HOOKD_TEST_CACHE/guest-acpi/img-<recipe>, from the same Debian packages as
tests/harness/guest.py's image (whose helpers it uses): the cloud kernel's vmlinuz plus its
own ``evdev.ko`` and ``button.ko`` (=m in Debian's cloud kernel, taken from the same .deb so
their vermagic matches), busybox-static, and ``tests/harness/guest/init-acpi``.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil

from tests.harness.guest import (BUSYBOX_PACKAGE, GuestImage, _apt_download, _apt_with_update,
                                 _extract_members, _Newc, _resolve_kernel_package, build_cached_image)
from tests.harness.libvirt_host import cache_root

INIT_SCRIPT = pathlib.Path(__file__).with_name("guest") / "init-acpi"
MODULES = ("drivers/input/evdev.ko", "drivers/acpi/button.ko")     # load order


def _recipe_key() -> str:
    import hashlib
    h = hashlib.sha256(b"acpi-1")
    h.update(INIT_SCRIPT.read_bytes())
    return h.hexdigest()[:12]


def ensure_acpi_guest_image() -> GuestImage:
    return build_cached_image(cache_root() / "guest-acpi" / f"img-{_recipe_key()}", _build_into)


def _build_into(build: pathlib.Path) -> None:
    dl = build / "dl"
    dl.mkdir()
    kpkg = _apt_with_update(_resolve_kernel_package)
    kdeb = _apt_with_update(lambda: _apt_download(kpkg, dl))
    bdeb = _apt_with_update(lambda: _apt_download(BUSYBOX_PACKAGE, dl))
    wanted = re.compile(r"(boot/vmlinuz-.*|(usr/)?lib/modules/[^/]+/kernel/(%s))" % "|".join(map(re.escape, MODULES)))
    kfiles = _extract_members(kdeb, lambda n: wanted.fullmatch(n) is not None)
    kernels = [n for n in kfiles if n.startswith("boot/")]
    modules = {m: [n for n in kfiles if n.endswith("/kernel/" + m)] for m in MODULES}
    if len(kernels) != 1 or any(len(v) != 1 for v in modules.values()):
        raise RuntimeError(f"expected one vmlinuz and one of each of {MODULES} in {kdeb.name}, found {sorted(kfiles)}")
    bfiles = _extract_members(bdeb, lambda n: n in ("bin/busybox", "usr/bin/busybox"))
    if len(bfiles) != 1:
        raise RuntimeError(f"expected one busybox in {bdeb.name}, found {sorted(bfiles)}")
    (busybox,) = bfiles.values()

    c = _Newc()
    for d in ("bin", "dev", "proc", "sys", "tmp", "lib"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.file("bin/busybox", busybox, 0o755)
    c.symlink("bin/sh", "busybox")
    for m, (name,) in modules.items():
        c.file("lib/" + m.rsplit("/", 1)[1], kfiles[name])
    c.file("init", INIT_SCRIPT.read_bytes(), 0o755)
    import gzip
    (build / "initrd.img").write_bytes(gzip.compress(c.finish(), compresslevel=6, mtime=0))
    (build / "vmlinuz").write_bytes(kfiles[kernels[0]])
    shutil.rmtree(dl)
    (build / "manifest.json").write_text(json.dumps({
        "kernel_deb": kdeb.name, "busybox_deb": bdeb.name, "modules": sorted(modules),
        "recipe": _recipe_key()}, indent=1) + "\n")

"""The ttyS0 variant of the busybox test guest, for Nova's rescue (tests/nova): the plain
guest's kernel and initramfs (tests/harness/guest.py) with a second cpio archive appended
to the initramfs (the kernel unpacks concatenated archives in order, later files win) that
replaces ``/init`` by ``tests/harness/guest/init-ttys0`` and adds ``/dev/ttyS0``. That init
writes its serial line to ttyS0 directly: Nova's rescue boot forces
``console=tty0 console=ttyS0 console=hvc0``, which makes /dev/console hvc0.

This module owns :func:`ensure_ttys0_guest_image`: derived (in a few ms) from the cached
plain image, cached beside it in $HOOKD_TEST_CACHE/guest-ttys0/img-<recipe>.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import shutil
import tempfile

from tests.harness.guest import GuestImage, _Newc, ensure_guest_image
from tests.harness.libvirt_host import cache_root

INIT_SCRIPT = pathlib.Path(__file__).with_name("guest") / "init-ttys0"


def ensure_ttys0_guest_image() -> GuestImage:
    base = ensure_guest_image()
    h = hashlib.sha256(b"ttys0-1")
    for part in (INIT_SCRIPT.read_bytes(), base.initrd.read_bytes()):
        h.update(part)
    final = cache_root() / "guest-ttys0" / f"img-{h.hexdigest()[:12]}"
    image = GuestImage(kernel=final / "vmlinuz", initrd=final / "initrd.img")
    if final.exists():
        return image
    final.parent.mkdir(parents=True, exist_ok=True)
    build = pathlib.Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        c = _Newc()
        c.dir("dev")
        c.chardev("dev/ttyS0", 4, 64)
        c.file("init", INIT_SCRIPT.read_bytes(), 0o755)
        (build / "initrd.img").write_bytes(base.initrd.read_bytes()
                                           + gzip.compress(c.finish(), compresslevel=6, mtime=0))
        shutil.copyfile(base.kernel, build / "vmlinuz")
        os.chmod(build, 0o755)
        try:
            os.rename(build, final)             # another session won the race: use its copy
        except OSError:
            shutil.rmtree(build, ignore_errors=True)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return image

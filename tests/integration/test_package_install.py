"""The packages, built and installed for real.

packaging/check-install builds the .deb from this tree, installs it with apt into a
fresh minbase Debian 12 root and a Debian 13 root (debootstrap; cached under /var/cache/hookd-tests) and
checks the files, the shim, `hookctl check-config`, the daemon from the installed
files answering `hookctl status`, the shim reaching it, remove and purge. The RPM is
built with rpmbuild and its payload compared with the .deb's.
Needs root and the network to the Debian archive (first run); fails, not skips,
without them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.harness.run import REPO

pytestmark = [pytest.mark.slow, pytest.mark.libvirt]

PKG = REPO / "packaging"
# A first run on a fresh machine installs the build tools and debootstraps (~1-3 min).
CHECK_INSTALL_TIMEOUT = 1500


def require_root():
    if os.geteuid() != 0:
        pytest.fail("packaging tests need root (debootstrap, chroot, mounts)", pytrace=False)


# Debian 12 (systemd 252, Python 3.11) and Debian 13 (systemd 257, Python 3.13, where
# asyncio's UNIX server would unlink an inherited socket on close): the .deb built here,
# installed into each, booted under its own systemd.
@pytest.mark.parametrize("suite", ["bookworm", "trixie"])
def test_check_install_passes(suite):
    require_root()
    r = subprocess.run([str(PKG / "check-install"), "--suite", suite], capture_output=True, text=True,
                       timeout=CHECK_INSTALL_TIMEOUT, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"check-install failed:\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}"
    assert f"all checks passed (hookd_" in r.stdout and f" in {suite})" in r.stdout
    # The sandbox and the socket that must survive a restart, under that release's systemd.
    for want in ("socket-kept=yes", "status-after-restart=ok", "watchdog-restart=yes"):
        assert f"    {want}" in r.stdout, want
    # Nothing it mounted is left on the host.
    with open("/proc/self/mounts") as f:
        assert "hookd-check-install" not in f.read()


def _deb_files(deb) -> set:
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    return {line.split(" -> ")[0].split()[-1].lstrip(".") for line in out.splitlines() if not line.startswith("d")}


def test_rpm_builds_and_ships_what_the_deb_ships():
    require_root()
    subprocess.run(["sh", str(PKG / "install-build-deps")], check=True, timeout=CHECK_INSTALL_TIMEOUT,
                   stdin=subprocess.DEVNULL)
    if shutil.which("rpmbuild") is None:
        pytest.fail("rpmbuild missing after packaging/install-build-deps", pytrace=False)
    for script in ("build-rpm", "build-deb"):
        r = subprocess.run([str(PKG / script), "--no-lint"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{script}:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    from hookd import __version__
    arch = subprocess.run(["uname", "-m"], capture_output=True, text=True, check=True).stdout.strip()
    rpm = REPO / "dist" / f"hookd-{__version__}-1.el9.{arch}.rpm"     # build-rpm's default --dist
    deb_arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                              check=True).stdout.strip()
    deb = next((REPO / "dist").glob(f"hookd_{__version__}-*_{deb_arch}.deb"))
    listing = subprocess.run(["rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]", str(rpm)],
                             capture_output=True, text=True, check=True).stdout
    rpm_files = {line.split(" ", 1)[1] for line in listing.splitlines() if not line.startswith("d")}
    deb_files = _deb_files(deb)

    def normalise(paths):
        out = set()
        for p in paths:
            if "__pycache__" in p or p.startswith(("/usr/share/doc/", "/usr/share/lintian/", "/usr/lib/.build-id/")) \
                    or "/dist-packages/" in p \
                    or "/site-packages/" in p or p.endswith(".preset"):
                continue
            p = re.sub(r"^/lib/systemd/", "/usr/lib/systemd/", p)
            # The compiled shim: Debian's /usr/lib/hookd, Fedora's /usr/libexec/hookd.
            p = re.sub(r"^/usr/libexec/hookd/", "/usr/lib/hookd/", p)
            out.add(re.sub(r"\.gz$", "", p))
        return out

    assert normalise(rpm_files) == normalise(deb_files)
    # RHEL 9's Python path, not Debian's (tests/platforms/test_rpm_install.py installs it).
    assert "/usr/lib/python3.9/site-packages/hookd/__init__.py" in rpm_files
    assert not [p for p in rpm_files if "/dist-packages/" in p]
    for f in ("/etc/libvirt/hooks/qemu.d/50-hookd", "/etc/libvirt/hooks/qemu.d/50-hookd.conf", "/usr/bin/hookd",
              "/usr/bin/hookctl", "/usr/libexec/hookd/hookd-shim", "/etc/hookd/hookd.conf"):
        assert f in rpm_files
    assert "/etc/libvirt/hooks/qemu" not in rpm_files | deb_files
    # The hook is a link to the compiled shim (not a config file), its settings a config file.
    rpm_modes = subprocess.run(["rpm", "-qp", "--qf",
                                "[%{FILEMODES:perms}|%{FILEFLAGS:fflags}|%{FILENAMES}|%{FILELINKTOS}\n]",
                                str(rpm)], capture_output=True, text=True, check=True).stdout
    lines = {f[2]: (f[0], f[1], f[3]) for f in (line.split("|") for line in rpm_modes.splitlines())}
    assert lines["/etc/libvirt/hooks/qemu.d/50-hookd"] == ("lrwxrwxrwx", "", "/usr/libexec/hookd/hookd-shim")
    assert lines["/etc/libvirt/hooks/qemu.d/50-hookd.conf"][:2] == ("-rw-r--r--", "cn")
    assert lines["/usr/libexec/hookd/hookd-shim"][:2] == ("-rwxr-xr-x", "")
    scripts = subprocess.run(["rpm", "-qp", "--scripts", str(rpm)], capture_output=True, text=True,
                             check=True).stdout
    assert "try-reload-or-restart" in scripts

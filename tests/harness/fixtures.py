"""The real-libvirt fixtures shared by the integration and reliability suites:
``libvirt_hosts`` (a factory of namespaced :class:`LibvirtHost` s, all stopped at
teardown, even when the test failed), the session-wide ``guest_image`` (the busybox
guest, built once per machine and cached), ``hookd_factory``, ``hookd_stack`` and
``etcd``. These tests need root and Debian's libvirt/QEMU; without them they FAIL with
a message saying what is missing (a skip would look like a pass).

Each suite's conftest.py imports them from here; no suite imports another's.
"""


from __future__ import annotations

import os
import shutil

import pytest

from tests.harness.guest import GuestImage, ensure_guest_image
from tests.harness.libvirt_host import LIBVIRTD, VIRSH, VIRTLOGD, LibvirtHost

_NEEDED_BINARIES = (LIBVIRTD, VIRTLOGD, VIRSH, "/usr/bin/qemu-system-x86_64")


def require_libvirt_environment() -> None:
    """pytest.fail (not skip) unless this machine can run a namespaced libvirtd."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not running as root (needs mount namespaces and a system libvirtd)")
    for path in _NEEDED_BINARIES:
        if not os.access(path, os.X_OK):
            problems.append(f"{path} missing")
    for tool in ("unshare", "nsenter", "apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not on PATH")
    if problems:
        pytest.fail("real-libvirt tests cannot run here: " + "; ".join(problems)
                    + " -- run as root after `sh scripts/install-deps`", pytrace=False)


@pytest.fixture
def libvirt_env() -> None:
    """Fails the test (no skip) unless root + libvirt + QEMU are available."""
    require_libvirt_environment()


@pytest.fixture
def libvirt_hosts(tmp_path):
    """Factory make(name="a", host_uuid=None, setup_hooks=None) -> started LibvirtHost.

    setup_hooks(hooks_dir) is called before the host starts (libvirt only sees
    hook files present at its start). Hosts live under tmp_path/"h"/<name>.
    """
    require_libvirt_environment()
    hosts: list[LibvirtHost] = []

    def make(name: str = "a", host_uuid: str | None = None, setup_hooks=None) -> LibvirtHost:
        host = LibvirtHost(tmp_path / "h", name, host_uuid)
        hosts.append(host)
        if setup_hooks is not None:
            setup_hooks(host.hooks_dir)
        host.start()
        return host

    yield make

    errors = []
    for host in reversed(hosts):
        try:
            host.stop()
        except Exception as e:  # keep stopping the others
            errors.append(f"{host.name}: {e}")
    if errors:
        pytest.fail("stopping libvirt hosts failed: " + "; ".join(errors), pytrace=False)


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The busybox guest that prints its DMI serial (built once, cached in $HOOKD_TEST_CACHE/guest)."""
    require_libvirt_environment()
    return ensure_guest_image()


@pytest.fixture
def hookd_factory(tmp_path):
    """Factory make(name="hookd", config_extra="", proxy=False, libvirt_socket=None) -> HookdProcess
    (not started); every daemon is stopped by pid at teardown."""
    from tests.harness.hookd_proc import HookdProcess
    daemons = []

    def make(name: str = "hookd", **kw) -> HookdProcess:
        d = HookdProcess(tmp_path / "d", name=name, **kw)
        daemons.append(d)
        return d

    yield make
    for d in daemons:
        d.stop()


@pytest.fixture
def etcd(tmp_path):
    """A started real etcd on loopback (stopped by pid at teardown)."""
    from tests.harness.etcd_proc import EtcdProcess
    e = EtcdProcess(tmp_path / "etcd").start()
    yield e
    e.stop()


@pytest.fixture
def hookd_stack(libvirt_hosts, hookd_factory):
    """Factory make(name="a", config_extra="", hook_timeout=5, on_unreachable="allow", host_uuid=None)
    -> (host, hookd): a namespaced libvirtd whose qemu.d holds hookd's shim (written before
    libvirtd starts: libvirt only sees hook files present at its start), and a started hookd
    whose proxy fronts that libvirtd and whose events and reconciler follow it."""

    def make(name: str = "a", *, config_extra: str = "", hook_timeout: float = 5.0,
             on_unreachable: str = "allow", host_uuid=None):
        made = {}

        def setup_hooks(hooks_dir):
            made["d"] = hookd_factory(f"hookd-{name}", proxy=True, config_extra=config_extra)
            made["d"].install_hook(hooks_dir, timeout=hook_timeout, on_unreachable=on_unreachable)
        host = libvirt_hosts(name, host_uuid=host_uuid, setup_hooks=setup_hooks)
        d = made["d"]
        d.follow(host)
        d.start()
        return host, d
    return make

"""Fixtures of the nova suite: Nova's own libvirt driver (tests/harness/nova.py) against a
namespaced libvirtd fronted by hookd's proxy, with the shim in on_mismatch = deny."""

from __future__ import annotations

import pytest

from tests.harness.fixtures import (  # noqa: F401  (fixtures)
    etcd,
    guest_image,
    hookd_factory,
    hookd_stack,
    libvirt_hosts,
)
from tests.harness.fixtures import require_libvirt_environment
from tests.harness.nova import HOST_SERIAL, NovaCompute, ensure_nova_venv


@pytest.fixture(scope="session")
def nova_python():
    """The Nova venv's python (built on first use; fails, never skips, without PyPI)."""
    return ensure_nova_venv()


@pytest.fixture(scope="session")
def acpi_guest_image():
    """The busybox guest that also powers off on the ACPI power button (tests/harness/acpi_guest.py)."""
    require_libvirt_environment()
    from tests.harness.acpi_guest import ensure_acpi_guest_image
    return ensure_acpi_guest_image()


@pytest.fixture(scope="session")
def ttys0_guest_image():
    """The busybox guest that prints on ttyS0 whatever /dev/console is (tests/harness/ttys0_guest.py),
    for Nova's rescue boot."""
    require_libvirt_environment()
    from tests.harness.ttys0_guest import ensure_ttys0_guest_image
    return ensure_ttys0_guest_image()


@pytest.fixture
def nova_stack(hookd_stack, nova_python, guest_image, tmp_path):
    """Factory make(via="proxy", image=guest_image, name="a", ...) -> (host, hookd, nova): a
    libvirtd whose host UUID is host_uuid (HOST_SERIAL), hookd (proxy on, shim deny) and
    Nova's driver process started (init_host done) with connection_uri = hookd's proxy
    (via="proxy") or libvirt's own socket (via="libvirt", the contrast). A second host
    (name="b") gets its own host UUID, my_ip and (unless ``instances`` shares the first's)
    its own instances path; ``uuid`` makes it serve the same instance; ``config_extra`` is
    appended to hookd's configuration; ``concurrency`` is Nova's ``[DEFAULT] concurrency_backend``
    (``threading``, nova-compute's default in Nova 34, or ``eventlet``); ``start=False`` leaves
    the driver process unstarted. ``made`` (the fixture's list) has every driver made, so a
    test may add its own for teardown. The drivers are
    stopped by pid at teardown, before the libvirtds (which destroy what is left)."""
    made = []

    def make(via: str = "proxy", image=None, *, name: str = "a", host_uuid: str = HOST_SERIAL,
             my_ip: str = "127.0.0.1", uuid=None, instances=None, peer_libvirt_uris=None,
             config_extra: str = "", concurrency: str = "threading", sysinfo_serial: str = "hardware",
             on_mismatch: str = "deny", start: bool = True):
        host, d = hookd_stack(name, config_extra=f"[enforce]\non_mismatch = {on_mismatch}\n" + config_extra,
                              host_uuid=host_uuid)
        uri = f"qemu+unix:///system?socket={d.proxy_socket}" if via == "proxy" else host.uri
        nova = NovaCompute(nova_python, tmp_path / f"nova-{name}", connection_uri=uri,
                           guest_image=image or guest_image, host=f"compute-{name}", my_ip=my_ip,
                           instance_uuid=uuid, instances=instances, peer_libvirt_uris=peer_libvirt_uris,
                           concurrency=concurrency, sysinfo_serial=sysinfo_serial)
        made.append(nova)
        if start:
            nova.start()
        return host, d, nova

    make.made = made
    yield make
    for nova in made:
        nova.stop()

"""Fixtures of the integration suite: the real-libvirt ones, from tests.harness.fixtures."""

from tests.harness.fixtures import (  # noqa: F401  (fixtures)
    libvirt_env,
    libvirt_hosts,
    guest_image,
    hookd_factory,
    etcd,
    hookd_stack,
)

"""Nova's own LibvirtDriver (PyPI nova, tests/harness/nova.py) through hookd's proxy."""

from __future__ import annotations

import pytest

from tests.harness.guest import read_guest_serial
from tests.harness.nova import HOST_SERIAL

pytestmark = pytest.mark.libvirt


def test_spawn(nova_stack):
    host, d, nova = nova_stack()
    nova.call("spawn")
    print(host.virsh("dumpxml", nova.instance_name).stdout)
    assert read_guest_serial(nova.console_log, timeout=90) == nova.uuid

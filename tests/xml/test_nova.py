"""Nova metadata: every namespace version, the 2025.2 extras, two blocks."""

from __future__ import annotations

import pytest

from hookd.xml.domain import read_domain
from hookd.xml.nova import nova_ns_version
from tests.harness.domains import IMAGE, PROJECT, USER, domain, nova_block


def facts(xml):
    return read_domain(xml)[1]


@pytest.mark.parametrize("ns,version", [("1.0", (1, 0)), ("1.1", (1, 1)), ("1.2", (1, 2)), ("2.10", (2, 10))])
def test_every_namespace_version_is_read(ns, version):
    nova = facts(domain(ns=ns)).nova
    assert nova is not None and nova.ns_version == version
    assert (nova.name, nova.flavor_name, nova.project_uuid, nova.user_uuid) == ("web-1", "m1.small", PROJECT, USER)


@pytest.mark.parametrize("uri", [
    "http://openstack.org/xmlns/libvirt/nova/", "http://openstack.org/xmlns/libvirt/nova/x.y",
    "http://openstack.org/xmlns/libvirt/novax/1.0", "https://openstack.org/xmlns/libvirt/nova/1.0", None])
def test_other_namespaces_are_not_nova(uri):
    assert nova_ns_version(uri) is None


def test_fields_of_a_full_block():
    xml = domain(flavor_id="42", extra_specs={"hw:cpu_policy": "dedicated", "hookd:serial_mode": "host"},
                 image_uuid=IMAGE, image_props={"hw_disk_bus": "scsi", "hw_unique_serial": "true"})
    nova = facts(xml).nova
    assert nova.flavor_id == "42" and nova.creation_time == "2024-01-31 10:20:30"
    assert dict(nova.flavor_sizes) == {"memory": "2048", "disk": "20", "swap": "0", "ephemeral": "0", "vcpus": "1"}
    assert dict(nova.extra_specs) == {"hw:cpu_policy": "dedicated", "hookd:serial_mode": "host"}
    assert nova.image_uuid == IMAGE
    assert dict(nova.image_properties) == {"hw_disk_bus": "scsi", "hw_unique_serial": "true"}
    assert (nova.root_type, nova.root_uuid, nova.user_name, nova.project_name) == ("image", IMAGE, "alice", "demo")
    assert nova.package_version == "27.1.0"


def test_pre_2025_block_has_no_extras():
    nova = facts(domain()).nova
    assert nova.flavor_id is None and dict(nova.extra_specs) == {} and nova.image_uuid is None


def test_two_blocks_highest_version_wins_regardless_of_order():
    old = nova_block("1.0", name="old-name", flavor="old.flavor", prefix="nova")
    for first, second in ((old, nova_block("1.1", name="new-name", prefix="n11")),
                          (nova_block("1.1", name="new-name", prefix="n11"), old)):
        nova = facts(domain(nova=first, extra_blocks="\n    " + second)).nova
        assert (nova.ns_version, nova.name, nova.flavor_name, nova.block_count) == ((1, 1), "new-name", "m1.small", 2)


def test_ports_of_a_1_1_block():
    block = nova_block("1.1").replace(
        "</nova:instance>",
        '<nova:ports><nova:port uuid="p-1"><nova:ip type="fixed" address="10.0.0.5" ipVersion="4"/></nova:port>'
        '<nova:port uuid="p-2"/></nova:ports></nova:instance>')
    nova = facts(domain(nova=block)).nova
    assert [(p.uuid, p.ips) for p in nova.ports] == [("p-1", ("10.0.0.5",)), ("p-2", ())]


def test_non_nova_metadata_is_not_nova():
    other = '<libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0"><libosinfo:os id="x"/></libosinfo:libosinfo>'
    assert facts(domain(nova=other)).nova is None
    assert facts(domain(nova=None)).nova is None

"""hookd.xml.domain: read_domain's facts (identity, type, architecture, the sysinfo and
Nova parts it asks for) and its refusals, each an XmlError naming what was read."""

from __future__ import annotations

import pytest

from hookd.errors import XmlError
from hookd.policy.model import DomainFacts, SysinfoFacts
from hookd.xml.domain import parse_domain, read_domain
from hookd.xml.safe import parse_xml
from tests.harness.domains import HOST_SERIAL, UUID, domain


def test_facts_of_a_nova_domain():
    root, facts = read_domain(domain(name="instance-0000002a", arch="x86_64", virt_type="kvm"))
    assert root.tag == "domain" and root.findtext("name") == "instance-0000002a"
    assert isinstance(facts, DomainFacts)
    assert (facts.name, facts.uuid, facts.virt_type, facts.arch) == ("instance-0000002a", UUID, "kvm", "x86_64")
    assert facts.is_x86
    assert facts.sysinfo == SysinfoFacts(present=True, system_serial=HOST_SERIAL, system_uuid=UUID,
                                         chassis_serial=None, smbios_mode="sysinfo")
    assert facts.nova is not None and facts.nova.name == "web-1"


def test_the_root_returned_is_the_document_read():
    root, _ = read_domain(domain())
    # The caller edits this element and serialises it: it must be the parsed tree, whole.
    assert root.getparent() is None and root.find("devices/emulator").text == "/usr/bin/qemu-system-x86_64"


@pytest.mark.parametrize("arch,virt_type", [("aarch64", "kvm"), ("i686", "qemu"), ("s390x", "kvm")])
def test_type_and_arch_are_read_as_written(arch, virt_type):
    _, facts = read_domain(domain(arch=arch, virt_type=virt_type))
    assert (facts.arch, facts.virt_type) == (arch, virt_type)
    assert facts.is_x86 is (arch == "i686")


@pytest.mark.parametrize("written", [UUID.upper(), UUID.replace("-", ""), f"\n    {UUID}\n  "])
def test_uuid_is_canonical(written):
    data = f"<domain type='kvm'><name>n</name><uuid>{written}</uuid></domain>".encode()
    assert read_domain(data)[1].uuid == UUID


def test_missing_parts_are_none_or_empty():
    _, facts = read_domain(f"<domain><uuid>{UUID}</uuid></domain>".encode())
    assert (facts.name, facts.virt_type, facts.arch, facts.nova) == ("", None, None, None)
    assert facts.sysinfo == SysinfoFacts(present=False)
    assert not facts.is_x86
    # <os><type> without arch, an empty <name>, a name with spaces around it
    _, facts = read_domain(f"<domain><name>  vm 1 \n</name><uuid>{UUID}</uuid>"
                           f"<os><type>hvm</type></os></domain>".encode())
    assert (facts.name, facts.arch) == ("vm 1", None)
    _, facts = read_domain(f"<domain><name/><uuid>{UUID}</uuid></domain>".encode())
    assert facts.name == ""


def test_only_the_direct_children_count():
    # A <uuid> or <name> further down (a disk, metadata) is not the domain's.
    data = (f"<domain><metadata><x><uuid>{UUID}</uuid><name>meta</name></x></metadata>"
            f"<devices><disk><uuid>{UUID}</uuid></disk></devices></domain>").encode()
    with pytest.raises(XmlError, match="no <uuid>"):
        read_domain(data)


def test_a_non_nova_domain_has_no_nova_facts():
    _, facts = read_domain(domain(nova=None))
    assert facts.nova is None and facts.uuid == UUID


@pytest.mark.parametrize("data,message", [
    (b"<vm><uuid>" + UUID.encode() + b"</uuid></vm>", "root element is <vm>, not <domain>"),
    (b"<x:domain xmlns:x='urn:x'><uuid>" + UUID.encode() + b"</uuid></x:domain>",
     "root element is <domain>, not <domain>"),      # a namespaced <domain> is not libvirt's
    (b"<domain xmlns='http://libvirt.org/schemas/domain/1.0'><uuid>" + UUID.encode() + b"</uuid></domain>",
     "root element is <domain>, not <domain>"),
    (b"<domain><name>x</name></domain>", "domain has no <uuid>"),
    (b"<domain><uuid/></domain>", "domain has no <uuid>"),
    (b"<domain><uuid> \n\t</uuid></domain>", "domain has no <uuid>"),
    (b"<domain><uuid>not-a-uuid</uuid></domain>", "domain <uuid> 'not-a-uuid' is not a UUID"),
    (b"<domain><uuid> 1b0b8a5e-2c1d-4d7e-9f00-aabbccddeeff0 </uuid></domain>",
     "domain <uuid> '1b0b8a5e-2c1d-4d7e-9f00-aabbccddeeff0' is not a UUID"),
])
def test_refusals_name_what_was_read(data, message):
    with pytest.raises(XmlError) as err:
        read_domain(data, what="define XML")
    assert str(err.value) == f"define XML: {message}"
    assert isinstance(err.value.__cause__, XmlError)     # parse_domain's own error, chained


def test_default_what_is_domain_xml():
    with pytest.raises(XmlError, match=r"^domain XML: domain has no <uuid>$"):
        read_domain(b"<domain/>")


def test_a_long_bad_uuid_is_cut_in_the_message():
    junk = "z" * 500
    with pytest.raises(XmlError) as err:
        read_domain(f"<domain><uuid>{junk}</uuid></domain>".encode())
    assert f"'{'z' * 80}'" in str(err.value) and "z" * 81 not in str(err.value)


def test_parse_domain_on_a_parsed_root_raises_without_prefix():
    with pytest.raises(XmlError) as err:
        parse_domain(parse_xml(b"<vm/>"))
    assert str(err.value) == "root element is <vm>, not <domain>"
    facts = parse_domain(parse_xml(domain()))
    assert facts == read_domain(domain())[1]


def test_errors_of_the_parser_pass_through_with_what():
    with pytest.raises(XmlError, match=r"^proxy XML is not well-formed"):
        read_domain(b"<domain>", what="proxy XML")

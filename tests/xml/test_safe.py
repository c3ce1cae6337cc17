"""Hostile and malformed input to the XML entry point: refused, one clear reason."""

from __future__ import annotations

import pytest

from hookd.xml.domain import read_domain
from hookd.decision import evaluate
from hookd.errors import XmlError
from hookd.policy.serial import PolicyConfig
from hookd.xml.safe import MAX_XML_BYTES, parse_xml, serialize
from tests.harness.domains import UUID, domain

XXE_FILE = b"""<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<domain><name>&xxe;</name><uuid>""" + UUID.encode() + b"</uuid></domain>"
XXE_NET = b"""<!DOCTYPE domain SYSTEM "http://127.0.0.1:9/evil.dtd"><domain/>"""
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<domain><name>&lol4;</name></domain>"""
PARAM_ENTITY = b"""<!-- c --><!DOCTYPE d [<!ENTITY % p SYSTEM "file:///etc/shadow"> %p;]><domain/>"""


@pytest.mark.parametrize("data,fragment", [
    (XXE_FILE, "DOCTYPE"),
    (XXE_NET, "DOCTYPE"),
    (LAUGHS, "DOCTYPE"),
    (PARAM_ENTITY, "DOCTYPE"),
    (b"<domain><name>&undefined;</name></domain>", "not well-formed"),
    (b"<domain><name>x</domain>", "not well-formed"),
    (b"", "empty"),
    (b"   \n", "empty"),
    (b"<domain>\xff\xfe</domain>", "not valid UTF-8"),
    # libxml2 stops at a NUL after the root: what follows must not be half-read.
    (domain() + b"\0\0<!-- -- -->" + domain(), "NUL byte"),
    (b"<?xml version='1.0' encoding='ISO-8859-1'?><domain/>", "only UTF-8"),
    (b"<vm><uuid>" + UUID.encode() + b"</uuid></vm>", "root element is <vm>"),
    (b"<d:domain xmlns:d='urn:x'><uuid>" + UUID.encode() + b"</uuid></d:domain>", "root element is <domain>"),
    (b"<domain><name>x</name></domain>", "no <uuid>"),
    (b"<domain><uuid>  </uuid></domain>", "no <uuid>"),
    (b"<domain><uuid>not-a-uuid</uuid></domain>", "is not a UUID"),
    (b"<domain><uuid>1b0b8a5e-2c1d-4d7e-9f00-aabbccddeefg</uuid></domain>", "is not a UUID"),
])
def test_refused_with_reason(data, fragment):
    with pytest.raises(XmlError) as err:
        read_domain(data)
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg
    assert "root:" not in msg           # /etc/passwd content never shows up


def test_doctype_word_inside_comment_or_cdata_after_root_is_fine():
    data = domain().replace(b"<name>", b"<!-- <!DOCTYPE x> --><description><![CDATA[<!DOCTYPE y>]]></description><name>")
    _, facts = read_domain(data)
    assert facts.uuid == UUID


def test_oversize_is_refused_before_parsing():
    with pytest.raises(XmlError, match="over the"):
        parse_xml(b" " * (MAX_XML_BYTES + 1))


def test_large_domain_with_hundreds_of_disks_works():
    disks = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='/var/lib/nova/instances/{UUID}/disk.{i}'/>"
        f"<target dev='vd{i}' bus='virtio'/><serial>vol-{i:06d}</serial></disk>\n    " for i in range(600))
    notes = "<!-- " + ("x" * 1000 + "\n") * 3000 + " -->"
    data = domain().replace(b"<devices>", f"<devices>\n    {disks}{notes}".encode())
    assert len(data) > 3_000_000
    ev = evaluate(data, PolicyConfig())
    assert ev.decision.serial_policy == UUID and ev.xml.count(b"<disk ") == 600
    assert len(ev.xml) > 3_000_000


def test_serialize_keeps_prolog_and_epilog_bytes():
    data = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\n<!-- top -->\n<?pi a?>\n<domain a='1'>\n</domain>\n\n<!-- end -->\n"
    out = serialize(parse_xml(data), data)
    assert out.startswith(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\n<!-- top -->\n<?pi a?>\n<domain")
    assert out.endswith(b"</domain>\n\n<!-- end -->\n")


def test_bom_is_kept():
    data = b"\xef\xbb\xbf" + domain()
    ev = evaluate(data, PolicyConfig())
    assert ev.xml.startswith(b"\xef\xbb\xbf<domain")

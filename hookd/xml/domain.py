"""The libvirt <domain> document: identity, type and architecture.

Owns the paths to the domain-level facts hookd needs and `parse_domain`, which
assembles a hookd.policy.model.DomainFacts from a parsed document by asking the sysinfo
and Nova modules for their parts. It does not decide anything and never edits the
document (sysinfoxml does the only edit hookd makes).
"""

from __future__ import annotations

from hookd.xml import nova as novaxml, sysinfo as sysinfoxml
from hookd.errors import XmlError
from hookd.policy.model import DomainFacts, canonical_uuid
from hookd.xml.safe import parse_xml

ROOT_TAG = "domain"
PATH_NAME = "name"
PATH_UUID = "uuid"
PATH_OS_TYPE = "os/type"
ATTR_ARCH = "arch"
ATTR_TYPE = "type"


def parse_domain(root) -> DomainFacts:
    """Read the facts of a parsed domain document (see hookd.xml.safe.parse_xml)."""
    if root.tag != ROOT_TAG:
        raise XmlError(f"root element is <{_local(root.tag)}>, not <domain>")
    uuid_el = root.find(PATH_UUID)
    if uuid_el is None or not (uuid_el.text or "").strip():
        raise XmlError("domain has no <uuid>")
    uuid = canonical_uuid(uuid_el.text)
    if uuid is None:
        raise XmlError(f"domain <uuid> {(uuid_el.text or '').strip()[:80]!r} is not a UUID")
    name_el = root.find(PATH_NAME)
    os_type = root.find(PATH_OS_TYPE)
    return DomainFacts(
        name=(name_el.text or "").strip() if name_el is not None else "",
        uuid=uuid,
        virt_type=root.get(ATTR_TYPE),
        arch=os_type.get(ATTR_ARCH) if os_type is not None else None,
        sysinfo=sysinfoxml.parse_sysinfo(root),
        nova=novaxml.parse_nova_instance(root),
    )


def read_domain(data: bytes, *, what: str = "domain XML"):
    """Parse bytes into (root element, DomainFacts)."""
    root = parse_xml(data, what=what)
    try:
        return root, parse_domain(root)
    except XmlError as err:
        raise XmlError(f"{what}: {err}") from err


def _local(tag) -> str:
    if not isinstance(tag, str):
        return "?"
    return tag.rsplit("}", 1)[-1]

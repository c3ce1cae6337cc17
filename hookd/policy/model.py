"""Plain data describing one libvirt domain as hookd sees it.

Owns the value types passed between the XML readers (domainxml, sysinfoxml, novaxml)
and the policy. It must not import lxml or anything that parses XML: the policy
works on these objects only, so it can be reasoned about (and tested) without XML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

#: Architectures on which Nova emits <sysinfo type='smbios'> and QEMU builds SMBIOS
#: tables from it by default.
X86_ARCHES = frozenset({"i686", "x86_64"})


@dataclass(frozen=True)
class NovaPort:
    uuid: str
    ips: Tuple[str, ...] = ()


@dataclass(frozen=True)
class NovaInstance:
    """The <nova:instance> metadata block (highest namespace version present).

    The instance UUID is not part of it: Nova puts it in the domain <uuid>.
    """

    ns_version: Tuple[int, int]
    block_count: int = 1
    package_version: Optional[str] = None
    name: Optional[str] = None
    creation_time: Optional[str] = None
    flavor_name: Optional[str] = None
    flavor_id: Optional[str] = None
    flavor_sizes: Mapping[str, str] = field(default_factory=dict)
    extra_specs: Mapping[str, str] = field(default_factory=dict)
    user_uuid: Optional[str] = None
    user_name: Optional[str] = None
    project_uuid: Optional[str] = None
    project_name: Optional[str] = None
    root_type: Optional[str] = None
    root_uuid: Optional[str] = None
    image_uuid: Optional[str] = None
    image_properties: Mapping[str, str] = field(default_factory=dict)
    ports: Tuple[NovaPort, ...] = ()


@dataclass(frozen=True)
class SysinfoFacts:
    """What <sysinfo type='smbios'> and <os><smbios> say about the guest's SMBIOS."""

    present: bool = False
    system_serial: Optional[str] = None
    system_uuid: Optional[str] = None
    chassis_serial: Optional[str] = None
    smbios_mode: Optional[str] = None


@dataclass(frozen=True)
class DomainFacts:
    """The facts of one domain definition that the serial policy depends on."""

    name: str
    uuid: str                      # canonical lower-case 8-4-4-4-12 form
    virt_type: Optional[str]
    arch: Optional[str]
    sysinfo: SysinfoFacts
    nova: Optional[NovaInstance]

    @property
    def is_x86(self) -> bool:
        return self.arch in X86_ARCHES


_HEX = frozenset("0123456789abcdef")


def canonical_uuid(text: Optional[str]) -> Optional[str]:
    """Return the lower-case 8-4-4-4-12 form of a UUID, or None if it is not one.

    Accepts the dashed form and the 32-hex-digit form (Keystone writes project and
    user ids without dashes; libvirt accepts both for <uuid>).
    """
    if text is None:
        return None
    s = text.strip().lower()
    if len(s) == 36:
        if s[8] != "-" or s[13] != "-" or s[18] != "-" or s[23] != "-":
            return None
        s = s.replace("-", "")
    if len(s) != 32 or not _HEX.issuperset(s):
        return None
    return f"{s[:8]}-{s[8:12]}-{s[12:16]}-{s[16:20]}-{s[20:]}"

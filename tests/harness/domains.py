"""Builders of Nova-shaped domain XML for unit tests (what Nova's libvirt driver emits).

Kept apart from tests/data/corpus (hand-checked real-world shapes): these build the
many small variations the precedence and mode tests need.
"""

from __future__ import annotations

from typing import Dict, Optional
from xml.sax.saxutils import escape, quoteattr

UUID = "1b0b8a5e-2c1d-4d7e-9f00-aabbccddeeff"
PROJECT = "0123456789abcdef0123456789abcdef"
USER = "fedcba9876543210fedcba9876543210"
IMAGE = "a1b2c3d4-0000-4000-8000-000000000001"
HOST_SERIAL = "4c4c4544-0054-3510-8052-b7c04f564732"
NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/"


def nova_block(ns: str = "1.1", *, name: str = "web-1", flavor: str = "m1.small",
               flavor_id: Optional[str] = None, extra_specs: Optional[Dict[str, str]] = None,
               project: str = PROJECT, user: str = USER, root_type: str = "image",
               root_uuid: Optional[str] = IMAGE, image_uuid: Optional[str] = None,
               image_props: Optional[Dict[str, str]] = None, prefix: str = "nova") -> str:
    p = prefix
    fid = f" id={quoteattr(flavor_id)}" if flavor_id is not None else ""
    specs = ""
    if extra_specs:
        specs = f"<{p}:extraSpecs>" + "".join(
            f"<{p}:extraSpec name={quoteattr(k)}>{escape(v)}</{p}:extraSpec>" for k, v in extra_specs.items()
        ) + f"</{p}:extraSpecs>"
    image = ""
    if image_uuid is not None:
        props = ""
        if image_props:
            props = f"<{p}:properties>" + "".join(
                f"<{p}:property name={quoteattr(k)}>{escape(v)}</{p}:property>" for k, v in image_props.items()
            ) + f"</{p}:properties>"
        image = f"<{p}:image uuid={quoteattr(image_uuid)}>{props}</{p}:image>"
    root = f"<{p}:root type={quoteattr(root_type)} uuid={quoteattr(root_uuid)}/>" if root_uuid else ""
    return f"""<{p}:instance xmlns:{p}="{NOVA_NS}{ns}">
      <{p}:package version="27.1.0"/>
      <{p}:name>{escape(name)}</{p}:name>
      <{p}:creationTime>2024-01-31 10:20:30</{p}:creationTime>
      <{p}:flavor name={quoteattr(flavor)}{fid}>
        <{p}:memory>2048</{p}:memory>
        <{p}:disk>20</{p}:disk>
        <{p}:swap>0</{p}:swap>
        <{p}:ephemeral>0</{p}:ephemeral>
        <{p}:vcpus>1</{p}:vcpus>{specs}
      </{p}:flavor>
      <{p}:owner>
        <{p}:user uuid={quoteattr(user)}>alice</{p}:user>
        <{p}:project uuid={quoteattr(project)}>demo</{p}:project>
      </{p}:owner>
      {root}{image}
    </{p}:instance>"""


def domain(*, uuid: str = UUID, name: str = "instance-00000001", arch: str = "x86_64",
           virt_type: str = "kvm", serial: Optional[str] = HOST_SERIAL, sysinfo: bool = True,
           smbios: Optional[str] = "sysinfo", chassis_serial: Optional[str] = None,
           nova: Optional[str] = "", extra_blocks: str = "", nova_name: str = "web-1",
           **nova_kw) -> bytes:
    """A domain document; nova=None leaves out <metadata>, nova='' builds a default block."""
    if nova == "":
        nova = nova_block(name=nova_name, **nova_kw)
    metadata = f"""  <metadata>
    {nova}{extra_blocks}
  </metadata>
""" if nova is not None else ""
    sys_xml = ""
    if sysinfo:
        serial_xml = f"\n      <entry name='serial'>{escape(serial)}</entry>" if serial is not None else ""
        chassis = ""
        if chassis_serial is not None:
            chassis = f"""
    <chassis>
      <entry name='serial'>{escape(chassis_serial)}</entry>
    </chassis>"""
        sys_xml = f"""  <sysinfo type='smbios'>
    <system>
      <entry name='manufacturer'>OpenStack Foundation</entry>
      <entry name='product'>OpenStack Nova</entry>
      <entry name='version'>27.1.0</entry>{serial_xml}
      <entry name='uuid'>{uuid}</entry>
      <entry name='family'>Virtual Machine</entry>
    </system>{chassis}
  </sysinfo>
"""
    smbios_xml = f"\n    <smbios mode='{smbios}'/>" if smbios else ""
    return f"""<domain type='{virt_type}'>
  <name>{escape(name)}</name>
  <uuid>{uuid}</uuid>
{metadata}  <memory unit='KiB'>2097152</memory>
  <vcpu placement='static'>1</vcpu>
{sys_xml}  <os>
    <type arch='{arch}' machine='pc'>hvm</type>
    <boot dev='hd'/>{smbios_xml}
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
  </devices>
</domain>
""".encode()

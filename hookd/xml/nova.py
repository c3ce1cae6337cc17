"""Nova's <nova:instance> metadata block inside <metadata>.

Owns the namespace rules (every http://openstack.org/xmlns/libvirt/nova/X.Y is
read, the highest version wins when a domain carries several blocks, as interface
attach/detach can leave a 1.0 and a 1.1 block side by side) and the element paths
Nova writes (nova/virt/libvirt/config.py, LibvirtConfigGuestMetaNova*). It only
reads; hookd never edits Nova's metadata.
"""

from __future__ import annotations

import re
from typing import Dict, Optional

from hookd.policy.model import NovaInstance, NovaPort

NOVA_NS_PREFIX = "http://openstack.org/xmlns/libvirt/nova/"
NOVA_NS_1_0 = NOVA_NS_PREFIX + "1.0"
NOVA_NS_1_1 = NOVA_NS_PREFIX + "1.1"
_VERSION_RE = re.compile(r"(\d{1,4})\.(\d{1,4})")

PATH_METADATA = "metadata"
LOCAL_INSTANCE = "instance"
# Paths below <nova:instance>, relative, in the block's own namespace ("n:").
PATH_PACKAGE = "n:package"
PATH_NAME = "n:name"
PATH_CREATION_TIME = "n:creationTime"
PATH_FLAVOR = "n:flavor"
PATH_EXTRA_SPEC = "n:extraSpecs/n:extraSpec"
PATH_USER = "n:owner/n:user"
PATH_PROJECT = "n:owner/n:project"
PATH_ROOT = "n:root"
PATH_IMAGE = "n:image"
PATH_IMAGE_PROPERTY = "n:properties/n:property"
PATH_PORT = "n:ports/n:port"
PATH_PORT_IP = "n:ip"
FLAVOR_SIZES = ("memory", "disk", "swap", "ephemeral", "vcpus")


def nova_ns_version(namespace: Optional[str]):
    """(major, minor) for a Nova metadata namespace URI, else None."""
    if not namespace or not namespace.startswith(NOVA_NS_PREFIX):
        return None
    m = _VERSION_RE.fullmatch(namespace[len(NOVA_NS_PREFIX):])
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_nova_instance(root) -> Optional[NovaInstance]:
    metadata = root.find(PATH_METADATA)
    if metadata is None:
        return None
    blocks = []
    for child in metadata:
        if not isinstance(child.tag, str) or not child.tag.startswith("{"):
            continue
        ns, _, local = child.tag[1:].partition("}")
        version = nova_ns_version(ns) if local == LOCAL_INSTANCE else None
        if version is not None:
            blocks.append((version, ns, child))
    if not blocks:
        return None
    version, ns, block = max(blocks, key=lambda b: b[0])
    return _read_block(block, {"n": ns}, version, len(blocks))


def _text(el) -> Optional[str]:
    if el is None or el.text is None:
        return None
    return el.text.strip() or None


def _raw_text(el) -> Optional[str]:
    return el.text if el is not None and el.text else None


def _named_values(block, path, nsmap) -> Dict[str, str]:
    values = {}
    for el in block.iterfind(path, nsmap):
        name = el.get("name")
        if name is not None:
            values[name] = (el.text or "").strip()
    return values


def _read_block(block, nsmap, version, count) -> NovaInstance:
    flavor = block.find(PATH_FLAVOR, nsmap)
    user = block.find(PATH_USER, nsmap)
    project = block.find(PATH_PROJECT, nsmap)
    rootdisk = block.find(PATH_ROOT, nsmap)
    image = block.find(PATH_IMAGE, nsmap)
    package = block.find(PATH_PACKAGE, nsmap)
    sizes = {}
    specs = {}
    if flavor is not None:
        for size in FLAVOR_SIZES:
            value = _text(flavor.find("n:" + size, nsmap))
            if value is not None:
                sizes[size] = value
        specs = _named_values(flavor, PATH_EXTRA_SPEC, nsmap)
    ports = tuple(
        NovaPort(uuid=port.get("uuid") or "",
                 ips=tuple(ip.get("address") for ip in port.iterfind(PATH_PORT_IP, nsmap)
                           if ip.get("address")))
        for port in block.iterfind(PATH_PORT, nsmap))
    return NovaInstance(
        ns_version=version,
        block_count=count,
        package_version=package.get("version") if package is not None else None,
        # Verbatim: the tenant's name goes through serial validation as written.
        name=_raw_text(block.find(PATH_NAME, nsmap)),
        creation_time=_text(block.find(PATH_CREATION_TIME, nsmap)),
        flavor_name=flavor.get("name") if flavor is not None else None,
        flavor_id=flavor.get("id") if flavor is not None else None,
        flavor_sizes=sizes,
        extra_specs=specs,
        user_uuid=user.get("uuid") if user is not None else None,
        user_name=_text(user),
        project_uuid=project.get("uuid") if project is not None else None,
        project_name=_text(project),
        root_type=rootdisk.get("type") if rootdisk is not None else None,
        root_uuid=rootdisk.get("uuid") if rootdisk is not None else None,
        image_uuid=image.get("uuid") if image is not None else None,
        image_properties=_named_values(image, PATH_IMAGE_PROPERTY, nsmap) if image is not None else {},
        ports=ports,
    )

"""The SMBIOS part of a domain: <sysinfo type='smbios'> and <os><smbios mode=...>.

Owns the paths to the system and chassis serials and the one edit hookd makes to a
domain document, `set_system_serial`: it sets the serial (creating the sysinfo,
system and entry elements and <os><smbios mode='sysinfo'/> when asked), optionally
moves the previous serial to the chassis, and leaves every other node, attribute
and whitespace run as it was. New elements are indented like their siblings.
"""

from __future__ import annotations

from typing import Optional

from lxml import etree

from hookd.policy.model import SysinfoFacts

SYSINFO_TAG = "sysinfo"
SYSINFO_TYPE = "smbios"
PATH_SYSINFO = "sysinfo[@type='smbios']"
PATH_SYSTEM_SERIAL = "system/entry[@name='serial']"
PATH_SYSTEM_UUID = "system/entry[@name='uuid']"
PATH_CHASSIS_SERIAL = "chassis/entry[@name='serial']"
PATH_OS = "os"
PATH_SMBIOS = "os/smbios"
SMBIOS_MODE_SYSINFO = "sysinfo"

# libvirt's own formatting order, used to place new elements where libvirt would.
SYSINFO_CHILD_ORDER = ("bios", "system", "baseBoard", "chassis", "oemStrings")
SYSTEM_ENTRY_ORDER = ("manufacturer", "product", "version", "serial", "uuid", "sku", "family")
OS_CHILD_AFTER_SMBIOS = ("bios",)


def parse_sysinfo(root) -> SysinfoFacts:
    sysinfo = root.find(PATH_SYSINFO)
    smbios = root.find(PATH_SMBIOS)
    mode = smbios.get("mode") if smbios is not None else None
    if sysinfo is None:
        return SysinfoFacts(present=False, smbios_mode=mode)
    return SysinfoFacts(
        present=True,
        system_serial=_text(sysinfo.find(PATH_SYSTEM_SERIAL)),
        system_uuid=_text(sysinfo.find(PATH_SYSTEM_UUID)),
        chassis_serial=_text(sysinfo.find(PATH_CHASSIS_SERIAL)),
        smbios_mode=mode,
    )


def _text(el) -> Optional[str]:
    if el is None or el.text is None:
        return None
    return el.text.strip() or None


def set_system_serial(root, serial: str, *, chassis_serial: Optional[str] = None,
                      set_smbios_mode: bool = False) -> None:
    """Make the document carry `serial` as its SMBIOS system serial (in place)."""
    sysinfo = root.find(PATH_SYSINFO)
    if sysinfo is None:
        sysinfo = etree.Element(SYSINFO_TAG, type=SYSINFO_TYPE)
        os_el = root.find(PATH_OS)
        # libvirt formats <sysinfo> right before <os>.
        index = list(root).index(os_el) if os_el is not None else len(root)
        _insert(root, index, sysinfo)
    system = _child(sysinfo, "system", SYSINFO_CHILD_ORDER)
    entry = _entry(system, "serial", SYSTEM_ENTRY_ORDER)
    entry.text = serial
    if chassis_serial is not None:
        chassis = _child(sysinfo, "chassis", SYSINFO_CHILD_ORDER)
        _entry(chassis, "serial", ("manufacturer", "version", "serial", "asset", "sku")).text = chassis_serial
    if set_smbios_mode:
        os_el = root.find(PATH_OS)
        if os_el is None:
            os_el = etree.Element("os")
            _insert(root, len(root), os_el)
        smbios = os_el.find("smbios")
        if smbios is None:
            smbios = etree.Element("smbios")
            index = len(os_el)
            for i, child in enumerate(os_el):
                if child.tag in OS_CHILD_AFTER_SMBIOS:
                    index = i
                    break
            _insert(os_el, index, smbios)
        smbios.set("mode", SMBIOS_MODE_SYSINFO)


def _child(parent, tag, order):
    found = parent.find(tag)
    if found is not None:
        return found
    new = etree.Element(tag)
    _insert(parent, _ordered_index(parent, tag, order, lambda c: c.tag), new)
    return new


def _entry(parent, name, order):
    for child in parent.iterfind("entry"):
        if child.get("name") == name:
            return child
    new = etree.Element("entry", name=name)
    _insert(parent, _ordered_index(parent, name, order, lambda c: c.get("name")), new)
    return new


def _ordered_index(parent, key, order, key_of) -> int:
    """Index after the last child that libvirt formats before `key`."""
    rank = order.index(key) if key in order else len(order)
    index = 0
    for i, child in enumerate(parent):
        if not isinstance(child.tag, str):
            continue
        k = key_of(child)
        if k in order and order.index(k) < rank:
            index = i + 1
    return index


def _is_blank(text: Optional[str]) -> bool:
    return text is None or text.strip() == ""


def _insert(parent, index: int, new) -> None:
    """Insert `new` at `index`, indenting it like its siblings."""
    children = list(parent)
    if not children:
        outer = _indent_before(parent)
        if outer is None:
            parent.append(new)
            return
        unit = _indent_unit(parent) or "  "
        # Blank text in a childless element is only its closing tag's indentation, which
        # the new child's tail (outer) now gives: replace it, do not append to it.
        parent.text = outer + unit if _is_blank(parent.text) else parent.text
        new.tail = outer
        parent.append(new)
        return
    if index == 0:
        new.tail = parent.text if _is_blank(parent.text) else None
        parent.insert(0, new)
        return
    prev = children[index - 1]
    if index == len(children):
        # The last child's tail is the closing tag's indentation; the sibling
        # separator is what precedes the first child.
        new.tail = prev.tail
        if _is_blank(parent.text) and _is_blank(prev.tail):
            prev.tail = parent.text
    else:
        new.tail = prev.tail if _is_blank(prev.tail) else None
    parent.insert(index, new)


def _indent_before(el) -> Optional[str]:
    """The newline and indentation before `el`'s start tag, or None if not on its own line."""
    parent = el.getparent()
    if parent is None:
        return "\n"        # the root element starts a line at column 0
    prev = el.getprevious()
    text = prev.tail if prev is not None else parent.text
    if text is None or not _is_blank(text) or "\n" not in text:
        return None
    return text[text.rfind("\n"):]


def _indent_unit(el) -> Optional[str]:
    """One level of indentation in this document: `el`'s indent minus its parent's."""
    parent = el.getparent()
    mine = _indent_before(el)
    outer = _indent_before(parent) if parent is not None else None
    if mine is None or outer is None or not mine.startswith(outer) or mine == outer:
        return None
    return mine[len(outer):]

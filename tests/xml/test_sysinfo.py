"""hookd.xml.sysinfo: parse_sysinfo (system and chassis serials, <os><smbios mode>, whether
<sysinfo type='smbios'> is there) and set_system_serial, the one edit hookd makes, checked
byte for byte against golden pairs: the evaluate pairs in tests/data/golden (called here
directly with the arguments the policy gives them) and edit-only pairs in
tests/data/golden/sysinfo (each .in.xml says in a comment how it is called)."""

from __future__ import annotations

import pytest

from hookd.policy.model import SysinfoFacts
from hookd.xml.safe import parse_xml, serialize
from hookd.xml.sysinfo import parse_sysinfo, set_system_serial
from tests.harness.domains import HOST_SERIAL, UUID, domain
from tests.harness.run import DATA

GOLDEN = DATA / "golden"


def sysinfo_of(data: bytes) -> SysinfoFacts:
    return parse_sysinfo(parse_xml(data))


def edited(data: bytes, serial: str, **kw) -> bytes:
    root = parse_xml(data)
    set_system_serial(root, serial, **kw)
    return serialize(root, data)


# ------------------------------------------------------------------------- parse

def test_parse_a_nova_sysinfo():
    assert sysinfo_of(domain(chassis_serial="CH-1", smbios="sysinfo")) == SysinfoFacts(
        present=True, system_serial=HOST_SERIAL, system_uuid=UUID, chassis_serial="CH-1", smbios_mode="sysinfo")


@pytest.mark.parametrize("mode", ["sysinfo", "emulate", "host", None])
def test_parse_smbios_mode(mode):
    assert sysinfo_of(domain(smbios=mode)).smbios_mode == mode
    # the mode is read even when there is no <sysinfo>
    assert sysinfo_of(domain(sysinfo=False, smbios=mode)) == SysinfoFacts(present=False, smbios_mode=mode)


def test_parse_without_serial_entries():
    facts = sysinfo_of(domain(serial=None))
    assert facts.present and facts.system_serial is None and facts.chassis_serial is None
    assert facts.system_uuid == UUID


@pytest.mark.parametrize("entry,serial", [
    ("<entry name='serial'>  ABC 1 \n</entry>", "ABC 1"),
    ("<entry name='serial'>   </entry>", None),
    ("<entry name='serial'/>", None),
    ("<entry name='Serial'>X</entry>", None),           # libvirt's names are lower case
    ("<entry name='product'>X</entry>", None),
    ("<entry>X</entry>", None),
])
def test_parse_serial_text(entry, serial):
    data = f"<domain><sysinfo type='smbios'><system>{entry}</system></sysinfo></domain>".encode()
    assert sysinfo_of(data).system_serial == serial


def test_parse_only_smbios_sysinfo_counts():
    fwcfg = b"<domain><sysinfo type='fwcfg'><system><entry name='serial'>F</entry></system></sysinfo></domain>"
    assert sysinfo_of(fwcfg) == SysinfoFacts(present=False)
    both = (b"<domain><sysinfo type='fwcfg'><entry name='opt/x'>y</entry></sysinfo>"
            b"<sysinfo type='smbios'><system><entry name='serial'>S</entry></system>"
            b"<chassis><entry name='serial'>C</entry></chassis></sysinfo></domain>")
    assert (sysinfo_of(both).system_serial, sysinfo_of(both).chassis_serial) == ("S", "C")


def test_parse_chassis_serial_is_not_the_system_serial():
    data = (b"<domain><sysinfo type='smbios'><chassis><entry name='serial'>C</entry></chassis>"
            b"<baseBoard><entry name='serial'>B</entry></baseBoard></sysinfo></domain>")
    assert sysinfo_of(data) == SysinfoFacts(present=True, chassis_serial="C")


def test_parse_an_empty_sysinfo_is_present():
    assert sysinfo_of(b"<domain><sysinfo type='smbios'/></domain>") == SysinfoFacts(present=True)


# ------------------------------------------------------------------ the edit, facts

def test_edit_replaces_the_serial_only():
    data = domain()
    out = edited(data, "NEW-1")
    assert sysinfo_of(out) == SysinfoFacts(present=True, system_serial="NEW-1", system_uuid=UUID,
                                           smbios_mode="sysinfo")
    assert out == data.replace(HOST_SERIAL.encode(), b"NEW-1").replace(b"'", b'"')


def test_edit_creates_sysinfo_system_and_entry_before_os():
    out = edited(domain(sysinfo=False, smbios=None), UUID)
    root = parse_xml(out)
    assert [c.tag for c in root][root.index(root.find("os")) - 1] == "sysinfo"
    assert sysinfo_of(out) == SysinfoFacts(present=True, system_serial=UUID, smbios_mode=None)


@pytest.mark.parametrize("before", ["emulate", "host", None])
def test_edit_sets_smbios_mode_only_when_asked(before):
    assert sysinfo_of(edited(domain(smbios=before), "S")).smbios_mode == before
    assert sysinfo_of(edited(domain(smbios=before), "S", set_smbios_mode=True)).smbios_mode == "sysinfo"
    root = parse_xml(edited(domain(smbios=before), "S", set_smbios_mode=True))
    assert len(root.findall("os/smbios")) == 1


def test_edit_moves_the_old_serial_to_the_chassis_when_asked():
    assert sysinfo_of(edited(domain(), UUID)).chassis_serial is None
    facts = sysinfo_of(edited(domain(), UUID, chassis_serial=HOST_SERIAL))
    assert (facts.system_serial, facts.chassis_serial) == (UUID, HOST_SERIAL)
    # an existing chassis serial is replaced, not doubled
    out = edited(domain(chassis_serial="CH-OLD"), UUID, chassis_serial=HOST_SERIAL)
    assert sysinfo_of(out).chassis_serial == HOST_SERIAL
    assert len(parse_xml(out).findall("sysinfo/chassis/entry[@name='serial']")) == 1


def test_edit_keeps_every_other_entry_in_order():
    root = parse_xml(domain())
    set_system_serial(root, "NEW", chassis_serial="OLD", set_smbios_mode=True)
    assert [(e.get("name"), e.text) for e in root.find("sysinfo/system")] == [
        ("manufacturer", "OpenStack Foundation"), ("product", "OpenStack Nova"), ("version", "27.1.0"),
        ("serial", "NEW"), ("uuid", UUID), ("family", "Virtual Machine")]
    assert [c.tag for c in root.find("sysinfo")] == ["system", "chassis"]
    assert [c.tag for c in root.find("os")] == ["type", "boot", "smbios"]


def test_edit_is_idempotent():
    once = edited(domain(sysinfo=False, smbios=None), "S", chassis_serial="C", set_smbios_mode=True)
    assert edited(once, "S", chassis_serial="C", set_smbios_mode=True) == once


def test_edit_without_os_creates_it_when_the_mode_is_asked():
    out = edited(f"<domain><uuid>{UUID}</uuid></domain>".encode(), "S", set_smbios_mode=True)
    assert out == (f'<domain><uuid>{UUID}</uuid><sysinfo type="smbios"><system><entry name="serial">S</entry>'
                   f'</system></sysinfo><os><smbios mode="sysinfo"/></os></domain>').encode()


# ------------------------------------------------------------------ the edit, bytes

#: tests/data/golden pairs of hookd.decision.evaluate, and the arguments its policy passes.
EVALUATE_PAIRS = {
    "host-serial-unique": (UUID, {}),
    "no-sysinfo-created": (UUID, {"set_smbios_mode": True}),
    "compact-one-line": (UUID, {"set_smbios_mode": True}),
    "chassis-template": ("ACME-1B0B8A5E-2C1D-4D7E-9F00-AABBCCDDEEFF",
                         {"chassis_serial": "HOSTSER-1", "set_smbios_mode": True}),
}
#: tests/data/golden/sysinfo pairs.
EDIT_PAIRS = {
    "bios-only-gains-system-and-chassis": {"chassis_serial": "OLD-SERIAL", "set_smbios_mode": True},
    "existing-entries-kept": {"chassis_serial": "OLD-SERIAL", "set_smbios_mode": True},
    "tabs-empty-sysinfo": {"set_smbios_mode": True},
    "whitespace-only-elements": {"chassis_serial": "OLD-SERIAL", "set_smbios_mode": True},
}


@pytest.mark.parametrize("case", sorted(EVALUATE_PAIRS))
def test_golden_evaluate_pairs(case):
    serial, kw = EVALUATE_PAIRS[case]
    data = (GOLDEN / f"{case}.in.xml").read_bytes()
    assert edited(data, serial, **kw) == (GOLDEN / f"{case}.out.xml").read_bytes()


def test_every_edit_pair_is_listed():
    assert sorted(p.name[:-len(".in.xml")] for p in (GOLDEN / "sysinfo").glob("*.in.xml")) == sorted(EDIT_PAIRS)


@pytest.mark.parametrize("case", sorted(EDIT_PAIRS))
def test_golden_edit_pairs(case):
    data = (GOLDEN / "sysinfo" / f"{case}.in.xml").read_bytes()
    assert b"set_system_serial(root, 'NEW-SERIAL'" in data     # the comment says how it is called
    assert edited(data, "NEW-SERIAL", **EDIT_PAIRS[case]) == (GOLDEN / "sysinfo" / f"{case}.out.xml").read_bytes()

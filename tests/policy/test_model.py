"""hookd.policy.model: canonical_uuid (the forms libvirt and Keystone write, and what is
not a UUID) and DomainFacts.is_x86 (the architectures Nova gives SMBIOS by default)."""

from __future__ import annotations

import dataclasses

import pytest

from hookd.policy.model import X86_ARCHES, DomainFacts, SysinfoFacts, canonical_uuid

CANON = "1b0b8a5e-2c1d-4d7e-9f00-aabbccddeeff"


@pytest.mark.parametrize("text", [
    CANON,
    CANON.upper(),
    "1B0b8A5e-2C1d-4D7e-9F00-aAbBcCdDeEfF",
    "1b0b8a5e2c1d4d7e9f00aabbccddeeff",              # Keystone's form
    "1B0B8A5E2C1D4D7E9F00AABBCCDDEEFF",
    f"  {CANON}\n",                                   # element text as written across lines
    "\t1b0b8a5e2c1d4d7e9f00aabbccddeeff ",
])
def test_accepted_forms_give_the_lower_case_dashed_form(text):
    assert canonical_uuid(text) == CANON


def test_the_nil_and_max_uuids_are_uuids():
    assert canonical_uuid("0" * 32) == "00000000-0000-0000-0000-000000000000"
    assert canonical_uuid("F" * 32) == "ffffffff-ffff-ffff-ffff-ffffffffffff"


@pytest.mark.parametrize("text", [
    None, "", "   ",
    CANON[:-1],                                       # 35 characters
    CANON + "0",                                      # 37
    "1b0b8a5e2c1d4d7e9f00aabbccddeef",                # 31 hex digits
    "1b0b8a5e2c1d4d7e9f00aabbccddeeff0",              # 33
    "1b0b8a5e-2c1d-4d7e-9f00-aabbccddeefg",           # not hex
    "1b0b8a5e2c1d4d7e9f00aabbccddeefz",
    "1b0b8a5e_2c1d_4d7e_9f00_aabbccddeeff",           # dashes elsewhere than 8-4-4-4-12 ...
    "1b0b8a5e2-c1d-4d7e-9f00-aabbccddeeff",
    "1b0b8a5e-2c1d4-d7e-9f00-aabbccddeeff",
    "1b0b8a5e-2c1d-4d7e9-f00-aabbccddeeff",
    "1b0b8a5e-2c1d-4d7e-9f00a-abbccddeeff",
    "----1b0b8a5e2c1d4d7e9f00aabbccddeeff",
    "1b0b-8a5e-2c1d-4d7e-9f00aabbccddeeff",           # 36 with 4 dashes in the wrong places
    "{1b0b8a5e-2c1d-4d7e-9f00-aabbccddeeff}",         # braces (a Windows form)
    "urn:uuid:1b0b8a5e-2c1d-4d7e-9f00-aabbccddeeff",
    "1b0b8a5e 2c1d 4d7e 9f00 aabbccddeeff",
    "1b0b8a5e-2c1d-4d7e-9f00-aabbccddeeff".replace("a", "\u0430"),   # Cyrillic a
    "\uff11b0b8a5e2c1d4d7e9f00aabbccddeeff",          # fullwidth digit one
])
def test_anything_else_is_not_a_uuid(text):
    assert canonical_uuid(text) is None


def facts(arch):
    return DomainFacts(name="d", uuid=CANON, virt_type="kvm", arch=arch, sysinfo=SysinfoFacts(), nova=None)


@pytest.mark.parametrize("arch", ["x86_64", "i686"])
def test_x86_arches(arch):
    assert facts(arch).is_x86 is True


@pytest.mark.parametrize("arch", ["aarch64", "ppc64le", "s390x", "armv7l", "riscv64", "i386", "X86_64",
                                  "x86-64", "amd64", "", None])
def test_other_or_unknown_arches_are_not_x86(arch):
    assert facts(arch).is_x86 is False


def test_x86_arches_are_the_two_libvirt_names():
    assert X86_ARCHES == {"i686", "x86_64"}


def test_facts_are_frozen_values():
    f = facts("x86_64")
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.arch = "aarch64"
    assert f == facts("x86_64") and hash(f.sysinfo) == hash(SysinfoFacts())
    assert SysinfoFacts() == SysinfoFacts(present=False, system_serial=None, system_uuid=None,
                                          chassis_serial=None, smbios_mode=None)

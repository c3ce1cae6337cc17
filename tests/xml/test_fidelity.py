"""Rewrite fidelity over the corpus of real Nova XML: only the intended change.

Input and output are canonicalised (C14N 2.0, comments kept) and compared line by
line; every line that differs must be one of the few lines a serial rewrite may
add or change. Golden in/out pairs pin the exact bytes for a few cases.
"""

from __future__ import annotations

import difflib
import json
import re

import pytest
from lxml import etree

from hookd.config import build_config, parse_ini
from hookd.xml.domain import read_domain
from hookd.decision import evaluate
from tests.harness.run import DATA

CORPUS = DATA / "corpus"
GOLDEN = DATA / "golden"
CORPUS_FILES = sorted(CORPUS.glob("*.xml"))
POLICIES = {
    "unique": "",
    "template-chassis": "[policy]\nmode = template\ntemplate = T-{uuid_hex}\nhost_serial_to_chassis = true\n",
    "host": "[policy]\nmode = host\n",
    "apply-non-nova": "[policy]\nnon_nova = apply\n",
}


def policy(text):
    sections = {}
    parse_ini(text, "t.conf", sections)
    return build_config(sections, ("t.conf",)).policy


def c14n_lines(data: bytes):
    return etree.canonicalize(xml_data=data.decode("utf-8"), with_comments=True).split("\n")


def test_corpus_is_there():
    assert len(CORPUS_FILES) >= 12, "tests/data/corpus holds the realistic Nova XMLs"


@pytest.mark.parametrize("pname", sorted(POLICIES))
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_only_the_serial_changes(path, pname):
    data = path.read_bytes()
    ev = evaluate(data, policy(POLICIES[pname]))
    d = ev.decision
    if d.verdict != "rewrite":
        assert ev.xml is None
        return
    _, after = read_domain(ev.xml)
    assert after.sysinfo.system_serial == d.serial_policy
    if d.chassis_serial:
        assert after.sysinfo.chassis_serial == d.chassis_serial
    if d.set_smbios_mode:
        assert after.sysinfo.smbios_mode == "sysinfo"
    # Only Nova's own facts may be read the same afterwards.
    _, before = read_domain(data)
    assert (after.uuid, after.name, after.nova, after.arch) == (before.uuid, before.name, before.nova, before.arch)

    serial_line = re.compile(r'\s*<entry name="serial">([^<]*)</entry>\s*')
    allowed_new = {'<sysinfo type="smbios">', "<system>", "</system>", "</sysinfo>", "<chassis>",
                   "</chassis>", '<smbios mode="sysinfo"></smbios>'}
    old, new = c14n_lines(data), c14n_lines(ev.xml)
    changed = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        changed += 1
        removed, added = old[i1:i2], new[j1:j2]
        for line in removed:
            m = serial_line.fullmatch(line)
            ok = (m is not None and m.group(1) == d.serial_current) or \
                line.strip() == '<smbios mode="emulate"></smbios>'
            assert ok, f"{path.name}: line removed or changed that is not the serial: {line!r}"
        for line in added:
            m = serial_line.fullmatch(line)
            if m is not None:
                assert m.group(1) in (d.serial_policy, d.chassis_serial), line
            else:
                assert line.strip() in allowed_new, f"{path.name}: unexpected new line {line!r}"
    assert changed >= 1


def test_manifest_describes_every_file():
    manifest = json.loads((CORPUS / "MANIFEST.json").read_text())
    assert sorted(m["file"] for m in manifest) == sorted(p.name for p in CORPUS_FILES)


def _manifest():
    path = CORPUS / "MANIFEST.json"
    return json.loads(path.read_text()) if path.exists() else []


@pytest.mark.parametrize("entry", _manifest(), ids=lambda m: m["file"] if isinstance(m, dict) else "none")
def test_parser_reads_what_the_manifest_says(entry):
    _, facts = read_domain((CORPUS / entry["file"]).read_bytes())
    assert facts.uuid == entry["instance_uuid"]
    assert facts.arch == entry["arch"] and facts.virt_type == entry["domain_type"]
    si = entry["sysinfo"]
    assert facts.sysinfo.present is (si is not None)
    if si is not None:
        assert facts.sysinfo.system_serial == si["system_serial"]
        assert facts.sysinfo.system_uuid == si["system_uuid"]
    assert facts.sysinfo.chassis_serial == entry["chassis_serial"]
    assert facts.sysinfo.smbios_mode == entry["smbios_mode"]
    nova = entry["nova"]
    if nova is None:
        assert facts.nova is None
        return
    n = facts.nova
    assert "%d.%d" % n.ns_version == nova["ns_version"] and n.block_count == nova["block_count"]
    assert (n.name, n.creation_time, n.flavor_name, n.flavor_id) == \
        (nova["name"], nova["creation_time"], nova["flavor_name"], nova["flavor_id"])
    assert n.flavor_sizes.get("memory") == str(nova["flavor_memory"])
    assert n.flavor_sizes.get("vcpus") == str(nova["flavor_vcpus"])
    assert dict(n.extra_specs) == nova["extra_specs"]
    assert (n.project_uuid, n.user_uuid, n.root_type, n.root_uuid, n.image_uuid) == \
        (nova["project_uuid"], nova["user_uuid"], nova["root_type"], nova["root_uuid"], nova["image_uuid"])
    assert dict(n.image_properties) == nova["image_properties"]
    assert [p.uuid for p in n.ports] == nova["ports"]


GOLDEN_CASES = sorted(p.name[:-len(".in.xml")] for p in GOLDEN.glob("*.in.xml"))


def test_golden_pairs_exist():
    assert len(GOLDEN_CASES) >= 4


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden(case):
    """tests/data/golden/CASE.in.xml + CASE.conf -> exactly CASE.out.xml."""
    conf = GOLDEN / f"{case}.conf"
    ev = evaluate((GOLDEN / f"{case}.in.xml").read_bytes(), policy(conf.read_text() if conf.exists() else ""))
    out = ev.xml if ev.xml is not None else (GOLDEN / f"{case}.in.xml").read_bytes()
    assert out == (GOLDEN / f"{case}.out.xml").read_bytes()

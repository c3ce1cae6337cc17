"""Hostile input to the policy core (hookd.decision.evaluate): property tests with hypothesis.

Arbitrary bytes, near-valid Nova domains (the corpus, mutated) and tenant-chosen
names go through the same entry point the hook handler, the proxy and hookctl use.
No daemon, no libvirt: pure functions, so hypothesis can try thousands of inputs.
"""

from __future__ import annotations

import pathlib
import time
import uuid as uuidlib
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookd.decision import evaluate
from hookd.errors import XmlError
from hookd.policy.serial import VERDICT_REWRITE, PolicyConfig, Rule, SerialTemplate, serial_problem
from tests.harness.attacks import attack_docs
from tests.harness.domains import domain, nova_block

CORPUS = sorted(p for p in (pathlib.Path(__file__).resolve().parents[1] / "data" / "corpus").glob("*.xml")
                if not p.name.startswith("90-"))
DOCS = [p.read_bytes() for p in CORPUS]
SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

POLICIES = [
    PolicyConfig(),
    PolicyConfig(mode="host"),
    PolicyConfig(mode="template", template=SerialTemplate.compile("{name}")),
    PolicyConfig(mode="template", template=SerialTemplate.compile("VM-{name}-{flavor}-{instance_name}")),
    PolicyConfig(mode="template", template=SerialTemplate.compile("{host_serial}"), host_serial_to_chassis=True),
    PolicyConfig(non_nova="apply", rules=(
        Rule(name="tpl", mode="template", template=SerialTemplate.compile("{project_id}:{user_id}"),
             flavor="*"),)),
]

# Snippets a mutation drops into a document: markup fragments, entity and DTD syntax,
# bytes that are not UTF-8, NULs, a lone surrogate's UTF-8 form, long runs.
SNIPPETS = [b"<", b">", b"&", b"&amp;", b"&#0;", b"&#xD800;", b"]]>", b"<![CDATA[", b"<!--", b"-->",
            b"<!DOCTYPE domain [<!ENTITY x 'y'>]>", b"&x;", b"\x00", b"\xff\xfe", b"\xed\xa0\x80",
            b"<sysinfo type='smbios'><system><entry name='serial'>a;b=c</entry></system></sysinfo>",
            b"<entry name='serial'></entry>", b"<uuid>not-a-uuid</uuid>", b"xmlns:nova='x'",
            b"<os><smbios mode='host'/></os>", b"A" * 5000, b"<a>" * 300]


def check(ev):
    """Properties every decision must have."""
    d = ev.decision
    if d.verdict == VERDICT_REWRITE:
        assert serial_problem(d.serial_policy) is None, d
        assert ev.xml is not None
    if d.mode in ("unique", "template") and d.serial_policy is not None:
        assert serial_problem(d.serial_policy) is None, d


def evaluate_all(data: bytes):
    """None if evaluate() refused `data` (XmlError), else how many policies rewrote it
    (each rewrite read back and checked)."""
    rewrites = 0
    for policy in POLICIES:
        try:
            ev = evaluate(data, policy)
        except XmlError:
            return None
        check(ev)
        if ev.xml is not None:
            # What hookd writes must read back as compliant with the same serial.
            again = evaluate(ev.xml, policy)
            assert again.decision.verdict != VERDICT_REWRITE, (again.decision, ev.xml[:300])
            assert again.decision.serial_current == ev.decision.serial_policy
            rewrites += 1
    return rewrites


class Tally:
    def __init__(self):
        self.decided = self.refused = self.rewritten = 0

    def __call__(self, data):
        rewrites = evaluate_all(data)
        if rewrites is None:
            self.refused += 1
        else:
            self.decided += 1
            self.rewritten += rewrites

    def __str__(self):
        return (f"{self.decided + self.refused} inputs: {self.decided} decided ({self.rewritten} rewrites read "
                f"back), {self.refused} XmlError, no other exception")


def run_property(record, fault, expected, strategy, examples, min_decided=0, min_rewritten=0):
    """Run the property (hypothesis raises on the first input that breaks it); then the row
    checks the inputs exercised it: at least min_decided got a decision (not XmlError) and
    min_rewritten rewrites were read back, else every input refused would pass."""
    tally = Tally()

    def prop(data):
        tally(data)
    given(strategy)(settings(max_examples=examples, **SETTINGS)(prop))()
    record(fault, expected + (f"; >= {min_decided} inputs decided, >= {min_rewritten} rewrites read back"
                              if min_decided or min_rewritten else ""),
           str(tally), ok=tally.decided + tally.refused > 0 and tally.decided >= min_decided
           and tally.rewritten >= min_rewritten)


def test_arbitrary_bytes_raise_only_xmlerror(record):
    """evaluate() on arbitrary bytes returns a valid decision or raises XmlError, nothing else."""
    # (random bytes are practically never a domain: all of them are refused)
    run_property(record, "arbitrary bytes to evaluate()", "XmlError or a valid decision, nothing else",
                 st.binary(max_size=2000), 400)


WELL_FORMED = [
    "<sysinfo type='smbios'><system><entry name='serial'>{t}</entry></system></sysinfo>",
    "<entry name='serial'>{t}</entry>", "<entry name='serial'/>", "<uuid>{t}</uuid>", "<name>{t}</name>",
    "<os><type arch='{t}'>hvm</type><smbios mode='host'/></os>", "<smbios mode='{t}'/>",
    "<chassis><entry name='serial'>{t}</entry></chassis>", "<metadata>{nova}</metadata>", "{nova}",
    "<sysinfo type='fwcfg'><entry name='opt/x'>{t}</entry></sysinfo>", "<!-- {t} -->", "<?pi {t}?>",
]
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
               max_size=70)


@st.composite
def mutated_domain(draw):
    """A corpus document with 1-4 mutations; most keep it well-formed so the policy runs."""
    doc = bytearray(draw(st.sampled_from(DOCS)))
    root_end = doc.rfind(b"</domain>")
    inner = [i + 1 for i in range(doc.find(b"<domain"), root_end) if doc[i] == ord(">")]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["element"] * 4 + ["text"] * 2 + ["raw"]))
        if kind == "element" and inner:
            i = draw(st.sampled_from(inner))
            t = escape(draw(TEXT), {"'": "&apos;"})
            nova = nova_block(draw(st.sampled_from(["1.0", "1.1", "1.2", "x"])), name=draw(TEXT),
                              flavor=draw(TEXT), extra_specs={"hookd:serial_mode": draw(
                                  st.sampled_from(["unique", "host", "template", "", "x"]))})
            snippet = draw(st.sampled_from(WELL_FORMED)).format(t=t, nova=nova).encode()
            doc[i:i] = snippet
            inner = [j if j < i else j + len(snippet) for j in inner]
        elif kind == "text" and inner:
            i = draw(st.sampled_from(inner))
            snippet = escape(draw(TEXT)).encode()
            doc[i:i] = snippet
            inner = [j if j < i else j + len(snippet) for j in inner]
        else:
            i = draw(st.integers(0, len(doc)))
            choice = draw(st.sampled_from(["insert", "delete", "replace"]))
            if choice == "insert":
                doc[i:i] = draw(st.sampled_from(SNIPPETS) | st.binary(max_size=20))
            elif choice == "delete":
                del doc[i:i + draw(st.integers(1, 40))]
            else:
                doc[i:i + 1] = draw(st.binary(min_size=1, max_size=3))
            inner = []
    return bytes(doc)


def test_corpus_itself_decides():
    """The unmutated corpus decides under every policy (the mutation base is sound)."""
    assert DOCS and all(evaluate_all(doc) is not None for doc in DOCS)


def test_near_valid_domains_raise_only_xmlerror(record):
    """Mutated Nova domains: XmlError or a decision whose serial is valid and whose rewrite reads back compliant."""
    run_property(record, "near-valid (mutated) Nova domains",
                 "XmlError or a decision with a valid serial; a rewrite reads back compliant",
                 mutated_domain(), 600, min_decided=150, min_rewritten=150)


XML_CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff") | \
    st.sampled_from(list(";=,\"'<>&\t\n :/@+._-"))


def test_tenant_names_reach_the_serial_only_when_valid(record):
    """Tenant-chosen nova:name / flavor name reach the serial only if the rendered serial is valid; otherwise the instance UUID."""
    seen = {"kept": 0, "fallback": 0}
    given(name=st.text(XML_CHARS, max_size=80), flavor=st.text(XML_CHARS, min_size=1, max_size=40))(
        settings(max_examples=500, **SETTINGS)(prop_tenant(seen)))()
    # Both branches must have been taken: with no valid (or no invalid) rendering among
    # the inputs the property says nothing about that branch.
    record("tenant-chosen nova:name / flavor in templates",
           "in the serial only when valid, else the instance UUID (both seen)",
           f"{seen['kept']} renderings kept, {seen['fallback']} fell back to the UUID; none invalid",
           ok=seen["kept"] > 0 and seen["fallback"] > 0)


def prop_tenant(seen):
    def prop(name, flavor):
        tenant_names(name, flavor, seen)
    return prop


def tenant_names(name, flavor, seen):
    uid = str(uuidlib.uuid4())
    doc = domain(uuid=uid, nova=nova_block(name=name, flavor=flavor), serial="legacy")
    for template in ("{name}", "SN-{name}", "{flavor}/{name}"):
        policy = PolicyConfig(mode="template", template=SerialTemplate.compile(template))
        ev = evaluate(doc, policy)
        check(ev)
        nova = ev.facts.nova
        rendered = template.replace("{name}", nova.name or "").replace("{flavor}", nova.flavor_name or "")
        d = ev.decision
        if serial_problem(rendered) is None:
            assert d.serial_policy == rendered and d.rule == "default", (d, rendered)
            seen["kept"] += 1
        else:
            assert d.serial_policy == uid and d.rule == "fallback-invalid-template", (d, rendered)
            seen["fallback"] += 1
        assert not set(d.serial_policy) & set(";=,\"'<>&\t\n\r")


def test_xxe_and_entity_expansion_refused(tmp_path, record):
    """DTDs, external/parameter entities and entity expansion are refused by evaluate() fast, reading no file; XInclude is not processed."""
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET-MARKER")
    outcomes = {}
    for what, doc in attack_docs(str(secret)).items():
        # CPU time of this thread, not wall time: an expansion would burn it, another
        # process's load does not (a wall-clock bound fails on a busy machine).
        t0 = time.thread_time()
        try:
            evaluate(doc, PolicyConfig())
            outcomes[what] = "ACCEPTED"
        except XmlError as err:
            outcomes[what] = "refused" if "TOP-SECRET" not in str(err) else "LEAKED"
        spent = time.thread_time() - t0
        if spent >= 1.0:
            outcomes[what] += f" after {spent:.1f} s of CPU"
    xinclude = domain(extra_blocks=f'<x xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="{secret}" '
                      f'parse="text"/></x>', serial="legacy")
    ev = evaluate(xinclude, PolicyConfig())
    outcomes["XInclude"] = "not processed" if b"TOP-SECRET" not in ev.xml else "PROCESSED"
    record("XXE / entity expansion (engine)", "every DTD/entity document refused (< 1 s CPU), no file read; "
           "XInclude inert",
           ", ".join(f"{k}: {v}" for k, v in outcomes.items()),
           ok=all(v in ("refused", "not processed") for v in outcomes.values()))
    assert all(v in ("refused", "not processed") for v in outcomes.values()), outcomes


@pytest.mark.parametrize("template", ["{name}", "x{uuid}{uuid}{uuid}"])
def test_rendered_serial_never_exceeds_limits(template):
    """A template that renders too long or from an empty name falls back to the UUID."""
    uid = str(uuidlib.uuid4())
    doc = domain(uuid=uid, nova=nova_block(name=" "), serial="legacy")
    ev = evaluate(doc, PolicyConfig(mode="template", template=SerialTemplate.compile(template)))
    assert ev.decision.serial_policy == uid and ev.decision.rule == "fallback-invalid-template"
    assert escape(uid) in ev.xml.decode()

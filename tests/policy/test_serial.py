"""The serial policy: every precedence step, every mode, every placeholder, validity."""

from __future__ import annotations

import pytest

from hookd.config import build_config, parse_ini
from hookd.decision import evaluate
from hookd.errors import ConfigError
from hookd.policy.serial import PLACEHOLDERS, PolicyConfig, SerialTemplate, serial_problem
from tests.harness.domains import HOST_SERIAL, IMAGE, PROJECT, USER, UUID, domain


def policy(text: str = "") -> PolicyConfig:
    sections = {}
    parse_ini(text, "test.conf", sections)
    return build_config(sections, ("test.conf",)).policy


def decide(xml: bytes, text: str = ""):
    return evaluate(xml, policy(text), rewrite=False).decision


# ------------------------------------------------------------ precedence steps

def test_step1_non_nova_ignored_by_default():
    d = decide(domain(nova=None))
    assert (d.verdict, d.rule, d.serial_policy) == ("not-nova", "not-nova", None)


def test_step1_non_nova_apply_treats_it_as_nova_with_empty_metadata():
    d = decide(domain(nova=None), "[policy]\nnon_nova = apply\n")
    assert (d.verdict, d.rule, d.serial_policy) == ("rewrite", "default", UUID)


def test_step1_non_nova_apply_renders_missing_metadata_as_empty_and_falls_back():
    d = decide(domain(nova=None), "[policy]\nnon_nova = apply\nmode = template\ntemplate = {name}\n")
    assert d.rule == "fallback-invalid-template" and d.serial_policy == UUID


def test_step2_non_x86_without_sysinfo_is_not_applicable():
    d = decide(domain(arch="aarch64", sysinfo=False, smbios=None))
    assert (d.verdict, d.rule) == ("not-applicable", "not-applicable")


def test_step2_non_x86_with_sysinfo_is_managed_but_gets_no_smbios_element():
    ev = evaluate(domain(arch="aarch64", smbios=None), policy())
    assert ev.decision.verdict == "rewrite" and not ev.decision.set_smbios_mode
    assert b"<smbios" not in ev.xml and UUID.encode() in ev.xml


def test_step2_x86_without_sysinfo_is_managed():
    d = decide(domain(sysinfo=False, smbios=None))
    assert (d.verdict, d.serial_current, d.serial_policy, d.set_smbios_mode) == ("rewrite", None, UUID, True)


def test_step2_rules_do_not_override_not_applicable():
    text = f"[rule:all]\ninstance = {UUID}\nmode = unique\n"
    assert decide(domain(arch="ppc64le", sysinfo=False, smbios=None), text).verdict == "not-applicable"


def test_step3_first_matching_rule_in_file_order_wins():
    text = f"""
[rule:first]
project = {PROJECT}
mode = host
[rule:second]
instance = {UUID}
mode = unique
"""
    d = decide(domain(), text)
    assert (d.rule, d.verdict, d.serial_policy) == ("rule:first", "compliant", HOST_SERIAL)


@pytest.mark.parametrize("criteria,matches", [
    (f"instance = {UUID.upper()}", True),
    ("instance = 00000000-0000-0000-0000-000000000000", False),
    (f"project = {PROJECT}", True),
    ("project = 01234567-89ab-cdef-0123-456789abcdef", True),      # dashed form of the same id
    ("project = ffffffffffffffffffffffffffffffff", False),
    ("flavor = m1.*", True),
    ("flavor = M1.*", False),                                       # globs are case-sensitive
    ("flavor = m2.*", False),
    (f"image = {IMAGE}", True),
    ("image = 00000000-0000-4000-8000-000000000000", False),
    (f"instance = 00000000-0000-0000-0000-000000000000, {UUID}", True),
    (f"instance = {UUID}\nflavor = m2.*", False),                   # every key must match
    (f"instance = {UUID}\nflavor = m1.small\nproject = {PROJECT}\nimage = {IMAGE}", True),
])
def test_step3_rule_criteria(criteria, matches):
    d = decide(domain(), f"[rule:r]\n{criteria}\nmode = host\n")
    assert (d.rule == "rule:r") is matches


def test_step3_image_rule_matches_nova_2025_2_image_element():
    other = "b1b2c3d4-0000-4000-8000-000000000002"
    xml = domain(root_type="volume", root_uuid="c0ffee00-0000-4000-8000-000000000003", image_uuid=other)
    assert decide(xml, f"[rule:r]\nimage = {other}\nmode = host\n").rule == "rule:r"


def test_step3_rule_beats_flavor_extra_spec():
    xml = domain(extra_specs={"hookd:serial_mode": "host"})
    assert decide(xml, f"[rule:r]\ninstance = {UUID}\nmode = unique\n").rule == "rule:r"


@pytest.mark.parametrize("value,mode", [("unique", "unique"), ("host", "host"), ("TEMPLATE", "template")])
def test_step4_hookd_flavor_mode(value, mode):
    xml = domain(extra_specs={"hookd:serial_mode": value})
    d = decide(xml, "[policy]\ntemplate = vm-{uuid_hex}\nmode = unique\n")
    assert (d.rule, d.mode) == ("flavor", mode)
    expected = {"unique": UUID, "host": HOST_SERIAL, "template": "vm-" + UUID.replace("-", "")}[mode]
    assert d.serial_policy == expected


def test_step4_explicit_host_in_flavor_beats_default_unique():
    d = decide(domain(extra_specs={"hookd:serial_mode": "host"}))
    assert (d.verdict, d.serial_policy) == ("compliant", HOST_SERIAL)


@pytest.mark.parametrize("word", ["1", "true", "TRUE", "yes", "On", "y", "T"])
def test_step4_hw_unique_serial_true_words(word):
    d = decide(domain(extra_specs={"hw:unique_serial": word}), "[policy]\nmode = host\n")
    assert (d.rule, d.serial_policy) == ("flavor", UUID)


@pytest.mark.parametrize("word", ["0", "false", "no", "off", "", "maybe"])
def test_step4_false_values_are_ignored(word):
    d = decide(domain(extra_specs={"hw:unique_serial": word}), "[policy]\nmode = host\n")
    assert d.rule == "default"


def test_step4_image_property():
    xml = domain(image_uuid=IMAGE, image_props={"hw_unique_serial": "yes"})
    d = decide(xml, "[policy]\nmode = host\n")
    assert (d.rule, d.serial_policy) == ("image", UUID)


def test_step4_false_flavor_does_not_mask_true_image():
    xml = domain(extra_specs={"hw:unique_serial": "false"}, image_uuid=IMAGE,
                 image_props={"hw_unique_serial": "true"})
    assert decide(xml, "[policy]\nmode = host\n").rule == "image"


@pytest.mark.parametrize("where", ["flavor", "image"])
def test_step4_guest_serial_unique(where):
    if where == "flavor":
        xml = domain(extra_specs={"hw:guest_serial": "Unique"})
    else:
        xml = domain(image_uuid=IMAGE, image_props={"hw_guest_serial": "unique"})
    d = decide(xml, "[policy]\nmode = host\n")
    assert (d.rule, d.serial_policy) == (where, UUID)


def test_step4_off_when_not_honoured():
    xml = domain(extra_specs={"hookd:serial_mode": "unique", "hw:unique_serial": "true"})
    d = decide(xml, "[policy]\nmode = host\nhonour_flavor_and_image = false\n")
    assert (d.rule, d.serial_policy) == ("default", HOST_SERIAL)


def test_step4_unknown_hookd_mode_value_is_ignored():
    d = decide(domain(extra_specs={"hookd:serial_mode": "bogus"}), "[policy]\nmode = host\n")
    assert d.rule == "default"


def test_step5_default_mode():
    d = decide(domain())
    assert (d.verdict, d.rule, d.mode, d.serial_current, d.serial_policy) == \
        ("rewrite", "default", "unique", HOST_SERIAL, UUID)


# ------------------------------------------------------------------------ modes

def test_unique_is_lower_case_canonical_uuid():
    d = decide(domain(uuid=UUID.upper().replace("-", "")))
    assert d.serial_policy == UUID and d.instance_uuid == UUID


def test_unique_compliant_when_already_set():
    d = decide(domain(serial=UUID))
    assert d.verdict == "compliant"


def test_unique_compliant_serial_without_smbios_mode_still_needs_rewrite():
    d = decide(domain(serial=UUID, smbios=None))
    assert d.verdict == "rewrite" and d.set_smbios_mode and "smbios" in d.reason


def test_host_mode_keeps_serial_and_never_rewrites():
    ev = evaluate(domain(), policy("[policy]\nmode = host\n"))
    assert ev.decision.verdict == "compliant" and ev.xml is None


def test_host_mode_without_serial_is_compliant():
    assert decide(domain(serial=None), "[policy]\nmode = host\n").verdict == "compliant"


PLACEHOLDER_VALUES = {
    "uuid": UUID,
    "uuid_hex": UUID.replace("-", ""),
    "uuid_upper": UUID.upper(),
    "name": "web-1",
    "instance_name": "instance-00000001",
    "project_id": PROJECT,
    "user_id": USER,
    "flavor": "m1.small",
    "host_serial": HOST_SERIAL,
}


def test_placeholder_table_covers_every_placeholder():
    assert set(PLACEHOLDER_VALUES) == set(PLACEHOLDERS)


@pytest.mark.parametrize("name", sorted(PLACEHOLDER_VALUES))
def test_template_placeholder(name):
    d = decide(domain(), f"[policy]\nmode = template\ntemplate = X-{{{name}}}\n")
    assert (d.verdict, d.serial_policy) == ("rewrite", "X-" + PLACEHOLDER_VALUES[name])


def test_template_from_rule_overrides_policy_template():
    text = f"[policy]\ntemplate = p-{{uuid}}\n[rule:r]\ninstance = {UUID}\nmode = template\ntemplate = r-{{flavor}}\n"
    assert decide(domain(), text).serial_policy == "r-m1.small"


def test_rule_template_mode_uses_policy_template():
    text = f"[policy]\ntemplate = p-{{uuid_hex}}\n[rule:r]\ninstance = {UUID}\nmode = template\n"
    assert decide(domain(), text).serial_policy == "p-" + UUID.replace("-", "")


@pytest.mark.parametrize("bad", ["{nope}", "{uuid.__class__}", "{uuid!r}", "{uuid:>70}", "{uuid", "}{"])
def test_unknown_placeholders_are_config_errors(bad):
    with pytest.raises(ConfigError) as err:
        policy(f"[policy]\nmode = template\ntemplate = {bad}\n")
    assert err.value.line == 3 and err.value.path == "test.conf"


# ---------------------------------------------------------------- validity

@pytest.mark.parametrize("serial,ok", [
    ("a", True), ("A" * 64, True), ("A" * 65, False), ("", False),
    ("Srv 1.2_3:4+5@6/7-8", True), (" lead", False), ("trail ", False),
    ("-dash-first", False), ("ds=nocloud;s=http://evil/", False), ("a,b", False),
    ("tab\tx", False), ("é", False), ("aé", False), ("a\nb", False), ("a\x00", False),
])
def test_serial_validity(serial, ok):
    assert (serial_problem(serial) is None) is ok


@pytest.mark.parametrize("tenant_name", [
    "ds=nocloud;s=http://10.0.0.1/", "web 1;rm", "ünïcode", "x" * 80, " lead", "trail ", ",,"])
def test_tenant_name_never_reaches_serial_unvalidated(tenant_name):
    d = decide(domain(nova_name=tenant_name), "[policy]\nmode = template\ntemplate = {name}\n")
    assert (d.rule, d.serial_policy) == ("fallback-invalid-template", UUID)
    assert "falls back" in d.reason


def test_valid_tenant_name_is_used():
    d = decide(domain(nova_name="web 1"), "[policy]\nmode = template\ntemplate = {name}\n")
    assert (d.rule, d.serial_policy) == ("default", "web 1")


def test_fallback_keeps_host_serial_to_chassis():
    d = decide(domain(nova_name="bad;name"), "[policy]\nmode = template\ntemplate = {name}\nhost_serial_to_chassis = true\n")
    assert d.serial_policy == UUID and d.chassis_serial == HOST_SERIAL


def test_flavor_template_without_template_configured_falls_back():
    d = decide(domain(extra_specs={"hookd:serial_mode": "template"}))
    assert (d.rule, d.serial_policy) == ("fallback-invalid-template", UUID)


# ---------------------------------------------------------------- chassis

def test_host_serial_moves_to_chassis():
    ev = evaluate(domain(), policy("[policy]\nhost_serial_to_chassis = true\n"))
    assert ev.decision.chassis_serial == HOST_SERIAL
    from hookd.xml.domain import read_domain
    _, facts = read_domain(ev.xml)
    assert (facts.sysinfo.system_serial, facts.sysinfo.chassis_serial) == (UUID, HOST_SERIAL)


def test_existing_chassis_serial_is_kept():
    ev = evaluate(domain(chassis_serial="CH-1"), policy("[policy]\nhost_serial_to_chassis = true\n"))
    assert ev.decision.chassis_serial is None
    assert b"CH-1" in ev.xml and ev.xml.count(HOST_SERIAL.encode()) == 0


def test_no_chassis_move_when_compliant_or_no_serial():
    p = policy("[policy]\nhost_serial_to_chassis = true\n")
    assert evaluate(domain(serial=UUID), p).decision.chassis_serial is None
    assert evaluate(domain(serial=None), p).decision.chassis_serial is None


def test_template_render_is_literal_for_braces_escaped():
    t = SerialTemplate.compile("a{{b}}-{uuid_hex}")
    assert t.render({"uuid_hex": "00"}) == "a{b}-00"


# ------------------------------------- decide_serial on plain DomainFacts, no XML at all

def facts(*, uuid=UUID, arch="x86_64", serial=HOST_SERIAL, smbios_mode="sysinfo", present=True,
          nova=True, flavor="m1.small", extra_specs=None, project=PROJECT):
    from hookd.policy.model import DomainFacts, NovaInstance, SysinfoFacts
    instance = NovaInstance(ns_version=(1, 1), name="vm-1", flavor_name=flavor, project_uuid=project,
                            extra_specs=extra_specs or {}) if nova else None
    return DomainFacts(name="instance-00000001", uuid=uuid, virt_type="kvm", arch=arch,
                       sysinfo=SysinfoFacts(present=present, system_serial=serial, smbios_mode=smbios_mode),
                       nova=instance)


def test_decide_serial_needs_no_xml_unique_default():
    from hookd.policy.serial import decide_serial
    d = decide_serial(facts(), PolicyConfig())
    assert (d.verdict, d.serial_policy, d.serial_current, d.rule, d.mode) == \
        ("rewrite", UUID, HOST_SERIAL, "default", "unique")
    assert d.set_smbios_mode is False and d.new_pin is None
    assert decide_serial(facts(serial=UUID), PolicyConfig()).verdict == "compliant"


def test_decide_serial_missing_smbios_mode_is_a_rewrite_even_with_the_right_serial():
    from hookd.policy.serial import decide_serial
    d = decide_serial(facts(serial=UUID, smbios_mode=None), PolicyConfig())
    assert (d.verdict, d.set_smbios_mode) == ("rewrite", True)
    # 'host' is an admin's deliberate choice: never changed.
    d = decide_serial(facts(serial=UUID, smbios_mode="host"), PolicyConfig())
    assert (d.verdict, d.set_smbios_mode) == ("compliant", False)


def test_decide_serial_precedence_on_facts():
    from hookd.policy.serial import Rule, decide_serial
    p = PolicyConfig(mode="host", rules=(Rule(name="proj", mode="unique",
                                                    projects=frozenset({PROJECT.replace("-", "")})),))
    assert decide_serial(facts(nova=False), p).verdict == "not-nova"
    assert decide_serial(facts(arch="aarch64", present=False), p).verdict == "not-applicable"
    assert decide_serial(facts(), p, pin="LEGACY-7").rule == "pin"
    assert decide_serial(facts(), p).rule == "rule:proj"
    other = facts(project="00000000000000000000000000000000")
    assert (decide_serial(other, p).rule, decide_serial(other, p).verdict) == ("default", "compliant")
    flavored = facts(project="00000000000000000000000000000000", extra_specs={"hookd:serial_mode": "unique"})
    assert decide_serial(flavored, p).rule == "flavor"


def test_decide_serial_preserve_asks_for_a_pin_and_an_invalid_pin_falls_back():
    from hookd.policy.serial import decide_serial
    d = decide_serial(facts(), PolicyConfig(mode="preserve"))
    assert (d.verdict, d.serial_policy, d.new_pin) == ("compliant", HOST_SERIAL, HOST_SERIAL)
    d = decide_serial(facts(), PolicyConfig(), pin="bad;serial")
    assert (d.rule, d.serial_policy) == ("fallback-invalid-template", UUID)

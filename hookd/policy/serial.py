"""The serial policy: which SMBIOS system serial one guest must carry, and why.

Owns the policy configuration types, serial validation, template rendering and
`decide_serial`. It works on hookd.policy.model objects only and must never import lxml
or touch XML, files, sockets or libvirt: the config loader builds a PolicyConfig,
the XML modules build DomainFacts, and this module turns the two into a
SerialDecision.
"""

from __future__ import annotations

import fnmatch
import re
import string
from dataclasses import dataclass, replace
from typing import Dict, FrozenSet, Optional, Tuple

from hookd.errors import ConfigError
from hookd.policy.model import DomainFacts, NovaInstance, canonical_uuid

MODES = ("unique", "host", "template", "preserve")
NON_NOVA_CHOICES = ("ignore", "apply")

VERDICT_COMPLIANT = "compliant"
VERDICT_REWRITE = "rewrite"
VERDICT_NOT_NOVA = "not-nova"
VERDICT_NOT_APPLICABLE = "not-applicable"

SOURCE_DEFAULT = "default"
SOURCE_FLAVOR = "flavor"
SOURCE_IMAGE = "image"
SOURCE_NOT_NOVA = "not-nova"
SOURCE_NOT_APPLICABLE = "not-applicable"
SOURCE_FALLBACK = "fallback-invalid-template"
SOURCE_PIN = "pin"

#: hookd's own flavor extra spec: Nova (microversion >= 2.86) validates keys in its
#: own namespaces such as hw:, but accepts namespaces it does not know.
FLAVOR_MODE_KEY = "hookd:serial_mode"
#: What the per-instance serial spec asked for and Nova never implemented; still
#: found on flavors created with older microversions and on images.
FLAVOR_UNIQUE_KEY = "hw:unique_serial"
IMAGE_UNIQUE_KEY = "hw_unique_serial"
FLAVOR_GUEST_SERIAL_KEY = "hw:guest_serial"
IMAGE_GUEST_SERIAL_KEY = "hw_guest_serial"
TRUE_WORDS = frozenset({"1", "true", "yes", "on", "y", "t"})

PLACEHOLDERS = (
    "uuid", "uuid_hex", "uuid_upper", "name", "instance_name",
    "project_id", "user_id", "flavor", "host_serial",
)

SERIAL_MAX_LEN = 64
# The serial reaches QEMU's command line (-smbios type=1,serial=...) and the guest's
# firmware tables, and tenants control some template inputs (the instance name).
# cloud-init, for one, reads "ds=nocloud;s=URL" from the DMI serial, so ';' and '='
# stay out; ',' would split QEMU's option string.
_SERIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:+@/-]{0,63}")


def serial_problem(serial: Optional[str]) -> Optional[str]:
    """Why `serial` is not acceptable as an SMBIOS system serial, or None if it is."""
    if serial is None or serial == "":
        return "empty"
    if len(serial) > SERIAL_MAX_LEN:
        return f"longer than {SERIAL_MAX_LEN} characters"
    if not serial[0].isascii() or not serial[0].isalnum():
        return "does not start with a letter or digit"
    if serial != serial.rstrip(" "):
        return "ends with a space"
    if _SERIAL_RE.fullmatch(serial) is None:
        bad = next(c for c in serial if _SERIAL_RE.fullmatch("a" + c) is None)
        return f"contains {bad!r} (allowed: A-Z a-z 0-9 space . _ : + @ / -)"
    return None


@dataclass(frozen=True)
class SerialTemplate:
    """A validated `template =` value: literal text and bare placeholder names."""

    text: str
    parts: Tuple[Tuple[str, Optional[str]], ...]

    @classmethod
    def compile(cls, text: str, *, path=None, line=None) -> "SerialTemplate":
        parts = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as err:
            raise ConfigError(f"template {text!r}: {err}", path, line) from err
        for literal, fieldname, spec, conversion in parsed:
            if fieldname is not None:
                # Bare names only: "{uuid.__class__}" or "{name!r:>99}" would let a
                # config reach into Python objects or pad past the length limit.
                if spec or conversion or fieldname not in PLACEHOLDERS:
                    shown = "{" + fieldname + ("!" + conversion if conversion else "") + \
                        (":" + spec if spec else "") + "}"
                    raise ConfigError(
                        f"template {text!r}: unknown placeholder {shown} "
                        f"(known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})",
                        path, line)
            parts.append((literal, fieldname))
        return cls(text, tuple(parts))

    def render(self, values: Dict[str, str]) -> str:
        return "".join(lit + (values.get(name) or "" if name else "") for lit, name in self.parts)


@dataclass(frozen=True)
class Rule:
    """A `[rule:NAME]` section. Unset criteria (None) match everything."""

    name: str
    mode: str
    template: Optional[SerialTemplate] = None
    instances: Optional[FrozenSet[str]] = None    # canonical dashed UUIDs
    projects: Optional[FrozenSet[str]] = None     # 32 hex digits, no dashes
    images: Optional[FrozenSet[str]] = None       # canonical dashed UUIDs
    flavor: Optional[str] = None                  # fnmatch glob on the flavor name

    def matches(self, facts: DomainFacts) -> bool:
        nova = facts.nova
        if self.instances is not None and facts.uuid not in self.instances:
            return False
        if self.projects is not None:
            project = (nova.project_uuid or "").replace("-", "").lower() if nova else ""
            if project not in self.projects:
                return False
        if self.images is not None:
            image = _image_uuid(nova)
            if image is None or image not in self.images:
                return False
        if self.flavor is not None:
            flavor = nova.flavor_name if nova else None
            if flavor is None or not fnmatch.fnmatchcase(flavor, self.flavor):
                return False
        return True


def _image_uuid(nova: Optional[NovaInstance]) -> Optional[str]:
    if nova is None:
        return None
    # An image-backed instance names its image as <nova:root type="image" uuid=...>;
    # Nova 2025.2 also writes <nova:image uuid=...>.
    if nova.image_uuid:
        return canonical_uuid(nova.image_uuid)
    if nova.root_type == "image":
        return canonical_uuid(nova.root_uuid)
    return None


@dataclass(frozen=True)
class PolicyConfig:
    mode: str = "unique"
    template: Optional[SerialTemplate] = None
    host_serial_to_chassis: bool = False
    honour_flavor_and_image: bool = True
    non_nova: str = "ignore"
    rules: Tuple[Rule, ...] = ()


@dataclass(frozen=True)
class SerialDecision:
    """The outcome of the policy for one domain.

    `serial_policy` is the serial the guest must carry (None when hookd has no say);
    `chassis_serial` is set when the previous serial must move to the chassis.
    """

    verdict: str
    instance_uuid: str
    domain: str
    serial_current: Optional[str]
    serial_policy: Optional[str]
    rule: str
    mode: Optional[str]
    reason: str
    chassis_serial: Optional[str] = None
    set_smbios_mode: bool = False
    #: preserve mode met an instance with no pin: the caller stores this serial as
    #: its pin (first writer wins), and from then on the pin decides.
    new_pin: Optional[str] = None

    def as_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "serial_current": self.serial_current,
            "serial_policy": self.serial_policy,
            "rule": self.rule,
            "mode": self.mode,
            "reason": self.reason,
            "instance_uuid": self.instance_uuid,
            "domain": self.domain,
            "chassis_serial": self.chassis_serial,
            "set_smbios_mode": self.set_smbios_mode,
            "new_pin": self.new_pin,
        }


def _truthy(value: Optional[str]) -> bool:
    return value is not None and value.strip().lower() in TRUE_WORDS


def _flavor_image_choice(nova: NovaInstance) -> Optional[Tuple[str, str, str]]:
    """(mode, source, why) from the flavor's extra specs and the image properties."""
    explicit = nova.extra_specs.get(FLAVOR_MODE_KEY)
    if explicit is not None and explicit.strip().lower() in MODES:
        mode = explicit.strip().lower()
        return mode, SOURCE_FLAVOR, f"flavor extra spec {FLAVOR_MODE_KEY}={mode}"
    specs, props = nova.extra_specs, nova.image_properties
    if _truthy(specs.get(FLAVOR_UNIQUE_KEY)):
        return "unique", SOURCE_FLAVOR, f"flavor extra spec {FLAVOR_UNIQUE_KEY}={specs[FLAVOR_UNIQUE_KEY]}"
    if (specs.get(FLAVOR_GUEST_SERIAL_KEY) or "").strip().lower() == "unique":
        return "unique", SOURCE_FLAVOR, f"flavor extra spec {FLAVOR_GUEST_SERIAL_KEY}=unique"
    if _truthy(props.get(IMAGE_UNIQUE_KEY)):
        return "unique", SOURCE_IMAGE, f"image property {IMAGE_UNIQUE_KEY}={props[IMAGE_UNIQUE_KEY]}"
    if (props.get(IMAGE_GUEST_SERIAL_KEY) or "").strip().lower() == "unique":
        return "unique", SOURCE_IMAGE, f"image property {IMAGE_GUEST_SERIAL_KEY}=unique"
    return None


def template_values(facts: DomainFacts) -> Dict[str, str]:
    nova = facts.nova
    return {
        "uuid": facts.uuid,
        "uuid_hex": facts.uuid.replace("-", ""),
        "uuid_upper": facts.uuid.upper(),
        "name": (nova.name if nova else None) or "",
        "instance_name": facts.name,
        "project_id": (nova.project_uuid if nova else None) or "",
        "user_id": (nova.user_uuid if nova else None) or "",
        "flavor": (nova.flavor_name if nova else None) or "",
        "host_serial": facts.sysinfo.system_serial or "",
    }


def decide_serial(facts: DomainFacts, policy: PolicyConfig, pin: Optional[str] = None) -> SerialDecision:
    """Apply the precedence (non-Nova, not-applicable, pin, rules, flavor/image, default).

    `pin` is the instance's pinned serial, looked up by the caller (the store is not
    this module's business); it overrides every step but the first two.
    """
    current = facts.sysinfo.system_serial

    def outcome(verdict, wanted, source, mode, reason, **kw):
        return SerialDecision(verdict=verdict, instance_uuid=facts.uuid, domain=facts.name,
                              serial_current=current, serial_policy=wanted, rule=source,
                              mode=mode, reason=reason, **kw)

    if facts.nova is None and policy.non_nova == "ignore":
        return outcome(VERDICT_NOT_NOVA, None, SOURCE_NOT_NOVA, None,
                       "no <nova:instance> metadata and [policy] non_nova = ignore")
    if not facts.is_x86 and not facts.sysinfo.present:
        return outcome(VERDICT_NOT_APPLICABLE, None, SOURCE_NOT_APPLICABLE, None,
                       f"arch {facts.arch or 'unknown'} without <sysinfo type='smbios'>: "
                       "no SMBIOS serial to manage")

    if pin is not None:
        problem = serial_problem(pin)
        if problem is not None:
            # A pin written behind hookd's back (the store is shared) is still untrusted.
            return _fallback(outcome, facts, policy, SOURCE_PIN, f"pinned serial {pin!r} {problem}")
        return _finish(outcome, facts, policy, pin, SOURCE_PIN, "pin",
                       f"instance {facts.uuid} is pinned to {pin!r}")

    mode, template, source, why = _choose_mode(facts, policy)
    if mode == "preserve":
        # First sight of this instance: keep the serial it carries now, for good.
        problem = serial_problem(current)
        if problem is not None:
            d = _fallback(outcome, facts, policy, source,
                          f"{why}: its current serial {current!r} {problem}, so there is nothing to preserve")
            return replace(d, new_pin=d.serial_policy)
        d = _finish(outcome, facts, policy, current, source, mode,
                    f"{why}; pins the serial it carries now, {current!r}")
        return replace(d, new_pin=current)
    if mode == "host":
        # Hands off: whatever the definition carries is the policy serial.
        return outcome(VERDICT_COMPLIANT, current, source, mode, why + "; keeps the serial it has")

    if mode == "unique":
        wanted = facts.uuid
        why += "; serial = instance UUID"
    else:
        if template is None:
            return _fallback(outcome, facts, policy, source, f"{why} but no template is configured")
        wanted = template.render(template_values(facts))
        problem = serial_problem(wanted)
        if problem is not None:
            return _fallback(outcome, facts, policy, source,
                             f"{why}: template {template.text!r} rendered {wanted!r}, which {problem}")
        why += f"; template {template.text!r}"
    return _finish(outcome, facts, policy, wanted, source, mode, why)


def _choose_mode(facts, policy):
    for rule in policy.rules:
        if rule.matches(facts):
            return rule.mode, rule.template or policy.template, f"rule:{rule.name}", \
                f"rule {rule.name!r} matches: mode {rule.mode}"
    if policy.honour_flavor_and_image and facts.nova is not None:
        choice = _flavor_image_choice(facts.nova)
        if choice is not None:
            mode, source, why = choice
            return mode, policy.template, source, why
    return policy.mode, policy.template, SOURCE_DEFAULT, f"[policy] mode = {policy.mode}"


def _fallback(outcome, facts, policy, source, why):
    # The instance UUID is always a valid serial; a tenant-controlled name that
    # breaks the rules must not reach QEMU or the guest.
    return _finish(outcome, facts, policy, facts.uuid, SOURCE_FALLBACK, "unique",
                   f"{why}; falls back to the instance UUID (from {source})")


def _finish(outcome, facts, policy, wanted, source, mode, why):
    current = facts.sysinfo.system_serial
    # Without <smbios mode='sysinfo'> (absent means 'emulate') QEMU never sees the
    # <sysinfo> block; 'host' is an admin's deliberate choice and stays.
    set_mode = facts.is_x86 and facts.sysinfo.smbios_mode in (None, "emulate")
    chassis = None
    if (policy.host_serial_to_chassis and current
            and current != wanted and facts.sysinfo.chassis_serial is None):
        chassis = current
    if current == wanted and not set_mode:
        return outcome(VERDICT_COMPLIANT, wanted, source, mode, why)
    if current == wanted:
        why += "; <os><smbios mode='sysinfo'/> is missing, so the serial would not reach the guest"
    return outcome(VERDICT_REWRITE, wanted, source, mode, why,
                   chassis_serial=chassis, set_smbios_mode=set_mode)

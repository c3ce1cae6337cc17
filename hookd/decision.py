"""From domain XML bytes to a serial decision and the XML that carries it.

The single entry point the CLI, the hook handler, the proxy and the reconciler
share: parse (hardened), read the facts, decide with the policy, and rewrite only
when the decision says so. It holds no state and does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from hookd.xml import domain as domainxml, sysinfo as sysinfoxml
from hookd.policy.model import DomainFacts
from hookd.policy.serial import VERDICT_REWRITE, PolicyConfig, SerialDecision, decide_serial
from hookd.xml.safe import serialize


@dataclass(frozen=True)
class Evaluation:
    facts: DomainFacts
    decision: SerialDecision
    xml: Optional[bytes]       # the rewritten document; None when nothing changes

    @property
    def changed(self) -> bool:
        return self.xml is not None

    def audit_fields(self) -> dict:
        """The audit columns this decision fills (hookd.stores.audit.COLUMNS); the caller adds
        operation, action and detail."""
        d, nova = self.decision, self.facts.nova
        return {"domain": d.domain, "instance_uuid": d.instance_uuid,
                "nova_name": nova.name if nova else None, "project": nova.project_uuid if nova else None,
                "flavor": nova.flavor_name if nova else None, "serial_seen": d.serial_current,
                "serial_wanted": d.serial_policy, "verdict": d.verdict, "rule": d.rule}


def evaluate(data: bytes, policy: PolicyConfig, *, rewrite: bool = True,
             what: str = "domain XML", pins: Optional[Callable[[str], Optional[str]]] = None) -> Evaluation:
    """Decide the serial for one domain document and, if asked, rewrite it.

    `pins(instance_uuid)` returns the instance's pinned serial or None; it must not
    block (the stores answer from memory or a local file). Raises
    hookd.errors.XmlError for anything it refuses to read.
    """
    root, facts = domainxml.read_domain(data, what=what)
    decision = decide_serial(facts, policy, pins(facts.uuid) if pins is not None else None)
    out = None
    if rewrite and decision.verdict == VERDICT_REWRITE:
        sysinfoxml.set_system_serial(root, decision.serial_policy,
                                     chassis_serial=decision.chassis_serial,
                                     set_smbios_mode=decision.set_smbios_mode)
        out = serialize(root, data)
    return Evaluation(facts=facts, decision=decision, xml=out)

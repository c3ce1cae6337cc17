"""The one decision path: domain XML bytes -> serial decision -> pin -> audit row.

Every path that decides a serial goes through here: the hook handler, the proxy's
definition rewriter, the reconciler and the libvirt worker's event rows (in the worker
process), `hookctl explain`, `rewrite`, `adopt` and `doctor`. Three layers, each usable
alone:

  evaluate()       parse (hardened), read the facts, decide with the policy, rewrite
                   only when the decision says so. Pure: no state, no I/O.
  audit_fields()   the audit columns (hookd.stores.audit.COLUMNS) a decision fills; the
                   caller adds operation, action and detail. The only place they are named.
  DecisionService  evaluate() with a pin store's pins, the preserve-mode pin made on
                   first sight (first writer wins), and the audit row of each decision.
                   Its store and audit log are given to it; it opens nothing.

One convention: XML goes in and comes out as bytes (what libvirt and the shim send);
the proxy's handler converts its strings at its own edge.

Each decide() counts one hookd_decisions_total{operation, verdict} (hookd.metrics: a
dict update, no I/O); `error` when the XML cannot be read.

It must not import lxml directly (hookd.xml does the XML), open a socket or a file,
or call libvirt: the hook that asks holds the domain's lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

from hookd import metrics
from hookd.errors import HookdError, StoreError
from hookd.policy.model import DomainFacts
from hookd.policy.serial import VERDICT_REWRITE, PolicyConfig, SerialDecision, decide_serial
from hookd.xml import domain as domainxml, sysinfo as sysinfoxml
from hookd.xml.safe import serialize

#: A pin lookup: the instance's pinned serial, or None. It must not block (the stores
#: answer from memory or a local file).
PinLookup = Callable[[str], Optional[str]]


@dataclass(frozen=True)
class Evaluation:
    facts: DomainFacts
    decision: SerialDecision
    xml: Optional[bytes]       # the rewritten document; None when nothing changes

    @property
    def changed(self) -> bool:
        return self.xml is not None

    def audit_fields(self) -> dict:
        return audit_fields(self)


def audit_fields(ev: Evaluation) -> dict:
    """The audit columns one decision fills; the caller adds operation, action and detail."""
    d, nova = ev.decision, ev.facts.nova
    return {"domain": d.domain, "instance_uuid": d.instance_uuid,
            "nova_name": nova.name if nova else None, "project": nova.project_uuid if nova else None,
            "flavor": nova.flavor_name if nova else None, "serial_seen": d.serial_current,
            "serial_wanted": d.serial_policy, "verdict": d.verdict, "rule": d.rule}


def evaluate(data: bytes, policy: PolicyConfig, *, rewrite: bool = True,
             what: str = "domain XML", pins: Optional[PinLookup] = None) -> Evaluation:
    """Decide the serial for one domain document and, if asked, rewrite it.

    Raises hookd.errors.XmlError for anything it refuses to read.
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


class DecisionService:
    """evaluate() with pins, preserve-mode pinning and the audit row, for one caller.

    `store` is a pin store (hookd.stores: `get`, and `pin_if_absent` unless
    `make_pins` is False) or None; `audit` has `record(**row)` or is None (the read-only
    commands). A store that cannot be read must not turn into a refused start: the
    decision is then made without pins, and the failure logged once until the store
    works again.
    """

    def __init__(self, get_policy: Callable[[], PolicyConfig], *, store=None, audit=None,
                 log: Optional[logging.Logger] = None, make_pins: bool = True):
        self._policy = get_policy
        self.store = store
        self.audit = audit
        self.log = log or logging.getLogger("hookd.decision")
        self.make_pins = make_pins and store is not None and hasattr(store, "pin_if_absent")
        self._failing = False

    @classmethod
    def read_only(cls, policy: PolicyConfig, pins: Optional[PinLookup]) -> "DecisionService":
        """For the commands that only look (explain, rewrite, doctor): pins are read, never made."""
        lookup = None if pins is None else _LookupOnly(pins)
        return cls(lambda: policy, store=lookup, make_pins=False)

    def lookup(self, instance_uuid: str) -> Optional[str]:
        if self.store is None:
            return None
        try:
            pin = self.store.get(instance_uuid)
        except StoreError as err:
            if not self._failing:
                self.log.error("pin store unreadable (%s); deciding without pins until it recovers", err)
            self._failing = True
            return None
        if self._failing:
            self.log.warning("pin store readable again")
            self._failing = False
        return pin

    def decide(self, data: bytes, *, op: str, what: str, rewrite: bool) -> Evaluation:
        """The Evaluation, after pinning the serial preserve mode asked for (op: the call
        that saw the instance first)."""
        policy = self._policy()
        try:
            ev = evaluate(data, policy, rewrite=rewrite, what=what, pins=self.lookup)
        except HookdError:
            metrics.DECISIONS.inc(op, "error")
            raise
        d = ev.decision
        metrics.DECISIONS.inc(op, d.verdict)
        if d.new_pin is None or not self.make_pins:
            return ev
        try:
            winner = self.store.pin_if_absent(d.instance_uuid, d.new_pin, source=f"preserve:{op}")
        except StoreError as err:
            self.log.error("instance %s: cannot pin %r (%s); deciding as if pinned", d.instance_uuid,
                           d.new_pin, err)
            return ev
        if winner != d.new_pin:
            # Another writer pinned first (another host, hookctl adopt): its pin decides.
            return evaluate(data, policy, rewrite=rewrite, what=what, pins=lambda _uuid: winner)
        self.log.info("instance %s (%s): pinned serial %r on first sight (%s, %s)", d.instance_uuid, d.domain,
                      winner, op, d.rule)
        metrics.PINS_MADE.inc()
        if self.audit is not None:
            self.audit.record(operation="pin", domain=d.domain, instance_uuid=d.instance_uuid,
                              serial_seen=d.serial_current, serial_wanted=winner, verdict=d.verdict, rule=d.rule,
                              action="pinned", detail=f"mode preserve, first seen at {op}")
        return ev

    def record(self, operation: str, ev: Evaluation, action: str, detail: str) -> None:
        """The audit row of one decision."""
        if self.audit is not None:
            self.audit.record(operation=operation, action=action, detail=detail, **audit_fields(ev))

    def record_error(self, operation: str, action: str, detail: str, domain: Optional[str] = None) -> None:
        """The audit row of a definition hookd could not decide on."""
        if self.audit is not None:
            self.audit.record(operation=operation, domain=domain, verdict="error", action=action, detail=detail)


class _LookupOnly:
    """A bare lookup function shaped as a store that only reads."""

    def __init__(self, lookup: PinLookup):
        self.get = lookup

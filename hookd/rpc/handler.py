"""What the libvirt proxy does with a domain definition that passes through it.

Owns the callback hookd.rpc.proxy calls for every intercepted definition: decide with
the policy, return the rewritten XML (or None to forward the original bytes), and
record the decision in the audit log as operation `define` (or
`migrate-persistent` for a live migration's persistent XML). The proxy itself
knows nothing of policy; this module knows nothing of the wire.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Optional

from hookd.stores.audit import AuditLog
from hookd.config import Config
from hookd.decision import DecisionService

log = logging.getLogger("hookd.rpc.proxy.policy")

#: Proxy op names -> audit operation.
AUDIT_OPERATION = {
    "define": "define", "define-flags": "define", "create": "define", "create-with-files": "define",
    "migrate-persistent": "migrate-persistent",
}


class DefinitionRewriter:
    def __init__(self, get_config: Callable[[], Config], audit: AuditLog, store=None):
        self._config = get_config
        self.audit = audit
        self.decisions = DecisionService(lambda: get_config().policy, store=store, audit=audit, log=log)
        self.counters: Counter = Counter()

    def rewrite(self, op: str, xml: str) -> Optional[str]:
        # The proxy's strings (libvirt's RPC strings are UTF-8) become bytes at this edge.
        ev = self.decisions.decide(xml.encode("utf-8"), op=op, what=f"{op} XML", rewrite=True)
        d = ev.decision
        self.counters[d.verdict] += 1
        self.decisions.record(AUDIT_OPERATION.get(op, op), ev, "rewritten" if ev.xml is not None else "unchanged",
                              f"{op}: {d.reason}")
        if ev.xml is None:
            return None
        log.info("%s instance %s (%s): serial %r -> %r (%s)", op, d.instance_uuid, d.domain,
                 d.serial_current, d.serial_policy, d.rule)
        return ev.xml.decode("utf-8")

    def on_error(self, op: str, xml: str, exc: BaseException) -> None:
        self.counters["error"] += 1
        log.error("%s: definition forwarded unchanged: %s", op, exc)
        log.debug("details", exc_info=exc)
        self.decisions.record_error(AUDIT_OPERATION.get(op, op), "forwarded", f"{op}: {type(exc).__name__}: {exc}")

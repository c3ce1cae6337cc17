"""What the daemon answers to each qemu hook call.

Owns boot-time verification: `prepare begin` is checked against the policy (allow,
warn or deny), `migrate begin` and `restore begin` are recorded and passed through
unchanged (libvirt's ABI check rejects any serial change there), and a `prepare`
that follows one of those for the same instance is never refused, only recorded as
drift. Every call leaves one audit row and counts in hookd_hook_calls_total{operation,
result} and hookd_hook_call_duration_seconds (hookd.metrics: no I/O). It never calls
libvirt: the hook that asked holds the domain's lock until it gets an answer.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable, Dict, Optional, Tuple

from hookd import metrics
from hookd.stores.audit import AuditLog
from hookd.config import Config
from hookd.decision import DecisionService, Evaluation
from hookd.errors import HookdError
from hookd.policy.serial import VERDICT_REWRITE
from hookd.hookpath.shimwire import ACTION_ALLOW, ACTION_DENY, HookReply, HookRequest

log = logging.getLogger("hookd.hook")

HOOK_OPS = frozenset({"prepare", "migrate", "restore"})
INCOMING_OPS = frozenset({"migrate", "restore"})
#: How long a migrate/restore begin marks the instance's next prepare as incoming.
#: libvirt calls prepare right after (milliseconds), but a large managed-save image
#: can take a while to read.
INCOMING_WINDOW_S = 600.0

ACTION_WARN = "warn"          # allowed, but out of policy
ACTION_DRIFT = "drift"        # allowed: the serial cannot change on this path
ACTION_EXPIRED = "expired"    # answered after the hook's timeout: on_unreachable decided


class HookHandler:
    def __init__(self, get_config: Callable[[], Config], audit: AuditLog, store=None):
        self._config = get_config
        self.audit = audit
        self.decisions = DecisionService(lambda: get_config().policy, store=store, audit=audit, log=log)
        self.counters: Counter = Counter()
        self._incoming: Dict[str, Tuple[str, float]] = {}
        #: Told of every hook call (instance UUID, op) so libvirt work on that domain
        #: waits until its start or migration is over (the domain is locked meanwhile).
        self.on_hook: Optional[Callable[[str, str], None]] = None
        #: The result of the call being answered (handle() is synchronous: one at a time).
        self._result = "failed"

    def handle(self, req: HookRequest) -> HookReply:
        t0 = time.perf_counter()
        self._result = "failed"         # stays so if the handler raises
        op = req.op if req.op in HOOK_OPS else "other"      # a bounded label
        try:
            return self._handle(req)
        finally:
            metrics.HOOK_CALLS.inc(op, self._result)
            metrics.HOOK_SECONDS.observe(time.perf_counter() - t0, op)

    def _handle(self, req: HookRequest) -> HookReply:
        op, name = req.op, req.domain
        if op not in HOOK_OPS or req.sub != "begin":
            # The shim asks only for these; anything else is somebody else's request.
            self.counters["bad-request"] += 1
            self._result = "bad-request"
            log.warning("hook request %r/%r for domain %r is not one hookd answers; allowed", op, req.sub, name)
            return HookReply(ACTION_ALLOW)
        cfg = self._config()
        try:
            ev = self.decisions.decide(req.xml, op=op, what=f"{op} XML of domain {name!r}", rewrite=False)
        except HookdError as err:
            # Never break a start because hookd cannot read what libvirt sent.
            self.counters["error"] += 1
            self._result = "error"
            log.error("%s %s: cannot decide: %s; allowing", op, name, err)
            self.decisions.record_error(op, ACTION_ALLOW, str(err), domain=name)
            return HookReply(ACTION_ALLOW)
        if self.on_hook is not None:
            self.on_hook(ev.decision.instance_uuid, op)
        deadline = req.deadline
        if deadline is not None and time.time() > deadline:
            # The shim gave up waiting and on_unreachable decided; recording this as a
            # decision would misstate what happened to the guest.
            self.counters["expired"] += 1
            log.warning("%s instance %s (%s): request answered %.1f s after the hook gave up; "
                        "on_unreachable decided that start", op, ev.decision.instance_uuid, name,
                        time.time() - deadline)
            self._record(op, ev, ACTION_EXPIRED, "answered after the hook's timeout; on_unreachable decided")
            return HookReply(ACTION_ALLOW)
        if op in INCOMING_OPS:
            return self._incoming_call(op, name, ev)
        return self._prepare(name, ev, cfg)

    def _record(self, op: str, ev: Evaluation, action: str, detail: str) -> None:
        self.counters[ev.decision.verdict] += 1
        self._result = action
        self.decisions.record(op, ev, action, detail)

    def _incoming_call(self, op: str, name: str, ev: Evaluation) -> HookReply:
        d = ev.decision
        self._prune()
        self._incoming[d.instance_uuid] = (op, time.monotonic())
        action = ACTION_DRIFT if d.verdict == VERDICT_REWRITE else ACTION_ALLOW
        detail = "passed through unchanged: libvirt refuses serial changes on " + \
            ("an incoming migration" if op == "migrate" else "a restore")
        if action == ACTION_DRIFT:
            log.warning("%s instance %s (%s): serial %r differs from policy %r (%s); %s",
                        op, d.instance_uuid, name, d.serial_current, d.serial_policy, d.rule, detail)
        self._record(op, ev, action, detail)
        return HookReply(ACTION_ALLOW)

    def _prepare(self, name: str, ev: Evaluation, cfg: Config) -> HookReply:
        d = ev.decision
        if d.verdict != VERDICT_REWRITE:
            self._record("prepare", ev, ACTION_ALLOW, d.reason)
            return HookReply(ACTION_ALLOW)
        incoming = self._incoming.pop(d.instance_uuid, None)
        if incoming is not None and time.monotonic() - incoming[1] <= INCOMING_WINDOW_S:
            via = "incoming migration" if incoming[0] == "migrate" else "restore"
            detail = f"after {via}: the running guest keeps serial {d.serial_current!r}; " \
                     f"its saved definition gets {d.serial_policy!r} for the next cold boot"
            log.warning("prepare instance %s (%s): drift %r -> %r allowed (%s)",
                        d.instance_uuid, name, d.serial_current, d.serial_policy, via)
            self._record("prepare", ev, ACTION_DRIFT, detail)
            return HookReply(ACTION_ALLOW)
        nova_name = ev.facts.nova.name if ev.facts.nova else None
        who = f"instance {d.instance_uuid}" + (f" ({nova_name!r}, domain {name})" if nova_name else f" (domain {name})")
        has = f"serial {d.serial_current!r}" if d.serial_current else "no SMBIOS serial"
        if d.serial_current == d.serial_policy:
            has += " without <smbios mode='sysinfo'/>"
        if cfg.on_mismatch == "deny":
            self.counters["denied"] += 1
            message = (f"hookd: {who} has {has} but policy ({d.rule}) wants {d.serial_policy!r}; "
                       f"define it with that serial, or send definitions through hookd's libvirt "
                       f"socket (define-time enforcement)")
            log.warning("prepare %s: denied: has %s, policy (%s) wants %r",
                        who, has, d.rule, d.serial_policy)
            self._record("prepare", ev, ACTION_DENY, message)
            return HookReply(ACTION_DENY, message)
        log.warning("prepare %s: starts with %s, policy (%s) wants %r ([enforce] on_mismatch = warn)",
                    who, has, d.rule, d.serial_policy)
        self._record("prepare", ev, ACTION_WARN, d.reason)
        return HookReply(ACTION_ALLOW)

    def _prune(self) -> None:
        now = time.monotonic()
        for uuid in [u for u, (_, t) in self._incoming.items() if now - t > INCOMING_WINDOW_S]:
            del self._incoming[uuid]

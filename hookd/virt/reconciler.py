"""The reconciler: gives the saved definitions of Nova guests the policy serial.

Owns the decision for one domain's saved (inactive) definition and, when it is
out of policy, the one write hookd makes through its own libvirt connection:
`defineXML` of the rewritten inactive XML. That changes what the next cold boot
uses and nothing else. It must never start, stop, pause or migrate a guest,
never touch the live definition, and never redefine a compliant definition
(our own define raises a DEFINED event that brings us back here: an idempotent
check is what keeps that from looping). It works on one domain at a time and
rate-limits its defines, so a sweep of a busy host cannot flood libvirtd.

It runs only inside hookd.virt.worker (its libvirt calls block), and it writes
no audit rows itself: it hands them to the `record` callable it was given. Pins
(hookd.stores.pins) are looked up through the `pins` callable, never written here: a
preserve-mode instance is pinned on first sight by the hook or proxy path.

Domains it leaves alone, each reported as `skipped` with the reason:
  - transient domains (nothing saved to fix), and domains that disappear
    (VIR_ERR_NO_DOMAIN) while it looks at them;
  - a domain in a job (dom.jobInfo() type != NONE: an outgoing migration, a
    save, a dump), or the target of an incoming migration (libvirt answers
    jobInfo there with "migration statistics are available only on the source
    host" while the migration is still on);
  - a domain that had a hook call (prepare/migrate/restore) and no STARTED or
    STOPPED event since, for up to HOOK_HOLD_S: its start or incoming migration
    is not over yet.
Those marked `retry` are worth another look a moment later.

It also keeps each domain's compliance state as last seen (`states`: compliant,
drift = saved definition out of policy and not fixed, not-nova), one entry per domain
defined here: a sweep drops the domains it no longer lists, `forget` an undefined one.
The daemon exports it as hookd_domain_state (hookd.metrics).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Dict, List, Optional, Tuple

import libvirt

from hookd.clock import now_iso
from hookd.config import Config
from hookd.decision import Evaluation, audit_fields, evaluate
from hookd.errors import HookdError
from hookd.policy.serial import VERDICT_COMPLIANT, VERDICT_REWRITE

log = logging.getLogger("hookd.reconcile")

ACTION_FIXED = "fixed"
ACTION_WOULD_FIX = "would-fix"
ACTION_COMPLIANT = "compliant"
ACTION_SKIPPED = "skipped"
STATE_COMPLIANT, STATE_DRIFT, STATE_NOT_NOVA = "compliant", "drift", "not-nova"

#: A hook call holds off work on its domain until its STARTED (or STOPPED) event,
#: or this long: a denied start raises no event at all.
HOOK_HOLD_S = 60.0
#: At most this many defines per second, whatever triggered them.
MAX_DEFINES_PER_S = 10.0
#: Hook-call and STARTED/STOPPED times kept before expired ones are pruned.
SETTLED_MAX = 10000

XML_FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE


class ReconcileError(HookdError):
    """The libvirt connection failed under the reconciler (the sweep is abandoned)."""


@dataclass
class Item:
    """What happened to one domain; `as_dict` is what `hookctl reconcile` prints."""

    action: str
    domain: str
    instance_uuid: Optional[str]
    serial_saved: Optional[str] = None
    serial_policy: Optional[str] = None
    detail: str = ""
    retry: bool = False
    #: compliant, drift or not-nova when the saved definition was decided; None otherwise.
    state: Optional[str] = None

    def as_dict(self) -> dict:
        return {"action": self.action, "domain": self.domain, "instance_uuid": self.instance_uuid,
                "serial_saved": self.serial_saved, "serial_policy": self.serial_policy,
                "detail": self.detail}


def plan(xml: bytes, config: Config, name: str, pin: Optional[str] = None) -> Tuple[Optional[Evaluation], Item]:
    """Decide one saved definition without libvirt: the evaluation (None when the XML
    cannot be read) and the item a dry run reports (`would-fix` when out of policy).
    `pin` is the instance's pinned serial (looked up by the caller), which the policy
    puts before rules and modes, as on the hook and proxy paths."""
    try:
        ev = evaluate(xml, config.policy, what=f"saved definition of domain {name!r}",
                      pins=lambda _uuid: pin)
    except HookdError as err:
        return None, Item(ACTION_SKIPPED, name, None, detail=f"cannot read the saved definition: {err}")
    d = ev.decision
    item = Item(ACTION_COMPLIANT, d.domain, d.instance_uuid, d.serial_current, d.serial_policy, d.reason,
                state=STATE_COMPLIANT)
    if d.verdict == VERDICT_REWRITE and ev.xml is not None:
        item.action, item.state = ACTION_WOULD_FIX, STATE_DRIFT
    elif d.verdict != VERDICT_COMPLIANT:
        # not-nova, not-applicable: hookd has no say over this domain.
        item.action, item.state = ACTION_SKIPPED, STATE_NOT_NOVA
        item.detail = f"{d.verdict}: {d.reason}"
    return ev, item


def job_in_progress(dom) -> Optional[str]:
    """Why the domain is busy (a migration, a save, ...) or None. Only for running domains."""
    try:
        job = dom.jobInfo()[0]
    except libvirt.libvirtError as err:
        code = err.get_error_code()
        if code == libvirt.VIR_ERR_OPERATION_UNSUPPORTED:
            # libvirt 9.0 answers this on the target of an incoming migration.
            return "incoming migration in progress"
        if code == libvirt.VIR_ERR_OPERATION_INVALID:
            return None     # it stopped meanwhile: no job
        raise
    if job != libvirt.VIR_DOMAIN_JOB_NONE:
        return f"libvirt job in progress (type {job}; a migration, save or dump)"
    return None


class Reconciler:
    """Decides and fixes saved definitions; its counters feed `hookctl status`."""

    def __init__(self, get_config: Callable[[], Config], record: Callable[..., None], *,
                 pins: Optional[Callable[[str], Awaitable[Optional[str]]]] = None,
                 max_defines_per_s: float = MAX_DEFINES_PER_S, hook_hold_s: float = HOOK_HOLD_S,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self._config = get_config
        self._record = record
        #: The instance's pin, from the daemon's pin store (None: no pin). It must be
        #: the same answer the hook path gets, or the two would undo each other's work.
        self._pins = pins
        self._interval = 1.0 / max_defines_per_s if max_defines_per_s > 0 else 0.0
        self._hook_hold = hook_hold_s
        self._clock = clock
        self._sleep = sleep
        self._next_define = 0.0
        # Made on first use, inside the running loop: on Python 3.9 a Lock made before
        # asyncio.run binds to another loop (tests/test_loop_binding.py).
        self._domain_lock: Optional[asyncio.Lock] = None
        self._sweep_lock: Optional[asyncio.Lock] = None
        #: instance UUID -> (hook op, monotonic time of the call); CLOCK_MONOTONIC is
        #: system-wide, so times the daemon stamped compare with ours.
        self._hooks: Dict[str, Tuple[str, float]] = {}
        self._settled: Dict[str, float] = {}
        self.sweeps = 0
        self.fixed = 0
        self.last_sweep: Optional[dict] = None
        #: Unix time of the last sweep that fixed (not a dry run) to the end.
        self.last_success: Optional[float] = None
        #: instance UUID -> (domain name, state): bounded by the domains defined here.
        self.states: Dict[str, Tuple[str, str]] = {}
        #: Bumped when `states` changes: the worker sends the map only then.
        self.states_version = 0

    def forget(self, instance_uuid: str) -> None:
        """The domain was undefined: it has no state any more."""
        if self.states.pop(instance_uuid.lower(), None) is not None:
            self.states_version += 1

    # ------------------------------------------------------------- hook holds
    def note_hook(self, instance_uuid: str, op: str, when: Optional[float] = None) -> None:
        if not instance_uuid:
            return
        now = self._clock() if when is None else when
        if len(self._hooks) > SETTLED_MAX:
            self._hooks = {k: h for k, h in self._hooks.items() if now - h[1] <= self._hook_hold}
        self._hooks[instance_uuid.lower()] = (op, now)

    def note_settled(self, instance_uuid: str, when: Optional[float] = None) -> None:
        """A STARTED or STOPPED event: whatever the last hook call began is over."""
        now = self._clock() if when is None else when
        if len(self._settled) > SETTLED_MAX:
            # Only times within the hold matter; older ones cannot release anything.
            self._settled = {k: t for k, t in self._settled.items() if now - t <= self._hook_hold}
        self._settled[instance_uuid.lower()] = now

    def hook_pending(self, instance_uuid: str) -> Optional[str]:
        key = instance_uuid.lower()
        hook = self._hooks.get(key)
        if hook is None:
            return None
        op, t = hook
        age = self._clock() - t
        # Compare times, not arrival order: the daemon's note may reach us after the
        # STARTED event it preceded.
        if age > self._hook_hold or self._settled.get(key, float("-inf")) >= t:
            del self._hooks[key]
            self._settled.pop(key, None)
            return None
        return f"{op} hook call {age:.1f} s ago and no STARTED event since"

    # ----------------------------------------------------------- one domain
    async def reconcile_domain(self, dom, *, fix: bool, why: str) -> Item:
        """Check (and with fix=True, fix) one domain's saved definition."""
        if self._domain_lock is None:
            self._domain_lock = asyncio.Lock()
        async with self._domain_lock:
            item = await self._reconcile(dom, fix, why)
        if item.state is not None and item.instance_uuid:
            key, value = item.instance_uuid.lower(), (item.domain, item.state)
            if self.states.get(key) != value:
                self.states[key] = value
                self.states_version += 1
        return item

    async def _reconcile(self, dom, fix: bool, why: str) -> Item:
        name, uuid = dom.name(), dom.UUIDString()
        ev, item = await self._assess(dom, name, uuid)
        if item.action != ACTION_WOULD_FIX or not fix:
            return item
        await self._rate_limit()
        # Things may have moved while we waited: look again, and define what we see now.
        ev, item = await self._assess(dom, name, uuid, before=item)
        if item.action != ACTION_WOULD_FIX or ev is None or ev.xml is None:
            return item
        d = ev.decision
        try:
            dom.connect().defineXML(ev.xml.decode("utf-8"))
        except libvirt.libvirtError as err:
            self._check_alive(dom, err)
            log.error("reconcile instance %s (%s): libvirt refused the redefinition: %s",
                      uuid, name, err)
            log.debug("define failure details", exc_info=True)
            self._row(ev, "failed", f"{why}: libvirt refused the redefinition: {err}")
            return Item(ACTION_SKIPPED, name, uuid, d.serial_current, d.serial_policy,
                        f"libvirt refused the redefinition: {err}", state=STATE_DRIFT)
        self.fixed += 1
        detail = (f"{why}: saved definition now carries {d.serial_policy!r} for the next cold boot"
                  + ("; the running guest keeps its serial until then" if self._active(dom) else ""))
        log.info("reconcile instance %s (%s): saved serial %r -> %r (%s); %s", uuid, name,
                 d.serial_current, d.serial_policy, d.rule, why)
        self._row(ev, ACTION_FIXED, detail)
        return Item(ACTION_FIXED, name, uuid, d.serial_current, d.serial_policy, detail, state=STATE_COMPLIANT)

    async def _assess(self, dom, name: str, uuid: str, before: Optional[Item] = None):
        """(Evaluation or None, Item): what a fix of this domain would do right now.

        The Item is ACTION_WOULD_FIX only when nothing stands in the way: no hook of
        this domain in flight, a saved definition that reads, a pin answer, and no job.
        """
        pending = self.hook_pending(uuid)
        if pending:
            saved, wanted = (before.serial_saved, before.serial_policy) if before else (None, None)
            return None, Item(ACTION_SKIPPED, name, uuid, saved, wanted, pending, retry=True)
        if before is not None:
            busy = self._busy(dom, name, uuid)
            if busy is not None:
                return None, busy
        got = self._read(dom, name, uuid)
        if isinstance(got, Item):
            return None, got
        pin = await self._pin(name, uuid)
        if isinstance(pin, Item):
            return None, pin
        ev, item = plan(got, self._config(), name, pin)
        if before is None and item.action == ACTION_WOULD_FIX:
            busy = self._busy(dom, name, uuid)
            if busy is not None:
                return None, busy
        return ev, item

    async def _pin(self, name: str, uuid: str):
        """The instance's pin (or None), or the Item that says why it could not be had.
        Without the answer the reconciler does nothing: deciding without a pin that
        exists would write a serial the hook path then calls out of policy."""
        if self._pins is None:
            return None
        try:
            return await self._pins(uuid)
        except HookdError as err:
            return Item(ACTION_SKIPPED, name, uuid, detail=f"pin lookup failed: {err}", retry=True)

    def _read(self, dom, name: str, uuid: str):
        """The saved definition's bytes, or the Item that says why there is none."""
        try:
            if not dom.isPersistent():
                return Item(ACTION_SKIPPED, name, uuid, detail="transient domain: no saved definition")
            return dom.XMLDesc(XML_FLAGS).encode("utf-8", "surrogatepass")
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return Item(ACTION_SKIPPED, name, uuid, detail="domain disappeared")
            self._check_alive(dom, err)
            log.error("reconcile instance %s (%s): cannot read the saved definition: %s", uuid, name, err)
            return Item(ACTION_SKIPPED, name, uuid, detail=f"cannot read the saved definition: {err}")

    def _busy(self, dom, name: str, uuid: str) -> Optional[Item]:
        try:
            if not dom.isActive():
                return None
            why = job_in_progress(dom)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return Item(ACTION_SKIPPED, name, uuid, detail="domain disappeared")
            self._check_alive(dom, err)
            why = f"cannot ask libvirt about its jobs: {err}"
        if why is None:
            return None
        return Item(ACTION_SKIPPED, name, uuid, detail=why, retry=True)

    @staticmethod
    def _active(dom) -> bool:
        try:
            return bool(dom.isActive())
        except libvirt.libvirtError:
            return False

    @staticmethod
    def _check_alive(dom, err: libvirt.libvirtError) -> None:
        try:
            alive = dom.connect().isAlive()
        except libvirt.libvirtError:
            alive = False
        if not alive:
            raise ReconcileError(f"libvirt connection lost: {err}") from err

    async def _rate_limit(self) -> None:
        now = self._clock()
        wait = self._next_define - now
        if wait > 0:
            await self._sleep(wait)
            now = self._clock()
        self._next_define = max(now, self._next_define) + self._interval

    def _row(self, ev: Evaluation, action: str, detail: str) -> None:
        self._record(time=now_iso(), operation="reconcile", action=action, detail=detail, **audit_fields(ev))

    # ---------------------------------------------------------------- sweep
    async def sweep(self, conn, *, fix: bool, why: str) -> List[Item]:
        """Every persistent domain, one at a time, in name order."""
        if self._sweep_lock is None:
            self._sweep_lock = asyncio.Lock()
        async with self._sweep_lock:
            t0 = self._clock()
            try:
                doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)
            except libvirt.libvirtError as err:
                raise ReconcileError(f"cannot list domains: {err}") from err
            items = []
            for dom in sorted(doms, key=lambda d: d.name()):
                items.append(await self.reconcile_domain(dom, fix=fix, why=why))
                # Let events and the daemon's messages in between two domains.
                await asyncio.sleep(0)
            counts: Dict[str, int] = {}
            for i in items:
                counts[i.action] = counts.get(i.action, 0) + 1
            self.sweeps += 1
            listed = {d.UUIDString().lower() for d in doms}
            kept = {u: st for u, st in self.states.items() if u in listed}
            if len(kept) != len(self.states):
                self.states, self.states_version = kept, self.states_version + 1
            if fix:
                self.last_success = time.time()
            self.last_sweep = {"time": now_iso(), "why": why, "dry_run": not fix, "checked": len(items),
                               "seconds": round(self._clock() - t0, 3), **counts}
            changed = counts.get(ACTION_FIXED if fix else ACTION_WOULD_FIX, 0)
            log.log(logging.INFO if changed else logging.DEBUG,
                    "sweep (%s%s): %d domains checked, %d %s, %d skipped, in %.2f s", why,
                    "" if fix else ", dry run", len(items), changed, "fixed" if fix else "would change",
                    counts.get(ACTION_SKIPPED, 0), self._clock() - t0)
            return items

    def stats(self) -> dict:
        return {"sweeps": self.sweeps, "fixed": self.fixed, "last_sweep": self.last_sweep,
                "last_success": self.last_success}

    def domain_states(self) -> dict:
        """instance UUID -> [domain, state], as the worker sends it to the daemon."""
        return {u: [name, state] for u, (name, state) in self.states.items()}

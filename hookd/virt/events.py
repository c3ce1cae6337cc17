"""libvirt lifecycle events and running domains, as the audit rows the worker sends.

Owns libvirt's event and detail names, which events become rows (RECORDED), and
building those rows (the audit's columns, hookd.stores.audit; the daemon writes
them): a lifecycle event's row (`started` with its boot key from hookd.virt.qemuproc,
`defined` with the serial decision of the saved definition, `stopped`/`undefined`
with the Nova facts last seen, as nothing is left to read then), and the rows of a
resync (the running domains with their boot keys, for the daemon's boot ledger).
It keeps those facts per instance (bounded) and libvirtd's pid for the boot keys.

It must not send anything (hookd.virt.worker does), decide a hook, write the audit
log, change the rows' columns (hookd.decision and hookd.stores.audit own those), or
touch a running guest: it only reads (XMLDesc, ID, state, listAllDomains).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Awaitable, Callable, Dict, List, Optional, Tuple

import libvirt

from hookd.config import Config
from hookd.decision import audit_fields, evaluate
from hookd.errors import HookdError
from hookd.virt import qemuproc
from hookd.virt.reconciler import ReconcileError

log = logging.getLogger("hookd.worker")

_EVENT_TYPES = ("DEFINED", "UNDEFINED", "STARTED", "SUSPENDED", "RESUMED", "STOPPED", "SHUTDOWN",
                "PMSUSPENDED", "CRASHED")
#: libvirt's lifecycle event numbers -> names, from the module's own constants.
EVENT_NAMES: Dict[int, str] = {getattr(libvirt, f"VIR_DOMAIN_EVENT_{e}"): e.lower()
                               for e in _EVENT_TYPES if hasattr(libvirt, f"VIR_DOMAIN_EVENT_{e}")}


def _detail_names(event: str) -> Dict[int, str]:
    prefix = f"VIR_DOMAIN_EVENT_{event}_"
    return {getattr(libvirt, n): n[len(prefix):].lower() for n in dir(libvirt)
            if n.startswith(prefix) and not n.endswith("_LAST") and isinstance(getattr(libvirt, n), int)}


DETAIL_NAMES: Dict[int, Dict[int, str]] = {num: _detail_names(name.upper()) for num, name in EVENT_NAMES.items()}
#: The events that become audit rows (the others are only counted).
RECORDED = frozenset({"started", "stopped", "defined", "undefined"})
FACT_KEYS = ("nova_name", "project", "flavor")
#: Paused reasons of a domain that is still starting (or an incoming migration); on the
#: migration's source the boot is already open, and the ledger leaves both alone.
_NOT_YET_STARTED = frozenset({libvirt.VIR_DOMAIN_PAUSED_STARTING_UP, libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
                              getattr(libvirt, "VIR_DOMAIN_PAUSED_POSTCOPY", -1)})
#: Domains remembered for their STOPPED/UNDEFINED rows (transient ones never undefine).
CACHE_MAX = 20000


def event_names(event: int, detail: int) -> Tuple[str, str]:
    name = EVENT_NAMES.get(event, f"event-{event}")
    return name, DETAIL_NAMES.get(event, {}).get(detail, f"detail-{detail}")


def remember(cache: OrderedDict, key: str, value) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > CACHE_MAX:
        cache.popitem(last=False)


class RowBuilder:
    """`get_config` is the worker's current configuration (its policy decides
    serial_wanted), `lookup_pin` the daemon's pin lookup, `alive` whether the
    connection still answers (a failed read on a dead one raises ReconcileError)."""

    def __init__(self, get_config: Callable[[], Config],
                 lookup_pin: Callable[[str], Awaitable[Optional[str]]], alive: Callable[[], bool]):
        self._config = get_config
        self._lookup_pin = lookup_pin
        self._alive = alive
        #: instance UUID -> Nova facts (name, project, flavor) from the last XML read:
        #: what STOPPED and UNDEFINED rows carry, as there is nothing left to read then.
        self.facts: "OrderedDict[str, dict]" = OrderedDict()
        #: For boot keys: libvirtd's pid (its mount namespace holds the QEMU pid files),
        #: looked up again at every connect.
        self.libvirtd_pid: Optional[int] = None
        self._kernel_boot_id = qemuproc.kernel_boot_id()

    async def read_definition(self, dom, name: str) -> Tuple[Optional[dict], str]:
        """Nova facts and the serial decision of a domain's live (started) or saved
        (defined) XML, as audit columns, and a note for the row's detail."""
        dname, uuid = dom.name(), dom.UUIDString()
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if name == "defined" else 0
        try:
            xml = dom.XMLDesc(flags)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN and not self._alive():
                raise ReconcileError(f"libvirt connection lost: {err}") from err
            return None, f"; definition not readable ({err.get_error_message()})"
        note = ""
        try:
            pin = await self._lookup_pin(uuid)
        except HookdError as err:
            pin = None
            note += f"; serial_wanted decided without the pin store ({err})"
        try:
            ev = evaluate(xml.encode("utf-8", "surrogatepass"), self._config().policy, rewrite=False,
                          what=f"{name} XML of domain {dname!r}", pins=lambda _uuid: pin)
        except HookdError as err:
            return None, note + f"; cannot read the definition: {err}"
        # The row names the domain as libvirt's event did; the decision fills the rest.
        seen = {k: v for k, v in audit_fields(ev).items() if k not in ("domain", "instance_uuid")}
        note += ("; serial_seen is the saved definition's (next cold boot)" if name == "defined"
                 else "; serial_seen is the running guest's")
        return seen, note

    def boot_of(self, dom) -> Tuple[Optional[str], Optional[str]]:
        """(boot key, QEMU start time) of a running domain; (None, None) once it is gone."""
        try:
            domain_id = dom.ID()
        except libvirt.libvirtError:
            return None, None
        if domain_id is None or domain_id < 0:
            return None, None
        start = qemuproc.qemu_start(dom.UUIDString(), dom.name(), self.libvirtd_pid)
        return qemuproc.boot_key(domain_id, start, self._kernel_boot_id), start.since if start else None

    async def event_row(self, stamp: str, dom, name: str, detail_name: str) -> dict:
        """The audit row of a RECORDED lifecycle event (logged as the worker always did)."""
        dname, uuid = dom.name(), dom.UUIDString()
        row = {"time": stamp, "operation": name, "domain": dname, "instance_uuid": uuid,
               "action": detail_name}
        what = f"libvirt event {name.upper()}/{detail_name.upper()}"
        if name in ("started", "defined"):
            if name == "started":
                # Read before the XML: a guest that stops meanwhile has no id any more.
                row["boot"], row["since"] = self.boot_of(dom)
            seen, note = await self.read_definition(dom, name)
            what += note
            if seen is not None:
                row.update(seen)
                remember(self.facts, uuid, {k: seen[k] for k in FACT_KEYS})
        else:
            # Stopped or gone: nothing left to read. Name the instance as last seen; the
            # daemon's boot ledger adds the boot and the serial it ran with.
            facts = self.facts.pop(uuid, None) if name == "undefined" else self.facts.get(uuid)
            if facts is not None:
                row.update(facts)
        row["detail"] = what
        if name == "started":
            log.info("instance %s (%s) started (%s) with serial %r", uuid, dname, detail_name,
                     row.get("serial_seen"))
        else:
            log.debug("instance %s (%s): %s", uuid, dname, what)
        return row

    async def resync_rows(self, conn, why: str) -> Tuple[List[dict], List[str]]:
        """The running domains for the daemon's boot ledger (boots whose STARTED event we
        missed, or whose STOPPED event: they are absent, while away), and the UUIDs of
        those still starting or migrating in."""
        try:
            doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except libvirt.libvirtError as err:
            raise ReconcileError(f"cannot list running domains: {err}") from err
        running, pending = [], []
        for dom in doms:
            uuid = dom.UUIDString()
            try:
                state, reason = dom.state()
            except libvirt.libvirtError:
                continue        # gone since the list: its STOPPED event follows
            if state == libvirt.VIR_DOMAIN_PAUSED and reason in _NOT_YET_STARTED:
                # Active to libvirt but not yet started (its hooks may still run): its
                # STARTED event is still to come, and must be what records it.
                pending.append(uuid)
                continue
            boot, since = self.boot_of(dom)
            if boot is None:
                continue
            seen, note = await self.read_definition(dom, "running")
            row = {"domain": dom.name(), "instance_uuid": uuid, "boot": boot, "since": since,
                   "detail": f"found running by the resync after {why}, its STARTED event missed; "
                             f"running since {since or 'an unknown time (QEMU process not visible)'}" + note}
            if seen is not None:
                row.update(seen)
                remember(self.facts, uuid, {k: seen[k] for k in FACT_KEYS})
            running.append(row)
        return running, pending

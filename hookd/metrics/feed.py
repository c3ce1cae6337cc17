"""What the daemon's status tree already counts, copied into hookd.metrics before each write.

Owns the mapping from the tree `hookctl status` shows (hookd.daemon.Daemon.status: the
proxy's stats, the worker's and reconciler's reports, the pin store's and audit log's
status) to the metrics, so that those paths need no metrics code of their own and the
two views cannot disagree. It reads plain dicts only: no daemon objects, no I/O, and it
must not count anything itself.
"""

from __future__ import annotations

import os
from typing import Mapping

from hookd import metrics as m


def from_status(st: Mapping, domain_states: Mapping, *, pins: int, reconcile_enabled: bool,
                reconcile_interval: float) -> None:
    """`st`: the daemon's status tree; `domain_states`: instance UUID -> [domain, state]
    (hookd.virt.supervisor.WorkerSupervisor.domain_states); `pins`: the pin count; the
    daemon's [reconcile] settings (the worker's report lacks them while it is down)."""
    p = st.get("proxy")
    if p is not None:
        m.PROXY_CLIENTS.set(p["clients_connected"])
        m.PROXY_CONNECTIONS.set(p["clients_total"])
        for reason, key in (("permission", "clients_refused"), ("limit", "clients_over_limit"),
                            ("upstream", "upstream_failures")):
            m.PROXY_REFUSED.set(p[key], reason)
        m.PROXY_DEFINITIONS.set(p["definitions_seen"])
        m.PROXY_REWRITES.set(p["definitions_rewritten"])
        m.PROXY_ERRORS.set(p["errors"], "rewrite")
        m.PROXY_ERRORS.set(p["protocol_errors"], "protocol")
        up = p.get("upstream") or {}
        # The socket must be there, and the proxy's last connection to it must not have failed.
        exists = up.get("daemon") != "none" and bool(up.get("path")) and os.path.exists(up["path"])
        m.UPSTREAM_UP.set(1 if exists and p.get("upstream_up") != 0 else 0)
    m.HOOK_REFUSED.set(st.get("hook_refused") or 0)
    ev, rec = st.get("events") or {}, st.get("reconcile") or {}
    m.WORKER_UP.set(1 if ev.get("worker_pid") else 0)
    m.WORKER_RESTARTS.set(ev.get("worker_restarts") or 0)
    m.LIBVIRT_CONNECTED.set(1 if ev.get("connected") else 0)
    m.LIBVIRT_RECONNECTS.set(ev.get("reconnects") or 0)
    m.LIBVIRT_EVENTS.set(ev.get("events") or 0)
    m.RECONCILE_ENABLED.set(1 if reconcile_enabled else 0)
    m.RECONCILE_INTERVAL.set(reconcile_interval)
    m.RECONCILE_SWEEPS.set(rec.get("sweeps") or 0)
    m.RECONCILE_FIXES.set(rec.get("fixed") or 0)
    m.RECONCILE_LAST_SUCCESS.set(rec.get("last_success") or 0)
    per_domain, counts = {}, dict.fromkeys(m.COMPLIANCE_STATES, 0)
    for uuid, entry in domain_states.items():
        try:
            name, state = entry
        except (TypeError, ValueError):
            continue        # not what the worker sends: leave it out rather than fail the write
        if state not in counts:
            continue
        per_domain[(str(name), "" if state == "not-nova" else str(uuid), state)] = 1
        counts[state] += 1
    m.DOMAIN_STATE.replace(per_domain)
    for state, n in counts.items():
        m.DOMAINS.set(n, state)
    store = st.get("store") or {}
    m.STORE_UP.replace({(str(store.get("backend", "unknown")),): 1 if store.get("reachable") else 0})
    m.PINS.set(pins)
    m.PINS_QUEUED.set(store.get("queued") or 0)
    a = st.get("audit") or {}
    m.AUDIT_WRITTEN.set(a.get("written") or 0)
    m.AUDIT_PENDING.set(a.get("pending") or 0)
    m.AUDIT_DROPPED.set(a.get("dropped") or 0)

"""doctor's checks of libvirt: the socket hookd's proxy relays to (and whether the qemu
hooks run behind it), libvirt's version (qemu.d/ hooks, SMBIOS chassis), and every
guest's live and saved serial judged as the hook, the proxy and `hookctl explain` judge it.

It reads what hookd.cli.doctor.probe reported and never calls libvirt itself (a libvirt
call can block forever; the probe runs it in a child process killed at a deadline).
Decisions come from hookd.decision only: it has no policy logic of its own.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hookd.cli.doctor.base import FAIL, OK, WARN, Check, fmt_version, name_list, plural, socket_answers

if TYPE_CHECKING:
    from hookd.cli.doctor.probe import ProbeResult

#: libvirt runs every executable of hooks/qemu.d/ since 6.5.0.
LIBVIRT_QEMU_D = 6_005_000
#: SMBIOS chassis entries (host_serial_to_chassis) since 4.1.0.
LIBVIRT_CHASSIS = 4_001_000


def check_libvirt_socket(cfg, exists=os.path.exists) -> Check:
    """The proxy's upstream, and whether it is the daemon that runs the qemu hooks: on a
    modular host (virtqemud-sock present) that is virtqemud, and libvirt-sock is
    virtproxyd's, one more hop in front of it."""
    from hookd.rpc import upstream
    from hookd.config import DaemonSettings
    up = upstream.resolve((cfg.daemon if cfg is not None else DaemonSettings()).libvirt_socket, exists)
    hooks_run_in = "virtqemud" if exists(upstream.MODULAR_SOCKET) else "libvirtd"
    if not up.found:
        return Check(FAIL, "libvirt-socket", up.why,
                     "start libvirt's QEMU daemon (systemctl start virtqemud.socket, or libvirtd), "
                     "or set [hookd] libvirt_socket")
    why = socket_answers(up.path)
    if why:
        return Check(FAIL, "libvirt-socket", f"{up.path} {why}",
                     f"start {hooks_run_in} (systemctl start {hooks_run_in}), or set [hookd] libvirt_socket")
    if hooks_run_in == "virtqemud" and up.path != upstream.MODULAR_SOCKET:
        return Check(WARN, "libvirt-socket",
                     f"the proxy relays to {up.why}, but this host's qemu hooks run in virtqemud "
                     f"({upstream.MODULAR_SOCKET}): every call takes another hop (virtproxyd)",
                     f"set [hookd] libvirt_socket = auto (or {upstream.MODULAR_SOCKET})")
    return Check(OK, "libvirt-socket", f"proxy upstream {up.why} accepts connections; qemu hooks run in "
                                       f"{hooks_run_in}")


def check_libvirt_version(uri: str, probe: ProbeResult, cfg) -> Check:
    if probe.lib_version is None:
        if probe.timed_out:
            return Check(FAIL, "libvirt", f"{uri} did not answer in time (libvirtd hung or overloaded?)",
                         "check libvirtd: systemctl status libvirtd; virsh -c URI version")
        return Check(FAIL, "libvirt", f"cannot connect to {uri}: {probe.error}",
                     "start libvirtd, or pass --libvirt-uri / set [hookd] libvirt_uri")
    v = probe.lib_version
    finding = f"libvirt {fmt_version(v)} at {uri}"
    if probe.hv_version:
        finding += f" (QEMU {fmt_version(probe.hv_version)})"
    if v < LIBVIRT_QEMU_D:
        return Check(FAIL, "libvirt", f"{finding}: runs no hooks from qemu.d/ (needs 6.5.0)",
                     "upgrade libvirt, or call the shim from /etc/libvirt/hooks/qemu yourself")
    if v < LIBVIRT_CHASSIS and cfg is not None and cfg.policy.host_serial_to_chassis:
        return Check(FAIL, "libvirt", f"{finding}: no SMBIOS chassis serial (needs 4.1.0) but "
                                      f"host_serial_to_chassis = true",
                     "set host_serial_to_chassis = false, or upgrade libvirt")
    return Check(OK, "libvirt", finding)


def check_guests(probe: ProbeResult, cfg, pins=None) -> Check:
    """Every domain's live and saved serial against the policy *and the pins*, as the hook,
    the proxy and `hookctl explain` decide (a pinned legacy serial is in policy)."""
    from hookd.decision import DecisionService
    from hookd.errors import HookdError
    from hookd.policy.serial import VERDICT_NOT_APPLICABLE, VERDICT_NOT_NOVA, VERDICT_REWRITE
    if probe.lib_version is None:
        return Check(WARN, "guests", "not checked: libvirt unreachable", "see the libvirt check")
    if cfg is None:
        return Check(WARN, "guests", "not checked: the configuration is invalid", "see the config check")
    decisions = DecisionService.read_only(cfg.policy, pins)
    live_bad, saved_bad, unreadable, not_nova, n_a, ok = [], [], [], 0, 0, 0
    for d in probe.domains:
        name = d.get("name", "?")
        if d.get("error"):
            unreadable.append(name)
            continue
        verdicts = set()
        for which, bad in (("live", live_bad), ("inactive", saved_bad)):
            xml = d.get(which)
            if not xml:
                continue
            try:
                ev = decisions.decide(xml.encode("utf-8", "surrogatepass"), op="doctor",
                                      what=f"{name} ({which})", rewrite=False)
            except HookdError:
                unreadable.append(name)
                break
            verdicts.add(ev.decision.verdict)
            if ev.decision.verdict == VERDICT_REWRITE:
                bad.append(name)
        if VERDICT_NOT_NOVA in verdicts:
            not_nova += 1
        elif VERDICT_NOT_APPLICABLE in verdicts:
            n_a += 1
        elif VERDICT_REWRITE not in verdicts:
            ok += 1
    total = len(probe.domains)
    parts = [f"{plural(total, 'domain')}: {ok} in policy"]
    if not_nova:
        parts.append(f"{not_nova} not Nova's")
    if n_a:
        parts.append(f"{n_a} without SMBIOS (not x86)")
    if live_bad:
        parts.append(f"{len(live_bad)} running with a serial out of policy ({name_list(live_bad)})")
    if saved_bad:
        parts.append(f"{len(saved_bad)} saved definitions out of policy ({name_list(saved_bad)})")
    if unreadable:
        parts.append(f"{len(unreadable)} unreadable ({name_list(sorted(set(unreadable)))})")
    finding = ", ".join(parts)
    fixes = []
    if probe.timed_out:
        missing = (probe.expected or 0) - total
        finding += f"; {plural(max(missing, 0), 'domain')} did not answer in time (a hook running?)"
        fixes.append("rerun with a larger --timeout")
    if live_bad:
        fixes.append("running guests get the policy serial at their next cold boot "
                     "(Nova hard reboot, or stop and start)")
    if saved_bad:
        fixes.append("the reconciler rewrites saved definitions ([reconcile] enabled); "
                     "`hookctl explain` shows why")
    if unreadable:
        fixes.append("see `virsh dumpxml NAME | hookctl explain --xml -`")
    return Check(WARN if fixes else OK, "guests", finding, "; ".join(fixes))

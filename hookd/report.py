"""The compliance report: per instance, the serials it booted with, where, when, whether
each boot matched its decided serial, and one status (compliant, drifted, unknown);
`hookctl report` (hookd.cli.report) prints it.

Two sources of boots. This host's audit log holds every boot it recorded (`started`
and `observed` rows, hookd.ledger), each with the decision of its time (serial_wanted,
verdict). etcd (`[store] backend = etcd`) holds, for the whole fleet, each instance's
last boot only ({"time", "host", "serial", "boot", "operation"}: no decision, no
history) and the pins: a last boot is judged against its instance's pin, and an
unpinned one cannot be judged from etcd.

A boot is `matched` when its serial is the decided one (audit verdict `compliant`, or
the pin), `drift` when it is not (verdict `rewrite`, or another serial than the pin),
`unknown` when there was no decision (not a Nova guest, no SMBIOS serial to manage, the
definition unreadable, an unpinned fleet last boot). An instance is `drifted` when one of
its boots drifted or its serial changed into a boot that matched no decision; `compliant`
when every boot matched (a serial change into a matched boot is the decision's: a pin or
the policy changed; it is counted in `changes`); `unknown` otherwise.

It does no I/O and never imports sqlite, libvirt or the etcd client: the command reads
the rows and keys and hands them here, as hookd.ledger does for `hookctl audit --boots`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Dict, Iterable, List, Optional, Tuple

from hookd.ledger import AFTER_THE_FACT, CLOSES, LIFECYCLE, OPENS

MATCHED, DRIFT, UNKNOWN = "matched", "drift", "unknown"
COMPLIANT, DRIFTED = "compliant", "drifted"
STATUSES = (COMPLIANT, DRIFTED, UNKNOWN)
#: Where a boot came from: this host's audit log, etcd's PREFIX/lastboot/, or both (the same boot).
AUDIT, LASTBOOT, BOTH = "audit", "lastboot", "audit+lastboot"
#: Why a boot has no judgement, by the verdict its audit row carries.
_NO_DECISION = {"not-nova": "not a Nova guest (no <nova:instance> metadata)",
                "not-applicable": "no SMBIOS serial to manage (not x86, no <sysinfo>)",
                "error": "hookd could not read its definition"}


@dataclasses.dataclass
class Boot:
    instance_uuid: str
    host: str
    serial: Optional[str]
    decided: Optional[str]      # the serial its decision wanted (audit) or the pin (lastboot)
    judgement: str              # MATCHED, DRIFT or UNKNOWN
    why: str
    started: str
    stopped: Optional[str]
    seen: str                   # "event" or "after the fact"
    source: str                 # AUDIT, LASTBOOT or BOTH
    boot: Optional[str]
    name: Optional[str] = None  # the Nova name, else the domain name

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def judge_row(row: dict) -> Tuple[str, str]:
    """(judgement, why) of one audit boot row, from the decision recorded with it."""
    verdict, seen, wanted = row.get("verdict"), row.get("serial_seen"), row.get("serial_wanted")
    if verdict == "compliant":
        return MATCHED, f"serial {seen!r} is the decided one ({row.get('rule') or 'policy'})"
    if verdict == "rewrite":
        if seen == wanted:
            return DRIFT, f"serial {seen!r} not shown to the guest (no <smbios mode='sysinfo'/>)"
        return DRIFT, f"serial {seen!r}, decided {wanted!r} ({row.get('rule') or 'policy'})"
    return UNKNOWN, _NO_DECISION.get(verdict or "", "no decision recorded with this boot")


def local_boots(rows: Iterable[dict]) -> List[Boot]:
    """The boots of audit rows in time order (hookd.stores.audit.query's order); rows that
    are not lifecycle rows are skipped. The same boot recorded twice counts once."""
    boots: List[Boot] = []
    open_: Dict[Tuple[str, str], Boot] = {}
    for row in rows:
        op, uuid, host = row.get("operation"), row.get("instance_uuid"), row.get("host") or "-"
        if op not in LIFECYCLE or not uuid:
            continue
        seen = "after the fact" if row.get("action") == AFTER_THE_FACT else "event"
        if op in OPENS:
            current = open_.get((host, uuid))
            if current is not None and row.get("boot") is not None and current.boot == row.get("boot"):
                continue
            judgement, why = judge_row(row)
            b = Boot(uuid, host, row.get("serial_seen"), row.get("serial_wanted"), judgement, why,
                     row.get("since") or row.get("time") or "-", None, seen, AUDIT, row.get("boot"),
                     row.get("nova_name") or row.get("domain"))
            boots.append(b)
            open_[(host, uuid)] = b
        elif op in CLOSES:
            b = open_.pop((host, uuid), None)
            if b is not None:
                b.stopped = row.get("time")
    return boots


def parse_lastboot(text: str) -> Optional[dict]:
    """A PREFIX/lastboot/ value as hookd.stores.etcd writes it; None for anything else."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("time"), str):
        return None
    return value


def fleet_boots(lastboots: Dict[str, str], pins: Dict[str, dict]) -> Tuple[List[Boot], List[str]]:
    """(one Boot per instance's last boot, keys whose value is not a hookd last boot).
    `lastboots`: {instance UUID: value text}; `pins`: {instance UUID: {"serial", ...}}."""
    boots, ignored = [], []
    for uuid, text in sorted(lastboots.items()):
        value = parse_lastboot(text)
        if value is None:
            ignored.append(uuid)
            continue
        serial, pin = value.get("serial"), (pins.get(uuid) or {}).get("serial")
        if pin is None:
            judgement, why = UNKNOWN, (f"not pinned, and etcd holds no decision: the audit of "
                                       f"{value.get('host') or 'its host'} has it")
        elif serial == pin:
            judgement, why = MATCHED, f"serial {serial!r} is its pin"
        else:
            judgement, why = DRIFT, f"serial {serial!r}, pinned {pin!r}"
        seen = "after the fact" if value.get("operation") == "observed" else "event"
        boots.append(Boot(uuid, str(value.get("host") or "-"), serial, pin, judgement, why, value["time"],
                          None, seen, LASTBOOT, value.get("boot")))
    return boots, ignored


def merge(local: List[Boot], fleet: List[Boot]) -> List[Boot]:
    """Both sources; a fleet last boot that is a boot of the local audit (same instance,
    host and boot key) is that boot, marked as both (the audit's judgement is kept: it
    has the decision of its time)."""
    by_key = {(b.instance_uuid, b.host, b.boot): b for b in local if b.boot is not None}
    out = list(local)
    for f in fleet:
        mine = by_key.get((f.instance_uuid, f.host, f.boot)) if f.boot is not None else None
        if mine is not None:
            mine.source = BOTH
        else:
            out.append(f)
    return out


def in_range(boots: Iterable[Boot], since: Optional[str]) -> List[Boot]:
    """Boots that ran at or after `since`: an audit boot still open or stopped since then
    (it may have started before), a fleet last boot that started since then (etcd does not
    say whether it still runs)."""
    if since is None:
        return list(boots)
    return [b for b in boots if (b.started >= since if b.source == LASTBOOT
                                 else b.stopped is None or b.stopped >= since)]


@dataclasses.dataclass
class InstanceLine:
    instance_uuid: str
    name: Optional[str]
    status: str
    serials: List[str]          # in the order first booted with
    decided: Optional[str]      # the decided serial of its latest boot that had one
    hosts: List[str]
    first_seen: str
    last_seen: str
    boots: int
    matched: int
    drift: int
    unknown: int
    changes: int                # serial changes from one boot to the next
    sources: List[str]
    why: str
    boot_list: List[Boot] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["boot_list"] = [b.as_dict() for b in self.boot_list]
        return d


def _unique(values: Iterable[Optional[str]]) -> List[str]:
    out: List[str] = []
    for v in values:
        v = "-" if v is None else v
        if v not in out:
            out.append(v)
    return out


def fold_instance(uuid: str, boots: List[Boot]) -> InstanceLine:
    """One instance's line from its boots (any order)."""
    boots = sorted(boots, key=lambda b: b.started)
    count = {j: sum(1 for b in boots if b.judgement == j) for j in (MATCHED, DRIFT, UNKNOWN)}
    changes, unexplained = 0, None
    for prev, b in zip(boots, boots[1:]):
        if b.serial != prev.serial:
            changes += 1
            if b.judgement == UNKNOWN and unexplained is None:
                unexplained = (prev, b)
    first_drift = next((b for b in boots if b.judgement == DRIFT), None)
    if first_drift is not None:
        status, why = DRIFTED, f"{first_drift.why} on {first_drift.host} at {first_drift.started}"
    elif unexplained is not None:
        prev, b = unexplained
        status, why = DRIFTED, (f"serial changed from {prev.serial!r} to {b.serial!r} on {b.host} at "
                                f"{b.started}, with no decision for it ({b.why})")
    elif count[MATCHED] == len(boots):
        status, why = COMPLIANT, "every boot had the decided serial"
        if changes:
            why += f"; it changed {changes} time(s), each to a new decision (a pin or the policy changed)"
    else:
        b = next(b for b in boots if b.judgement == UNKNOWN)
        status, why = UNKNOWN, b.why
    decided = next((b.decided for b in reversed(boots) if b.decided is not None), None)
    name = next((b.name for b in reversed(boots) if b.name), None)
    return InstanceLine(uuid, name, status, _unique(b.serial for b in boots), decided,
                        _unique(b.host for b in boots), boots[0].started,
                        max(b.stopped or b.started for b in boots), len(boots), count[MATCHED],
                        count[DRIFT], count[UNKNOWN], changes, _unique(b.source for b in boots), why,
                        boots)


def fold_report(boots: Iterable[Boot]) -> List[InstanceLine]:
    """One line per instance: drifted first, then unknown, then compliant; by UUID within."""
    per: Dict[str, List[Boot]] = {}
    for b in boots:
        per.setdefault(b.instance_uuid, []).append(b)
    lines = [fold_instance(uuid, bs) for uuid, bs in per.items()]
    order = {DRIFTED: 0, UNKNOWN: 1, COMPLIANT: 2}
    return sorted(lines, key=lambda line: (order[line.status], line.instance_uuid))


def summary(lines: Iterable[InstanceLine]) -> dict:
    lines = list(lines)
    out = {"instances": len(lines)}
    out.update({s: sum(1 for line in lines if line.status == s) for s in STATUSES})
    return out

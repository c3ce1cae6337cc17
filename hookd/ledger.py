"""The boot ledger: which boots of which instance this host has recorded, and what a
resync after a gap must add so that every boot is recorded exactly once.

A boot is one run of one QEMU process: on a host it is identified by the instance
UUID and a boot key made of libvirt's domain id and the QEMU process's start time
(hookd.virt.qemuproc builds it). libvirt's API promises no domain id unique across
libvirtd restarts (libvirt 9.0 here went on counting, measured), and the start
time also tells a boot from a later one when the stop in between was missed.

libvirt does not replay lifecycle events missed while a client was away (the worker
reconnecting, hookd restarted or down), like a watch that has to relist after a gap.
So after every (re)connect the worker lists the running domains and the daemon asks
this ledger what is missing: boots it has no record of become `observed` rows (seen
after the fact, with the serial the running guest has), and boots it holds open that
are no longer running get their `stopped` row the same way. Repeating a resync adds
nothing, and a STARTED event arriving after the resync saw the boot is a duplicate.

It owns the rules and the in-memory set of open boots (one per instance on a host);
it does no I/O and never imports libvirt or sqlite: the daemon loads it from the
audit log at start and writes the rows it returns. `fold_boots` turns audit rows
into one line per boot for `hookctl audit --boots`.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Optional, Tuple

#: Audit operations that open a boot: a STARTED event, or a boot found running by a resync.
OPENS = frozenset({"started", "observed"})
#: The operation that closes one (from a STOPPED event or a resync).
CLOSES = frozenset({"stopped"})
LIFECYCLE = OPENS | CLOSES
#: `action` of rows written by a resync (the `operation` says what, this says how it was seen).
AFTER_THE_FACT = "resync"


@dataclasses.dataclass
class OpenBoot:
    boot: Optional[str]         # None: recorded before hookd kept boot keys (an upgrade)
    serial: Optional[str] = None
    domain: Optional[str] = None
    facts: Optional[dict] = None


@dataclasses.dataclass(frozen=True)
class RunningBoot:
    """One running domain as the worker's resync listed it."""
    instance_uuid: str
    boot: str
    row: dict                   # audit columns the worker read (domain, serial_seen, since, ...)


@dataclasses.dataclass(frozen=True)
class Resync:
    observe: Tuple[RunningBoot, ...]        # running, with no open boot of that key: record once
    close: Tuple[Tuple[str, OpenBoot], ...]  # open, no longer running: their stop was missed
    adopted: Tuple[str, ...]                # open boots without a key that are running: key set, no row


class BootLedger:
    """Open boots of one host, one per instance."""

    def __init__(self) -> None:
        self.open: Dict[str, OpenBoot] = {}

    @classmethod
    def from_rows(cls, latest_rows: Iterable[dict]) -> "BootLedger":
        """From the latest lifecycle row of each instance (in any order)."""
        ledger = cls()
        for row in latest_rows:
            uuid = row.get("instance_uuid")
            if uuid and row.get("operation") in OPENS:
                ledger.open[uuid] = _open_boot(row)
        return ledger

    def started(self, row: dict) -> Tuple[bool, List[dict]]:
        """A STARTED event's row. Returns (record it?, rows to record before it): a
        boot already open under the same key is a duplicate (the resync saw it first);
        an open boot under another key was stopped without our seeing it."""
        uuid, boot = row.get("instance_uuid"), row.get("boot")
        if not uuid:
            return True, []
        current = self.open.get(uuid)
        if current is not None and current.boot == boot and boot is not None:
            return False, []
        before = [] if current is None else [close_row(uuid, current, "superseded by a new boot")]
        self.open[uuid] = _open_boot(row)
        return True, before

    def stopped(self, row: dict) -> bool:
        """A STOPPED event's row (its boot column is filled in here). False when no
        boot of the instance is open: a resync already closed it, or it was never seen."""
        uuid = row.get("instance_uuid")
        current = self.open.pop(uuid, None) if uuid else None
        if current is None:
            return False
        row["boot"] = current.boot
        if row.get("serial_seen") is None:
            row["serial_seen"] = current.serial
        return True

    def resync(self, running: Iterable[RunningBoot], pending: Iterable[str] = ()) -> Resync:
        """What the audit lacks, given every domain running now; updates the open set.
        `pending`: instances in mid-start or mid-migration, whose own event will come
        (or the next resync): neither observed nor closed now."""
        observe, adopted = [], []
        now = {r.instance_uuid: r for r in running}
        waiting = set(pending) - set(now)
        close = [(uuid, b) for uuid, b in self.open.items() if uuid not in waiting
                 and (uuid not in now or (b.boot is not None and b.boot != now[uuid].boot))]
        for uuid, _ in close:
            del self.open[uuid]
        for uuid, r in now.items():
            current = self.open.get(uuid)
            if current is None:
                observe.append(r)
                self.open[uuid] = _open_boot({**r.row, "boot": r.boot})
            elif current.boot is None:
                current.boot = r.boot       # recorded by a hookd that kept no keys: the same boot
                adopted.append(uuid)
        return Resync(tuple(observe), tuple(close), tuple(adopted))


def _open_boot(row: dict) -> OpenBoot:
    return OpenBoot(boot=row.get("boot"), serial=row.get("serial_seen"), domain=row.get("domain"),
                    facts={k: row.get(k) for k in ("nova_name", "project", "flavor")})


def close_row(uuid: str, boot: OpenBoot, why: str) -> dict:
    """The `stopped` row of a boot whose STOPPED event was missed."""
    return {"operation": "stopped", "instance_uuid": uuid, "domain": boot.domain, "boot": boot.boot,
            "serial_seen": boot.serial, "action": AFTER_THE_FACT, **(boot.facts or {}),
            "detail": f"not running any more ({why}); recorded after the fact, the stop time is "
                      "when hookd noticed"}


def observe_row(r: RunningBoot) -> dict:
    return {**r.row, "operation": "observed", "instance_uuid": r.instance_uuid, "boot": r.boot,
            "action": AFTER_THE_FACT}


# ---------------------------------------------------------------- hookctl audit --boots

@dataclasses.dataclass
class BootLine:
    instance_uuid: str
    host: str
    domain: Optional[str]
    serial: Optional[str]
    started: str                 # the QEMU start time when known, else when hookd recorded it
    stopped: Optional[str]
    seen: str                    # "event" or "after the fact"
    stop_seen: Optional[str]     # same, for the stop
    boot: Optional[str]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def fold_boots(rows: Iterable[dict]) -> List[BootLine]:
    """One line per boot from audit rows in time order (other operations are skipped)."""
    lines: List[BootLine] = []
    open_: Dict[Tuple[str, str], BootLine] = {}
    for row in rows:
        op, uuid, host = row.get("operation"), row.get("instance_uuid"), row.get("host") or "-"
        if op not in LIFECYCLE or not uuid:
            continue
        key = (host, uuid)
        seen = "after the fact" if row.get("action") == AFTER_THE_FACT else "event"
        if op in OPENS:
            current = open_.get(key)
            if current is not None and row.get("boot") is not None and current.boot == row.get("boot"):
                continue    # the same boot twice (rows of a hookd before the ledger)
            line = BootLine(uuid, host, row.get("domain"), row.get("serial_seen"),
                            row.get("since") or row.get("time") or "-", None, seen, None, row.get("boot"))
            lines.append(line)
            open_[key] = line
        else:
            line = open_.pop(key, None)
            if line is not None:
                line.stopped, line.stop_seen = row.get("time"), seen
    return lines

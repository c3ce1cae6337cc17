"""`hookctl report`: the compliance report, one line per instance (hookd.report folds it)
as a table with a summary line first, JSON or CSV.

Owns reading the report's sources and printing it: this host's audit log (read
directly, so it works without the daemon) and, with `[store] backend = etcd`, the
fleet's pins and last boots (hookd.stores.etcd's read paths, one range each). It must
never write to the audit log or etcd, and decides nothing itself: the statuses are
hookd.report's. Drift is data, not an error: the exit status is 0 whenever the report
could be made, unless --fail-on-drift asks for EXIT_DRIFT.
"""

from __future__ import annotations

import json
import os
import sys

from hookd import report
from hookd.cli.audit import parse_since
from hookd.cli.common import EXIT_OK, CliError, load_cli_config
from hookd.ledger import LIFECYCLE

#: --fail-on-drift and a drifted instance: apart from 1 (the report could not be made),
#: so that an auditor's cron job tells "drift found" from "report failed".
EXIT_DRIFT = 3
TABLE = ("status", "instance_uuid", "name", "serials", "hosts", "first_seen", "last_seen", "boots",
         "source", "why")
CSV_COLUMNS = ("instance_uuid", "name", "status", "serials", "decided", "hosts", "first_seen", "last_seen",
               "boots", "matched", "drift", "unknown", "changes", "sources", "why")


def cmd_report(args) -> int:
    from hookd.stores import audit
    config = load_cli_config(args)
    state_dir = args.state_dir or config.daemon.state_dir
    since = parse_since(args.since) if args.since else None
    fleet = config.store.backend == "etcd" and not args.local
    # Folded from the whole lifecycle history, so a boot that began before --since still shows.
    have_audit = _audit_exists(audit.db_path(state_dir))
    if have_audit or not fleet:
        boots = report.local_boots(audit.query(state_dir, operations=LIFECYCLE))
    else:
        boots = []      # a node that runs no guests (a management host) has only the fleet's view
    sources = {"audit": {"state_dir": state_dir, "path": audit.db_path(state_dir) if have_audit else None,
                         "holds": "every boot this host recorded, each with the decision of its time"},
               "lastboot": None}
    if fleet:
        from hookd.stores.etcd import LASTBOOT, PINS, EtcdPinStore
        store = EtcdPinStore(config.store)
        pins, lastboots = store.all(), store.last_boots()
        fleet_boots, ignored = report.fleet_boots(lastboots, pins)
        boots = report.merge(boots, fleet_boots)
        sources["lastboot"] = {"endpoints": list(config.store.endpoints), "keys": config.store.prefix + LASTBOOT,
                               "pins": config.store.prefix + PINS, "instances": len(lastboots),
                               "not_hookd": ignored,
                               "holds": "only each instance's last boot, on any host; no per-event history"}
    lines = report.fold_report(report.in_range(boots, since))
    summary = report.summary(lines)
    if args.json:
        print(json.dumps({"summary": summary, "since": since, "sources": sources,
                          "instances": [line.as_dict() for line in lines]}, indent=2))
    elif args.csv:
        _print_csv(lines)
    else:
        _print_table(summary, since, sources, lines)
    if args.fail_on_drift and summary[report.DRIFTED]:
        return EXIT_DRIFT
    return EXIT_OK


def _cell(line, column: str) -> str:
    value = getattr(line, column)
    if isinstance(value, list):
        return ",".join(value)
    return "-" if value is None else str(value)


def _short(t: str) -> str:
    """A stored time (2026-12-04T19:58:59.123+00:00) to the second, for the table."""
    return t[:19] + "Z" if len(t) >= 19 and t.endswith("+00:00") else t


def _print_table(summary, since, sources, lines) -> None:
    print(f"{summary['instances']} instances: {summary['compliant']} compliant, {summary['drifted']} drifted, "
          f"{summary['unknown']} unknown" + (f" (boots since {since})" if since else ""))
    a, f = sources["audit"], sources["lastboot"]
    if a["path"] is None:
        print(f"source audit: none (no audit log in {a['state_dir']}: this node recorded no boots)")
    else:
        print(f"source audit: {a['path']} ({a['holds']})")
    if f is not None:
        print(f"source lastboot: etcd {', '.join(f['endpoints'])} {f['keys']}, judged against {f['pins']} "
              f"({f['holds']})")
        if f["not_hookd"]:
            print(f"  ignored {len(f['not_hookd'])} keys that hold no hookd last boot")
    if not lines:
        return
    table = []
    for line in lines:
        row = {c: _cell(line, c) for c in TABLE if c != "source"}
        row["source"] = ",".join(line.sources)
        row["first_seen"], row["last_seen"] = _short(line.first_seen), _short(line.last_seen)
        table.append([row[c] for c in TABLE])
    widths = [max([len(c)] + [len(r[i]) for r in table]) for i, c in enumerate(TABLE)]
    print()
    print("  ".join(c.ljust(w) for c, w in zip(TABLE, widths)).rstrip())
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _print_csv(lines) -> None:
    import csv
    w = csv.writer(sys.stdout)
    w.writerow(CSV_COLUMNS)
    # Lists joined with ";": a valid serial never holds one (hookd.policy.serial), and a
    # VMware serial holds spaces.
    w.writerows([";".join(v) if isinstance(v, list) else ("" if v is None else v)
                 for v in (getattr(line, c) for c in CSV_COLUMNS)] for line in lines)


def _audit_exists(path: str) -> bool:
    """Whether the audit log is there; a state dir that cannot be looked into is an error."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise CliError(f"cannot read the audit log {path}: {err.strerror}") from err
    return True

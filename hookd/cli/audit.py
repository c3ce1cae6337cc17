"""`hookctl audit`: the host's audit log as a table, JSON or CSV, and with --boots one
line per boot folded from it (hookd.ledger).

Owns the --since syntax and the audit and boot tables. It reads the state store's
audit log directly, so it works without the daemon; it must never write to it.
"""

from __future__ import annotations

import json
import sys

from hookd.cli.common import EXIT_OK, CliError, load_cli_config
from hookd.ledger import LIFECYCLE, fold_boots


AUDIT_TABLE = ("time", "operation", "domain", "instance_uuid", "serial_seen", "serial_wanted",
               "verdict", "action", "rule")


def parse_since(text: str) -> str:
    import datetime as dt
    import re
    m = re.fullmatch(r"(\d+)\s*([smhd])", text.strip())
    if m:
        seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)
    else:
        try:
            when = dt.datetime.fromisoformat(text.strip())
        except ValueError:
            raise CliError(f"--since {text!r}: expected an ISO time (2024-05-01T10:00) or an age (30m, 12h, 7d)") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")


def cmd_audit(args) -> int:
    from hookd.stores import audit
    from hookd.policy.model import canonical_uuid
    state_dir = args.state_dir or load_cli_config(args).daemon.state_dir
    instance = None
    if args.instance:
        instance = canonical_uuid(args.instance)
        if instance is None:
            raise CliError(f"--instance {args.instance!r} is not a UUID")
    since = parse_since(args.since) if args.since else None
    if args.boots:
        return _print_boots(audit.query(state_dir, instance=instance, operations=LIFECYCLE), since, args)
    rows = audit.query(state_dir, instance=instance, since=since, operation=args.operation)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.csv:
        import csv
        w = csv.DictWriter(sys.stdout, fieldnames=list(audit.iter_columns()))
        w.writeheader()
        w.writerows(rows)
    else:
        _print_table(AUDIT_TABLE, rows)
    return EXIT_OK


def _print_table(columns, rows) -> None:
    table = [[str(r.get(c) if r.get(c) is not None else "-") for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in table]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


BOOT_TABLE = ("instance_uuid", "domain", "host", "serial", "started", "stopped", "seen", "stop_seen")


def _print_boots(rows, since, args) -> int:
    if args.operation:
        raise CliError("--boots lists boots; it takes no --operation")
    # Folded from the whole history, so a boot that began before --since still shows.
    boots = [b for b in fold_boots(rows) if since is None or b.stopped is None or b.stopped >= since]
    if args.json:
        print(json.dumps([b.as_dict() for b in boots], indent=2))
        return EXIT_OK
    if args.csv:
        import csv
        w = csv.DictWriter(sys.stdout, fieldnames=list(BOOT_TABLE) + ["boot"])
        w.writeheader()
        w.writerows({k: v for k, v in b.as_dict().items() if k in BOOT_TABLE or k == "boot"} for b in boots)
        return EXIT_OK
    _print_table(BOOT_TABLE, [b.as_dict() for b in boots])
    return EXIT_OK

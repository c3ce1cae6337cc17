"""`hookctl explain`, `rewrite` and `check-config`: the policy applied to one domain XML
file, and the configuration validated, without the daemon.

Owns turning a decision into text or JSON. Decisions come from hookd.decision (pins
read, never made); it must not write a store, talk to libvirt or the daemon, or have
policy logic of its own.
"""

from __future__ import annotations

import json
import sys

from hookd.cli.common import EXIT_OK, load_cli_config, read_input


EXPLAIN_FIELDS = ("domain", "instance_uuid", "verdict", "serial_current", "serial_policy",
                  "rule", "mode", "reason", "new_pin")


def _decisions(cfg):
    """The decision path the commands that only look use: the pins are read, never made."""
    from hookd.decision import DecisionService
    from hookd.stores import read_only_pin_lookup
    return DecisionService.read_only(cfg.policy, read_only_pin_lookup(cfg))


def cmd_explain(args) -> int:
    cfg = load_cli_config(args)
    source = "stdin" if args.xml == "-" else args.xml
    ev = _decisions(cfg).decide(read_input(args.xml), op="explain", what=source, rewrite=False)
    d = ev.decision.as_dict()
    if ev.facts.nova is not None:
        d["nova_name"] = ev.facts.nova.name
        d["nova_metadata_version"] = "%d.%d" % ev.facts.nova.ns_version
    if args.json:
        print(json.dumps(d, indent=2, sort_keys=True))
        return EXIT_OK
    rows = [(k, d.get(k)) for k in EXPLAIN_FIELDS if k != "new_pin" or d.get(k)]
    if d.get("chassis_serial"):
        rows.append(("chassis_serial", d["chassis_serial"]))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {'-' if value is None else value}")
    return EXIT_OK


def cmd_rewrite(args) -> int:
    cfg = load_cli_config(args)
    data = read_input(args.xml)
    source = "stdin" if args.xml == "-" else args.xml
    ev = _decisions(cfg).decide(data, op="rewrite", what=source, rewrite=True)
    out = ev.xml if ev.xml is not None else data
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_check_config(args) -> int:
    cfg = load_cli_config(args)
    rules = len(cfg.policy.rules)
    print(f"OK: {', '.join(cfg.sources)}: mode {cfg.policy.mode}, {rules} rule{'s' if rules != 1 else ''}")
    return EXIT_OK

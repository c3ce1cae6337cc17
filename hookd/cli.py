"""`hookctl`: the operator's command line.

Owns argument parsing, reading input files, and turning results into text or
JSON, and every error into one line on stderr with a non-zero exit. Decisions come
from hookd.engine; daemon queries go over the hook socket (hookd.wire); the audit
is read straight from the state store. It never edits libvirt's files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional

from hookd import __version__
from hookd.errors import HookdError
from hookd.xmlsafe import MAX_XML_BYTES

log = logging.getLogger("hookd.cli")
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class CliError(HookdError):
    """A problem with what the operator asked for (a file, an argument)."""


def read_input(path: str, what: str = "XML") -> bytes:
    """Read a file or stdin ("-"), bounded by hookd's XML size limit."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_XML_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_XML_BYTES + 1)
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}") from err
    return data


def _load_config(args):
    from hookd.config import load_config
    return load_config(args.config)


# --------------------------------------------------------------- explain/rewrite

EXPLAIN_FIELDS = ("domain", "instance_uuid", "verdict", "serial_current", "serial_policy",
                  "rule", "mode", "reason")


def cmd_explain(args) -> int:
    from hookd.engine import evaluate
    cfg = _load_config(args)
    source = "stdin" if args.xml == "-" else args.xml
    ev = evaluate(read_input(args.xml), cfg.policy, rewrite=False, what=source)
    d = ev.decision.as_dict()
    if ev.facts.nova is not None:
        d["nova_name"] = ev.facts.nova.name
        d["nova_metadata_version"] = "%d.%d" % ev.facts.nova.ns_version
    if args.json:
        print(json.dumps(d, indent=2, sort_keys=True))
        return EXIT_OK
    rows = [(k, d.get(k)) for k in EXPLAIN_FIELDS]
    if d.get("chassis_serial"):
        rows.append(("chassis_serial", d["chassis_serial"]))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {'-' if value is None else value}")
    return EXIT_OK


def cmd_rewrite(args) -> int:
    from hookd.engine import evaluate
    cfg = _load_config(args)
    data = read_input(args.xml)
    source = "stdin" if args.xml == "-" else args.xml
    ev = evaluate(data, cfg.policy, what=source)
    out = ev.xml if ev.xml is not None else data
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_check_config(args) -> int:
    cfg = _load_config(args)
    rules = len(cfg.policy.rules)
    print(f"OK: {', '.join(cfg.sources)}: mode {cfg.policy.mode}, {rules} rule{'s' if rules != 1 else ''}")
    return EXIT_OK


# ------------------------------------------------------------------------ parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hookctl",
        description="Inspect and operate hookd, which gives each Nova guest a per-instance "
                    "SMBIOS system serial.")
    p.add_argument("--version", action="version", version=f"hookctl {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name, func, help_text):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(func=func)
        return sp

    def config_opt(sp):
        sp.add_argument("--config", metavar="FILE",
                        help="configuration file (default /etc/hookd/hookd.conf, plus conf.d/*.conf beside it)")

    sp = add("explain", cmd_explain, "show the serial decision for one domain XML")
    sp.add_argument("--xml", required=True, metavar="FILE", help="domain XML file, or - for stdin")
    config_opt(sp)
    sp.add_argument("--json", action="store_true", help="print the decision as JSON")

    sp = add("rewrite", cmd_rewrite,
             "print the domain XML carrying the policy serial (unchanged bytes if compliant)")
    sp.add_argument("--xml", required=True, metavar="FILE", help="domain XML file, or - for stdin")
    config_opt(sp)

    sp = add("check-config", cmd_check_config, "validate the configuration; exits 1 with file:line: reason")
    config_opt(sp)

    for extra in _EXTRA_COMMANDS:
        extra(sub, add, config_opt)
    return p


#: Other modules register subcommands here (install-hook, audit, status, ...).
_EXTRA_COMMANDS = []


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="hookctl: %(levelname)s: %(message)s")
    try:
        return args.func(args)
    except HookdError as err:
        print(f"hookctl: error: {err}", file=sys.stderr)
        log.debug("details", exc_info=True)
        return EXIT_FAIL
    except BrokenPipeError:
        # `hookctl rewrite ... | head`: the reader went away; not our failure.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # never a traceback on an operator's terminal
        print(f"hookctl: internal error: {type(err).__name__}: {err} (rerun with --debug for details)",
              file=sys.stderr)
        if args.debug:
            raise
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())

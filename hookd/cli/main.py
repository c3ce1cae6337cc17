"""`hookctl`: the operator's command line; this module is its parser and its entry point.

Owns the command names, their options and --help texts (the man pages list every
option: tests/test_packaging.py), and turning every error into one line on stderr with
a non-zero exit, never a traceback unless --debug. Each command lives in its own module
(explain, shim, audit, report, status, pins, doctor) and shares hookd.cli.common; this module
must not hold a command's logic, and nothing in hookd.cli imports it (it is the top).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

from hookd import __version__
from hookd.cli import doctor
from hookd.cli.audit import cmd_audit
from hookd.cli.common import EXIT_FAIL, EXIT_OK
from hookd.cli.explain import cmd_check_config, cmd_explain, cmd_rewrite
from hookd.cli.pins import cmd_adopt, cmd_pin, cmd_pins, cmd_unpin, pinfile_formats
from hookd.cli.report import cmd_report
from hookd.cli.shim import SHIM_NAME, cmd_install_hook
from hookd.cli.status import cmd_reconcile, cmd_status
from hookd.errors import HookdError

log = logging.getLogger("hookd.cli")


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

    sp = add("install-hook", cmd_install_hook,
             "write the compiled qemu hook shim and its settings into DIR (normally /etc/libvirt/hooks/qemu.d)")
    sp.add_argument("--socket", default="/run/hookd/hookd.sock", metavar="PATH",
                    help="hookd's hook socket, written into the shim's settings (default /run/hookd/hookd.sock)")
    sp.add_argument("--timeout", type=float, default=5.0, metavar="S",
                    help="seconds the shim waits for hookd before on-unreachable applies (default 5)")
    sp.add_argument("--on-unreachable", choices=("allow", "deny"), default="allow",
                    help="start the guest unchecked (allow, default) or refuse it (deny) when hookd does not answer")
    sp.add_argument("--name", default=SHIM_NAME,
                    help=f"file name in DIR (default {SHIM_NAME}); its settings go to NAME.conf beside it")
    sp.add_argument("--binary", metavar="FILE",
                    help="the compiled shim to install (default: the packaged one, else built from "
                         "its C source with cc)")
    sp.add_argument("dir", metavar="DIR", help="directory libvirt runs qemu hooks from")

    sp = add("audit", cmd_audit, "show the audit log (works without the daemon)")
    sp.add_argument("--instance", metavar="UUID", help="only this instance")
    sp.add_argument("--since", metavar="TIME", help="ISO time or age (30m, 12h, 7d)")
    sp.add_argument("--operation", metavar="OP",
                    help="only this operation (prepare, define, started, observed, stopped, ...)")
    sp.add_argument("--boots", action="store_true",
                    help="one line per boot: instance, host, serial, started, stopped, and whether each was "
                         "seen as an event or after the fact (a resync after hookd or libvirt was away)")
    fmt = sp.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--csv", action="store_true", help="print CSV (licence-compliance reports)")
    sp.add_argument("--state-dir", metavar="DIR", help="state directory (default: [hookd] state_dir)")
    config_opt(sp)

    sp = add("report", cmd_report,
             "the compliance report: per instance, its serials, hosts, first and last seen, whether each "
             "boot matched policy, and drift (this host's audit; with [store] backend = etcd, the fleet's "
             "last boots too)")
    sp.add_argument("--since", metavar="TIME", help="only boots since: ISO time or age (30m, 12h, 7d)")
    fmt = sp.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON (with every boot of each instance)")
    fmt.add_argument("--csv", action="store_true", help="print CSV, one row per instance")
    sp.add_argument("--local", action="store_true",
                    help="only this host's audit, even with [store] backend = etcd")
    sp.add_argument("--fail-on-drift", action="store_true",
                    help="exit 3 when an instance drifted (for cron jobs; default: 0, drift is data)")
    sp.add_argument("--state-dir", metavar="DIR", help="state directory (default: [hookd] state_dir)")
    config_opt(sp)

    sp = add("doctor", doctor.cmd_doctor, "check this hypervisor's hookd setup; one OK/WARN/FAIL line per check")
    doctor.configure_parser(sp)
    config_opt(sp)

    sp = add("reconcile", cmd_reconcile,
             "sweep now: give saved definitions the policy serial (next cold boot); lists what changed")
    sp.add_argument("--dry-run", action="store_true", help="only list what would change")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.add_argument("--socket", metavar="PATH", help="hook socket (default: [hookd] socket)")
    sp.add_argument("--timeout", type=float, default=120.0, metavar="S",
                    help="seconds to wait for the sweep (default 120)")
    config_opt(sp)

    sp = add("pin", cmd_pin, "pin an instance's serial (overrides every rule, mode and flavor key)")
    sp.add_argument("instance", metavar="UUID", help="instance UUID")
    sp.add_argument("serial", metavar="SERIAL", help="the serial (validated like any serial)")
    config_opt(sp)

    sp = add("unpin", cmd_unpin, "remove an instance's pin")
    sp.add_argument("instance", metavar="UUID", help="instance UUID")
    config_opt(sp)

    # Bulk import/export are options of `pins`, not words after `pin`: `pin` takes UUID SERIAL
    # positionals, and `pin import FILE` would read as pinning an instance named "import".
    sp = add("pins", cmd_pins, "list pinned serials; import or export many at once (migrated VMs' serials)")
    what = sp.add_mutually_exclusive_group()
    what.add_argument("--json", action="store_true", help="print JSON")
    what.add_argument("--import", dest="import_file", metavar="FILE",
                      help="pin every instance of FILE (- for stdin) that has no pin yet (create-if-absent: "
                           "an existing pin is never changed); rows of instance_uuid and serial")
    what.add_argument("--export", action="store_true",
                      help="print every pin as instance_uuid and serial, in the format --import reads")
    sp.add_argument("--format", choices=pinfile_formats(), default=None,
                    help="csv (a header naming instance_uuid and serial) or json (a list of objects with "
                         "those keys); default csv, or json for an --import FILE ending in .json")
    sp.add_argument("--dry-run", action="store_true", help="with --import: only report, write nothing")
    sp.add_argument("--skip-invalid", action="store_true",
                    help="with --import: import the valid rows of a file that has invalid ones "
                         "(default: any invalid row and nothing is imported)")
    config_opt(sp)

    sp = add("adopt", cmd_adopt, "pin every Nova guest on this host to the serial it has now (one-time rollout step)")
    sp.add_argument("--dry-run", action="store_true", help="only list what would be pinned")
    sp.add_argument("--libvirt-uri", metavar="URI", help="libvirt connection (default: [hookd] libvirt_uri)")
    config_opt(sp)

    sp = add("status", cmd_status, "ask the running daemon how it is; exits 1 when it is down")
    sp.add_argument("--socket", metavar="PATH", help="hook socket (default: [hookd] socket)")
    sp.add_argument("--json", action="store_true", help="print JSON")
    config_opt(sp)
    return p


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

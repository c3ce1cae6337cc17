"""`hookctl doctor`: checks of one hypervisor's hookd setup, one line per check.

Owns the order of the checks, the --options doctor adds to its parser, and the output:
one OK/WARN/FAIL line per check with what was found and what to do about it (or JSON),
exit 1 when any check failed. The checks themselves live beside it: checks_hookd
(config, shim, hook-loaded, daemon, proxy, store), checks_libvirt (libvirt socket and
version, guests; fed by the probe, which makes every libvirt call in a child process
killed at a deadline) and checks_nova (nova-compute's connection_uri and sysinfo_serial).

It must not change anything: it never writes a file, never redefines a domain, never
signals a process, and opens libvirt read-only. It must never hang: libvirt is only
called through the probe and socket checks use timeouts. Policy decisions come from
hookd.decision only. Nothing in doctor imports hookd.cli.main (main imports doctor).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Dict, List

from hookd.cli.common import CliError
from hookd.cli.doctor.base import FAIL, OK, WARN, Check
from hookd.cli.doctor.checks_hookd import (DEFAULT_HOOKS_DIR, check_config, check_daemon,
                                           check_libvirtd_start, check_proxy, check_shim, check_store,
                                           libvirt_daemons_using)
from hookd.cli.doctor.checks_libvirt import check_guests, check_libvirt_socket, check_libvirt_version
from hookd.cli.doctor.checks_nova import DEFAULT_NOVA_CONF, check_nova_sysinfo, check_nova_uri, read_nova_conf
from hookd.errors import HookdError

__all__ = ["OK", "WARN", "FAIL", "Check", "configure_parser", "run_checks", "cmd_doctor",
           "check_config", "check_shim", "check_libvirtd_start", "check_daemon", "check_proxy", "check_store",
           "check_libvirt_socket", "check_libvirt_version", "check_guests", "check_nova_uri",
           "check_nova_sysinfo", "read_nova_conf", "libvirt_daemons_using"]

log = logging.getLogger("hookd.cli.doctor")


def configure_parser(sp) -> None:
    sp.add_argument("--json", action="store_true", help="print the checks as JSON")
    sp.add_argument("--hooks-dir", default=DEFAULT_HOOKS_DIR, metavar="DIR",
                    help=f"libvirt's qemu hooks directory (default {DEFAULT_HOOKS_DIR})")
    sp.add_argument("--nova-conf", metavar="FILE",
                    help=f"nova-compute's configuration (default {DEFAULT_NOVA_CONF}, "
                         f"plus nova.conf.d/*.conf beside it)")
    sp.add_argument("--libvirt-uri", metavar="URI",
                    help="libvirt connection to inspect (default: [hookd] libvirt_uri)")
    sp.add_argument("--timeout", type=float, default=10.0, metavar="S",
                    help="seconds the libvirt checks may take in all (default 10)")


def run_checks(args) -> List[Check]:
    if not 0.5 <= args.timeout <= 600:
        raise CliError(f"--timeout must be between 0.5 and 600 seconds, got {args.timeout:g}")
    checks: List[Check] = []
    cfg, c = check_config(args.config)
    checks.append(c)
    c, shim = check_shim(args.hooks_dir, cfg)
    checks.append(c)
    checks.append(check_libvirtd_start(args.hooks_dir, shim))
    c, status = check_daemon(cfg)
    checks.append(c)
    checks.append(check_libvirt_socket(cfg))
    from hookd.config import DaemonSettings
    uri = args.libvirt_uri or (cfg.daemon if cfg is not None else DaemonSettings()).libvirt_uri
    # Imported here, not at the top: `python3 -m hookd.cli.doctor.probe` imports this
    # package first, and runpy warns if that had already imported the probe.
    from hookd.cli.doctor import probe as libvirt_probe
    probe = libvirt_probe.run(uri, args.timeout)
    checks.append(check_libvirt_version(uri, probe, cfg))
    checks.append(check_proxy(cfg, status))
    checks.append(check_store(cfg, status))
    parser, files, level, problem = read_nova_conf(args.nova_conf)
    if problem:
        hint = ("not a Nova compute node, or pass --nova-conf" if level == WARN
                else "pass the nova.conf nova-compute reads")
        checks.append(Check(level, "nova-uri", f"not checked: {problem}", hint))
        checks.append(Check(level, "nova-sysinfo", f"not checked: {problem}", hint))
    else:
        checks.append(check_nova_uri(parser, files, cfg))
        checks.append(check_nova_sysinfo(parser, cfg))
    checks.append(check_guests(probe, cfg, _pins(cfg)))
    return checks


def _pins(cfg):
    """The pin lookup explain uses; a store doctor cannot read is reported by the store
    check, and the guests are then judged without pins."""
    from hookd.stores import read_only_pin_lookup
    if cfg is None:
        return None
    try:
        return read_only_pin_lookup(cfg)
    except HookdError as err:
        log.debug("guests judged without pins: %s", err)
        return None


def cmd_doctor(args) -> int:
    checks = run_checks(args)
    failed = any(c.status == FAIL for c in checks)
    if args.json:
        counts: Dict[str, int] = {OK: 0, WARN: 0, FAIL: 0}
        for c in checks:
            counts[c.status] += 1
        print(json.dumps({"ok": not failed, "counts": counts, "checks": [asdict(c) for c in checks]},
                         indent=2))
    else:
        for c in checks:
            print(c.line())
    return 1 if failed else 0

"""`hookctl pin`, `unpin`, `pins` (list, --import, --export) and `adopt`: the operator's
hand on the pin store.

Owns opening the configured store for a command, the create-if-absent import of a pin
file (read and classified by hookd.cli.pinfile) and adopt's walk over libvirt's guests.
A pin is only ever created if absent, except by an explicit `hookctl pin`; it must not
edit libvirt's definitions (adopt opens libvirt only to read them).
"""

from __future__ import annotations

import json
import os
import sys

from hookd.cli.common import EXIT_FAIL, EXIT_OK, CliError, load_cli_config
from hookd.errors import HookdError


def _store(args):
    from hookd.stores import open_store
    import socket as _socket
    return open_store(load_cli_config(args), host=_socket.gethostname())


def cmd_pin(args) -> int:
    store = _store(args)
    from hookd.stores.pins import check_pin
    uuid, serial = check_pin(args.instance, args.serial)
    store.set(uuid, serial, source="hookctl pin")
    print(f"pinned {uuid} to {serial!r} ({store.backend} store)")
    return EXIT_OK


def cmd_unpin(args) -> int:
    store = _store(args)
    if not store.unpin(args.instance):
        raise CliError(f"{args.instance} has no pin")
    print(f"unpinned {args.instance}")
    return EXIT_OK


def cmd_pins(args) -> int:
    if args.import_file is None and (args.dry_run or args.skip_invalid):
        raise CliError(f"{'--dry-run' if args.dry_run else '--skip-invalid'} goes with --import FILE")
    if args.import_file is None and not args.export and args.format is not None:
        raise CliError("--format goes with --import FILE or --export")
    if args.import_file is not None:
        return _import_pins(args)
    if args.export:
        from hookd.cli import pinfile
        sys.stdout.write(pinfile.export(_store(args).all(), args.format or "csv"))
        return EXIT_OK
    pins = _store(args).all()
    if args.json:
        print(json.dumps(pins, indent=2, sort_keys=True))
        return EXIT_OK
    for uuid, p in pins.items():
        print(f"{uuid}  {p['serial']!r:<40} {p.get('created') or '-'}  {p.get('source') or '-'}  {p.get('host') or '-'}")
    print(f"{len(pins)} pins")
    return EXIT_OK


def _import_pins(args) -> int:
    """`hookctl pins --import FILE`: create-if-absent for every row; a bad file writes nothing."""
    from hookd.cli import pinfile
    from hookd.stores.pins import PINS_DB
    path = args.import_file
    source = "stdin" if path == "-" else path
    fmt = pinfile.guess_format(path, args.format)
    try:
        parsed = pinfile.parse(pinfile.read_source(path), fmt, source)
    except pinfile.PinFileError as err:
        raise CliError(f"{err}; nothing imported") from err
    if parsed.problems and not args.skip_invalid:
        for line in pinfile.problem_lines(parsed, source):
            print(f"hookctl: error: {line}", file=sys.stderr)
        valid = len(parsed.rows)
        print(f"hookctl: error: {source}: {len(parsed.problems)} invalid row"
              f"{'s' if len(parsed.problems) != 1 else ''}; nothing imported (fix the file, or pass "
              f"--skip-invalid to import the {valid} valid row{'s' if valid != 1 else ''})", file=sys.stderr)
        return EXIT_FAIL
    cfg = load_cli_config(args)
    if args.dry_run and cfg.store.backend == "sqlite" and \
            not os.path.exists(os.path.join(cfg.daemon.state_dir, PINS_DB)):
        backend, existing, store = "sqlite", {}, None      # a dry run creates no store
    else:
        store = _store(args)
        backend = store.backend
        existing = {uuid: p["serial"] for uuid, p in store.all().items()}
    outcomes = pinfile.classify(parsed.rows, existing)
    if not args.dry_run:
        done = []
        for outcome, row, pinned in outcomes:
            if outcome != pinfile.IMPORTED:
                done.append((outcome, row, pinned))
                continue
            try:
                winner = store.pin_if_absent(row.uuid, row.serial, source=f"hookctl pins --import {source}")
            except HookdError as err:
                written = sum(1 for o, _, _ in done if o == pinfile.IMPORTED)
                for text in pinfile.report_lines(done, parsed, dry_run=False, skipped_invalid=args.skip_invalid):
                    print(text)
                sys.stdout.flush()
                raise CliError(f"{source} line {row.line}: {err}; {written} pins were imported before it, "
                               f"the rest were not (importing the file again is safe: first writer wins)") from err
            if winner == row.serial:
                done.append((pinfile.IMPORTED, row, None))
            else:                                   # pinned meanwhile by someone else
                done.append((pinfile.KEPT, row, winner))
        outcomes = done
    for text in pinfile.report_lines(outcomes, parsed, dry_run=args.dry_run, skipped_invalid=args.skip_invalid):
        print(text)
    print(pinfile.summary(outcomes, parsed, source=source, dry_run=args.dry_run, backend=backend))
    return EXIT_OK


def cmd_adopt(args) -> int:
    """Pin every Nova guest on this host to the serial it runs (or is defined) with now."""
    import libvirt
    from hookd.decision import DecisionService
    from hookd.policy.serial import serial_problem, VERDICT_NOT_APPLICABLE, VERDICT_NOT_NOVA
    cfg = load_cli_config(args)
    store = _store(args)
    uri = args.libvirt_uri or cfg.daemon.libvirt_uri
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as err:
        raise CliError(f"cannot connect to libvirt at {uri}: {err.get_error_message()}") from err
    # Without pins: adopt asks which guests are Nova's and what they carry now; the
    # store is read below, for each instance, just before pinning.
    decisions = DecisionService.read_only(cfg.policy, None)
    pinned = 0
    try:
        for dom in conn.listAllDomains():
            try:
                # A running guest's live serial is what its licences see today.
                xml = dom.XMLDesc(0 if dom.isActive() else libvirt.VIR_DOMAIN_XML_INACTIVE)
            except libvirt.libvirtError as err:
                print(f"skipped   {dom.name()}: {err.get_error_message()}")
                continue
            ev = decisions.decide(xml.encode(), op="adopt", what=f"domain {dom.name()}", rewrite=False)
            d = ev.decision
            current = ev.facts.sysinfo.system_serial
            if d.verdict in (VERDICT_NOT_NOVA, VERDICT_NOT_APPLICABLE):
                print(f"skipped   {d.domain:<24} {d.instance_uuid}  {d.verdict}")
                continue
            problem = serial_problem(current)
            if problem is not None:
                print(f"skipped   {d.domain:<24} {d.instance_uuid}  serial {current!r} {problem}")
                continue
            existing = store.get(d.instance_uuid)
            if existing is not None:
                print(f"kept      {d.domain:<24} {d.instance_uuid}  already pinned to {existing!r}")
                continue
            if args.dry_run:
                print(f"would pin {d.domain:<24} {d.instance_uuid}  {current!r}")
                pinned += 1
                continue
            winner = store.pin_if_absent(d.instance_uuid, current, source="hookctl adopt")
            if winner == current:
                pinned += 1
                print(f"pinned    {d.domain:<24} {d.instance_uuid}  {current!r}")
            else:
                print(f"kept      {d.domain:<24} {d.instance_uuid}  pinned meanwhile to {winner!r}")
    finally:
        conn.close()
    print(f"{pinned} instances {'would be ' if args.dry_run else ''}pinned ({store.backend} store)")
    return EXIT_OK


def pinfile_formats() -> tuple:
    from hookd.cli.pinfile import FORMATS
    return FORMATS

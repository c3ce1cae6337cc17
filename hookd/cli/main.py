"""`hookctl`: the operator's command line.

Owns argument parsing, reading input files, and turning results into text or
JSON, and every error into one line on stderr with a non-zero exit. Decisions come
from hookd.decision; daemon queries go over the hook socket (hookd.ipc.client); the audit
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
from hookd.ledger import LIFECYCLE, fold_boots
from hookd.xml.safe import MAX_XML_BYTES

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
                  "rule", "mode", "reason", "new_pin")


def _decisions(cfg):
    """The decision path the commands that only look use: the pins are read, never made."""
    from hookd.decision import DecisionService
    from hookd.stores import read_only_pin_lookup
    return DecisionService.read_only(cfg.policy, read_only_pin_lookup(cfg))


def cmd_explain(args) -> int:
    cfg = _load_config(args)
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
    cfg = _load_config(args)
    data = read_input(args.xml)
    source = "stdin" if args.xml == "-" else args.xml
    ev = _decisions(cfg).decide(data, op="rewrite", what=source, rewrite=True)
    out = ev.xml if ev.xml is not None else data
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_check_config(args) -> int:
    cfg = _load_config(args)
    rules = len(cfg.policy.rules)
    print(f"OK: {', '.join(cfg.sources)}: mode {cfg.policy.mode}, {rules} rule{'s' if rules != 1 else ''}")
    return EXIT_OK


# ------------------------------------------------------------------ install-hook

SHIM_NAME = "50-hookd"
#: Where the packages put the compiled shim (Debian's /usr/lib, Fedora's /usr/libexec).
SHIM_BINARY_PATHS = ("/usr/lib/hookd/hookd-shim", "/usr/libexec/hookd/hookd-shim")
#: The shim's C source: a source checkout's hooks/, or the copy a wheel carries.
SHIM_SOURCE_PATHS = (
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "hooks", "hookd-shim.c"),
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "hookd-shim.c"),
)
SHIM_CFLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong")
#: struct sockaddr_un's sun_path, NUL included.
SUN_PATH_MAX = 108


def render_shim_settings(*, socket_path: str, timeout: float, on_unreachable: str) -> str:
    """The shim's settings file ("<hook path>.conf"; parsed by hooks/hookd-shim.c)."""
    if not socket_path.startswith("/") or any(c in socket_path for c in "\n\r\0#"):
        raise CliError(f"--socket must be an absolute path, got {socket_path!r}")
    if len(socket_path.encode()) >= SUN_PATH_MAX or socket_path != socket_path.strip():
        raise CliError(f"--socket must be under {SUN_PATH_MAX} bytes without surrounding blanks "
                       f"(a UNIX socket path), got {socket_path!r}")
    if not 0.1 <= timeout <= 300:
        raise CliError(f"--timeout must be between 0.1 and 300 seconds, got {timeout:g}")
    if on_unreachable not in ("allow", "deny"):
        raise CliError(f"--on-unreachable must be allow or deny, got {on_unreachable!r}")
    return ("# hookd's qemu hook settings, written by `hookctl install-hook`; the hook beside\n"
            "# this file reads them on every call (libvirt gives hooks no other configuration).\n"
            f"socket = {socket_path}\n"
            f"timeout = {timeout:g}\n"
            f"on_unreachable = {on_unreachable}\n")


#: What the shim uses when its settings file or a key is missing (hooks/hookd-shim.c).
SHIM_DEFAULTS = {"socket": "/run/hookd/hookd.sock", "timeout": 5.0, "on_unreachable": "allow"}


def parse_shim_settings(text: str, source: str = "settings") -> dict:
    """Read a shim settings file the way hooks/hookd-shim.c does (same keys, ranges, errors)."""
    values = dict(SHIM_DEFAULTS)
    if "\0" in text:
        raise CliError(f"{source} hold a NUL byte")
    if len(text.encode("utf-8", "surrogateescape")) > 4096:
        raise CliError(f"{source} are over 4096 bytes")
    for no, line in enumerate(text.split("\n"), 1):
        line = line.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(" \t"), value.strip(" \t")
        if not eq:
            raise CliError(f"{source} line {no}: expected key = value")
        if key == "socket":
            if not value.startswith("/") or len(value.encode()) >= SUN_PATH_MAX:
                raise CliError(f"{source} line {no}: socket must be an absolute path of at most "
                               f"{SUN_PATH_MAX - 1} bytes")
            values["socket"] = value
        elif key == "timeout":
            try:
                seconds = float(value)
            except ValueError:
                seconds = -1.0
            if not 0.1 <= seconds <= 300:
                raise CliError(f"{source} line {no}: timeout must be 0.1 to 300 seconds")
            values["timeout"] = seconds
        elif key == "on_unreachable":
            if value not in ("allow", "deny"):
                raise CliError(f"{source} line {no}: on_unreachable must be allow or deny")
            values["on_unreachable"] = value
        else:
            raise CliError(f"{source} line {no}: unknown key")
    return values


def build_shim(output: str, source: Optional[str] = None, extra_flags: tuple = ()) -> str:
    """Compile the C shim into `output` with the system's C compiler; returns `output`."""
    import shutil
    import subprocess
    if source is None:
        source = next((p for p in SHIM_SOURCE_PATHS if os.path.isfile(p)), None)
        if source is None:
            raise CliError(f"the shim's C source is missing (looked in {', '.join(SHIM_SOURCE_PATHS)})")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None or shutil.which(cc) is None:
        raise CliError("no compiled hook shim is installed (looked in "
                       f"{', '.join(SHIM_BINARY_PATHS)}) and no C compiler (cc) is there to build "
                       f"{source}: install gcc (or the hookd package), or pass --binary")
    res = subprocess.run([cc, *SHIM_CFLAGS, *extra_flags, "-o", output, source],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    if res.returncode != 0:
        first = next((line for line in res.stdout.splitlines() if "error" in line), res.stdout.strip()[:200])
        raise CliError(f"building the shim with {cc} failed: {first}")
    return output


def _write_atomically(target: str, data: bytes, mode: int) -> None:
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)      # atomic: libvirt never runs a half-written hook
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CliError(f"cannot write {target}: {err.strerror}") from err


def cmd_install_hook(args) -> int:
    import tempfile
    settings = render_shim_settings(socket_path=args.socket, timeout=args.timeout,
                                    on_unreachable=args.on_unreachable)
    if not os.path.isdir(args.dir):
        raise CliError(f"{args.dir} is not a directory")
    if os.path.basename(os.path.normpath(args.dir)) == "hooks" and args.name == "qemu":
        raise CliError("refusing to write /etc/libvirt/hooks/qemu: it belongs to the admin; use qemu.d/")
    if args.name.endswith(".conf") or "/" in args.name:
        raise CliError(f"--name must be a plain file name not ending in .conf, got {args.name!r}")
    with tempfile.TemporaryDirectory(prefix="hookd-shim-") as tmp:
        binary = args.binary or next((p for p in SHIM_BINARY_PATHS if os.path.isfile(p)), None)
        if binary is None:
            binary = build_shim(os.path.join(tmp, "hookd-shim"))
        try:
            with open(binary, "rb") as f:
                code = f.read()
        except OSError as err:
            raise CliError(f"cannot read the compiled shim {binary}: {err.strerror}") from err
        if not code.startswith(b"\x7fELF"):
            raise CliError(f"{binary} is not a compiled shim (no ELF header)")
    target = os.path.join(args.dir, args.name)
    # Settings first: the hook must never run without the settings it was installed with.
    _write_atomically(target + ".conf", settings.encode(), 0o644)
    _write_atomically(target, code, 0o755)
    print(f"installed {target} and {target}.conf (socket {args.socket}, timeout {args.timeout:g}s, "
          f"on_unreachable {args.on_unreachable}); libvirtd sees a new hook file only after "
          f"a restart or SIGHUP")
    return EXIT_OK


# ---------------------------------------------------------------------- audit

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
    state_dir = args.state_dir or _load_config(args).daemon.state_dir
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


# --------------------------------------------------------------------- status

def ask_daemon(socket_path: str, message: dict, timeout: float = 5.0) -> dict:
    """hookd.ipc.client.ask for the commands that build their request as a dict (a
    control message of hookd.ipc.messages); raises hookd.ipc.client.ClientError."""
    from hookd.ipc import client, messages
    return client.ask(socket_path, messages.decode_control(message), timeout)


def cmd_status(args) -> int:
    sock = args.socket or _load_config(args).daemon.socket
    st = ask_daemon(sock, {"v": 1, "op": "status"})
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return EXIT_OK
    cfg = st.get("config", {})
    print(f"hookd {st.get('version')} running (pid {st.get('pid')}, up {st.get('uptime_s')} s)")
    print(f"config      {', '.join(cfg.get('sources', []))}: mode {cfg.get('mode')}, {cfg.get('rules')} rules, "
          f"on_mismatch {cfg.get('on_mismatch')}; {st.get('reloads')} reloads, {st.get('reload_failures')} rejected")
    if st.get("last_reload_error"):
        print(f"last reload rejected: {st['last_reload_error']}")
    counters = st.get("counters", {})
    print("hook        " + (", ".join(f"{k} {v}" for k, v in sorted(counters.items())) or "no requests yet"))
    a = st.get("audit", {})
    print(f"audit       {a.get('path')}: {a.get('written')} rows written, {a.get('pending')} pending"
          + (f", FAILING: {a['failing']}" if a.get("failing") else ""))
    store = st.get("store")
    if store is not None:
        if store.get("backend") == "etcd":
            print(f"store       etcd {', '.join(store.get('endpoints', []))}: "
                  f"{'reachable' if store.get('reachable') else 'UNREACHABLE (' + str(store.get('last_error')) + ')'}"
                  f"; {store.get('cached')} pins cached, {store.get('queued')} queued, "
                  f"{store.get('conflicts')} conflicts")
        else:
            print(f"store       sqlite {store.get('path')}")
    proxy = st.get("proxy")
    if proxy is not None:
        print(f"proxy       {proxy.get('clients_connected')} clients connected, "
              f"{proxy.get('definitions_rewritten')} of {proxy.get('definitions_seen')} definitions rewritten, "
              f"{proxy.get('clients_refused')} refused, {proxy.get('clients_over_limit', 0)} over the "
              f"client limit, {proxy.get('errors')} errors")
        up = proxy.get("upstream")
        if isinstance(up, dict):
            print(f"upstream    {up.get('why')}")
    ev = st.get("events")
    if ev is not None:
        print(f"libvirt     {'connected' if ev.get('connected') else 'DISCONNECTED'} to {ev.get('uri')}; "
              f"{ev.get('reconnects')} reconnects, {ev.get('events')} events")
        print(f"boots       {ev.get('open_boots', 0)} running guests recorded; {ev.get('resyncs', 0)} resyncs "
              "(after each connect to libvirt)")
    rec = st.get("reconcile")
    if rec is not None:
        print(f"reconcile   {rec.get('sweeps')} sweeps, {rec.get('fixed')} definitions fixed")
    return EXIT_OK


def _cmd_doctor(args) -> int:
    from hookd.cli import doctor
    return doctor.cmd_doctor(args)


def cmd_reconcile(args) -> int:
    sock = args.socket or _load_config(args).daemon.socket
    reply = ask_daemon(sock, {"v": 1, "op": "reconcile", "dry_run": bool(args.dry_run)}, timeout=args.timeout)
    if reply.get("error"):
        raise CliError(f"reconcile: {reply['error']}")
    items = reply.get("items", [])
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return EXIT_OK
    verb = "would change" if args.dry_run else "changed"
    changes = [i for i in items if i.get("action") in ("fixed", "would-fix")]
    for i in items:
        print(f"{i.get('action', '?'):<10} {i.get('domain', '-'):<24} {i.get('instance_uuid', '-')}  "
              f"saved serial {i.get('serial_saved')!r} -> policy {i.get('serial_policy')!r}"
              + (f"  ({i['detail']})" if i.get("detail") else ""))
    print(f"{len(items)} domains checked, {len(changes)} {verb}")
    return EXIT_OK


# ----------------------------------------------------------------------- pins

def _store(args):
    from hookd.stores import open_store
    import socket as _socket
    return open_store(_load_config(args), host=_socket.gethostname())


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
    cfg = _load_config(args)
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
    cfg = _load_config(args)
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


# ------------------------------------------------------------------------ parser

def pinfile_formats() -> tuple:
    from hookd.cli.pinfile import FORMATS
    return FORMATS


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

    sp = add("doctor", _cmd_doctor, "check this hypervisor's hookd setup; one OK/WARN/FAIL line per check")
    from hookd.cli import doctor
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

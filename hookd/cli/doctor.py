"""`hookctl doctor`: checks of one hypervisor's hookd setup, one line per check.

Owns the checks an operator would otherwise do by hand, each ending in OK, WARN or
FAIL with what was found and what to do about it: hookd's configuration, the qemu
hook shim in libvirt's hooks directory (and whether the running libvirtd started
after it appeared, since libvirt only notices hook files at start or SIGHUP), the
daemon's hook socket, libvirt's socket and version, the proxy socket and
nova-compute's [libvirt] connection_uri / sysinfo_serial, and how many guests carry
a serial out of policy (live and saved definition).

It must not change anything: it never writes a file, never redefines a domain,
never signals a process, and opens libvirt read-only. It must never hang: every
libvirt call runs in a child process killed at a deadline (see _probe_libvirt), and
socket checks use timeouts. Policy decisions come from hookd.decision only; this
module has no policy logic of its own.
"""

from __future__ import annotations

import configparser
import glob
import json
import logging
import os
import select
import socket
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from hookd.errors import HookdError
from hookd.virt.qemuproc import start_ticks

log = logging.getLogger("hookd.cli.doctor")

OK, WARN, FAIL = "OK", "WARN", "FAIL"
DEFAULT_HOOKS_DIR = "/etc/libvirt/hooks/qemu.d"
DEFAULT_NOVA_CONF = "/etc/nova/nova.conf"
SHIM_MARKER = "hookd's libvirt qemu hook"
#: libvirt runs every executable of hooks/qemu.d/ since 6.5.0.
LIBVIRT_QEMU_D = 6_005_000
#: SMBIOS chassis entries (host_serial_to_chassis) since 4.1.0.
LIBVIRT_CHASSIS = 4_001_000
LIBVIRT_DAEMONS = ("libvirtd", "virtqemud")
NOVA_SYSINFO_CHOICES = ("none", "os", "hardware", "auto", "unique")
NOVA_SYSINFO_DEFAULT = "unique"
#: How many domain names a finding lists before "and N more".
NAMES_SHOWN = 5


@dataclass
class Check:
    status: str
    check: str
    finding: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.check}: {self.finding}"
        return f"{text}; {self.fix}" if self.fix else text


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


# ----------------------------------------------------------------- helpers

def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _names(names: List[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def _fmt_version(v: int) -> str:
    return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"


def _fmt_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _uri_socket(uri: str) -> Optional[str]:
    """The ?socket= of a libvirt URI, if any."""
    try:
        values = parse_qs(urlsplit(uri).query).get("socket")
    except ValueError:
        return None
    return values[-1] if values else None


def _socket_answers(path: str, timeout: float = 2.0) -> Optional[str]:
    """None if something accepts connections at `path`, else why not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as err:
        return f"cannot stat: {err.strerror}"
    if not stat.S_ISSOCK(st.st_mode):
        return "exists but is not a socket"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
    except OSError as err:
        return f"connect failed: {err.strerror or err}"
    return None


# ------------------------------------------------------------ the checks

def check_config(path: Optional[str]):
    from hookd.config import load_config
    from hookd.errors import HookdError
    try:
        cfg = load_config(path)
    except HookdError as err:
        return None, Check(FAIL, "config", str(err),
                           "fix that line, then `hookctl check-config` and `systemctl reload hookd`")
    rules = len(cfg.policy.rules)
    exists = any(os.path.exists(s) for s in cfg.sources)
    where = ", ".join(cfg.sources) if exists else f"{cfg.sources[0]} absent, defaults"
    return cfg, Check(OK, "config", f"{where}: mode {cfg.policy.mode}, {_plural(rules, 'rule')}, "
                                     f"on_mismatch {cfg.on_mismatch}")


def _find_shim(hooks_dir: str) -> Optional[str]:
    from hookd.cli.shim import SHIM_NAME
    default = os.path.join(hooks_dir, SHIM_NAME)
    if os.path.lexists(default):
        return default
    try:
        names = sorted(os.listdir(hooks_dir))
    except OSError:
        return None
    for name in names:           # installed under another --name?
        path = os.path.join(hooks_dir, name)
        try:
            with open(path, "rb") as f:
                if SHIM_MARKER.encode() in f.read(1 << 20):      # the compiled shim's rodata
                    return path
        except OSError:
            continue
    return None


def check_shim(hooks_dir: str, cfg) -> Tuple[Check, Optional[str]]:
    from hookd.cli.shim import SHIM_DEFAULTS, SHIM_NAME, parse_shim_settings
    install = f"hookctl install-hook {hooks_dir}"
    if not os.path.isdir(hooks_dir):
        return Check(FAIL, "shim", f"hooks directory {hooks_dir} does not exist",
                     f"mkdir -p {hooks_dir} && {install}, then `systemctl reload libvirtd`"), None
    shim = _find_shim(hooks_dir)
    if shim is None:
        return Check(FAIL, "shim", f"no hookd shim in {hooks_dir}: libvirt starts guests unchecked",
                     f"{install}, then `systemctl reload libvirtd`"), None
    try:
        st = os.stat(shim)
    except OSError as err:
        return Check(FAIL, "shim", f"{shim}: {err.strerror} (dangling link?)", install), None
    if not stat.S_ISREG(st.st_mode):
        return Check(FAIL, "shim", f"{shim} is not a regular file", f"remove it, then {install}"), None
    if not st.st_mode & 0o100:
        return Check(FAIL, "shim", f"{shim} is not executable: libvirt skips it",
                     f"chmod 755 {shim}"), None
    try:
        with open(shim, "rb") as f:
            code = f.read(1 << 20)
    except OSError as err:
        return Check(FAIL, "shim", f"cannot read {shim}: {err.strerror}", install), None
    if not code.startswith(b"\x7fELF") or SHIM_MARKER.encode() not in code:
        return Check(FAIL, "shim", f"{shim} is not hookd's compiled shim (an older or foreign hook)",
                     install), None
    settings_path = shim + ".conf"
    try:
        with open(settings_path, encoding="utf-8", errors="surrogateescape") as f:
            settings = parse_shim_settings(f.read(8192), settings_path)
        where = ""
    except FileNotFoundError:
        settings, where = dict(SHIM_DEFAULTS), f" (no {os.path.basename(settings_path)}: built-in defaults)"
    except OSError as err:
        return Check(FAIL, "shim", f"cannot read {settings_path}: {err.strerror}; the hook treats hookd "
                                   f"as unreachable", install), shim
    except HookdError as err:
        return Check(FAIL, "shim", f"{err}; the hook treats hookd as unreachable", install), shim
    sock, timeout, on_unreachable = settings["socket"], settings["timeout"], settings["on_unreachable"]
    if cfg is not None and isinstance(sock, str) and sock != cfg.daemon.socket:
        return Check(FAIL, "shim", f"{shim} asks {sock} but hookd listens on {cfg.daemon.socket}",
                     f"hookctl install-hook --socket {cfg.daemon.socket} {hooks_dir}"), shim
    name = "" if os.path.basename(shim) == SHIM_NAME else f" (named {os.path.basename(shim)})"
    return Check(OK, "shim", f"{shim}{name} executable, socket {sock}, timeout {timeout:g} s, "
                             f"on_unreachable {on_unreachable}{where}"), shim


def _boot_offset() -> float:
    """Wall-clock time of the kernel's boot, precise to the tick (btime is whole seconds)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def _process_start(pid: int) -> Optional[float]:
    ticks = start_ticks(pid)
    return None if ticks is None else _boot_offset() + ticks / os.sysconf("SC_CLK_TCK")


def libvirt_daemons_using(hooks_dir: str) -> List[Tuple[int, str, float]]:
    """(pid, name, start time) of each libvirtd/virtqemud whose qemu hooks directory is `hooks_dir`.

    Matched by inode through /proc/PID/root, so a libvirtd in another mount namespace
    (a container, or the test harness's namespaced hosts) is matched to the directory
    it really uses, not to the path it calls /etc/libvirt/hooks/qemu.d.
    """
    try:
        want = os.stat(hooks_dir)
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            if comm not in LIBVIRT_DAEMONS:
                continue
            theirs = os.stat(f"/proc/{pid}/root{DEFAULT_HOOKS_DIR}")
        except OSError:
            continue
        if (theirs.st_dev, theirs.st_ino) != (want.st_dev, want.st_ino):
            continue
        started = _process_start(pid)
        if started is not None:
            found.append((pid, comm, started))
    return found


def check_libvirtd_start(hooks_dir: str, shim: Optional[str]) -> Check:
    if shim is None:
        return Check(WARN, "hook-loaded", "not checked: no shim", "install the shim first")
    daemons = libvirt_daemons_using(hooks_dir)
    if not daemons:
        return Check(WARN, "hook-loaded", f"no running libvirtd or virtqemud uses {hooks_dir}",
                     "start libvirtd (systemctl start libvirtd), or pass the --hooks-dir it uses")
    # ctime, not mtime: dpkg and rpm give installed files the build's timestamp as
    # mtime, and touch can move mtime anywhere; ctime is when the file last changed here.
    changed = os.stat(shim).st_ctime
    stale = [(pid, name, t) for pid, name, t in daemons if t < changed]
    if stale:
        pid, name, t = stale[0]
        return Check(WARN, "hook-loaded",
                     f"{name} (pid {pid}) started {_fmt_time(t)}, before {shim} was installed or "
                     f"changed ({_fmt_time(changed)}): unless it was sent SIGHUP since, it does not "
                     f"run the shim",
                     f"systemctl reload {name} (SIGHUP re-reads the hook files; guests keep running)")
    pid, name, t = daemons[0]
    return Check(OK, "hook-loaded", f"{name} (pid {pid}) started {_fmt_time(t)}, after the shim appeared")


def check_daemon(cfg) -> Tuple[Check, Optional[dict]]:
    from hookd.cli.common import ask_daemon
    from hookd.errors import HookdError
    from hookd.config import DaemonSettings
    sock = (cfg.daemon if cfg is not None else DaemonSettings()).socket
    try:
        st = ask_daemon(sock, {"v": 1, "op": "status"}, timeout=3.0)
    except HookdError as err:
        return Check(FAIL, "daemon", str(err),
                     "systemctl start hookd.socket hookd.service; see journalctl -u hookd"), None
    except Exception as err:   # a garbled answer
        return Check(FAIL, "daemon", f"hookd at {sock} gave an unreadable answer: {err}",
                     "systemctl restart hookd; see journalctl -u hookd"), None
    if not isinstance(st, dict):
        return Check(FAIL, "daemon", f"hookd at {sock} gave an unreadable answer",
                     "systemctl restart hookd"), None
    finding = f"hookd {st.get('version')} answers on {sock} (pid {st.get('pid')}, up {st.get('uptime_s')} s)"
    if st.get("last_reload_error"):
        return Check(WARN, "daemon", f"{finding}; its last reload was rejected: {st['last_reload_error']}",
                     "fix the configuration (hookctl check-config), then systemctl reload hookd"), st
    if cfg is not None and st.get("config", {}).get("mode") not in (None, cfg.policy.mode):
        return Check(WARN, "daemon", f"{finding} with mode {st['config']['mode']}, "
                                     f"but the configuration says {cfg.policy.mode}",
                     "systemctl reload hookd"), st
    return Check(OK, "daemon", finding), st


def check_libvirt_socket(cfg, exists=os.path.exists) -> Check:
    """The proxy's upstream, and whether it is the daemon that runs the qemu hooks: on a
    modular host (virtqemud-sock present) that is virtqemud, and libvirt-sock is
    virtproxyd's, one more hop in front of it."""
    from hookd.rpc import upstream
    from hookd.config import DaemonSettings
    up = upstream.resolve((cfg.daemon if cfg is not None else DaemonSettings()).libvirt_socket, exists)
    hooks_run_in = "virtqemud" if exists(upstream.MODULAR_SOCKET) else "libvirtd"
    if not up.found:
        return Check(FAIL, "libvirt-socket", up.why,
                     "start libvirt's QEMU daemon (systemctl start virtqemud.socket, or libvirtd), "
                     "or set [hookd] libvirt_socket")
    why = _socket_answers(up.path)
    if why:
        return Check(FAIL, "libvirt-socket", f"{up.path} {why}",
                     f"start {hooks_run_in} (systemctl start {hooks_run_in}), or set [hookd] libvirt_socket")
    if hooks_run_in == "virtqemud" and up.path != upstream.MODULAR_SOCKET:
        return Check(WARN, "libvirt-socket",
                     f"the proxy relays to {up.why}, but this host's qemu hooks run in virtqemud "
                     f"({upstream.MODULAR_SOCKET}): every call takes another hop (virtproxyd)",
                     f"set [hookd] libvirt_socket = auto (or {upstream.MODULAR_SOCKET})")
    return Check(OK, "libvirt-socket", f"proxy upstream {up.why} accepts connections; qemu hooks run in "
                                       f"{hooks_run_in}")


# ------------------------------------------------------------ libvirt probe

# Every libvirt call runs in a child process that the parent kills at a deadline.
# libvirt's keepalive is no answer here: virConnectOpen itself has no timeout (a
# libvirtd that accepts the connection and then hangs, e.g. stopped or deadlocked,
# blocks it forever), keepalive needs a running event loop and only starts after the
# open, and virDomainGetXMLDesc blocks while that domain's hook runs. A thread cannot
# be cancelled out of a blocked C call; a process can be killed. The child streams
# one JSON line per result, so a hang on one domain still reports the others.
_PROBE = r"""
import json, sys
def out(**kw):
    sys.stdout.write(json.dumps(kw) + "\n"); sys.stdout.flush()
try:
    import libvirt
except ImportError as err:
    out(t="error", stage="import", message=str(err)); sys.exit(0)
libvirt.registerErrorHandler(lambda *a: None, None)
uri = sys.argv[1]
try:
    conn = libvirt.openReadOnly(uri)
except libvirt.libvirtError as err:
    out(t="error", stage="open", message=str(err).strip()); sys.exit(0)
try:
    hv = conn.getVersion()
except libvirt.libvirtError:
    hv = 0
out(t="version", lib=conn.getLibVersion(), hv=hv)
doms = conn.listAllDomains(0)
out(t="count", n=len(doms))
for d in doms:
    rec = {"name": d.name(), "uuid": d.UUIDString(), "active": bool(d.isActive())}
    try:
        rec["live"] = d.XMLDesc(0) if rec["active"] else None
        rec["inactive"] = d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) if d.isPersistent() else None
    except libvirt.libvirtError as err:
        rec["error"] = str(err).strip()
    out(t="domain", **rec)
out(t="done")
"""


@dataclass
class ProbeResult:
    error: Optional[str] = None          # could not talk to libvirt at all
    lib_version: Optional[int] = None
    hv_version: Optional[int] = None
    expected: Optional[int] = None       # domains listed
    domains: Optional[List[dict]] = None
    timed_out: bool = False


def _probe_libvirt(uri: str, timeout: float) -> ProbeResult:
    res = ProbeResult(domains=[])
    try:
        proc = subprocess.Popen([sys.executable, "-c", _PROBE, uri], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError as err:
        res.error = f"cannot start {sys.executable}: {err.strerror}"
        return res
    deadline = time.monotonic() + timeout
    buf = b""
    done = False
    try:
        while not done:
            left = deadline - time.monotonic()
            if left <= 0:
                res.timed_out = True
                break
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 1 << 20)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                t = msg.pop("t", None)
                if t == "error":
                    res.error = (f"libvirt-python is not installed ({msg.get('message')})"
                                 if msg.get("stage") == "import" else msg.get("message"))
                    done = True
                elif t == "version":
                    res.lib_version, res.hv_version = msg.get("lib"), msg.get("hv")
                elif t == "count":
                    res.expected = msg.get("n")
                elif t == "domain":
                    res.domains.append(msg)
                elif t == "done":
                    done = True
    finally:
        if proc.poll() is None:
            proc.kill()                  # our own child, by pid
        proc.wait()
        proc.stdout.close()
    if not done and not res.timed_out and res.error is None:
        res.error = f"the libvirt probe exited with status {proc.returncode} before finishing"
    return res


def check_libvirt_version(uri: str, probe: ProbeResult, cfg) -> Check:
    if probe.lib_version is None:
        if probe.timed_out:
            return Check(FAIL, "libvirt", f"{uri} did not answer in time (libvirtd hung or overloaded?)",
                         "check libvirtd: systemctl status libvirtd; virsh -c URI version")
        return Check(FAIL, "libvirt", f"cannot connect to {uri}: {probe.error}",
                     "start libvirtd, or pass --libvirt-uri / set [hookd] libvirt_uri")
    v = probe.lib_version
    finding = f"libvirt {_fmt_version(v)} at {uri}"
    if probe.hv_version:
        finding += f" (QEMU {_fmt_version(probe.hv_version)})"
    if v < LIBVIRT_QEMU_D:
        return Check(FAIL, "libvirt", f"{finding}: runs no hooks from qemu.d/ (needs 6.5.0)",
                     "upgrade libvirt, or call the shim from /etc/libvirt/hooks/qemu yourself")
    if v < LIBVIRT_CHASSIS and cfg is not None and cfg.policy.host_serial_to_chassis:
        return Check(FAIL, "libvirt", f"{finding}: no SMBIOS chassis serial (needs 4.1.0) but "
                                      f"host_serial_to_chassis = true",
                     "set host_serial_to_chassis = false, or upgrade libvirt")
    return Check(OK, "libvirt", finding)


def check_guests(probe: ProbeResult, cfg, pins=None) -> Check:
    """Every domain's live and saved serial against the policy *and the pins*, as the hook,
    the proxy and `hookctl explain` decide (a pinned legacy serial is in policy)."""
    from hookd.decision import DecisionService
    from hookd.errors import HookdError
    from hookd.policy.serial import VERDICT_NOT_APPLICABLE, VERDICT_NOT_NOVA, VERDICT_REWRITE
    if probe.lib_version is None:
        return Check(WARN, "guests", "not checked: libvirt unreachable", "see the libvirt check")
    if cfg is None:
        return Check(WARN, "guests", "not checked: the configuration is invalid", "see the config check")
    decisions = DecisionService.read_only(cfg.policy, pins)
    live_bad, saved_bad, unreadable, not_nova, n_a, ok = [], [], [], 0, 0, 0
    for d in probe.domains:
        name = d.get("name", "?")
        if d.get("error"):
            unreadable.append(name)
            continue
        verdicts = set()
        for which, bad in (("live", live_bad), ("inactive", saved_bad)):
            xml = d.get(which)
            if not xml:
                continue
            try:
                ev = decisions.decide(xml.encode("utf-8", "surrogatepass"), op="doctor",
                                      what=f"{name} ({which})", rewrite=False)
            except HookdError:
                unreadable.append(name)
                break
            verdicts.add(ev.decision.verdict)
            if ev.decision.verdict == VERDICT_REWRITE:
                bad.append(name)
        if VERDICT_NOT_NOVA in verdicts:
            not_nova += 1
        elif VERDICT_NOT_APPLICABLE in verdicts:
            n_a += 1
        elif VERDICT_REWRITE not in verdicts:
            ok += 1
    total = len(probe.domains)
    parts = [f"{_plural(total, 'domain')}: {ok} in policy"]
    if not_nova:
        parts.append(f"{not_nova} not Nova's")
    if n_a:
        parts.append(f"{n_a} without SMBIOS (not x86)")
    if live_bad:
        parts.append(f"{len(live_bad)} running with a serial out of policy ({_names(live_bad)})")
    if saved_bad:
        parts.append(f"{len(saved_bad)} saved definitions out of policy ({_names(saved_bad)})")
    if unreadable:
        parts.append(f"{len(unreadable)} unreadable ({_names(sorted(set(unreadable)))})")
    finding = ", ".join(parts)
    fixes = []
    if probe.timed_out:
        missing = (probe.expected or 0) - total
        finding += f"; {_plural(max(missing, 0), 'domain')} did not answer in time (a hook running?)"
        fixes.append("rerun with a larger --timeout")
    if live_bad:
        fixes.append("running guests get the policy serial at their next cold boot "
                     "(Nova hard reboot, or stop and start)")
    if saved_bad:
        fixes.append("the reconciler rewrites saved definitions ([reconcile] enabled); "
                     "`hookctl explain` shows why")
    if unreadable:
        fixes.append("see `virsh dumpxml NAME | hookctl explain --xml -`")
    return Check(WARN if fixes else OK, "guests", finding, "; ".join(fixes))


# ------------------------------------------------------------------ Nova

def read_nova_conf(path: Optional[str]):
    """(parser, files read, problem) for nova.conf plus nova.conf.d/*.conf."""
    explicit = path is not None
    path = path or DEFAULT_NOVA_CONF
    if not os.path.exists(path):
        return None, [], (FAIL if explicit else WARN), f"{path} does not exist"
    files = [path] + sorted(glob.glob(os.path.join(os.path.dirname(path), "nova.conf.d", "*.conf")))
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    try:
        read = parser.read(files, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as err:
        msg = str(err).replace("\n", " ")
        return None, files, FAIL, f"cannot parse: {msg}"
    if path not in read:
        return None, files, FAIL, f"cannot read {path}"
    return parser, read, None, None


def _nova_get(parser, key: str) -> Optional[str]:
    if parser is None or not parser.has_section("libvirt"):
        return None
    value = parser.get("libvirt", key, fallback=None)
    return value.strip() if value is not None else None


def check_nova_uri(parser, files, cfg) -> Check:
    from hookd.config import DaemonSettings
    d = cfg.daemon if cfg is not None else DaemonSettings()
    proxy = d.proxy_socket
    uri = _nova_get(parser, "connection_uri") or ""
    shown = uri or "'' (Nova's default, qemu:///system)"
    target = _uri_socket(uri) if uri else None
    at_proxy = target is not None and os.path.normpath(target) == os.path.normpath(proxy or "/nonexistent")
    if not proxy:
        if target and target.startswith(os.path.dirname(d.socket) + "/"):
            return Check(FAIL, "nova-uri", f"connection_uri = {shown} points into hookd's directory, "
                                           f"but [hookd] proxy_socket is empty (proxy off)",
                         "set [hookd] proxy_socket, or reset nova's connection_uri and restart nova-compute")
        return Check(OK, "nova-uri", f"proxy off; nova-compute uses {shown}, the hooks and the "
                                     f"reconciler enforce the policy")
    if at_proxy:
        return Check(OK, "nova-uri", f"nova-compute connects through hookd's proxy ({shown})")
    return Check(WARN, "nova-uri",
                 f"connection_uri = {shown}: nova-compute bypasses hookd's proxy at {proxy}, so its "
                 f"definitions reach libvirt unrewritten (the prepare hook and the reconciler still check)",
                 f"set [libvirt] connection_uri = qemu+unix:///system?socket={proxy} in "
                 f"{files[0] if files else DEFAULT_NOVA_CONF} and restart nova-compute")


def check_nova_sysinfo(parser, cfg) -> Check:
    value = _nova_get(parser, "sysinfo_serial")
    default = value is None or value == ""
    v = NOVA_SYSINFO_DEFAULT if default else value.lower()
    shown = f"{v} (Nova's default)" if default else v
    mode = cfg.policy.mode if cfg is not None else "unique"
    if v not in NOVA_SYSINFO_CHOICES:
        return Check(FAIL, "nova-sysinfo", f"sysinfo_serial = {value!r} is not one of "
                                           f"{', '.join(NOVA_SYSINFO_CHOICES)}: nova-compute refuses to start",
                     "fix [libvirt] sysinfo_serial in nova.conf")
    if v == "unique":
        return Check(OK, "nova-sysinfo", f"sysinfo_serial = {shown}: Nova sets serial = instance UUID "
                                         f"itself; hookd verifies and applies your exceptions (mode {mode})")
    if v == "none":
        if mode == "host":
            return Check(WARN, "nova-sysinfo", "sysinfo_serial = none: Nova writes no serial and hookd's "
                                               "mode host keeps it that way: guests have no serial",
                         "set [policy] mode = unique, or a rule, for the guests that need one")
        return Check(OK, "nova-sysinfo", f"sysinfo_serial = none: Nova writes no serial; hookd adds the "
                                         f"policy serial (mode {mode})")
    if mode == "host" and cfg is not None and not cfg.policy.rules:
        return Check(WARN, "nova-sysinfo", f"sysinfo_serial = {v}: a host-derived serial, the same for "
                                           f"every guest on this host, and hookd's mode host keeps it",
                     "set [policy] mode = unique or add rules for the guests that need their own")
    return Check(OK, "nova-sysinfo", f"sysinfo_serial = {v}: Nova writes a host-derived serial "
                                     f"(the same for every guest here); hookd rewrites it (mode {mode})")


def check_proxy(cfg, status: Optional[dict]) -> Check:
    if cfg is None:
        return Check(WARN, "proxy", "not checked: the configuration is invalid", "see the config check")
    path = cfg.daemon.proxy_socket
    if not path:
        return Check(OK, "proxy", "off ([hookd] proxy_socket is empty)")
    why = _socket_answers(path)
    if why:
        return Check(FAIL, "proxy", f"{path} {why}",
                     "start hookd (systemctl start hookd); see journalctl -u hookd")
    st = os.stat(path)
    try:
        import grp
        group = grp.getgrgid(st.st_gid).gr_name
    except (KeyError, ImportError):
        group = str(st.st_gid)
    finding = f"{path} accepts connections (mode {stat.S_IMODE(st.st_mode):04o}, group {group})"
    if group != cfg.daemon.proxy_group and str(st.st_gid) != cfg.daemon.proxy_group:
        return Check(WARN, "proxy", f"{finding}, but [hookd] proxy_group is {cfg.daemon.proxy_group}",
                     "systemctl restart hookd")
    return Check(OK, "proxy", finding)


ETCD_DROP_IN = "/etc/systemd/system/hookd.service.d/etcd.conf"
ETCD_DROP_IN_EXAMPLE = "/usr/share/hookd/hookd-etcd.conf"


def check_store(cfg, status: Optional[dict]) -> Check:
    """The pin store: where pins live, and for etcd whether the daemon reaches it."""
    if cfg is None:
        return Check(WARN, "store", "not checked: the configuration is invalid", "see the config check")
    if cfg.store.backend == "sqlite":
        return Check(OK, "store", f"sqlite {os.path.join(cfg.daemon.state_dir, 'pins.sqlite')} "
                                  f"(pins are local: fine for one host and live migration)")
    endpoints = ", ".join(cfg.store.endpoints)
    store = (status or {}).get("store")
    if store is None:
        return Check(WARN, "store", f"etcd {endpoints}: not checked, the daemon did not answer",
                     "start hookd, then run doctor again")
    if store.get("reachable"):
        return Check(OK, "store", f"etcd {endpoints} reachable; {store.get('cached')} pins cached, "
                                  f"{store.get('queued')} queued, {store.get('conflicts')} conflicts")
    fix = "check the endpoints and TLS settings in [store]"
    if not os.path.exists(ETCD_DROP_IN):
        fix = (f"hookd.service denies network access by default: copy {ETCD_DROP_IN_EXAMPLE} to "
               f"{ETCD_DROP_IN}, set IPAddressAllow= to the etcd addresses, then "
               f"systemctl daemon-reload && systemctl restart hookd")
    return Check(FAIL, "store", f"etcd {endpoints} UNREACHABLE from hookd ({store.get('last_error')}); "
                                f"decisions use the local cache, {store.get('queued')} pins queued", fix)


# ------------------------------------------------------------------ main

def run_checks(args) -> List[Check]:
    from hookd.cli.common import CliError
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
    probe = _probe_libvirt(uri, args.timeout)
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

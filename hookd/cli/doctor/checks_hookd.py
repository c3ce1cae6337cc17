"""doctor's checks of hookd's own pieces on this host: its configuration, the qemu hook
shim in libvirt's hooks directory (and whether the running libvirtd or virtqemud started
after it appeared: libvirt notices hook files only at start or SIGHUP), the daemon on its
hook socket, the proxy socket and the pin store.

It must not change anything: no file written, no process signalled. The shim's settings
are read with hookd.cli.shim.parse_shim_settings, as install-hook writes them and the C
shim reads them; the daemon is asked over its socket with a timeout.
"""

from __future__ import annotations

import os
import stat
import time
from typing import List, Optional, Tuple

from hookd.cli.doctor.base import FAIL, OK, WARN, Check, fmt_time, plural, socket_answers
from hookd.cli.shim import SHIM_DEFAULTS, SHIM_NAME, parse_shim_settings
from hookd.errors import HookdError
from hookd.ipc import client, messages
from hookd.virt.qemuproc import start_ticks

DEFAULT_HOOKS_DIR = "/etc/libvirt/hooks/qemu.d"
SHIM_MARKER = "hookd's libvirt qemu hook"
LIBVIRT_DAEMONS = ("libvirtd", "virtqemud")


def check_config(path: Optional[str]):
    from hookd.config import load_config
    try:
        cfg = load_config(path)
    except HookdError as err:
        return None, Check(FAIL, "config", str(err),
                           "fix that line, then `hookctl check-config` and `systemctl reload hookd`")
    rules = len(cfg.policy.rules)
    exists = any(os.path.exists(s) for s in cfg.sources)
    where = ", ".join(cfg.sources) if exists else f"{cfg.sources[0]} absent, defaults"
    return cfg, Check(OK, "config", f"{where}: mode {cfg.policy.mode}, {plural(rules, 'rule')}, "
                                     f"on_mismatch {cfg.on_mismatch}")


def _find_shim(hooks_dir: str) -> Optional[str]:
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
                     f"{name} (pid {pid}) started {fmt_time(t)}, before {shim} was installed or "
                     f"changed ({fmt_time(changed)}): unless it was sent SIGHUP since, it does not "
                     f"run the shim",
                     f"systemctl reload {name} (SIGHUP re-reads the hook files; guests keep running)")
    pid, name, t = daemons[0]
    return Check(OK, "hook-loaded", f"{name} (pid {pid}) started {fmt_time(t)}, after the shim appeared")


def check_daemon(cfg) -> Tuple[Check, Optional[dict]]:
    from hookd.config import DaemonSettings
    sock = (cfg.daemon if cfg is not None else DaemonSettings()).socket
    try:
        st = client.ask(sock, messages.StatusQuery(), timeout=3.0)
    except HookdError as err:
        # A garbled answer means a hookd that runs but misbehaves; no answer, one that is down.
        fix = "systemctl restart hookd" if "unreadable answer" in str(err) else \
            "systemctl start hookd.socket hookd.service"
        return Check(FAIL, "daemon", str(err), fix + "; see journalctl -u hookd"), None
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


def check_proxy(cfg, status: Optional[dict]) -> Check:
    if cfg is None:
        return Check(WARN, "proxy", "not checked: the configuration is invalid", "see the config check")
    path = cfg.daemon.proxy_socket
    if not path:
        return Check(OK, "proxy", "off ([hookd] proxy_socket is empty)")
    why = socket_answers(path)
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

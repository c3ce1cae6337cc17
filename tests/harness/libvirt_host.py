"""A real, isolated libvirtd + virtlogd (+ the QEMUs they start) for tests.

This module owns :class:`LibvirtHost`: one "hypervisor host" made of a real
``virtlogd`` and a real ``libvirtd`` (Debian's libvirt 9.0, QEMU driver, TCG
guests) running as root inside ONE private mount namespace, in which per-host
directories are bind-mounted over the paths a system libvirtd uses::

    <base_dir>/<name>/etc    -> /etc/libvirt        (libvirtd.conf, qemu.conf, hooks/qemu.d/)
    <base_dir>/<name>/run    -> /run                (sockets, pid files, run/libvirt/qemu/*.pid)
    <base_dir>/<name>/lib    -> /var/lib/libvirt
    <base_dir>/<name>/log    -> /var/log/libvirt    (libvirtd.log, qemu/<dom>.log)
    <base_dir>/<name>/cache  -> /var/cache/libvirt  (QEMU capabilities cache)

The host's own /etc/libvirt, /run, /var/lib/libvirt, ... are never written:
the namespace's mounts are private (no propagation back).  The only host-side
effect is that the mount points /var/lib/libvirt, /var/log/libvirt and
/var/cache/libvirt are created (empty) if they do not exist, because a bind
mount needs an existing mount point.

Process model (all pids are known, everything is stopped by pid):

* a *holder* process, ``unshare --mount --propagation private python3 -c
  <bind mounts; pause>``, owns the namespace and keeps it alive while libvirtd
  is restarted; on SIGTERM it SIGKILLs the QEMUs named in the namespace's pid
  files and exits (it gets SIGTERM from stop(), or as PDEATHSIG when the test
  process dies without calling stop(); libvirtd and virtlogd get SIGKILL then);
* ``virtlogd`` and ``libvirtd`` run in the foreground (no ``-d``) as direct
  children of the test process, entered into the holder's namespace with
  ``nsenter --mount=/proc/<holder>/ns/mnt`` (nsenter execs, so the Popen pid
  is the daemon's pid);
* QEMU processes are started (and daemonized) by libvirtd; their pids are read
  from ``run/libvirt/qemu/<domain>.pid`` and remembered, with their start time,
  so :meth:`LibvirtHost.stop` can kill leftovers without ever touching a
  process it did not start;
* anything else still living in the namespace at stop() (e.g. a hook's stray
  background child) is a descendant of our libvirtd and is SIGKILLed too.

Configuration written to etc/: libvirtd.conf (host_uuid, no auth on the unix
sockets, log to log/libvirtd.log with the daemon's INFO lines), qemu.conf
(QEMU as root, no dynamic ownership/remember_owner -- two hosts share the
guest kernel during migration --, security_driver "none", no cgroups) and
virtlogd.conf.  Note that libvirt refuses a loopback ``migration_host`` /
``migration_address``: pass ``--migrateuri tcp://127.0.0.1`` when migrating.

Paths that a hook running *inside* the namespace must reach (e.g. a daemon's
socket) must not live under /run, /etc/libvirt, /var/lib/libvirt,
/var/log/libvirt or /var/cache/libvirt of the host: use the test's tmp dir.

A machine-wide cache of QEMU capabilities is kept in
``$HOOKD_TEST_CACHE/qemu-caps`` (default /var/cache/hookd-tests/qemu-caps) and
copied into every new host, which saves libvirt's ~8 s first QEMU probe.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid as uuidlib
import weakref

__all__ = ["LibvirtHost", "LibvirtHostError", "VirshError", "cache_root"]

LIBVIRTD = "/usr/sbin/libvirtd"
VIRTLOGD = "/usr/sbin/virtlogd"
VIRSH = "/usr/bin/virsh"

# PATH given to the daemons (and so to hooks: libvirt passes PATH through).
DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# (per-host subdir, mount point inside the namespace)
BIND_MOUNTS = (
    ("etc", "/etc/libvirt"),
    ("run", "/run"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
)

# The namespace holder (run by `unshare --mount --propagation private python3 -c`):
# bind-mounts the per-host dirs, says HOLDER-READY, then sleeps.  On SIGTERM (sent by
# stop(), or by the kernel as PDEATHSIG when the test process dies without stop()) it
# SIGKILLs the QEMUs named in the namespace's /run/libvirt/qemu/*.pid, then exits.
_HOLDER_SCRIPT = r"""
import os, signal, subprocess, sys
pairs = list(zip(sys.argv[1::2], sys.argv[2::2]))
for _, target in pairs:
    os.makedirs(target, exist_ok=True)
for source, target in pairs:
    subprocess.run(["mount", "--bind", source, target], check=True)

def cleanup(*_):
    qdir = "/run/libvirt/qemu"
    try:
        names = os.listdir(qdir)
    except OSError:
        names = []
    for n in names:
        if not n.endswith(".pid"):
            continue
        try:
            with open(os.path.join(qdir, n)) as f:
                pid = int(f.read().strip())
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
            if b"qemu-system" in argv[0] and ("guest=" + n[:-4]).encode() in b" ".join(argv):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
    os._exit(0)

signal.signal(signal.SIGTERM, cleanup)
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("HOLDER-READY", flush=True)
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
while True:
    signal.pause()
"""

_TERMINATING_SIGNALS = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT,
                        signal.SIGQUIT, signal.SIGABRT, signal.SIGSEGV}

# Every host not yet stopped: stopped at interpreter exit as a last resort.
_LIVE_HOSTS: "weakref.WeakSet[LibvirtHost]" = weakref.WeakSet()


def _stop_live_hosts() -> None:
    for host in list(_LIVE_HOSTS):
        try:
            host.stop()
        except Exception:  # pragma: no cover - best effort at exit
            pass


atexit.register(_stop_live_hosts)


class LibvirtHostError(RuntimeError):
    """The namespaced libvirt host could not be started or driven."""


class VirshError(subprocess.CalledProcessError):
    """``virsh`` exited non-zero; str() includes its stderr."""

    def __str__(self) -> str:
        return (f"virsh {' '.join(map(str, self.cmd[1:]))} exited {self.returncode}: "
                f"{(self.stderr or '').strip()} {(self.stdout or '').strip()}").strip()


def cache_root() -> pathlib.Path:
    """$HOOKD_TEST_CACHE, default /var/cache/hookd-tests (shared by all test runs)."""
    return pathlib.Path(os.environ.get("HOOKD_TEST_CACHE", "/var/cache/hookd-tests"))


# --------------------------------------------------------------------------- process helpers

def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, starttime) of a pid, None if it does not exist."""
    try:
        data = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = data[data.rindex(")") + 2:].split()
    return rest[0], int(rest[19])  # field 3 = state, field 22 = starttime


def pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie (orphaned QEMUs may linger as zombies)."""
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def _tail(path: pathlib.Path, nbytes: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return "<missing>"


def _wait_until(cond, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _child_setup_factory(deathsig: int = signal.SIGKILL):
    """preexec_fn: get deathsig when the test process dies (only when spawned from the main
    thread, because PDEATHSIG fires when the spawning *thread* exits)."""
    in_main = threading.current_thread() is threading.main_thread()

    def _setup() -> None:
        if in_main:
            _libc.prctl(_PR_SET_PDEATHSIG, int(deathsig), 0, 0, 0)

    return _setup


# --------------------------------------------------------------------------- the host

class LibvirtHost:
    """One namespaced libvirtd + virtlogd.  See the module docstring."""

    def __init__(self, base_dir: pathlib.Path, name: str = "a", host_uuid: str | None = None):
        self.name = name
        self.root = pathlib.Path(base_dir).resolve() / name
        self.host_uuid = host_uuid or str(uuidlib.uuid4())
        self.etc_dir = self.root / "etc"
        self.run_dir = self.root / "run"
        self.lib_dir = self.root / "lib"
        self.log_dir = self.root / "log"
        self.cache_dir = self.root / "cache"
        self.hooks_dir = self.etc_dir / "hooks" / "qemu.d"
        self.socket_path = self.run_dir / "libvirt" / "libvirt-sock"
        self.virtlogd_socket_path = self.run_dir / "libvirt" / "virtlogd-sock"
        if len(os.fsencode(self.socket_path)) > 107:  # sockaddr_un.sun_path
            raise LibvirtHostError(f"socket path too long for a unix socket ({len(str(self.socket_path))} "
                                   f"bytes): {self.socket_path}; use a shorter base_dir")
        self.uri = f"qemu+unix:///system?socket={self.socket_path}"
        self.libvirtd_log = self.log_dir / "libvirtd.log"
        self.libvirtd_out = self.root / "libvirtd.out"
        self.virtlogd_out = self.root / "virtlogd.out"

        self._holder: subprocess.Popen | None = None
        self._virtlogd: subprocess.Popen | None = None
        self._libvirtd: subprocess.Popen | None = None
        self._all_daemon_pids: list[int] = []       # every holder/virtlogd/libvirtd pid ever started
        self._qemu_seen: dict[int, tuple[int, str]] = {}  # pid -> (starttime, domain)
        self._stopped = False

        for d in (self.etc_dir, self.hooks_dir, self.etc_dir / "qemu", self.run_dir,
                  self.lib_dir, self.log_dir, self.cache_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._seed_caps_cache()

    # ------------------------------------------------------------------ config
    def _write_config(self) -> None:
        (self.etc_dir / "libvirtd.conf").write_text(
            f'host_uuid = "{self.host_uuid}"\n'
            'auth_unix_ro = "none"\n'
            'auth_unix_rw = "none"\n'
            'unix_sock_rw_perms = "0700"\n'
            'log_level = 3\n'
            # INFO from the daemon itself: "Reloading configuration on SIGHUP" (see sighup_libvirtd)
            'log_filters = "2:daemon.libvirtd"\n'
            'log_outputs = "2:file:/var/log/libvirt/libvirtd.log"\n'
        )
        (self.etc_dir / "qemu.conf").write_text(
            'user = "root"\n'
            'group = "root"\n'
            'dynamic_ownership = 0\n'
            'remember_owner = 0\n'
            'security_driver = "none"\n'
            'cgroup_controllers = [ ]\n'
        )
        (self.etc_dir / "virtlogd.conf").write_text(
            'log_level = 3\n'
            'log_outputs = "3:file:/var/log/libvirt/virtlogd.log"\n'
        )

    def _shared_caps_dir(self) -> pathlib.Path:
        return cache_root() / "qemu-caps"

    def _host_caps_dir(self) -> pathlib.Path:
        return self.cache_dir / "qemu" / "capabilities"

    def _seed_caps_cache(self) -> None:
        src = self._shared_caps_dir()
        if not src.is_dir():
            return
        dst = self._host_caps_dir()
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.xml"):
            shutil.copy2(f, dst / f.name)

    def _save_caps_cache(self) -> None:
        """Copy libvirt's (new or refreshed) capability files to the shared cache, atomically per file."""
        src = self._host_caps_dir()
        if not src.is_dir():
            return
        dst = self._shared_caps_dir()
        for f in src.glob("*.xml"):
            target = dst / f.name
            data = f.read_bytes()
            try:
                if target.read_bytes() == data:
                    continue
            except FileNotFoundError:
                pass
            dst.mkdir(parents=True, exist_ok=True)
            tmp = dst / f".{f.name}.{os.getpid()}.{uuidlib.uuid4().hex}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, target)

    def _caps_cache_complete(self) -> bool:
        shared = self._shared_caps_dir()
        return shared.is_dir() and any(shared.glob("*.xml"))

    # ------------------------------------------------------------------ lifecycle
    def _popen(self, argv: list[str], out_path: pathlib.Path, deathsig: int = signal.SIGKILL,
               **kw) -> subprocess.Popen:
        out = open(out_path, "ab")
        try:
            env = {"PATH": DAEMON_PATH, "LC_ALL": "C", "HOME": "/root"}
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=kw.pop("stdout", out),
                                    stderr=out, cwd="/", env=env, close_fds=True,
                                    preexec_fn=_child_setup_factory(deathsig), **kw)
        finally:
            out.close()

    def _ns_argv(self, *argv: str) -> list[str]:
        assert self._holder is not None
        return ["nsenter", f"--mount=/proc/{self._holder.pid}/ns/mnt", "--", *argv]

    def _start_holder(self, timeout: float) -> None:
        argv = ["unshare", "--mount", "--propagation", "private", sys.executable, "-S", "-c", _HOLDER_SCRIPT]
        for sub, target in BIND_MOUNTS:
            argv += [str(self.root / sub), target]
        self._holder = self._popen(argv, self.root / "holder.out", deathsig=signal.SIGTERM,
                                   stdout=subprocess.PIPE)
        self._all_daemon_pids.append(self._holder.pid)
        assert self._holder.stdout is not None
        line = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and b"\n" not in line:
            r, _, _ = select.select([self._holder.stdout], [], [], 0.2)
            if r:
                chunk = os.read(self._holder.stdout.fileno(), 100)
                if not chunk:
                    break
                line += chunk
        self._holder.stdout.close()
        if line.strip() != b"HOLDER-READY":
            raise LibvirtHostError(
                f"namespace holder for host {self.name!r} failed to set up its mounts: "
                f"{_tail(self.root / 'holder.out')}")

    def _start_virtlogd(self, timeout: float) -> None:
        try:
            self.virtlogd_socket_path.unlink()
        except FileNotFoundError:
            pass
        self._virtlogd = self._popen(self._ns_argv(VIRTLOGD), self.virtlogd_out)
        self._all_daemon_pids.append(self._virtlogd.pid)
        ok = _wait_until(lambda: self.virtlogd_socket_path.exists() or self._virtlogd.poll() is not None,
                         timeout)
        if not ok or self._virtlogd.poll() is not None:
            raise LibvirtHostError(
                f"virtlogd of host {self.name!r} did not come up (rc={self._virtlogd.poll()}):\n"
                f"{_tail(self.virtlogd_out)}\n{_tail(self.log_dir / 'virtlogd.log')}")

    def start(self, timeout: float = 30) -> None:
        """Start the namespace holder, virtlogd and libvirtd; return once libvirtd answers."""
        if self._stopped:
            raise LibvirtHostError("a stopped LibvirtHost cannot be started again; make a new one")
        if self._holder is not None:
            raise LibvirtHostError(f"host {self.name!r} already started")
        if os.geteuid() != 0:
            raise LibvirtHostError("LibvirtHost needs root (mount namespaces, system libvirtd)")
        _LIVE_HOSTS.add(self)
        try:
            self._start_holder(timeout)
            self._start_virtlogd(timeout)
            self.start_libvirtd(timeout)
            if not self._caps_cache_complete():
                # First run on this machine: make libvirt probe QEMU now (~8 s, once) and keep the result.
                self.virsh("capabilities", timeout=max(timeout, 120))
                self.virsh("domcapabilities", "--virttype", "qemu", "--arch", "x86_64",
                           timeout=max(timeout, 120))
                self._save_caps_cache()
        except BaseException:
            self.stop()
            raise

    def start_libvirtd(self, timeout: float = 30) -> None:
        """(Re)start libvirtd in this host's namespace and wait until its socket answers."""
        if self._holder is None or not pid_alive(self._holder.pid):
            raise LibvirtHostError(f"host {self.name!r}: namespace holder is not running")
        if self._libvirtd is not None and self._libvirtd.poll() is None:
            raise LibvirtHostError(f"host {self.name!r}: libvirtd already running (pid {self._libvirtd.pid})")
        log_start = self.libvirtd_log.stat().st_size if self.libvirtd_log.exists() else 0
        self._libvirtd = self._popen(self._ns_argv(LIBVIRTD), self.libvirtd_out)
        self._all_daemon_pids.append(self._libvirtd.pid)
        deadline = time.monotonic() + timeout
        last_err = ""
        while True:
            if self._libvirtd.poll() is not None:
                raise LibvirtHostError(self._failure(f"libvirtd exited with {self._libvirtd.returncode}",
                                                     log_start))
            if self.socket_path.exists():
                r = self.virsh("version", check=False, timeout=max(1.0, deadline - time.monotonic()))
                if r.returncode == 0:
                    return
                last_err = r.stderr.strip()
            if time.monotonic() >= deadline:
                raise LibvirtHostError(self._failure(
                    f"libvirtd did not answer on {self.socket_path} within {timeout}s ({last_err})", log_start))
            time.sleep(0.05)

    def _failure(self, what: str, log_start: int = 0) -> str:
        try:
            with open(self.libvirtd_log, "rb") as f:
                f.seek(log_start)
                log = f.read()[-4000:].decode(errors="replace")
        except FileNotFoundError:
            log = "<no libvirtd.log>"
        return (f"host {self.name!r}: {what}\n--- {self.libvirtd_log} (tail) ---\n{log}"
                f"\n--- {self.libvirtd_out} (tail) ---\n{_tail(self.libvirtd_out, 2000)}")

    @property
    def libvirtd_pid(self) -> int:
        if self._libvirtd is None:
            raise LibvirtHostError(f"host {self.name!r}: libvirtd never started")
        return self._libvirtd.pid

    @property
    def holder_pid(self) -> int | None:
        return self._holder.pid if self._holder else None

    @property
    def virtlogd_pid(self) -> int | None:
        return self._virtlogd.pid if self._virtlogd else None

    def started_pids(self) -> list[int]:
        """Every pid this host ever started: holder, virtlogd, libvirtd (all incarnations), QEMUs seen."""
        self._scan_qemu_pidfiles()
        return list(self._all_daemon_pids) + list(self._qemu_seen)

    def kill_libvirtd(self, sig: int = signal.SIGKILL) -> None:
        """Send sig to libvirtd (guests keep running); for terminating signals wait until it is gone."""
        if self._libvirtd is None or self._libvirtd.poll() is not None:
            raise LibvirtHostError(f"host {self.name!r}: libvirtd is not running")
        self._scan_qemu_pidfiles()
        self._libvirtd.send_signal(sig)
        if sig in _TERMINATING_SIGNALS:
            try:
                self._libvirtd.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._libvirtd.kill()
                self._libvirtd.wait()

    def sighup_libvirtd(self, timeout: float = 10) -> None:
        """SIGHUP libvirtd (re-scans hook files) and wait until it logged the reload."""
        if self._libvirtd is None or self._libvirtd.poll() is not None:
            raise LibvirtHostError(f"host {self.name!r}: libvirtd is not running")
        marker = b"Reloading configuration on SIGHUP"

        def count() -> int:
            try:
                return self.libvirtd_log.read_bytes().count(marker)
            except FileNotFoundError:
                return 0

        before = count()
        self._libvirtd.send_signal(signal.SIGHUP)
        if not _wait_until(lambda: count() > before, timeout):
            raise LibvirtHostError(self._failure("libvirtd did not log the SIGHUP reload"))
        # The hook re-scan runs right after that log line in the same thread; a round trip
        # through the daemon makes sure it is done with it in practice.
        self.virsh("version", check=False)

    # ------------------------------------------------------------------ clients
    def virsh(self, *args, check: bool = True, timeout: float = 120,
              uri: str | None = None) -> subprocess.CompletedProcess:
        argv = [VIRSH, "-q", "-c", uri or self.uri, *map(str, args)]
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout, env={**os.environ, "LC_ALL": "C"})
        if check and r.returncode != 0:
            raise VirshError(r.returncode, argv, r.stdout, r.stderr)
        return r

    def connect(self, uri: str | None = None):
        import libvirt  # Debian's python3-libvirt

        return libvirt.open(uri or self.uri)

    # ------------------------------------------------------------------ QEMU
    def _scan_qemu_pidfiles(self) -> dict[str, int]:
        found: dict[str, int] = {}
        qdir = self.run_dir / "libvirt" / "qemu"
        for f in qdir.glob("*.pid"):
            try:
                pid = int(f.read_text().strip())
            except (ValueError, OSError):
                continue
            st = _proc_stat(pid)
            if st is None or st[0] in ("Z", "X"):
                continue
            argv = _cmdline(pid)
            if not argv or "qemu-system" not in argv[0]:
                continue  # stale pid file, pid reused by something else
            found[f.stem] = pid
            self._qemu_seen.setdefault(pid, (st[1], f.stem))
        return found

    def qemu_pids(self) -> dict[str, int]:
        """Running domains' QEMU pids (from run/libvirt/qemu/*.pid), domain name -> pid."""
        return self._scan_qemu_pidfiles()

    def qemu_cmdline(self, domain: str) -> list[str]:
        pids = self.qemu_pids()
        if domain not in pids:
            raise LibvirtHostError(f"host {self.name!r}: no running QEMU for domain {domain!r} "
                                   f"(running: {sorted(pids)})")
        return _cmdline(pids[domain])

    # ------------------------------------------------------------------ teardown
    def stop(self) -> None:
        """Destroy all domains, stop libvirtd, leftover QEMUs and hook processes, virtlogd and
        the holder, all by pid. Idempotent. Raises LibvirtHostError after cleaning up if
        something went wrong (a domain that would not be destroyed, a process that survived)."""
        if self._stopped:
            return
        self._stopped = True
        errors: list[str] = []

        def step(what: str, fn, *args) -> None:
            try:
                fn(*args)
            except Exception as e:  # keep cleaning up whatever happens
                errors.append(f"{what}: {e}")

        try:
            step("scan QEMU pid files", self._scan_qemu_pidfiles)
            if self._libvirtd is not None and self._libvirtd.poll() is None:
                step("destroy domains", self._destroy_all, errors)
            step("save capabilities cache", self._save_caps_cache)
            step("stop libvirtd", self._terminate, self._libvirtd)
            step("kill leftover QEMUs", self._kill_leftover_qemus)
            step("kill leftover processes in the namespace", self._kill_namespace_processes)
            step("stop virtlogd", self._terminate, self._virtlogd)
            step("stop namespace holder", self._terminate, self._holder)
        finally:
            _LIVE_HOSTS.discard(self)
        if errors:
            raise LibvirtHostError(f"host {self.name!r} stop: " + "; ".join(errors))

    def _destroy_all(self, errors: list[str]) -> None:
        r = self.virsh("list", "--name", check=False, timeout=20)
        if r.returncode != 0:
            errors.append(f"virsh list: {r.stderr.strip()}")
            return
        for dom in r.stdout.split():
            d = self.virsh("destroy", dom, check=False, timeout=30)
            if d.returncode != 0 and "not running" not in d.stderr:
                errors.append(f"destroy {dom}: {d.stderr.strip()}")

    def _namespace_pids(self) -> list[int]:
        """Pids of processes living in this host's mount namespace other than the daemons we
        track (holder, virtlogd, libvirtd): e.g. hook scripts (and their children) that a
        killed libvirtd left behind. Only descendants of what this host started can be there."""
        if self._holder is None or self._holder.poll() is not None:
            return []
        try:
            ns = os.readlink(f"/proc/{self._holder.pid}/ns/mnt")
        except OSError:
            return []
        pids = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) in self._all_daemon_pids:
                continue
            try:
                if os.readlink(f"/proc/{entry.name}/ns/mnt") == ns and pid_alive(int(entry.name)):
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def _kill_namespace_processes(self) -> None:
        pids = self._namespace_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not _wait_until(lambda: not any(pid_alive(p) for p in pids), 15):
            raise LibvirtHostError(f"pids {pids} survived SIGKILL")

    @staticmethod
    def _terminate(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _kill_leftover_qemus(self) -> None:
        self._scan_qemu_pidfiles()
        mine = [pid for pid, (start, _) in self._qemu_seen.items()
                if (st := _proc_stat(pid)) is not None and st[1] == start and st[0] not in ("Z", "X")]
        for pid in mine:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not _wait_until(lambda: not any(pid_alive(p) for p in mine), 15):
            raise LibvirtHostError(f"host {self.name!r}: QEMU pids {mine} survived SIGKILL")

    def __enter__(self) -> "LibvirtHost":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LibvirtHost {self.name} {self.root} libvirtd={self._libvirtd and self._libvirtd.pid}>"

"""The container split (docs/deploy/): libvirtd in one mount namespace, hookd in another,
the two sharing one /run/hookd directory.

What runs where (all on this machine, all started and stopped by pid)::

    mount namespace L ("nova_libvirt")         mount namespace H ("hookd container")
      libvirtd + virtlogd + QEMU                 hookd (+ its worker)
      /etc/libvirt/hooks/qemu.d/50-hookd         /etc/hookd/hookd.conf   (tmpfs, H only)
        settings: socket=/run/hookd/hookd.sock   /var/lib/hookd          (tmpfs, H only)
      /run            = a per-test dir           /run                    (tmpfs, H only)
      /run/hookd  ─────────── one host directory, bind-mounted into both ───────── /run/hookd
                                                 /run/libvirt = L's /run/libvirt (bind), the
                                                   proxy's upstream and the events connection,
                                                   as a container gets /run/libvirt or /run

L is tests/harness/libvirt_host.py's LibvirtHost; its shim is installed by
`hookctl install-hook` before libvirtd starts and asks /run/hookd/hookd.sock, a path
that exists in L only once the shared directory is bind-mounted there. H is made by
`unshare --mount --propagation private` around hookd itself, so hookd is the
namespace's first process and the namespace (with every mount in it) ends with it.
hookd runs with its built-in paths (/etc/hookd/hookd.conf, /var/lib/hookd,
/run/hookd/hookd.sock, /run/hookd/libvirt-sock, /run/libvirt/libvirt-sock): nothing
in its configuration names a test path. Readiness is hookd's sd_notify READY=1 on an
abstract socket (per network namespace, so it needs no shared path).

The test asserts that the split is real (different mount namespaces; hookd's state is
invisible from L; the hook socket is unreachable from L until the shared directory is
mounted), that a guest defined through hookd's proxy in the shared directory boots with
the policy serial (read by the guest itself from DMI), and that with on_mismatch = deny
a guest defined around the proxy is refused at start by hookd's answer from H.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import uuid as uuidlib

import pytest

from tests.harness.run import REPO, hookd_env, run_hookctl
from tests.harness.guest import nova_domain_xml, read_guest_serial
from tests.harness.libvirt_host import _child_setup_factory, pid_alive
from tests.harness.shim import sanitized_shim

pytestmark = pytest.mark.libvirt

HOST_SERIAL = "4c4c4544-0054-3510-8052-b7c04f564732"
SHARED_SOCKET = "/run/hookd/hookd.sock"          # as the shim and hookd both name it
SHARED_PROXY = "/run/hookd/libvirt-sock"
PROXY_URI = f"qemu+unix:///system?socket={SHARED_PROXY}"

# Run by `unshare --mount --propagation private /bin/sh -c`: hookd's own filesystem
# view, then exec hookd (so the unshare pid is hookd's pid). /etc is an overlay of the
# host's (users, groups, libc's files) with /etc/hookd a private tmpfs; /var/lib and
# /run are private tmpfs; only $shared (-> /run/hookd) and L's run/libvirt
# (-> /run/libvirt) come from outside.
_HOOKD_NS_SETUP = r"""
set -eu
priv=$1 shared=$2 libvirt_run=$3 conf=$4
shift 4
mkdir -p "$priv/etc.upper" "$priv/etc.work"
mount -t overlay hookd-etc -o "lowerdir=/etc,upperdir=$priv/etc.upper,workdir=$priv/etc.work" /etc
mkdir -p /etc/hookd
mount -t tmpfs -o mode=0755 hookd-etc-hookd /etc/hookd
cp "$conf" /etc/hookd/hookd.conf
mount -t tmpfs -o mode=0755 hookd-var-lib /var/lib
mkdir /var/lib/hookd
mount -t tmpfs -o mode=0755 hookd-run /run
mkdir /run/hookd /run/libvirt
mount --bind "$shared" /run/hookd
mount --bind "$libvirt_run" /run/libvirt
exec "$@"
"""


def mnt_ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def pids_in_mnt_ns(ns: str) -> list:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/ns/mnt") == ns and pid_alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class NamespacedHookd:
    """hookd in a mount namespace of its own (see _HOOKD_NS_SETUP), stopped by pid."""

    def __init__(self, workdir: pathlib.Path, shared: pathlib.Path, libvirt_run: pathlib.Path,
                 config: str):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shared = shared
        self.libvirt_run = libvirt_run
        self.staged_config = self.dir / "hookd.conf.staged"
        self.staged_config.write_text(config)
        self.log = self.dir / "hookd.log"
        self.proc = None
        self.ns = None
        self._notify = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> "NamespacedHookd":
        name = f"hookd-split-{uuidlib.uuid4().hex}"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind("\0" + name)
        env = hookd_env(NOTIFY_SOCKET="@" + name)
        for var in ("INVOCATION_ID", "JOURNAL_STREAM", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC"):
            env.pop(var, None)
        argv = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", _HOOKD_NS_SETUP,
                "hookd-ns", str(self.dir / "priv"), str(self.shared), str(self.libvirt_run),
                str(self.staged_config),
                sys.executable, "-m", "hookd.daemon", "--config", "/etc/hookd/hookd.conf"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=str(REPO),
                                         preexec_fn=_child_setup_factory(signal.SIGTERM))
        deadline = time.monotonic() + timeout
        seen = []
        while not any("READY=1" in n for n in seen):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"hookd (in its namespace) sent no READY=1 within {timeout}s "
                                     f"(exit {self.proc.poll()}); log:\n{self.log_text()[-3000:]}")
            self._notify.settimeout(min(left, 0.5))
            try:
                seen.extend(self._notify.recv(4096).decode().splitlines())
            except socket.timeout:
                pass
        self.ns = mnt_ns(self.pid)
        return self

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def in_ns(self, *argv, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command in hookd's mount namespace (as `docker exec hookd …` would)."""
        return subprocess.run(["nsenter", f"--mount=/proc/{self.pid}/ns/mnt", "--", *map(str, argv)],
                              capture_output=True, text=True, timeout=timeout, env=hookd_env(), cwd=str(REPO))

    def audit(self, instance: str, operation: str) -> list:
        """`hookctl audit --json` in hookd's namespace: its audit log is in H only (and
        SQLite resolves /proc/PID/root to "/", so it cannot be opened from outside)."""
        r = self.in_ns(sys.executable, "-m", "hookd.cli", "audit", "--instance", instance,
                       "--operation", operation, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def private_path(self, path: str) -> pathlib.Path:
        """A path as hookd sees it, reached from outside its namespace."""
        return pathlib.Path(f"/proc/{self.pid}/root{path}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM hookd by pid (SIGKILL if it does not exit); then SIGKILL, by pid, whatever
        is left in its namespace (only its own descendants can be there)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.ns is not None:
            left = pids_in_mnt_ns(self.ns)
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_until(lambda: not any(pid_alive(p) for p in left), 15, f"pids {left} to die")
        if self._notify is not None:
            self._notify.close()
            self._notify = None


@pytest.fixture
def namespaced_hookd():
    made = []

    def make(*args, **kw) -> NamespacedHookd:
        d = NamespacedHookd(*args, **kw)
        made.append(d)
        return d

    yield make
    for d in reversed(made):
        d.stop()


def test_hook_and_proxy_cross_mount_namespaces(libvirt_hosts, namespaced_hookd, guest_image, tmp_path):
    t0 = time.monotonic()
    shared = tmp_path / "shared-run-hookd"      # the one directory both namespaces see as /run/hookd
    shared.mkdir(mode=0o755)

    # --- L: libvirtd, its shim asking /run/hookd/hookd.sock, refusing when hookd is unreachable
    def setup_hooks(hooks_dir):
        res = run_hookctl("install-hook", "--socket", SHARED_SOCKET, "--timeout", 10,
                          "--on-unreachable", "deny", "--binary", sanitized_shim(), hooks_dir)
        assert res.returncode == 0, res.stderr
    host = libvirt_hosts("split", setup_hooks=setup_hooks)
    assert "socket = /run/hookd/hookd.sock" in (host.hooks_dir / "50-hookd.conf").read_text()

    # --- H: hookd with its built-in paths; only the policy knobs are configured
    d = namespaced_hookd(tmp_path / "hookd-ns", shared, host.run_dir / "libvirt",
                         "[hookd]\nlog_level = debug\n"
                         "[enforce]\non_mismatch = deny\n"
                         # the reconciler would fix the bypassing guest's saved definition before
                         # its start; this test is about the hook, so it stays off
                         "[reconcile]\nenabled = false\n").start()

    # The split is real: three different mount namespaces.
    assert mnt_ns(d.pid) != mnt_ns(host.libvirtd_pid), "hookd shares libvirtd's mount namespace"
    assert mnt_ns(d.pid) != mnt_ns(os.getpid()) and mnt_ns(host.libvirtd_pid) != mnt_ns(os.getpid())
    # hookd's state and configuration exist in H only.
    hookd_state = d.private_path("/var/lib/hookd")
    assert (hookd_state / "audit.sqlite").exists(), sorted(os.listdir(hookd_state))
    assert not pathlib.Path(f"/proc/{host.libvirtd_pid}/root/var/lib/hookd").exists()
    assert not pathlib.Path(f"/proc/{host.libvirtd_pid}/root/etc/hookd/hookd.conf").exists()
    assert not pathlib.Path("/var/lib/hookd/audit.sqlite").exists()
    # The sockets are in the shared directory, and nowhere in L yet: without the shared mount
    # the shim has no way to hookd.
    assert (shared / "hookd.sock").is_socket() and (shared / "libvirt-sock").is_socket()
    in_l = pathlib.Path(f"/proc/{host.libvirtd_pid}/root{SHARED_SOCKET}")
    assert not in_l.exists()

    # --- share the directory with L (kolla: a volume of nova_libvirt; k8s: a hostPath)
    mount = subprocess.run(["nsenter", f"--mount=/proc/{host.holder_pid}/ns/mnt", "--", "/bin/sh", "-c",
                            'mkdir -p /run/hookd && mount --bind "$1" /run/hookd', "share", str(shared)],
                           capture_output=True, text=True, timeout=30)
    assert mount.returncode == 0, mount.stderr
    assert in_l.is_socket()
    assert os.stat(in_l).st_ino == os.stat(shared / "hookd.sock").st_ino

    # --- doctor, run where hookd runs (`docker exec hookd hookctl doctor …`)
    nova_conf = tmp_path / "nova.conf"
    nova_conf.write_text(f"[libvirt]\nconnection_uri = {PROXY_URI}\n")
    doc = d.in_ns(sys.executable, "-m", "hookd.cli", "doctor", "--json", "--hooks-dir", host.hooks_dir,
                  "--nova-conf", nova_conf)
    checks = {c["check"]: c for c in json.loads(doc.stdout)["checks"]}
    for name in ("config", "shim", "hook-loaded", "daemon", "libvirt-socket", "libvirt", "proxy", "nova-uri"):
        assert checks[name]["status"] == "OK", (name, checks[name], doc.stderr)
    assert f"pid {host.libvirtd_pid}" in checks["hook-loaded"]["finding"]   # found across namespaces

    # --- a guest defined the way nova-compute does it: from L's side, through the proxy in
    # the shared directory, with a host-derived serial that define-time enforcement replaces
    uid = str(uuidlib.uuid4())
    name = f"instance-{uid[:8]}"
    console = tmp_path / "console.log"
    (tmp_path / "nova.xml").write_text(nova_domain_xml(name=name, uuid=uid, serial=HOST_SERIAL,
                                                       image=guest_image, console_log=console))
    define = subprocess.run(["nsenter", f"--mount=/proc/{host.holder_pid}/ns/mnt", "--",
                             "virsh", "-q", "-c", PROXY_URI, "define", str(tmp_path / "nova.xml")],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "LC_ALL": "C"})
    assert define.returncode == 0, define.stderr
    saved = host.virsh("dumpxml", "--inactive", name).stdout        # straight from libvirtd
    assert f"<entry name='serial'>{uid}</entry>" in saved and HOST_SERIAL not in saved
    host.virsh("start", name)
    assert read_guest_serial(console, timeout=120) == uid          # the guest's own DMI view

    (row,) = d.audit(uid, "prepare")
    assert (row["verdict"], row["action"], row["serial_seen"]) == ("compliant", "allow", uid)

    # --- a guest defined around the proxy (straight on libvirtd's socket) with the host's
    # serial: the prepare hook runs in L, hookd answers from H, and the start is refused
    bad_uid = str(uuidlib.uuid4())
    bad = f"instance-{bad_uid[:8]}"
    (tmp_path / "bad.xml").write_text(nova_domain_xml(name=bad, uuid=bad_uid, serial=HOST_SERIAL,
                                                      image=None, console_log=None))
    host.virsh("define", str(tmp_path / "bad.xml"))
    res = host.virsh("start", bad, check=False)
    assert res.returncode != 0
    assert "Hook script execution failed" in res.stderr
    assert (f"hookd: instance {bad_uid} ('vm-1', domain {bad}) has serial '{HOST_SERIAL}' "
            f"but policy (default) wants '{bad_uid}'") in res.stderr, res.stderr
    assert "unreachable" not in res.stderr
    assert host.virsh("domstate", bad).stdout.strip() == "shut off"
    (row,) = d.audit(bad_uid, "prepare")
    assert (row["action"], row["serial_seen"], row["serial_wanted"]) == ("deny", HOST_SERIAL, bad_uid)
    assert f"prepare instance {bad_uid}" in d.log_text()

    # --- stop hookd: its namespace ends with it, nothing of it is left
    ns = d.ns
    d.stop()
    assert pids_in_mnt_ns(ns) == []
    print(f"\ncontainer split: {time.monotonic() - t0:.1f} s")

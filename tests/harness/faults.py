"""Helpers of the fault and load tests: restarting and killing a hookd by pid, destroying a
host's guests at once, running a command as another user, bounded waits on fuzzing
harnesses, one hook call framed as the shim frames it, mount points.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

def restart_hookd(d, timeout: float = 20.0) -> None:
    """Start a HookdProcess again after it died or was stopped (same config, sockets, state)."""
    if d.proc is not None and d.proc.poll() is None:
        raise AssertionError("hookd is still running")
    if d._notify is not None:
        d._notify.close()
        d._notify = None
    d.start(timeout)


def kill_hookd(d, sig=signal.SIGKILL) -> None:
    """SIGKILL hookd by pid (SIGCONT first, so a stopped one dies now) and reap it."""
    d.proc.send_signal(sig)
    if sig == signal.SIGKILL:
        d.proc.wait(10)


def destroy_all_parallel(host, timeout: float = 60.0) -> None:
    """Destroy every running domain of `host` at once (QEMU needs ~1.5 s each to exit)."""
    import libvirt
    conn = host.connect()
    try:
        doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)

        def destroy(dom):
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
        threads = [threading.Thread(target=destroy, args=(d,), daemon=True) for d in doms]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
    finally:
        conn.close()


def status_json(d, timeout: float = 10) -> dict:
    import json
    from tests.harness.run import run_hookctl
    res = run_hookctl("status", "--socket", d.socket, "--json", timeout=timeout)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def run_as(uid: int, gid: int, argv, **kw) -> subprocess.CompletedProcess:
    """Run argv as uid:gid with no supplementary groups (setpriv)."""
    return subprocess.run(["setpriv", "--reuid", str(uid), "--regid", str(gid), "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=kw.pop("timeout", 60),
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", "LC_ALL": "C"},
                          **kw)


def run_as_nobody(argv, **kw) -> subprocess.CompletedProcess:
    return run_as(65534, 65534, argv, **kw)


def wait_or_kill(procs, wall_seconds: float) -> None:
    """Wait for every Popen (each started with start_new_session) until one shared deadline;
    SIGKILL the process group of any still running then (a hang of a fuzzing harness)."""
    deadline = time.monotonic() + wall_seconds
    for proc in procs:
        try:
            proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def ask(sock_path, request, timeout: float = 10):
    """One hook call on hookd's hook socket, framed as the compiled shim frames it."""
    from tests.harness.hookcall import ask_hook
    return ask_hook(sock_path, request, timeout)


def prepare_msg(name: str, xml):
    from tests.harness.hookcall import hook_request
    return hook_request(name, xml)


def is_mountpoint(path) -> bool:
    path = os.path.realpath(str(path))
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)

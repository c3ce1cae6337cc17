"""`hookctl doctor` against a REAL namespaced libvirtd (tests/harness/libvirt_host.py).

Proves the libvirt-facing checks: which libvirtd uses the hooks directory and
whether it started after the shim appeared, libvirt's version over the real
socket, counting guests whose live or saved serial is out of policy, and that a
hung libvirtd (SIGSTOP) cannot hang doctor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.harness.run import hookd_env, run_hookctl
from tests.harness.guest import nova_domain_xml

pytestmark = pytest.mark.libvirt

HOST_SERIAL = "4c4c4544-0054-3510-8052-b7c04f564732"


def write_config(tmp_path, host) -> str:
    path = tmp_path / "etc" / "hookd.conf"
    path.parent.mkdir(exist_ok=True)
    # The hook socket lives in tmp_path: the namespaced libvirtd has a private /run.
    # The reconciler is off: it would fix the out-of-policy definitions doctor must count.
    path.write_text(f"""[reconcile]
enabled = false

[hookd]
socket = {tmp_path}/hookd.sock
state_dir = {tmp_path}/state
proxy_socket =
libvirt_socket = {host.socket_path if host else tmp_path / 'none'}
libvirt_uri = {host.uri if host else 'qemu:///system'}
""")
    return str(path)


def shim_installer(tmp_path, mtime: float | None = None):
    def setup(hooks_dir) -> None:
        r = run_hookctl("install-hook", "--socket", f"{tmp_path}/hookd.sock", hooks_dir)
        assert r.returncode == 0, r.stderr
        if mtime is not None:
            os.utime(os.path.join(hooks_dir, "50-hookd"), (mtime, mtime))
    return setup


def nova_conf(tmp_path) -> str:
    path = tmp_path / "nova.conf"
    path.write_text("[libvirt]\nsysinfo_serial = unique\n")
    return str(path)


def doctor(tmp_path, host, *extra, timeout=60):
    r = run_hookctl("doctor", "--json", "--config", write_config(tmp_path, host),
                    "--hooks-dir", host.hooks_dir, "--nova-conf", nova_conf(tmp_path), *extra,
                    timeout=timeout)
    assert "Traceback" not in r.stderr.decode(), r.stderr.decode()
    out = json.loads(r.stdout)
    return r.returncode, {c["check"]: c for c in out["checks"]}


@pytest.fixture
def hookd_daemon(tmp_path):
    procs = []

    def start(config: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "hookd.daemon", "--config", config],
                             env=hookd_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        deadline = time.monotonic() + 20
        while not (tmp_path / "hookd.sock").exists():
            assert p.poll() is None, f"hookd exited {p.returncode}"
            assert time.monotonic() < deadline, "hookd did not start"
            time.sleep(0.05)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def define(host, tmp_path, name, serial, start=False):
    dom_uuid = str(uuid.uuid4())
    xml = tmp_path / f"{name}.xml"
    xml.write_text(nova_domain_xml(name=name, uuid=dom_uuid, serial=serial if serial != "UUID" else dom_uuid,
                                   image=None, console_log=None))
    host.virsh("define", xml)
    if start:
        host.virsh("start", name)
    return dom_uuid


def test_good_host_with_one_saved_definition_out_of_policy(libvirt_hosts, hookd_daemon, tmp_path):
    host = libvirt_hosts("a", setup_hooks=shim_installer(tmp_path, mtime=time.time() - 60))
    hookd_daemon(write_config(tmp_path, host))
    define(host, tmp_path, "instance-00000001", "UUID")              # compliant
    define(host, tmp_path, "instance-00000002", HOST_SERIAL)         # saved definition out of policy

    code, checks = doctor(tmp_path, host)
    for name in ("config", "shim", "hook-loaded", "daemon", "libvirt-socket", "libvirt", "proxy",
                 "nova-uri", "nova-sysinfo"):
        assert checks[name]["status"] == "OK", checks[name]
    assert f"pid {host.libvirtd_pid}" in checks["hook-loaded"]["finding"]
    assert "libvirt 9." in checks["libvirt"]["finding"] or "libvirt 1" in checks["libvirt"]["finding"]
    g = checks["guests"]
    assert g["status"] == "WARN"
    assert "2 domains: 1 in policy" in g["finding"]
    assert "1 saved definitions out of policy (instance-00000002)" in g["finding"]
    assert "running with a serial" not in g["finding"]
    assert code == 0        # warnings only


def test_stale_libvirtd_started_before_the_shim(libvirt_hosts, hookd_daemon, tmp_path):
    host = libvirt_hosts("a")
    shim_installer(tmp_path)(host.hooks_dir)        # after libvirtd's start: it does not run it
    hookd_daemon(write_config(tmp_path, host))
    _, checks = doctor(tmp_path, host)
    c = checks["hook-loaded"]
    assert c["status"] == "WARN", c
    assert f"libvirtd (pid {host.libvirtd_pid}) started" in c["finding"]
    assert "before" in c["finding"] and "systemctl reload libvirtd" in c["fix"]


def test_running_guest_out_of_policy_is_counted(libvirt_hosts, tmp_path):
    host = libvirt_hosts("a")                       # no shim: the guest starts with any serial
    define(host, tmp_path, "instance-00000003", HOST_SERIAL, start=True)
    code, checks = doctor(tmp_path, host)
    g = checks["guests"]
    assert g["status"] == "WARN"
    assert "1 running with a serial out of policy (instance-00000003)" in g["finding"]
    assert "next cold boot" in g["fix"]
    assert checks["shim"]["status"] == "FAIL" and code == 1


def test_pinned_guest_is_in_policy_for_doctor_as_for_explain(libvirt_hosts, tmp_path):
    """A running guest whose legacy serial is pinned: the hook and the proxy accept it, so
    doctor must not report it out of policy (it decided without pins before)."""
    host = libvirt_hosts("a")
    uid = define(host, tmp_path, "instance-00000004", "LEGACY-SERIAL-4", start=True)
    config = write_config(tmp_path, host)
    code, checks = doctor(tmp_path, host)
    assert "1 running with a serial out of policy (instance-00000004)" in checks["guests"]["finding"]

    r = run_hookctl("pin", uid, "LEGACY-SERIAL-4", "--config", config)
    assert r.returncode == 0, r.stderr
    _, checks = doctor(tmp_path, host)
    g = checks["guests"]
    assert g["status"] == "OK" and "1 domain: 1 in policy" in g["finding"], g
    live = tmp_path / "live.xml"
    live.write_text(host.virsh("dumpxml", "instance-00000004").stdout)
    r = run_hookctl("explain", "--xml", live, "--config", config, "--json")
    assert r.returncode == 0, r.stderr
    explained = json.loads(r.stdout)
    assert (explained["verdict"], explained["serial_policy"]) == ("compliant", "LEGACY-SERIAL-4"), explained


def test_hung_libvirtd_does_not_hang_doctor(libvirt_hosts, tmp_path):
    host = libvirt_hosts("a", setup_hooks=shim_installer(tmp_path, mtime=time.time() - 60))
    host.kill_libvirtd(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        code, checks = doctor(tmp_path, host, "--timeout", "3")
        took = time.monotonic() - t0
    finally:
        os.kill(host.libvirtd_pid, signal.SIGCONT)
    assert took < 20, took
    assert checks["libvirt"]["status"] == "FAIL"
    assert "did not answer in time" in checks["libvirt"]["finding"]
    assert code == 1

"""`hookctl doctor` against temp dirs, a fake nova.conf and a real hookd daemon.

No libvirt here: the libvirt URI points at a socket that does not exist (or at one
that never answers, to prove the libvirt checks are bounded). The checks against a
real namespaced libvirtd are in tests/integration/test_doctor_libvirt.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.harness.run import hookd_env, run_hookctl

LINE_RE = re.compile(r"^(OK|WARN|FAIL) {2,4}[a-z-]+: .+$")


def write_config(tmp_path, *, extra: str = "", proxy_socket: str = "", mode: str = "unique") -> str:
    cfg_dir = tmp_path / "etc"
    cfg_dir.mkdir(exist_ok=True)
    path = cfg_dir / "hookd.conf"
    path.write_text(f"""[policy]
mode = {mode}

[hookd]
socket = {tmp_path}/hookd.sock
state_dir = {tmp_path}/state
proxy_socket = {proxy_socket}
libvirt_socket = {tmp_path}/no-libvirt-sock
{extra}""")
    return str(path)


def install_shim(tmp_path, socket_path=None) -> str:
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    r = run_hookctl("install-hook", "--socket", socket_path or f"{tmp_path}/hookd.sock", hooks)
    assert r.returncode == 0, r.stderr
    return str(hooks)


def nova_conf(tmp_path, **libvirt_keys) -> str:
    path = tmp_path / "nova" / "nova.conf"
    path.parent.mkdir(exist_ok=True)
    body = "".join(f"{k} = {v}\n" for k, v in libvirt_keys.items())
    path.write_text(f"[DEFAULT]\nhost = compute-1\n\n[libvirt]\nvirt_type = kvm\n{body}")
    return str(path)


def doctor(tmp_path, *args, config=None, hooks=None, nova=None, timeout=60):
    argv = ["doctor", "--json", "--config", config or write_config(tmp_path),
            "--hooks-dir", hooks or str(tmp_path / "hooks"),
            "--nova-conf", nova or nova_conf(tmp_path),
            "--libvirt-uri", f"qemu+unix:///system?socket={tmp_path}/no-libvirt-sock", *args]
    r = run_hookctl(*argv, timeout=timeout)
    assert "Traceback" not in r.stderr.decode(), r.stderr.decode()
    out = json.loads(r.stdout)
    checks = {c["check"]: c for c in out["checks"]}
    return r.returncode, checks, out


@pytest.fixture
def daemon(tmp_path):
    """A real hookd from this tree, on tmp_path/hookd.sock (proxy off); stopped by pid."""
    procs = []

    def start(config: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "hookd.daemon", "--config", config],
                             env=hookd_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(p)
        sock = tmp_path / "hookd.sock"
        deadline = time.monotonic() + 20
        while not sock.exists():
            if p.poll() is not None:
                pytest.fail(f"hookd exited {p.returncode}: {p.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("hookd did not create its socket in 20 s")
            time.sleep(0.05)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        p.stderr.close()


# ----------------------------------------------------------------- format

def test_text_output_is_one_line_per_check_and_exit_1_on_fail(tmp_path):
    cfg = write_config(tmp_path)
    r = run_hookctl("doctor", "--config", cfg, "--hooks-dir", tmp_path / "nohooks",
                    "--nova-conf", nova_conf(tmp_path),
                    "--libvirt-uri", f"qemu+unix:///system?socket={tmp_path}/none")
    lines = r.stdout.decode().splitlines()
    assert r.returncode == 1
    assert r.stderr == b""
    assert len(lines) == 11
    for line in lines:
        assert LINE_RE.match(line), line
    fails = [line for line in lines if line.startswith("FAIL")]
    # A FAIL always says what to do after "; ".
    assert all("; " in line for line in fails)
    assert lines[0].startswith("OK    config: ")


def test_json_output_shape(tmp_path):
    code, checks, out = doctor(tmp_path)
    assert code == 1 and out["ok"] is False
    assert list(checks) == ["config", "shim", "hook-loaded", "daemon", "libvirt-socket", "libvirt",
                            "proxy", "store", "nova-uri", "nova-sysinfo", "guests"]
    assert sum(out["counts"].values()) == len(checks)
    for c in checks.values():
        assert set(c) == {"status", "check", "finding", "fix"}


@pytest.mark.parametrize("argv, message", [
    (["--timeout", "0"], "--timeout must be between"),
    (["--timeout", "x"], "invalid float value"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_arguments_give_one_line(tmp_path, argv, message):
    r = run_hookctl("doctor", *argv)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert message in err and "Traceback" not in err


# ----------------------------------------------------------------- config

def test_bad_config_fails_with_file_and_line_and_other_checks_still_run(tmp_path):
    cfg = write_config(tmp_path, extra="[policy]\nmode = sideways\n")
    code, checks, _ = doctor(tmp_path, config=cfg)
    assert code == 1
    assert checks["config"]["status"] == "FAIL"
    assert re.search(r"hookd\.conf:\d+", checks["config"]["finding"])
    assert "sideways" in checks["config"]["finding"]
    assert "hookctl check-config" in checks["config"]["fix"]
    assert checks["guests"]["status"] == "WARN"       # not checked, said so
    assert checks["shim"]["status"] == "FAIL"          # still checked (with the defaults)


def test_missing_explicit_config_fails(tmp_path):
    code, checks, _ = doctor(tmp_path, config=str(tmp_path / "nope.conf"))
    assert code == 1 and checks["config"]["status"] == "FAIL"
    assert "no such file" in checks["config"]["finding"]


# ----------------------------------------------------------------- shim

def test_missing_shim(tmp_path):
    (tmp_path / "hooks").mkdir()
    code, checks, _ = doctor(tmp_path)
    assert checks["shim"]["status"] == "FAIL"
    assert "no hookd shim" in checks["shim"]["finding"]
    assert "hookctl install-hook" in checks["shim"]["fix"]
    assert checks["hook-loaded"]["status"] == "WARN"


def test_missing_hooks_dir(tmp_path):
    code, checks, _ = doctor(tmp_path, hooks=str(tmp_path / "absent"))
    assert checks["shim"]["status"] == "FAIL" and "does not exist" in checks["shim"]["finding"]


def test_shim_present_and_executable(tmp_path):
    hooks = install_shim(tmp_path)
    _, checks, _ = doctor(tmp_path, hooks=hooks)
    assert checks["shim"]["status"] == "OK", checks["shim"]
    assert f"socket {tmp_path}/hookd.sock" in checks["shim"]["finding"]
    # No libvirtd uses a temp directory as its hooks dir.
    assert checks["hook-loaded"]["status"] == "WARN"
    assert "no running libvirtd" in checks["hook-loaded"]["finding"]


def test_shim_not_executable(tmp_path):
    hooks = install_shim(tmp_path)
    os.chmod(os.path.join(hooks, "50-hookd"), 0o644)
    _, checks, _ = doctor(tmp_path, hooks=hooks)
    assert checks["shim"]["status"] == "FAIL" and "not executable" in checks["shim"]["finding"]
    assert "chmod 755" in checks["shim"]["fix"]


def test_shim_under_another_name_is_found(tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    r = run_hookctl("install-hook", "--socket", f"{tmp_path}/hookd.sock", "--name", "10-serial", hooks)
    assert r.returncode == 0
    _, checks, _ = doctor(tmp_path, hooks=str(hooks))
    assert checks["shim"]["status"] == "OK" and "named 10-serial" in checks["shim"]["finding"]


def test_shim_asking_another_socket(tmp_path):
    hooks = install_shim(tmp_path, socket_path="/run/elsewhere.sock")
    _, checks, _ = doctor(tmp_path, hooks=hooks)
    assert checks["shim"]["status"] == "FAIL"
    assert "/run/elsewhere.sock" in checks["shim"]["finding"]
    assert f"--socket {tmp_path}/hookd.sock" in checks["shim"]["fix"]


def test_shim_with_broken_settings(tmp_path):
    hooks = install_shim(tmp_path)
    with open(os.path.join(hooks, "50-hookd.conf"), "a") as f:
        f.write("timeout = soon\n")
    _, checks, _ = doctor(tmp_path, hooks=hooks)
    assert checks["shim"]["status"] == "FAIL"
    assert "50-hookd.conf line 6: timeout must be 0.1 to 300 seconds" in checks["shim"]["finding"]
    assert "treats hookd as unreachable" in checks["shim"]["finding"]


def test_shim_without_settings_uses_the_built_in_defaults(tmp_path):
    hooks = install_shim(tmp_path)
    os.unlink(os.path.join(hooks, "50-hookd.conf"))
    _, checks, _ = doctor(tmp_path, hooks=hooks)
    # The defaults ask /run/hookd/hookd.sock; this hookd listens elsewhere.
    assert checks["shim"]["status"] == "FAIL"
    assert "asks /run/hookd/hookd.sock but hookd listens on" in checks["shim"]["finding"]


def test_an_old_or_foreign_hook_is_not_taken_for_the_shim(tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "50-hookd").write_text("#!/bin/sh\n# hookd's libvirt qemu hook (0.1, sh + Python)\nexit 0\n")
    os.chmod(hooks / "50-hookd", 0o755)
    _, checks, _ = doctor(tmp_path, hooks=str(hooks))
    assert checks["shim"]["status"] == "FAIL" and "not hookd's compiled shim" in checks["shim"]["finding"]
    assert "hookctl install-hook" in checks["shim"]["fix"]


# ----------------------------------------------------------------- daemon

def test_unreachable_daemon(tmp_path):
    _, checks, _ = doctor(tmp_path)
    assert checks["daemon"]["status"] == "FAIL"
    assert "not reachable" in checks["daemon"]["finding"]
    assert "systemctl start hookd" in checks["daemon"]["fix"]


def test_daemon_that_accepts_but_never_answers_is_bounded(tmp_path):
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "hookd.sock"))
        s.listen(5)
        t0 = time.monotonic()
        _, checks, _ = doctor(tmp_path)
        assert time.monotonic() - t0 < 20
    assert checks["daemon"]["status"] == "FAIL"


def test_running_daemon_and_good_setup(tmp_path, daemon):
    cfg = write_config(tmp_path)
    daemon(cfg)
    hooks = install_shim(tmp_path)
    code, checks, _ = doctor(tmp_path, config=cfg, hooks=hooks)
    assert checks["config"]["status"] == "OK"
    assert checks["shim"]["status"] == "OK"
    assert checks["daemon"]["status"] == "OK", checks["daemon"]
    assert "answers on" in checks["daemon"]["finding"]
    assert checks["proxy"]["status"] == "OK" and "off" in checks["proxy"]["finding"]
    assert checks["nova-uri"]["status"] == "OK"
    assert checks["nova-sysinfo"]["status"] == "OK"
    # No libvirt here: those fail, so the exit code is 1.
    assert checks["libvirt"]["status"] == "FAIL" and code == 1


def test_daemon_running_another_mode_is_a_warning(tmp_path, daemon):
    cfg = write_config(tmp_path)
    daemon(cfg)
    # The same socket, another policy mode on disk (as after an edit hookd has not seen).
    other = tmp_path / "other.conf"
    other.write_text(open(cfg).read().replace("mode = unique", "mode = host"))
    _, checks, _ = doctor(tmp_path, config=str(other))
    assert checks["daemon"]["status"] == "WARN" and "mode unique" in checks["daemon"]["finding"]
    assert "configuration says host" in checks["daemon"]["finding"]


# ----------------------------------------------------------------- libvirt

def test_libvirt_that_never_answers_does_not_hang_doctor(tmp_path):
    """A socket that accepts and then says nothing: libvirt's open would block forever."""
    path = tmp_path / "hung-libvirt-sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen(16)
        t0 = time.monotonic()
        code, checks, _ = doctor(tmp_path, "--timeout", "2",
                                 "--libvirt-uri", f"qemu+unix:///system?socket={path}")
        took = time.monotonic() - t0
    assert took < 15, took
    assert checks["libvirt"]["status"] == "FAIL"
    assert "did not answer in time" in checks["libvirt"]["finding"]
    assert checks["guests"]["status"] == "WARN"


def test_libvirt_socket_missing(tmp_path):
    _, checks, _ = doctor(tmp_path)
    assert checks["libvirt-socket"]["status"] == "FAIL"
    assert "no-libvirt-sock does not exist" in checks["libvirt-socket"]["finding"]
    assert checks["libvirt"]["status"] == "FAIL" and "cannot connect" in checks["libvirt"]["finding"]


# ----------------------------------------------------------------- proxy and Nova

def test_proxy_configured_but_absent(tmp_path):
    cfg = write_config(tmp_path, proxy_socket=f"{tmp_path}/proxy-sock")
    _, checks, _ = doctor(tmp_path, config=cfg)
    assert checks["proxy"]["status"] == "FAIL" and "does not exist" in checks["proxy"]["finding"]


def test_nova_pointing_at_the_proxy(tmp_path):
    proxy = tmp_path / "proxy-sock"
    cfg = write_config(tmp_path, proxy_socket=str(proxy),
                       extra=f"proxy_group = {os.getgid()}\n")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(proxy))
        s.listen(4)
        nova = nova_conf(tmp_path, connection_uri=f"qemu+unix:///system?socket={proxy}")
        _, checks, _ = doctor(tmp_path, config=cfg, nova=nova)
    assert checks["proxy"]["status"] == "OK", checks["proxy"]
    assert checks["nova-uri"]["status"] == "OK"
    assert "through hookd's proxy" in checks["nova-uri"]["finding"]


@pytest.mark.parametrize("uri", ["", "qemu:///system",
                                 "qemu+unix:///system?socket=/run/libvirt/libvirt-sock"])
def test_nova_pointing_elsewhere_while_the_proxy_is_on(tmp_path, uri):
    cfg = write_config(tmp_path, proxy_socket=f"{tmp_path}/proxy-sock")
    nova = nova_conf(tmp_path, connection_uri=uri)
    _, checks, _ = doctor(tmp_path, config=cfg, nova=nova)
    assert checks["nova-uri"]["status"] == "WARN"
    assert "bypasses hookd's proxy" in checks["nova-uri"]["finding"]
    assert f"socket={tmp_path}/proxy-sock" in checks["nova-uri"]["fix"]


def test_nova_pointing_at_a_proxy_that_is_off(tmp_path):
    cfg = write_config(tmp_path)       # proxy_socket empty
    nova = nova_conf(tmp_path, connection_uri=f"qemu+unix:///system?socket={tmp_path}/libvirt-sock")
    _, checks, _ = doctor(tmp_path, config=cfg, nova=nova)
    assert checks["nova-uri"]["status"] == "FAIL"
    assert "proxy off" in checks["nova-uri"]["finding"]


def test_nova_conf_d_overrides(tmp_path):
    nova = nova_conf(tmp_path, sysinfo_serial="unique")
    confd = tmp_path / "nova" / "nova.conf.d"
    confd.mkdir()
    (confd / "50-serial.conf").write_text("[libvirt]\nsysinfo_serial = hardware\n")
    _, checks, _ = doctor(tmp_path, nova=nova)
    assert "sysinfo_serial = hardware" in checks["nova-sysinfo"]["finding"]


@pytest.mark.parametrize("value, mode, status, words", [
    (None, "unique", "OK", "unique (Nova's default): Nova sets serial = instance UUID itself"),
    ("unique", "unique", "OK", "hookd verifies and applies your exceptions"),
    ("auto", "unique", "OK", "host-derived serial"),
    ("hardware", "unique", "OK", "hookd rewrites it"),
    ("os", "template", "OK", "hookd rewrites it (mode template)"),
    ("none", "unique", "OK", "Nova writes no serial; hookd adds the policy serial"),
    ("none", "host", "WARN", "guests have no serial"),
    ("hardware", "host", "WARN", "the same for every guest"),
    ("sideways", "unique", "FAIL", "is not one of"),
])
def test_sysinfo_serial_variants(tmp_path, value, mode, status, words):
    extra = "[policy]\ntemplate = ACME-{uuid_hex}\n" if mode == "template" else ""
    cfg = write_config(tmp_path, mode=mode, extra=extra)
    nova = nova_conf(tmp_path, **({"sysinfo_serial": value} if value is not None else {}))
    _, checks, _ = doctor(tmp_path, config=cfg, nova=nova)
    assert checks["nova-sysinfo"]["status"] == status, checks["nova-sysinfo"]
    assert words in checks["nova-sysinfo"]["finding"]


def test_default_nova_conf_absent_is_a_warning_but_explicit_is_a_failure(tmp_path):
    _, checks, _ = doctor(tmp_path, nova=str(tmp_path / "missing.conf"))
    assert checks["nova-uri"]["status"] == "FAIL"
    assert checks["nova-sysinfo"]["status"] == "FAIL"


def test_unparsable_nova_conf(tmp_path):
    path = tmp_path / "nova.conf"
    path.write_text("this is not ini\n[libvirt\n")
    _, checks, _ = doctor(tmp_path, nova=str(path))
    assert checks["nova-uri"]["status"] == "FAIL" and "cannot parse" in checks["nova-uri"]["finding"]


def test_store_check():
    """doctor says where pins live and whether the daemon reaches etcd, with the fix."""
    from hookd.config import build_config, parse_ini
    from hookd.cli.doctor import FAIL, OK, WARN, check_store

    def cfg(text):
        sections = {}
        parse_ini(text, "t.conf", sections)
        return build_config(sections, ("t.conf",))
    assert check_store(cfg(""), None).status == OK
    etcd = cfg("[store]\nbackend = etcd\nendpoints = http://10.0.0.5:2379\n")
    assert check_store(etcd, None).status == WARN
    ok = check_store(etcd, {"store": {"reachable": True, "cached": 3, "queued": 0, "conflicts": 0}})
    assert ok.status == OK and "3 pins cached" in ok.finding
    bad = check_store(etcd, {"store": {"reachable": False, "queued": 2, "last_error": "refused"}})
    assert bad.status == FAIL and "2 pins queued" in bad.finding and "hookd-etcd.conf" in bad.fix

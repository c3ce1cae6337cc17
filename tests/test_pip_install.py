"""A pip install (a venv, as OpenStack-Ansible and source-built containers do) installs a
hookctl whose install-hook builds the compiled shim from the C source the wheel carries,
and that shim answers a real hookd."""

from __future__ import annotations

import subprocess

from tests.harness.run import REPO
from tests.harness.domains import UUID, domain
from tests.harness.hookd_proc import HookdProcess

LIBVIRT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/"}


def test_pip_installed_hookctl_builds_a_shim_that_answers_hookd(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    # Offline: no build isolation (Debian's setuptools), no dependencies (Debian's python3-*).
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", str(REPO)], capture_output=True, text=True, timeout=300,
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    site = next(venv.glob("lib/python3*/site-packages/hookd"))
    assert (site / "data" / "hookd-shim.c").read_bytes() == (REPO / "hooks" / "hookd-shim.c").read_bytes()
    assert not (site.parent / "hooks").exists()           # so the source came from the wheel

    d = HookdProcess(tmp_path, config_extra="[enforce]\non_mismatch = deny\n")
    d.start()
    try:
        hooks = tmp_path / "qemu.d"
        hooks.mkdir()
        r = subprocess.run([str(venv / "bin" / "hookctl"), "install-hook", "--socket", str(d.socket), str(hooks)],
                           capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
        assert r.returncode == 0, r.stderr
        shim = hooks / "50-hookd"
        ok = subprocess.run([str(shim), "instance-1", "prepare", "begin", "-"], input=domain(serial=UUID),
                            capture_output=True, env=LIBVIRT_ENV, timeout=30)
        bad = subprocess.run([str(shim), "instance-1", "prepare", "begin", "-"], input=domain(),
                             capture_output=True, env=LIBVIRT_ENV, timeout=30)
    finally:
        d.stop()
    # The guest carrying its UUID starts; the one with the host's serial is refused, with hookd's reason.
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, b"", b"")
    assert bad.returncode == 1 and b"policy (default) wants" in bad.stderr, bad.stderr
    assert [r["action"] for r in d.audit(operation="prepare")] == ["allow", "deny"]

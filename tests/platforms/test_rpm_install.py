"""issue #17, the RPM: built for RHEL 9 (el9) and RHEL 10 (el10), installed with
`rpm --root --nodeps` into an overlay over the bullseye root (Python 3.9, RHEL 9's) or the
noble root (Python 3.12, RHEL 10's) by packaging/check-rpm, which checks the file list,
the config files, the scriptlets, the code on the target's site-packages path, the shim and
rpm -e; and the wheel built by RHEL 9's setuptools 53.0.0 (from PyPI, in a venv) carrying
what Debian's setuptools puts in it.

No RPM distribution runs here: dnf's dependency resolution, RHEL's own macros and SELinux are
not tested (packaging/README.md lists what is not). Needs root (check-rpm) and PyPI (the
setuptools 53 wheel); fails, not skips, without them.
"""

from __future__ import annotations

import configparser
import email.parser
import os
import re
import subprocess
import zipfile

import pytest

from tests.harness.run import REPO

pytestmark = pytest.mark.slow

PKG = REPO / "packaging"
# A first run on a fresh machine builds the root (debootstrap + packages, several minutes);
# with the root cached check-rpm takes a few seconds.
CHECK_RPM_TIMEOUT = 2400
#: RHEL 9's python3-setuptools and python3-wheel versions (BaseOS / AppStream, 9.0 to 9.6).
RHEL9_SETUPTOOLS = "53.0.0"
RHEL9_WHEEL = "0.36.2"


def _require_root():
    if os.geteuid() != 0:
        pytest.fail("check-rpm needs root (overlayfs, chroot, rpm --root)", pytrace=False)


@pytest.mark.parametrize("dist,codename,python", [("el9", "bullseye", "3.9"), ("el10", "noble", "3.12")])
def test_check_rpm_installs_and_erases_the_package(dist, codename, python):
    _require_root()
    r = subprocess.run([str(PKG / "check-rpm"), "--dist", dist], capture_output=True, text=True,
                       timeout=CHECK_RPM_TIMEOUT, stdin=subprocess.DEVNULL)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    site = f"/usr/lib/python{python}/site-packages"
    for marker in (
            f"all checks passed (hookd-", f".{dist}.", f"in the {codename} root, Python {python})",
            "%post: hookd: systemd is not running: restart libvirtd",
            f"all present; rpm -V clean; units in /usr/lib/systemd/system; code in {site}",
            "rpm -qc: exactly the two %config(noreplace) files",
            f"the Python code from the RHEL path, run by the root's python3 {python}",
            "OK: /etc/hookd/hookd.conf",
            "%preun and %postun ran (exit 0)", "but /etc/hookd/hookd.conf.rpmsave"):
        assert marker in out, f"{marker!r} not in check-rpm's output:\n{out[-5000:]}"
    assert re.search(rf"needs GLIBC_[0-9.]+ \(<= {dist}'s [0-9.]+\); --version ran ", out), out[-3000:]
    assert "FAIL" not in out and "Traceback" not in out
    # Nothing it mounted is left on the host, nor its temporary directory.
    with open("/proc/self/mounts") as f:
        assert "hookd-check-rpm" not in f.read()
    assert not [p for p in os.listdir("/var/tmp") if p.startswith("hookd-check-rpm.")]


def test_check_rpm_refuses_bad_arguments_in_one_line():
    for argv in (["--bogus"], ["--dist", "el8"]):
        r = subprocess.run([str(PKG / "check-rpm"), *argv], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


def _wheel(python: str, out_dir, src) -> zipfile.ZipFile:
    r = subprocess.run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "--wheel-dir", str(out_dir), str(src)],
                       capture_output=True, text=True, timeout=600, cwd=str(out_dir))
    assert r.returncode == 0, f"pip wheel with {python}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    (whl,) = out_dir.glob("hookd-*.whl")
    return zipfile.ZipFile(whl)


def _metadata(wheel: zipfile.ZipFile) -> tuple:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    msg = email.parser.Parser().parsestr(wheel.read(name).decode())
    # setuptools 53 writes "UNKNOWN" for unset fields (Home-page, Platform), later ones omit them.
    fields = {k: v for k, v in msg.items() if k != "Requires-Dist" and v != "UNKNOWN"}
    return fields, sorted(msg.get_all("Requires-Dist") or []), msg.get_payload().strip()


def _entry_points(wheel: zipfile.ZipFile) -> dict:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    cp = configparser.ConfigParser()
    cp.read_string(wheel.read(name).decode())
    return {s: dict(cp[s]) for s in cp.sections()}


def test_wheel_builds_with_rhel9_setuptools_53_as_with_debians(tmp_path):
    """pyproject.toml's floor is setuptools 53, RHEL 9's: a wheel built by exactly that version
    (and RHEL 9's wheel 0.36.2), without build isolation as %pyproject_wheel builds, carries the
    same files, entry points and metadata as one built by Debian's setuptools. Needs PyPI."""
    floor = re.search(r'"setuptools>=([0-9.]+)"', (REPO / "pyproject.toml").read_text())
    assert floor and floor.group(1) == "53", "pyproject.toml must not require more than RHEL 9's setuptools"
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    r = subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        f"setuptools=={RHEL9_SETUPTOOLS}", f"wheel=={RHEL9_WHEEL}"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"cannot install setuptools {RHEL9_SETUPTOOLS} from PyPI (network?): "
                    f"{(r.stderr or r.stdout).strip()[-1500:]}", pytrace=False)
    got = subprocess.run([py, "-c", "import setuptools; print(setuptools.__version__)"], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert got == RHEL9_SETUPTOOLS
    # A clean copy of the tree: no build/ or egg-info from another build may leak in.
    src = tmp_path / "src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached"], capture_output=True,
                             check=True).stdout.decode().split("\0")
    for rel in filter(None, archive):
        path = REPO / rel
        if os.path.lexists(path):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                os.symlink(os.readlink(path), src / rel)
            else:
                (src / rel).write_bytes(path.read_bytes())
    (tmp_path / "w53").mkdir()
    (tmp_path / "wdeb").mkdir()
    old = _wheel(py, tmp_path / "w53", src)
    new = _wheel("/usr/bin/python3", tmp_path / "wdeb", src)
    assert "Generator: bdist_wheel (0.36.2)" in old.read(
        next(n for n in old.namelist() if n.endswith(".dist-info/WHEEL"))).decode()

    def payload(w):   # the package's files, not the dist-info (whose formatting differs)
        return {n: w.read(n) for n in w.namelist() if not n.split("/")[0].endswith(".dist-info")}
    assert payload(old) == payload(new)
    assert old.read("hookd/data/hookd-shim.c") == (REPO / "hooks" / "hookd-shim.c").read_bytes()
    assert _entry_points(old) == _entry_points(new) == {
        "console_scripts": {"hookd": "hookd.daemon:main", "hookctl": "hookd.cli.main:main"}}
    old_meta, new_meta = _metadata(old), _metadata(new)
    assert old_meta == new_meta
    fields, requires, description = old_meta
    assert (fields["Name"], fields["License"], fields["Requires-Python"], fields["Description-Content-Type"]) == \
        ("hookd", "Apache-2.0", ">=3.9", "text/markdown")
    assert requires == ["libvirt-python", "lxml", "systemd-python"]
    assert description.startswith("# hookd")

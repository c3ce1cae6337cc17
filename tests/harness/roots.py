"""Debian and Ubuntu roots of other releases, and running this checkout's tests inside them.

issue #17: hookd promises Python >= 3.9 (setup.cfg; RHEL 9's Python) and runs against
whatever libvirt the hypervisor has, but the machine is Debian 12. This module owns:

* :func:`ensure_root` -- a ``debootstrap --variant=minbase`` root of a Debian or Ubuntu
  release (Ubuntu's with its archive key, pinned in UBUNTU_KEYRING_DEB) with that
  release's own python3, python3-* dependencies, build tools (and, where
  :data:`ROOTS` says so, its libvirt and QEMU), built once per machine under
  ``$HOOKD_TEST_CACHE/roots/<codename>`` (default /var/cache/hookd-tests). A stamp
  file in the root names what it was built from (release, mirror, package list,
  :data:`BUILDER_VERSION`); a different stamp rebuilds it. A file lock per root
  makes concurrent runs wait (exclusive while building, shared while running).
* :func:`run_pytest` -- a clean export of the checkout (the tracked files, as they
  are in the work tree) copied to a fresh ``/src/hookd-<id>`` in the root and pytest
  run there by the ROOT's python3, inside a private mount namespace (``unshare
  --mount --propagation private``) in which the root gets its own /proc, /sys and
  /dev (bind), a fresh tmpfs on /tmp, and is made the namespace's root with
  pivot_root (not chroot: the libvirt harness enters namespaces with nsenter, and
  setns() into a mount namespace resets the root to that namespace's root, which a
  chroot would not be). Nothing is mounted outside the namespace, and everything
  mounted in it goes when its last process exits.
* :data:`DESELECTED` -- the ONE list of tests that cannot run in a root, each with
  its reason; they are passed to pytest as ``--deselect`` (so they count as
  deselected, never as passed), printed with every run, and a stale entry (a test
  that no longer exists) fails the run.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import pathlib
import re
import shutil
import subprocess
import time
import uuid

from tests.harness.libvirt_host import cache_root
from tests.harness.run import REPO

__all__ = ["ROOTS", "DESELECTED", "UNIT_ARGS", "INTEGRATION_TESTS", "Root", "RootRun", "RootError",
           "ensure_root", "build_all", "run_pytest", "deselected_for"]

#: bump when the way a root is built changes (forces a rebuild everywhere).
BUILDER_VERSION = "1"
MIRROR = os.environ.get("HOOKD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("HOOKD_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
UBUNTU_MIRROR = os.environ.get("HOOKD_UBUNTU_MIRROR", "http://archive.ubuntu.com/ubuntu")
UBUNTU_SECURITY_MIRROR = os.environ.get("HOOKD_UBUNTU_SECURITY_MIRROR", "http://security.ubuntu.com/ubuntu")
#: Ubuntu's archive key, which a Debian host does not have (Debian no longer ships
#: ubuntu-keyring): the .deb from Ubuntu's archive, pinned by the SHA-256 it had in noble's
#: Packages index when this was written (2026-12-04), so that debootstrap checks the Ubuntu
#: Release files with it. A different download is refused.
UBUNTU_KEYRING_DEB = ("pool/main/u/ubuntu-keyring/ubuntu-keyring_2023.11.28.1_all.deb",
                      "36de43b15853ccae0028e9a767613770c704833f82586f28eb262f0311adb8a8")

#: What the unit suite needs in any root: hookd's Python dependencies (Debian's), pytest
#: and hypothesis, a C compiler (the shim; ASan/UBSan builds), systemd-analyze (unit files),
#: man + groff (man pages), dpkg-dev/debhelper/dh-python and rpm (packaging checks), venv +
#: pip + setuptools/wheel (the pip-install test, the vermin venv), procps (/bin/kill, which
#: hookd.service's ExecReload names), git, ca-certificates, prometheus_client (its text
#: parser reads the metrics file back in tests/metrics).
COMMON_PACKAGES = (
    "python3", "python3-lxml", "python3-libvirt", "python3-systemd", "python3-prometheus-client",
    "python3-pytest", "python3-hypothesis", "python3-venv", "python3-pip", "python3-setuptools",
    "python3-wheel", "build-essential", "systemd", "man-db", "groff-base", "dpkg-dev",
    "debhelper", "dh-python", "rpm", "util-linux", "procps", "git", "ca-certificates", "cpio", "gzip",
)
#: A real libvirtd + QEMU (TCG) for the integration tests, without libvirt-daemon-system
#: (as scripts/install-deps does on the host: it would pull polkit and start services).
LIBVIRT_PACKAGES = ("libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients",
                    "qemu-system-x86")

UNIT_ARGS = ("tests", "--ignore=tests/integration", "--ignore=tests/reliability",
             "--ignore=tests/platforms", "--ignore=tests/nova")
#: The integration tests that exercise libvirt itself, run where a root has libvirt: the
#: hook path (shim -> hookd, guests printing their serial), the proxy in front of the
#: root's libvirtd (define/migrate rewrites, pass-through of everything else) and the
#: auto upstream choice, with the harness's own checks.
INTEGRATION_TESTS = ("tests/integration/test_hook_path.py", "tests/integration/test_proxy.py",
                     "tests/integration/test_upstream_auto.py", "tests/integration/test_harness.py")


@dataclasses.dataclass(frozen=True)
class Root:
    codename: str
    what: str                       # one line: why this release
    packages: tuple[str, ...]
    security_suite: str             # its security archive's suite name
    libvirt: bool = False           # has libvirt + QEMU: run INTEGRATION_TESTS there too
    ubuntu: bool = False            # Ubuntu's archive, components and key instead of Debian's

    @property
    def mirror(self) -> str:
        return UBUNTU_MIRROR if self.ubuntu else MIRROR

    @property
    def security_mirror(self) -> str:
        return UBUNTU_SECURITY_MIRROR if self.ubuntu else SECURITY_MIRROR

    @property
    def components(self) -> str:
        # Ubuntu keeps pytest, hypothesis, venv, pip, dh-python and rpm in universe.
        return "main universe" if self.ubuntu else "main"

    @property
    def path(self) -> pathlib.Path:
        return cache_root() / "roots" / self.codename

    def stamp(self) -> str:
        return (f"builder {BUILDER_VERSION}\nrelease {self.codename}\nmirror {self.mirror}\n"
                f"security {self.security_mirror} {self.security_suite}\n"
                + (f"components {self.components}\n" if self.ubuntu else "") +
                f"packages {' '.join(sorted(self.packages))}\n")


ROOTS = {
    "bullseye": Root("bullseye", "Debian 11: Python 3.9 (setup.cfg's floor, RHEL 9's), libvirt 7.0, QEMU 5.2",
                     COMMON_PACKAGES + LIBVIRT_PACKAGES, "bullseye-security", libvirt=True),
    "trixie": Root("trixie", "Debian 13: Python 3.13, libvirt 11, QEMU 10",
                   # trixie split the storage driver (a dir pool: the proxy's stream test)
                   # out of libvirt-daemon, which bookworm's still carries.
                   COMMON_PACKAGES + LIBVIRT_PACKAGES + ("libvirt-daemon-driver-storage",),
                   "trixie-security", libvirt=True),
    "noble": Root("noble", "Ubuntu 24.04: Python 3.12, libvirt 10.0, QEMU 8.2",
                  COMMON_PACKAGES + LIBVIRT_PACKAGES, "noble-security", libvirt=True, ubuntu=True),
    "jammy": Root("jammy", "Ubuntu 22.04: Python 3.10, libvirt 8.0, QEMU 6.2",
                  COMMON_PACKAGES + LIBVIRT_PACKAGES, "jammy-security", libvirt=True, ubuntu=True),
}

#: The tests that run promtool: the host's unit suite runs them.
PROMTOOL_TESTS = (
    "tests/metrics/test_rules.py::test_promtool_check_rules_accepts_the_shipped_file",
    "tests/metrics/test_rules.py::test_promtool_test_rules_each_alert_fires_and_stays_quiet",
    "tests/metrics/test_rules.py::test_a_broken_expectation_fails_so_the_test_above_means_something",
    "tests/metrics/test_registry.py::test_hookds_metrics_pass_promtool_check_metrics",
)

#: (codename, pytest node id, reason): the tests that cannot run in that root. Keep each
#: reason to one line; the list is printed with every run and each id must exist.
DESELECTED: tuple[tuple[str, str, str], ...] = (
    ("bullseye", "tests/test_packaging.py::test_systemd_analyze_verify_is_clean",
     "bullseye's systemd 247 predates PrivateIPC= (248) in hookd.service, which targets systemd >= 252"),
    ("bullseye", "tests/test_packaging.py::test_systemd_analyze_security_exposure_at_most_2_5",
     "bullseye's systemd-analyze 247 has no `security --offline` (systemd 250)"),
    ("bullseye", "tests/test_python_floor.py::test_the_check_fails_on_newer_syntax",
     "vermin parses with the running Python: 3.9's ast cannot read `match`, so it cannot flag it"),
    ("bullseye", "tests/test_daemon.py::test_inherited_hook_socket_survives_stop_under_python_3_13",
     "needs a Python >= 3.13 beside the one under test; runs on the host (pyenv) and in the trixie root"),
    ("jammy", "tests/test_packaging.py::test_systemd_analyze_security_exposure_at_most_2_5",
     "jammy's systemd-analyze 249 has no `security --offline` (systemd 250)"),
    ("jammy", "tests/test_daemon.py::test_inherited_hook_socket_survives_stop_under_python_3_13",
     "needs a Python >= 3.13 beside the one under test; runs on the host (pyenv) and in the trixie root"),
    ("noble", "tests/test_daemon.py::test_inherited_hook_socket_survives_stop_under_python_3_13",
     "needs a Python >= 3.13 beside the one under test; runs on the host (pyenv) and in the trixie root"),
    *((c, node, "promtool (a Go program, from the host's Debian archive) checks the rules file and the "
                "text format: nothing in it depends on the root's Python; runs on the host")
      for c in ("bullseye", "jammy", "noble", "trixie") for node in PROMTOOL_TESTS),
)


def deselected_for(codename: str, args: tuple[str, ...] = UNIT_ARGS) -> list[tuple[str, str]]:
    """DESELECTED's (node id, reason) for codename that pytest args would collect."""
    paths = [a for a in args if not a.startswith("-")]
    ignored = [a.split("=", 1)[1] for a in args if a.startswith("--ignore=")]

    def under(node: str, path: str) -> bool:
        file = node.split("::", 1)[0]
        return file == path or file.startswith(path.rstrip("/") + "/")
    return [(node, why) for c, node, why in DESELECTED
            if c == codename and any(under(node, p) for p in paths) and not any(under(node, i) for i in ignored)]


class RootError(RuntimeError):
    """A root could not be built or a command in it could not be run."""


# --------------------------------------------------------------------------- namespace

#: Run (by the host's sh, as root) inside `unshare --mount --propagation private`:
#: $1 = the root, the rest = the command to exec in it once it is the namespace's root.
_ENTER = r"""
set -eu
root=$1; shift
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mkdir -p "$root/.host"
cd "$root"
pivot_root . .host
cd /
umount -l /.host
exec "$@"
"""

ROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "TERM": "dumb", "DEBIAN_FRONTEND": "noninteractive"}


def in_root(root: pathlib.Path, argv: list[str], *, env: dict | None = None, timeout: float,
            cwd: str = "/", log: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    """Run argv inside root (see the module docstring) in cwd (a path in the root) with only
    ROOT_ENV + env, stdout+stderr merged (and written to log)."""
    full_env = {**ROOT_ENV, **(env or {})}
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _ENTER, "enter", str(root),
           "/usr/bin/env", "-i", "-C", cwd, *(f"{k}={v}" for k, v in full_env.items()), *argv]
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, env={"PATH": ROOT_ENV["PATH"], "LC_ALL": "C"})
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace")
        if log:
            log.write_text(out)
        raise RootError(f"{' '.join(argv)} in {root} did not finish within {timeout:.0f} s:\n{out[-3000:]}")
    out = r.stdout.decode(errors="replace")
    if log:
        log.write_text(out)
    return subprocess.CompletedProcess(argv, r.returncode, out, "")


def _check(r: subprocess.CompletedProcess, what: str) -> None:
    if r.returncode != 0:
        raise RootError(f"{what} exited {r.returncode}:\n{r.stdout[-4000:]}")


# --------------------------------------------------------------------------- building

def _build(spec: Root, log_dir: pathlib.Path) -> None:
    final = spec.path
    tmp = final.with_name(f".{final.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    tmp.mkdir(parents=True)
    argv = ["debootstrap", "--variant=minbase", spec.codename, str(tmp), spec.mirror]
    if spec.ubuntu:
        argv[2:2] = [f"--keyring={_ubuntu_keyring(log_dir)}", "--components=main,universe"]
        if not (pathlib.Path("/usr/share/debootstrap/scripts") / spec.codename).exists():
            # Debian 12's debootstrap predates noble; every Ubuntu release since 7.10 uses
            # the same script (its own scripts are links to gutsy).
            argv.append("/usr/share/debootstrap/scripts/gutsy")
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=1200)
    (log_dir / f"{spec.codename}-debootstrap.log").write_bytes(r.stdout)
    if r.returncode != 0:
        raise RootError(f"debootstrap {spec.codename} exited {r.returncode}:\n"
                        f"{r.stdout.decode(errors='replace')[-3000:]}")
    (tmp / "etc/apt/sources.list").write_text(
        f"deb {spec.mirror} {spec.codename} {spec.components}\n"
        f"deb {spec.mirror} {spec.codename}-updates {spec.components}\n"
        f"deb {spec.security_mirror} {spec.security_suite} {spec.components}\n")
    # No service starts in the root (nothing runs init there).
    policy = tmp / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    (tmp / "etc/apt/apt.conf.d/90hookd-tests").write_text(
        'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n')
    _sync_host_network_config(tmp)
    script = ("set -eu; apt-get update -qq; apt-get install -y -qq " + " ".join(spec.packages)
              + " >/var/log/hookd-apt.log 2>&1 || { tail -n 60 /var/log/hookd-apt.log; exit 1; }")
    # As scripts/install-deps on the host: libvirtd's QEMU driver wants these, and group
    # libvirt is [hookd] proxy_group's default (the socket-activation tests hold it).
    script += ("; for g in kvm libvirt libvirt-qemu; do getent group $g >/dev/null || groupadd --system $g; done"
               "; getent passwd libvirt-qemu >/dev/null || useradd --system --gid libvirt-qemu --groups kvm"
               " --home-dir /var/lib/libvirt --no-create-home --shell /usr/sbin/nologin libvirt-qemu")
    _check(in_root(tmp, ["sh", "-c", script], timeout=1800, log=log_dir / f"{spec.codename}-install.log"),
           f"installing the packages of the {spec.codename} root")
    (tmp / ".hookd-root-stamp").write_text(spec.stamp())
    os.replace(tmp, final)


def _ubuntu_keyring(cache: pathlib.Path) -> pathlib.Path:
    """Ubuntu's archive keyring, from UBUNTU_KEYRING_DEB (downloaded once into cache and
    checked against its pinned SHA-256), unpacked under cache. build_all builds the Ubuntu
    roots at the same time, in threads of this process and maybe in another run: one at a
    time here."""
    with open(cache / ".ubuntu-keyring.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # per open file: excludes this process's threads too
        return _ubuntu_keyring_locked(cache)


def _ubuntu_keyring_locked(cache: pathlib.Path) -> pathlib.Path:
    import hashlib
    import urllib.request
    rel, sha256 = UBUNTU_KEYRING_DEB
    deb = cache / pathlib.PurePosixPath(rel).name
    keyring = cache / "ubuntu-keyring" / "usr/share/keyrings/ubuntu-archive-keyring.gpg"
    if not deb.is_file() or hashlib.sha256(deb.read_bytes()).hexdigest() != sha256:
        url = f"{UBUNTU_MIRROR}/{rel}"
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                data = r.read()
        except OSError as e:
            raise RootError(f"cannot download Ubuntu's keyring {url}: {e}") from e
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise RootError(f"{url} has SHA-256 {got}, not the pinned {sha256}: refused")
        tmp = deb.with_name(deb.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, deb)
        shutil.rmtree(cache / "ubuntu-keyring", ignore_errors=True)
    if not keyring.is_file():
        _check(subprocess.run(["dpkg-deb", "-x", str(deb), str(cache / "ubuntu-keyring")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
               f"dpkg-deb -x {deb}")
    return keyring


#: The host's own network settings a root needs to reach the package registries as the host
#: does: its resolver, the CAs it trusts beyond Debian's (copied in, then update-ca-certificates
#: in the root) and its pip configuration.
_HOST_FILES = ("etc/resolv.conf", "etc/pip.conf")
_HOST_CA_DIR = "usr/local/share/ca-certificates"


def _sync_host_network_config(root: pathlib.Path) -> bool:
    """Copy _HOST_FILES and the host's local CAs into root; True if the CAs changed (the root's
    bundle must then be rebuilt)."""
    for rel in _HOST_FILES:
        src = pathlib.Path("/") / rel
        if src.is_file():
            (root / rel).write_bytes(src.read_bytes())
    src_dir, dst_dir = pathlib.Path("/") / _HOST_CA_DIR, root / _HOST_CA_DIR
    want = {f.name: f.read_bytes() for f in src_dir.glob("*.crt")} if src_dir.is_dir() else {}
    have = {f.name: f.read_bytes() for f in dst_dir.glob("*.crt")} if dst_dir.is_dir() else {}
    if want == have:
        return False
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in set(have) - set(want):
        (dst_dir / name).unlink()
    for name, data in want.items():
        (dst_dir / name).write_bytes(data)
    return True


def ensure_root(spec: Root, lock_file) -> tuple[pathlib.Path, float]:
    """Build spec's root if its stamp is missing or different; returns (path, seconds spent
    building, 0 if cached). lock_file is an open file: held exclusively while checking and
    building, and left held shared for the caller's run."""
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    built = 0.0
    stamp = spec.path / ".hookd-root-stamp"
    try:
        current = stamp.read_text()
    except FileNotFoundError:
        current = None
    if current != spec.stamp():
        t0 = time.monotonic()
        _build(spec, spec.path.parent)
        built = time.monotonic() - t0
    elif _sync_host_network_config(spec.path):
        _check(in_root(spec.path, ["update-ca-certificates"], timeout=300), "update-ca-certificates")
    fcntl.flock(lock_file, fcntl.LOCK_SH)
    return spec.path, built


def build_all(specs) -> dict:
    """Build every root of specs that is not built yet, at the same time (downloading and
    unpacking packages mostly waits on the network and the disk). codename -> seconds spent
    building (0 if cached) or the RootError; run_pytest then finds them built."""
    import concurrent.futures

    def one(spec: Root):
        spec.path.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.path.parent / f".{spec.codename}.lock", "w") as lock:
            return ensure_root(spec, lock)[1]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(specs) or 1) as pool:
        futures = {spec.codename: pool.submit(one, spec) for spec in specs}
    results = {}
    for codename, f in futures.items():
        try:
            results[codename] = f.result()
        except RootError as e:
            results[codename] = e
    return results


# --------------------------------------------------------------------------- running

def _export_checkout(dest: pathlib.Path) -> None:
    """The tracked files of the checkout, as they are in the work tree (no build output,
    no caches, no untracked files)."""
    dest.mkdir(parents=True)
    r = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached"], capture_output=True)
    if r.returncode != 0:
        raise RootError(f"git ls-files in {REPO} failed: {r.stderr.decode(errors='replace')}")
    for rel in r.stdout.decode().split("\0"):
        if not rel:
            continue
        src = REPO / rel
        if not os.path.lexists(src):
            continue  # deleted in the work tree, not yet committed
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


@dataclasses.dataclass
class RootRun:
    codename: str
    returncode: int
    output: str
    label: str                      # "unit", "integration"
    summary: str                    # pytest's last line, e.g. "612 passed, 2 deselected in 201.3s"
    python: str                     # the root's python3 version
    deselected: list[tuple[str, str]]
    build_seconds: float
    run_seconds: float

    def tail(self, lines: int = 120) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


_SUMMARY = re.compile(r"^=+ (.*\d+ (passed|failed|errors?|skipped|deselected).*) =+$")


def _seed_guest_image(root: pathlib.Path) -> None:
    """Give root the host's guest image (tests.harness.guest builds it from Debian's
    linux-image-cloud-amd64, a kernel with its drivers built in; Ubuntu has no such package,
    its kernels need the modules of a second one). The guest's kernel is not what a root
    tests -- its libvirt and QEMU are -- and the image's recipe key is the checkout's, so
    the tests in the root find it built."""
    from tests.harness.guest import ensure_guest_image
    image_dir = ensure_guest_image().kernel.parent
    dest = root / "var/cache/hookd-tests/guest" / image_dir.name
    if not (dest / "manifest.json").exists():
        tmp = dest.with_name(f".seed-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(image_dir, tmp)
        os.replace(tmp, dest)


def run_pytest(spec: Root, args: tuple[str, ...], *, timeout: float = 2400,
               label: str = "unit") -> RootRun:
    """Build (if needed) spec's root and run `python3 -m pytest -p no:cacheprovider -ra args`
    there on a fresh export of this checkout, deselecting DESELECTED's tests for it."""
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    with open(spec.path.parent / f".{spec.codename}.lock", "w") as lock:
        root, built = ensure_root(spec, lock)
        run_id = f"hookd-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        src = root / "src" / run_id
        t0 = time.monotonic()
        try:
            _export_checkout(src)
            if spec.ubuntu and any(a.startswith("tests/integration") for a in args):
                _seed_guest_image(root)
            deselected = deselected_for(spec.codename, args)
            argv = ["python3", "-m", "pytest", "-p", "no:cacheprovider", "-ra", *args]
            for node, _ in deselected:
                argv += ["--deselect", node]
            r = in_root(root, argv, env={"PYTHONPATH": f"/src/{run_id}", "PYTHONDONTWRITEBYTECODE": "1"},
                        cwd=f"/src/{run_id}", timeout=timeout,
                        log=root.parent / f"{spec.codename}-{label}-last.log")
        finally:
            shutil.rmtree(src, ignore_errors=True)
        out = r.stdout
        m = re.search(r"^platform linux -- Python (\S+?),", out, re.M)
        summaries = [s.group(1) for s in map(_SUMMARY.match, out.splitlines()) if s]
        rc = r.returncode
        summary = summaries[-1] if summaries else "no pytest result line"
        want = len(deselected)
        got = int(d.group(1)) if (d := re.search(r"(\d+) deselected", summary)) else 0
        if want != got and rc == 0:
            # --deselect of an unknown id is silently ignored: a stale entry must not hide.
            out += (f"\nroots: {want} tests listed in DESELECTED for {spec.codename} but pytest "
                    f"deselected {got}: an entry names a test that does not exist\n")
            rc = 1
        return RootRun(spec.codename, rc, out, label, summary, m.group(1) if m else "?", deselected, built,
                       time.monotonic() - t0)

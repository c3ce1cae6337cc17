"""packaging/: units, man pages, Debian and RPM metadata agree with the code (fast, no builds).

The builds themselves and an install into a fresh Debian root are in
tests/integration/test_package_install.py.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import stat
import subprocess
import sys

import pytest

from tests.harness.run import REPO

PKG = REPO / "packaging"
UNITS = PKG / "systemd"
MAN = PKG / "man"


def read_unit(path) -> dict:
    """section -> key -> [values] (systemd allows a key several times)."""
    out: dict = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def one(unit: dict, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] {key}= missing"
    return values[-1]


# ----------------------------------------------------------------- units

def test_socket_unit():
    u = read_unit(UNITS / "hookd.socket")
    assert one(u, "Socket", "ListenStream") == "/run/hookd/hookd.sock"
    assert one(u, "Socket", "SocketMode") == "0600"
    assert one(u, "Socket", "FileDescriptorName") == "hook"
    before = " ".join(u["Unit"]["Before"]).split()
    assert "libvirtd.service" in before and "virtqemud.service" in before
    assert one(u, "Install", "WantedBy") == "sockets.target"


def test_socket_path_agrees_with_the_config_default_and_the_shim():
    from hookd.config import SCHEMA
    u = read_unit(UNITS / "hookd.socket")
    assert one(u, "Socket", "ListenStream") == SCHEMA["hookd"]["socket"][1]
    from hookd.cli.main import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    sock_opt = next(a for a in sub.choices["install-hook"]._actions if a.dest == "socket")
    assert sock_opt.default == SCHEMA["hookd"]["socket"][1]


def test_proxy_socket_unit_agrees_with_the_config_defaults_and_the_daemon():
    """hookd-proxy.socket: what [hookd] proxy_socket/proxy_group default to, the name hookd
    looks for, hookd.service as its service; ordered before hookd.service, never required by it."""
    from hookd.config import SCHEMA
    from hookd.ipc.sdprotocol import FD_NAME_PROXY, UNIT_PROXY
    from hookd.rpc.proxy import SOCKET_MODE
    assert UNIT_PROXY == "hookd-proxy.socket"
    u = read_unit(UNITS / UNIT_PROXY)
    assert one(u, "Socket", "ListenStream") == SCHEMA["hookd"]["proxy_socket"][1] == "/run/hookd/libvirt-sock"
    assert one(u, "Socket", "SocketGroup") == SCHEMA["hookd"]["proxy_group"][1] == "libvirt"
    assert int(one(u, "Socket", "SocketMode"), 8) == SOCKET_MODE == 0o660
    assert one(u, "Socket", "SocketUser") == "root"
    assert one(u, "Socket", "FileDescriptorName") == FD_NAME_PROXY
    assert one(u, "Socket", "Service") == "hookd.service"
    assert one(u, "Socket", "RemoveOnStop") == "yes"
    assert one(u, "Install", "WantedBy") == "sockets.target"
    service = read_unit(UNITS / "hookd.service")
    assert "hookd-proxy.socket" in " ".join(service["Unit"]["After"]).split()
    for key in ("Requires", "Wants", "BindsTo"):
        assert not any("hookd-proxy" in v for v in service["Unit"].get(key, [])), key
    assert "hookd-proxy.socket" not in " ".join(service["Install"].get("Also", []))   # not enabled with hookd
    hook = read_unit(UNITS / "hookd.socket")
    from hookd.ipc.sdprotocol import FD_NAME_HOOK, UNIT_HOOK
    assert UNIT_HOOK == "hookd.socket" and one(hook, "Socket", "FileDescriptorName") == FD_NAME_HOOK


HARDENING = {
    "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateNetwork": "yes",
    "RestrictAddressFamilies": "AF_UNIX", "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
    "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes", "RestrictNamespaces": "yes", "PrivateDevices": "yes",
    "SystemCallArchitectures": "native", "CapabilityBoundingSet": "CAP_CHOWN",
}


def test_service_unit():
    u = read_unit(UNITS / "hookd.service")
    s = u["Service"]
    assert one(u, "Service", "Type") == "notify"
    assert one(u, "Service", "NotifyAccess") == "main"
    assert one(u, "Service", "WatchdogSec") == "30"
    assert one(u, "Service", "Restart") == "on-failure"
    assert one(u, "Service", "ExecStart") == "/usr/bin/hookd --config /etc/hookd/hookd.conf"
    assert one(u, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(u, "Service", "RuntimeDirectory") == "hookd"
    # hookd.socket's listening socket lives in /run/hookd: a service restart must keep it.
    assert one(u, "Service", "RuntimeDirectoryPreserve") == "yes"
    assert one(u, "Service", "StateDirectory") == "hookd"
    assert one(u, "Service", "ConfigurationDirectory") == "hookd"
    for key, value in HARDENING.items():
        assert one(u, "Service", key) == value, key
    assert s["SystemCallFilter"][0] == "@system-service"
    # Never ordered after libvirtd: libvirtd's hooks wait for hookd, not the reverse.
    for key in ("After", "Requires", "Wants", "BindsTo"):
        assert not any("libvirtd" in v or "virtqemud" in v for v in u["Unit"].get(key, [])), key
    assert "hookd.socket" in " ".join(u["Unit"]["Requires"])
    assert one(u, "Install", "WantedBy") == "multi-user.target"
    assert one(u, "Install", "Also") == "hookd.socket"
    assert "ReadWritePaths" not in s      # connect() needs no write access to the mount


def _systemd_analyze():
    tool = shutil.which("systemd-analyze")
    if tool is None:
        # A skip would look like a pass: `make test` installs it (packaging/install-build-deps).
        pytest.fail("systemd-analyze is not installed (packaging/install-build-deps installs it)", pytrace=False)
    return tool


def test_systemd_analyze_verify_is_clean(tmp_path):
    tool = _systemd_analyze()
    # verify wants ExecStart's binary to exist: point it at a stand-in, change nothing else.
    exe = tmp_path / "hookd"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    for name in ("hookd.socket", "hookd-proxy.socket", "hookd.service"):
        text = (UNITS / name).read_text()
        if name == "hookd.service":
            assert "ExecStart=/usr/bin/hookd " in text
            text = text.replace("ExecStart=/usr/bin/hookd ", f"ExecStart={exe} ")
        (tmp_path / name).write_text(text)
    r = subprocess.run([tool, "verify", "--man=no", str(tmp_path / "hookd.socket"),
                        str(tmp_path / "hookd-proxy.socket"), str(tmp_path / "hookd.service")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (r.stdout + r.stderr).strip() == "", r.stdout + r.stderr


def test_systemd_analyze_security_exposure_at_most_2_5():
    tool = _systemd_analyze()
    r = subprocess.run([tool, "security", "--offline=yes", "--no-pager", str(UNITS / "hookd.service")],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for hookd\.service: (\d+(?:\.\d+)?)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.5, r.stdout


def test_unix_connect_works_read_only_and_in_a_private_network_namespace(tmp_path):
    """What the unit's sandbox relies on: ProtectSystem=strict makes /run read-only and
    PrivateNetwork=yes gives a new network namespace; neither stops connect() to a
    filesystem AF_UNIX socket such as /run/libvirt/libvirt-sock."""
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(str(path))
        srv.listen(1)
        srv.settimeout(20)
        script = (f"mount --bind {tmp_path} {tmp_path} && mount -o remount,bind,ro {tmp_path} && "
                  f"! touch {tmp_path}/w 2>/dev/null && "
                  f"{sys.executable} -c \"import socket; s=socket.socket(socket.AF_UNIX); "
                  f"s.connect('{path}'); s.sendall(b'ok')\"")
        p = subprocess.Popen(["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        conn, _ = srv.accept()
        with conn:
            assert conn.recv(2) == b"ok"
        out, err = p.communicate(timeout=20)
        assert p.returncode == 0, err


# ----------------------------------------------------------------- man pages

def roff_text(path) -> str:
    text = path.read_text()
    text = re.sub(r"\\f[BIRP]|\\fB|\\&", "", text)
    return text.replace("\\-", "-").replace("\\(em", "--")


OPTION_RE = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def help_options(parser: argparse.ArgumentParser) -> set:
    """Every option string the parser's --help shows (and the choices of each)."""
    text = parser.format_help()
    found = set(OPTION_RE.findall(text))
    for action in parser._actions:
        if action.option_strings and action.help is not argparse.SUPPRESS:
            assert set(action.option_strings) <= found
            if action.choices and not isinstance(action, argparse._SubParsersAction):
                found.update(str(c) for c in action.choices)
    return found


def man_sections(text: str, macro: str) -> dict:
    parts = re.split(rf"^\.{macro} +\"?([^\"\n]+)\"?\n", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def hookctl_subparsers() -> dict:
    from hookd.cli.main import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, dict(sub.choices)


def test_hookd_man_page_lists_every_option_of_hookd_help():
    from hookd.daemon import build_parser
    man = roff_text(MAN / "hookd.8")
    for opt in help_options(build_parser()):
        assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", man), f"hookd.8 lacks {opt}"


def test_hookctl_man_page_has_a_section_listing_every_option_of_each_command():
    parser, subs = hookctl_subparsers()
    man = roff_text(MAN / "hookctl.8")
    for opt in help_options(parser) - {"-h", "--help"}:
        assert re.search(rf"^\.(?:B|BR|BI|TP)?\s*{re.escape(opt)}\b", man, re.M) or opt in man, \
            f"hookctl.8 lacks global option {opt}"
    sections = man_sections(man, "SS")
    for name, sp in subs.items():
        title = f"hookctl {name}"
        assert title in sections, f"hookctl.8 has no .SS \"{title}\" section"
        body = sections[title]
        for opt in help_options(sp) - {"-h", "--help"}:
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", body), \
                f"hookctl.8 section {title!r} lacks {opt}"


def test_hookd_conf_man_page_lists_every_config_key_in_its_section():
    from hookd.config import RULE_KEYS, SCHEMA
    sections = man_sections(roff_text(MAN / "hookd.conf.5"), "SH")
    for section, keys in SCHEMA.items():
        body = sections.get(f"[{section}]")
        assert body is not None, f"hookd.conf.5 has no .SH \"[{section}]\""
        for key in keys:
            assert re.search(rf"^\.(?:B|BR|BI)\s+{re.escape(key)}\b", body, re.M), \
                f"hookd.conf.5 [{section}] lacks {key}"
    body = sections.get("[rule:NAME]")
    assert body is not None
    for key in RULE_KEYS:
        assert re.search(rf"^\.(?:B|BR|BI)\s+{re.escape(key)}\b", body, re.M), f"[rule:NAME] lacks {key}"


@pytest.mark.parametrize("page", ["hookd.8", "hookctl.8", "hookd.conf.5"])
def test_man_pages_render_without_warnings(page):
    assert shutil.which("man") is not None, "man-db is not installed (packaging/install-build-deps installs it)"
    r = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", str(MAN / page)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"})
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    assert "SYNOPSIS" in r.stdout


# ----------------------------------------------------------------- versions and metadata

def test_version_agrees_everywhere():
    from hookd import __version__
    changelog = (PKG / "debian" / "changelog").read_text().splitlines()[0]
    m = re.match(r"hookd \(([^)]+)\) ", changelog)
    assert m, changelog
    upstream = m.group(1).rsplit("-", 1)[0]
    assert upstream == __version__
    spec = (PKG / "rpm" / "hookd.spec").read_text()
    assert re.search(r"^Version:\s+(\S+)$", spec, re.M).group(1) == __version__
    assert re.search(rf"^\* .* - {re.escape(__version__)}-\d+$", spec, re.M), "spec %changelog entry"


def test_debian_metadata():
    d = PKG / "debian"
    control = (d / "control").read_text()
    assert "debhelper-compat (= 13)" in control
    assert "dh-python" in control
    depends = re.search(r"^Depends:(.*?)(?=^\S)", control, re.M | re.S).group(1)
    for dep in ("python3-libvirt", "python3-lxml", "python3-systemd"):
        assert dep in depends
    # hookd watches its config with libc's inotify (hookd.confwatch): RHEL 9 has no pyinotify.
    assert "inotify" not in depends
    rules = (d / "rules").read_text()
    assert os.access(d / "rules", os.X_OK)
    assert "--buildsystem=pybuild" in rules
    assert "install-hook --binary hooks/hookd-shim $(PKG)/etc/libvirt/hooks/qemu.d" in rules
    assert "ln -sf /usr/lib/hookd/hookd-shim $(PKG)/etc/libvirt/hooks/qemu.d/50-hookd" in rules
    assert "hardening=+all" in rules
    for unit in ("hookd.socket", "hookd.service", "hookd-proxy.socket"):
        assert f"packaging/systemd/{unit} $(PKG)$(UNITDIR)/{unit}" in rules, unit
    assert "UNITDIR := $(shell pkg-config --variable=systemdsystemunitdir systemd)" in rules
    # The proxy socket: not enabled or started by the package, not stopped by an upgrade, but
    # stopped on remove (debhelper's --no-start leaves that out of its prerm snippet).
    assert "dh_installsystemd --no-enable --no-start --no-stop-on-upgrade hookd-proxy.socket" in rules
    prerm = (d / "hookd.prerm").read_text()
    assert "#DEBHELPER#" in prerm and prerm.startswith("#!/bin/sh\nset -e\n")
    assert re.search(r'if \[ "\$1" = remove \].*\n\s+deb-systemd-invoke stop hookd-proxy\.socket', prerm), prerm
    assert re.search(r"^Architecture: any$", control, re.M) and "${shlibs:Depends}" in control
    assert "rm_conffile /etc/libvirt/hooks/qemu.d/50-hookd 0.2.0~" in (d / "hookd.maintscript").read_text()
    assert "etc/libvirt/hooks/qemu " not in rules and not rules.rstrip().endswith("hooks/qemu")
    postinst = (d / "hookd.postinst").read_text()
    assert "try-reload-or-restart" in postinst and "#DEBHELPER#" in postinst
    postrm = (d / "hookd.postrm").read_text()
    purge = re.search(r"purge\)(.*?);;", postrm, re.S).group(1)
    assert "rm -rf /var/lib/hookd" in purge
    assert postrm.count("/var/lib/hookd") == 1, "only purge may remove the state"
    assert (d / "source" / "format").read_text().strip() == "3.0 (quilt)"
    for page in ("hookd.8", "hookctl.8", "hookd.conf.5"):
        assert f"packaging/man/{page}" in (d / "hookd.manpages").read_text()


def test_rpm_spec_files_match_the_deb():
    spec = (PKG / "rpm" / "hookd.spec").read_text()
    for macro in ("%systemd_post", "%systemd_preun", "%systemd_postun_with_restart"):
        assert macro in spec
    assert not re.search(r"^BuildArch:", spec, re.M), "the compiled shim makes the rpm arch-specific"
    for path in ("%{_bindir}/hookd", "%{_bindir}/hookctl", "%{_datadir}/hookd/", "%{_libexecdir}/hookd/",
                 "%config(noreplace) %{_sysconfdir}/hookd/hookd.conf",
                 "%config(noreplace) %{_sysconfdir}/libvirt/hooks/qemu.d/50-hookd.conf",
                 "%{_sysconfdir}/libvirt/hooks/qemu.d/50-hookd\n", "%{_unitdir}/hookd.service",
                 "%{_unitdir}/hookd.socket", "%{_unitdir}/hookd-proxy.socket",
                 "%{_mandir}/man8/hookd.8", "%{_mandir}/man8/hookctl.8",
                 "%{_mandir}/man5/hookd.conf.5"):
        assert path in spec, path
    assert "try-reload-or-restart" in spec
    assert "install -D -m 0644 packaging/systemd/hookd-proxy.socket %{buildroot}%{_unitdir}/hookd-proxy.socket" in spec
    assert "disable hookd-proxy.socket" in spec                    # the preset leaves it off
    assert re.search(r"^%systemd_preun .*hookd-proxy\.socket", spec, re.M)       # stopped on erase
    assert not re.search(r"^%systemd_postun_with_restart .*hookd-proxy", spec, re.M)   # held on upgrade
    for dep in ("python3-libvirt", "python3-lxml", "python3-systemd"):
        assert re.search(rf"^Requires:\s+{dep}$", spec, re.M)
    # RHEL 9/10: the target's Python path, never Debian's; pyproject-rpm-macros (CRB) named.
    assert "%{python3_sitelib}/hookd/" in spec and "dist-packages" not in spec.replace(
        "/usr/lib/python3/dist-packages), as", "")
    assert "DEB_PYTHON_INSTALL_LAYOUT" not in spec
    assert re.search(r"^BuildRequires:\s+pyproject-rpm-macros$", spec, re.M)
    assert sorted(re.findall(r"^Requires:\s+(\S+)$", spec, re.M)) == [
        "python3-libvirt", "python3-lxml", "python3-systemd", "util-linux"]   # evidence: packaging/README.md


def test_build_rpm_targets_rhel_python_paths():
    build = (PKG / "build-rpm").read_text()
    for line in ("el9) target_python=3.9 ;;", "el10) target_python=3.12 ;;",
                 'echo "%python3_sitelib /usr/lib/python$target_python/site-packages"',
                 "echo '%_libexecdir /usr/libexec'", 'echo "%dist .$dist"'):
        assert line in build, line
    r = subprocess.run([str(PKG / "build-rpm"), "--dist", "el8"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "el9 or el10" in r.stderr, r.stderr


@pytest.mark.parametrize("script", ["build-deb", "build-rpm", "check-install", "check-rpm", "install-build-deps"])
def test_scripts_are_executable_posix_sh(script):
    path = PKG / script
    assert os.access(path, os.X_OK)
    assert path.read_text().startswith("#!/bin/sh\n")
    r = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", "-S", "warning", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("script", ["build-deb", "build-rpm", "check-install", "check-rpm"])
def test_scripts_refuse_unknown_arguments_in_one_line(script):
    r = subprocess.run([str(PKG / script), "--bogus"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "unknown argument" in r.stderr


def test_install_hook_builds_and_installs_the_compiled_shim(tmp_path):
    """A source checkout or pip install (no packaged binary): install-hook builds the shim with cc."""
    from tests.harness.run import run_hookctl
    r = run_hookctl("install-hook", tmp_path)
    assert r.returncode == 0, r.stderr
    shim = tmp_path / "50-hookd"
    assert os.access(shim, os.X_OK) and shim.read_bytes().startswith(b"\x7fELF")
    assert (tmp_path / "50-hookd.conf").read_text().splitlines()[2:] == [
        "socket = /run/hookd/hookd.sock", "timeout = 5", "on_unreachable = allow"]
    assert stat.S_IMODE(os.stat(tmp_path / "50-hookd.conf").st_mode) == 0o644
    out = subprocess.run([str(shim), "--version"], capture_output=True, text=True, timeout=10)
    assert out.stdout.startswith("hookd's libvirt qemu hook")


def test_install_hook_without_a_compiler_says_so_in_one_line(tmp_path):
    from tests.harness.run import hookd_env, run_hookctl
    env = hookd_env(CC=str(tmp_path / "no-such-cc"), PATH=str(tmp_path))
    r = run_hookctl("install-hook", tmp_path, env=env)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and "no C compiler (cc)" in err, err
    assert not (tmp_path / "50-hookd").exists() and not (tmp_path / "50-hookd.conf").exists()


@pytest.mark.parametrize("args,fragment", [
    (["--socket", "relative"], "--socket must be an absolute path"),
    (["--socket", "/" + "s" * 110], "under 108 bytes"),
    (["--timeout", "0"], "--timeout must be between"),
    (["--name", "50-hookd.conf"], "--name must be a plain file name"),
    (["--binary", "/etc/hostname"], "is not a compiled shim"),
    (["--binary", "/nonexistent"], "cannot read the compiled shim"),
])
def test_install_hook_bad_arguments_write_nothing(tmp_path, args, fragment):
    from tests.harness.run import run_hookctl
    r = run_hookctl("install-hook", *args, tmp_path)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and fragment in err, err
    assert list(tmp_path.iterdir()) == []


def test_shim_settings_parser_matches_the_writer():
    from hookd.cli.shim import parse_shim_settings, render_shim_settings
    text = render_shim_settings(socket_path="/run/a b.sock", timeout=0.25, on_unreachable="deny")
    assert parse_shim_settings(text) == {"socket": "/run/a b.sock", "timeout": 0.25, "on_unreachable": "deny"}

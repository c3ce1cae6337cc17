"""hookd/cli/shim.py (`hookctl install-hook`) called directly: the shim settings file
written and read back (the parser follows hooks/hookd-shim.c's rules), the refusals of
cmd_install_hook, and the atomic install of a given --binary (a stand-in with an ELF
header: nothing is compiled here). (Not test_shim.py: that basename is the C shim's
tests/test_shim.py.) Building the real shim with cc, and the whole command as an
operator runs it, are in tests/test_packaging.py (test_install_hook_*)."""

from __future__ import annotations

import argparse
import os
import stat

import pytest

from hookd.cli.common import CliError
from hookd.cli.shim import SHIM_DEFAULTS, SHIM_NAME, cmd_install_hook, parse_shim_settings, render_shim_settings

FAKE_ELF = b"\x7fELF\x02\x01\x01" + b"\0" * 57


# ------------------------------------------------------------------ settings
def test_settings_round_trip_and_defaults():
    text = render_shim_settings(socket_path="/run/hookd/hookd.sock", timeout=2.5, on_unreachable="deny")
    assert text.splitlines()[2:] == ["socket = /run/hookd/hookd.sock", "timeout = 2.5", "on_unreachable = deny"]
    assert parse_shim_settings(text) == {"socket": "/run/hookd/hookd.sock", "timeout": 2.5, "on_unreachable": "deny"}
    assert parse_shim_settings("") == SHIM_DEFAULTS
    assert parse_shim_settings("# only a comment\r\n\n  timeout=7 \r\n") == {**SHIM_DEFAULTS, "timeout": 7.0}


@pytest.mark.parametrize("kw,fragment", [
    ({"socket_path": "/run/x\n.sock"}, "--socket must be an absolute path"),
    ({"socket_path": "/run/x#.sock"}, "--socket must be an absolute path"),
    ({"socket_path": "/run/x.sock "}, "without surrounding blanks"),
    ({"socket_path": "/" + "é" * 54}, "under 108 bytes"),          # 109 bytes in UTF-8
    ({"timeout": 300.5}, "--timeout must be between 0.1 and 300 seconds, got 300.5"),
    ({"timeout": 0.05}, "--timeout must be between"),
    ({"on_unreachable": "maybe"}, "--on-unreachable must be allow or deny, got 'maybe'"),
])
def test_render_refuses_what_the_shim_could_not_read(kw, fragment):
    args = {"socket_path": "/run/hookd/hookd.sock", "timeout": 5.0, "on_unreachable": "allow", **kw}
    with pytest.raises(CliError) as err:
        render_shim_settings(**args)
    assert fragment in str(err.value)


@pytest.mark.parametrize("text,fragment", [
    ("socket = /a\0", "hold a NUL byte"),
    ("#" * 4097, "over 4096 bytes"),
    ("timeout 5", "line 1: expected key = value"),
    ("\n\ncolour = blue", "line 3: unknown key"),
    ("socket = run/hookd.sock", "line 1: socket must be an absolute path"),
    ("socket = /" + "s" * 107, "at most 107 bytes"),
    ("timeout = soon", "timeout must be 0.1 to 300 seconds"),
    ("timeout = 301", "timeout must be 0.1 to 300 seconds"),
    ("on_unreachable = Allow", "on_unreachable must be allow or deny"),
])
def test_parse_refuses_what_the_shim_refuses(text, fragment):
    with pytest.raises(CliError) as err:
        parse_shim_settings(text, source="/etc/libvirt/hooks/qemu.d/50-hookd.conf")
    assert str(err.value).startswith("/etc/libvirt/hooks/qemu.d/50-hookd.conf") and fragment in str(err.value)


# ------------------------------------------------------------------ install
def install_args(directory, **kw):
    args = {"dir": str(directory), "name": SHIM_NAME, "socket": "/run/hookd/hookd.sock", "timeout": 5.0,
            "on_unreachable": "allow", "binary": None, **kw}
    return argparse.Namespace(**args)


@pytest.fixture
def binary(tmp_path):
    path = tmp_path / "hookd-shim"
    path.write_bytes(FAKE_ELF)
    return path


def test_install_with_a_given_binary_writes_both_files_atomically(tmp_path, binary, capsys):
    hooks = tmp_path / "qemu.d"
    hooks.mkdir()
    (hooks / SHIM_NAME).write_bytes(b"old hook")            # replaced, not appended to
    assert cmd_install_hook(install_args(hooks, binary=str(binary), timeout=1.5, on_unreachable="deny")) == 0
    shim, conf = hooks / SHIM_NAME, hooks / f"{SHIM_NAME}.conf"
    assert shim.read_bytes() == FAKE_ELF and stat.S_IMODE(os.stat(shim).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o644
    assert parse_shim_settings(conf.read_text()) == {"socket": "/run/hookd/hookd.sock", "timeout": 1.5,
                                                    "on_unreachable": "deny"}
    assert sorted(os.listdir(hooks)) == [SHIM_NAME, f"{SHIM_NAME}.conf"]     # no temporary left
    out = capsys.readouterr().out
    assert f"installed {shim} and {shim}.conf (socket /run/hookd/hookd.sock, timeout 1.5s, on_unreachable deny)" in out


@pytest.mark.parametrize("kw,fragment", [
    ({"name": "qemu", "dir_name": "hooks"}, "refusing to write /etc/libvirt/hooks/qemu"),
    ({"name": "sub/50-hookd"}, "--name must be a plain file name"),
    ({"dir_name": None}, "is not a directory"),
    ({"binary": "FAKE_TEXT"}, "is not a compiled shim (no ELF header)"),
])
def test_install_refusals_write_nothing(tmp_path, kw, fragment):
    dir_name = kw.pop("dir_name", "qemu.d")
    hooks = tmp_path / (dir_name or "missing")
    if dir_name:
        hooks.mkdir()
    if kw.get("binary") == "FAKE_TEXT":
        text = tmp_path / "script.sh"
        text.write_text("#!/bin/sh\n")
        kw["binary"] = str(text)
    with pytest.raises(CliError) as err:
        cmd_install_hook(install_args(hooks, **kw))
    assert fragment in str(err.value)
    assert not hooks.exists() or os.listdir(hooks) == []


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path, binary):
    hooks = tmp_path / "qemu.d"
    hooks.mkdir()
    (hooks / SHIM_NAME).mkdir()                   # the hook's name is taken by a directory
    with pytest.raises(CliError, match=f"cannot write {hooks / SHIM_NAME}: "):
        cmd_install_hook(install_args(hooks, binary=str(binary)))
    # The settings went first (the hook never runs without them); no temporary file is left.
    assert sorted(os.listdir(hooks)) == [SHIM_NAME, f"{SHIM_NAME}.conf"]
    assert (hooks / SHIM_NAME).is_dir()

"""hookd.rpc.upstream: the proxy's libvirt socket, `auto` as libvirt's client chooses it;
and doctor's libvirt-socket check on sockets this test creates (not the host's /run)."""

from __future__ import annotations

import socket

import pytest

from hookd.cli import doctor

from hookd.rpc import upstream
from hookd.config import ConfigError, load_config


def exists_only(*paths):
    return lambda p: p in paths


def test_explicit_path_wins():
    up = upstream.resolve("/srv/libvirt-sock", exists_only(upstream.MODULAR_SOCKET))
    assert (up.path, up.daemon, up.found) == ("/srv/libvirt-sock", "configured", True)


def test_auto_prefers_virtqemud_then_libvirtd():
    both = upstream.resolve("auto", exists_only(upstream.MODULAR_SOCKET, upstream.MONOLITHIC_SOCKET))
    assert (both.path, both.daemon) == (upstream.MODULAR_SOCKET, "virtqemud")
    mono = upstream.resolve("auto", exists_only(upstream.MONOLITHIC_SOCKET))
    assert (mono.path, mono.daemon) == (upstream.MONOLITHIC_SOCKET, "libvirtd")
    none = upstream.resolve("auto", exists_only())
    assert not none.found and upstream.MODULAR_SOCKET in none.why and upstream.MONOLITHIC_SOCKET in none.why


def test_config_default_is_auto_and_bad_values_are_one_line(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text("")
    assert load_config(str(conf)).daemon.libvirt_socket == "auto"
    for bad, fragment in (("", "expected auto or an absolute path"), ("run/sock", "absolute path")):
        conf.write_text(f"[hookd]\nlibvirt_socket = {bad}\n")
        with pytest.raises(ConfigError, match=fragment):
            load_config(str(conf))


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """Listening sockets standing in for /run/libvirt/{virtqemud,libvirt}-sock."""
    modular, mono = tmp_path / "virtqemud-sock", tmp_path / "libvirt-sock"
    monkeypatch.setattr(upstream, "MODULAR_SOCKET", str(modular))
    monkeypatch.setattr(upstream, "MONOLITHIC_SOCKET", str(mono))
    made = []

    def listen(path):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.listen(4)
        made.append(s)
    yield modular, mono, listen
    for s in made:
        s.close()


def test_doctor_names_the_daemon_and_warns_on_the_extra_hop(fake_run, tmp_path):
    modular, mono, listen = fake_run
    conf = tmp_path / "c.conf"
    conf.write_text("")
    cfg = load_config(str(conf))
    check = doctor.check_libvirt_socket(cfg)
    assert check.status == doctor.FAIL and str(modular) in check.finding and str(mono) in check.finding
    listen(mono)
    check = doctor.check_libvirt_socket(cfg)
    assert check.status == doctor.OK and "qemu hooks run in libvirtd" in check.finding
    listen(modular)
    check = doctor.check_libvirt_socket(cfg)
    assert check.status == doctor.OK and str(modular) in check.finding and "run in virtqemud" in check.finding
    conf.write_text(f"[hookd]\nlibvirt_socket = {mono}\n")       # a modular host, pinned to virtproxyd
    check = doctor.check_libvirt_socket(load_config(str(conf)))
    assert check.status == doctor.WARN and "virtproxyd" in check.finding and "auto" in check.fix

"""hookd.cli.doctor.probe: doctor's libvirt probe, both halves.

The child's report (probe() against a fake libvirt module: read-only open, one line per
domain, errors as data), the parent's reading of those lines (take, take_lines), and
the real child process: `python3 -m hookd.cli.doctor.probe URI` on an unreachable URI,
and run() against a child that hangs or dies early.
"""

import json
import os
import subprocess
import sys
import time
import types

import pytest

from hookd.cli.doctor import probe
from tests.harness.run import REPO

UNREACHABLE = "qemu+unix:///system?socket=/nonexistent"
ROOT = str(REPO)


# ------------------------------------------------------------ output lines

def test_encode_is_one_json_line_per_call():
    line = probe.encode(t="domain", name="vm1", live="<domain>\n</domain>", active=True)
    assert line.endswith("\n") and line.count("\n") == 1      # the XML's newline is escaped
    assert json.loads(line) == {"t": "domain", "name": "vm1", "live": "<domain>\n</domain>", "active": True}


def test_take_lines_folds_a_whole_report():
    res = probe.ProbeResult(domains=[])
    lines = [probe.encode(t="version", lib=9_000_000, hv=8_002_001), probe.encode(t="count", n=2),
             probe.encode(t="domain", name="a", uuid="u1", active=True, live="<x/>", inactive=None),
             "not json at all\n",
             probe.encode(t="domain", name="b", uuid="u2", active=False, error="busy")]
    rest, done = probe.take_lines(res, "".join(lines).encode())
    assert (rest, done) == (b"", False)
    assert (res.lib_version, res.hv_version, res.expected) == (9_000_000, 8_002_001, 2)
    assert [d["name"] for d in res.domains] == ["a", "b"]
    assert "t" not in res.domains[0] and res.domains[1]["error"] == "busy"
    rest, done = probe.take_lines(res, probe.encode(t="done").encode() + b'{"t": "cou')
    assert done is True and rest == b'{"t": "cou'            # a half line waits for the rest
    assert res.error is None


@pytest.mark.parametrize("stage,message,expected", [
    ("open", "Failed to connect socket to '/x': No such file or directory",
     "Failed to connect socket to '/x': No such file or directory"),
    ("import", "No module named 'libvirt'", "libvirt-python is not installed (No module named 'libvirt')"),
])
def test_an_error_line_ends_the_report(stage, message, expected):
    res = probe.ProbeResult(domains=[])
    assert probe.take(res, {"t": "error", "stage": stage, "message": message}) is True
    assert res.error == expected and res.lib_version is None


def test_unknown_lines_are_ignored():
    res = probe.ProbeResult(domains=[])
    assert probe.take(res, {"t": "later", "x": 1}) is False
    assert probe.take(res, {"no": "type"}) is False
    assert res == probe.ProbeResult(domains=[])


# ------------------------------------------------------ the child, in-process

class FakeError(Exception):
    pass


class FakeDomain:
    def __init__(self, name, active=True, persistent=True, fail=False):
        self._name, self._active, self._persistent, self._fail = name, active, persistent, fail

    def name(self):
        return self._name

    def UUIDString(self):
        return f"uuid-{self._name}"

    def isActive(self):
        return int(self._active)

    def isPersistent(self):
        return int(self._persistent)

    def XMLDesc(self, flags):
        if self._fail:
            raise FakeError(" domain is busy \n")
        return f"<{self._name} flags='{flags}'/>"


def fake_libvirt(domains, version_fails=False):
    mod = types.ModuleType("libvirt")
    mod.libvirtError = FakeError
    mod.VIR_DOMAIN_XML_INACTIVE = 2
    mod.opened = []
    mod.registerErrorHandler = lambda *a: None

    class Conn:
        def getVersion(self):
            if version_fails:
                raise FakeError("no hypervisor")
            return 8_002_000

        def getLibVersion(self):
            return 9_000_000

        def listAllDomains(self, flags):
            return domains

    def open_read_only(uri):
        mod.opened.append(uri)
        return Conn()

    def open_read_write(uri):
        raise AssertionError("the probe must open libvirt read-only")

    mod.openReadOnly = open_read_only
    mod.open = open_read_write
    return mod


def collect(uri):
    lines = []
    probe.probe(uri, lambda **kw: lines.append(json.loads(probe.encode(**kw))))
    return lines


def test_probe_reports_every_domain_read_only(monkeypatch):
    lv = fake_libvirt([FakeDomain("run"), FakeDomain("off", active=False),
                       FakeDomain("transient", persistent=False), FakeDomain("stuck", fail=True)])
    monkeypatch.setitem(sys.modules, "libvirt", lv)
    lines = collect("qemu:///test")
    assert lv.opened == ["qemu:///test"]
    assert lines[0] == {"t": "version", "lib": 9_000_000, "hv": 8_002_000}
    assert lines[1] == {"t": "count", "n": 4}
    doms = {d["name"]: d for d in lines[2:-1]}
    assert doms["run"] == {"t": "domain", "name": "run", "uuid": "uuid-run", "active": True,
                           "live": "<run flags='0'/>", "inactive": "<run flags='2'/>"}
    assert doms["off"]["live"] is None and doms["off"]["inactive"] == "<off flags='2'/>"
    assert doms["transient"]["inactive"] is None
    assert doms["stuck"]["error"] == "domain is busy"
    assert lines[-1] == {"t": "done"}


def test_probe_survives_a_hypervisor_version_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", fake_libvirt([], version_fails=True))
    assert collect("qemu:///test") == [{"t": "version", "lib": 9_000_000, "hv": 0},
                                       {"t": "count", "n": 0}, {"t": "done"}]


def test_probe_reports_a_failed_open_as_data(monkeypatch):
    lv = fake_libvirt([])

    def refuse(uri):
        raise FakeError("Failed to connect socket to '/nowhere': No such file or directory\n")
    lv.openReadOnly = refuse
    monkeypatch.setitem(sys.modules, "libvirt", lv)
    assert collect("qemu:///x") == [{"t": "error", "stage": "open",
                                     "message": "Failed to connect socket to '/nowhere': No such file or directory"}]


def test_probe_without_libvirt_python(monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", None)      # `import libvirt` raises ImportError
    [line] = collect("qemu:///x")
    assert line["t"] == "error" and line["stage"] == "import" and "libvirt" in line["message"]


def test_main_wants_exactly_one_uri(capsys):
    assert probe.main([]) == 2
    assert probe.main(["a", "b"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage: python3 -m hookd.cli.doctor.probe URI" in err


# --------------------------------------------------------- the real child

def child_env():
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONDONTWRITEBYTECODE="1")
    return env


def test_module_run_on_an_unreachable_uri_reports_the_error_without_a_traceback(tmp_path):
    pytest.importorskip("libvirt")
    res = subprocess.run([sys.executable, "-m", "hookd.cli.doctor.probe", UNREACHABLE], cwd=tmp_path,
                         env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert "Traceback" not in res.stderr and "Warning" not in res.stderr, res.stderr
    [line] = res.stdout.splitlines()
    msg = json.loads(line)
    assert msg["t"] == "error" and msg["stage"] == "open" and "/nonexistent" in msg["message"]
    assert res.returncode == 0          # the error is the report; doctor reads it, not the status
    parsed = probe.ProbeResult(domains=[])
    assert probe.take_lines(parsed, res.stdout.encode()) == (b"", True)
    assert parsed.lib_version is None and "/nonexistent" in parsed.error


def test_run_reports_an_unreachable_uri(tmp_path, monkeypatch):
    pytest.importorskip("libvirt")
    # Neither the working directory nor PYTHONPATH leads to hookd: run() must still start
    # a child that imports this same hookd.
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(tmp_path)
    res = probe.run(UNREACHABLE, 20)
    assert res.timed_out is False and res.lib_version is None and res.domains == []
    assert "/nonexistent" in (res.error or ""), res.error


def fake_python(tmp_path, body):
    exe = tmp_path / "python3"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(0o755)
    return str(exe)


def test_run_kills_a_child_that_hangs_at_the_deadline(tmp_path, monkeypatch):
    # One line, then silence: what a libvirtd stuck in a domain's hook looks like.
    monkeypatch.setattr(probe.sys, "executable", fake_python(
        tmp_path, 'echo \'{"t": "version", "lib": 9000000, "hv": 0}\'; exec sleep 60'))
    start = time.monotonic()
    res = probe.run(UNREACHABLE, 0.7)
    took = time.monotonic() - start
    assert res.timed_out is True and res.lib_version == 9_000_000 and res.error is None
    assert 0.6 < took < 10, took


def test_run_reports_a_child_that_dies_before_finishing(tmp_path, monkeypatch):
    monkeypatch.setattr(probe.sys, "executable", fake_python(
        tmp_path, 'echo \'{"t": "count", "n": 3}\'; exit 3'))
    res = probe.run(UNREACHABLE, 10)
    assert res.expected == 3 and res.timed_out is False
    assert res.error == "the libvirt probe exited with status 3 before finishing"


def test_run_reports_a_python_that_cannot_start(tmp_path, monkeypatch):
    missing = str(tmp_path / "no-such-python")
    monkeypatch.setattr(probe.sys, "executable", missing)
    res = probe.run(UNREACHABLE, 5)
    assert res.error == f"cannot start {missing}: No such file or directory"

"""The daemon's metrics end to end without libvirt: a real hookd process, real hook calls
on its socket (the shim's wire format), its textfile read back with prometheus_client's
parser; reloads (applied and rejected), a bad [metrics] value at start, a textfile
directory that cannot be written (hooks still answered), and the clean stop's hookd_up 0.
tests/integration/test_metrics.py adds libvirt, the proxy and a booting guest."""

from __future__ import annotations

import signal
import uuid as uuidlib

import pytest

from hookd.metrics.textfile import TEXTFILE_NAME
from tests.harness.domains import domain
from tests.harness.hookcall import ask_prepare
from tests.harness.hookd_proc import HookdProcess
from tests.harness.promtool import delta, sample, samples
from tests.harness.run import hookd_env, REPO
from tests.harness.waiting import wait_for


@pytest.fixture
def textdir(tmp_path):
    d = tmp_path / "textfile"
    d.mkdir()
    return d


@pytest.fixture
def daemon(tmp_path, textdir):
    d = HookdProcess(tmp_path, config_extra=f"[metrics]\ntextfile_dir = {textdir}\ninterval = 1\n")
    yield d
    d.stop()


def written_after(path, t: float) -> dict:
    """The next snapshot written after Unix time t (hookd stamps every write)."""
    def fresh():
        try:
            snap = samples(path)
        except (FileNotFoundError, ValueError):
            return None
        return snap if sample(snap, "hookd_metrics_last_write_timestamp_seconds") > t else None
    return wait_for(fresh, 15, f"a metrics write after {t}")


def test_hook_calls_are_counted_by_operation_result_and_latency(daemon, textdir):
    daemon.start()
    path = textdir / TEXTFILE_NAME
    before = written_after(path, 0)
    assert sample(before, "hookd_up") == 1
    assert sample(before, "hookd_build_info", version=__import__("hookd").__version__) == 1
    uid = str(uuidlib.uuid4())
    ok = domain(uuid=uid, serial=uid)                       # compliant under mode unique
    bad = domain(uuid=str(uuidlib.uuid4()), serial="HOST-SERIAL")
    for _ in range(3):
        assert ask_prepare(daemon.socket, "instance-1", ok).action == "allow"
    assert ask_prepare(daemon.socket, "instance-2", bad).action == "allow"   # on_mismatch = warn
    assert ask_prepare(daemon.socket, "instance-3", b"<domain", op="migrate").action == "allow"
    import time
    after = written_after(path, time.time())
    assert delta(before, after, "hookd_hook_calls_total", operation="prepare", result="allow") == 3
    assert delta(before, after, "hookd_hook_calls_total", operation="prepare", result="warn") == 1
    assert delta(before, after, "hookd_hook_calls_total", operation="migrate", result="error") == 1
    assert delta(before, after, "hookd_decisions_total", operation="prepare", verdict="compliant") == 3
    assert delta(before, after, "hookd_decisions_total", operation="prepare", verdict="rewrite") == 1
    assert delta(before, after, "hookd_decisions_total", operation="migrate", verdict="error") == 1
    assert delta(before, after, "hookd_hook_call_duration_seconds_count", operation="prepare") == 4
    assert 0 < sample(after, "hookd_hook_call_duration_seconds_sum", operation="prepare") < 4
    assert delta(before, after, "hookd_audit_rows_total") >= 5


def test_reloads_applied_and_rejected_and_the_clean_stop(daemon, textdir):
    import time
    daemon.start()
    path = textdir / TEXTFILE_NAME
    good = daemon.config.read_text()
    daemon.config.write_text(good + "[policy]\nmode = host\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_notification("READY=1")
    daemon.config.write_text(good + "[metrics]\ninterval = soon\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_notification("READY=1")
    snap = written_after(path, time.time())
    assert sample(snap, "hookd_config_reloads_total", result="applied") == 1
    assert sample(snap, "hookd_config_reloads_total", result="rejected") == 1
    assert sample(snap, "hookd_config_last_reload_successful") == 0
    assert "expected a number, got 'soon'" in daemon.log_text()
    assert daemon.stop() == 0
    assert sample(samples(path), "hookd_up") == 0


def test_a_reload_can_turn_the_textfile_on(tmp_path, textdir):
    d = HookdProcess(tmp_path)
    try:
        d.start()
        assert not (textdir / TEXTFILE_NAME).exists()
        d.config.write_text(d.config.read_text() + f"[metrics]\ntextfile_dir = {textdir}\n")
        d.signal(signal.SIGHUP)
        d.wait_notification("READY=1")
        snap = written_after(textdir / TEXTFILE_NAME, 0)
        assert sample(snap, "hookd_config_reloads_total", result="applied") == 1
    finally:
        d.stop()


@pytest.mark.parametrize("text,message", [
    ("[metrics]\ntextfile_dir = relative/dir\n", "expected an absolute path, got 'relative/dir'"),
    ("[metrics]\ninterval = 0\n", "expected a number from 1 to 3600, got '0'"),
    ("[metrics]\nport = 9100\n", "unknown key 'port' in [metrics]"),
])
def test_a_bad_metrics_value_at_start_is_one_line_and_exit_1(tmp_path, text, message):
    import subprocess
    import sys
    conf = tmp_path / "hookd.conf"
    conf.write_text(text)
    r = subprocess.run([sys.executable, "-m", "hookd.daemon", "--config", str(conf)], capture_output=True,
                       text=True, timeout=30, env=hookd_env(), cwd=str(REPO))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_an_unwritable_textfile_dir_costs_one_log_line_and_no_hook_call(tmp_path):
    missing = tmp_path / "no-such-dir"
    d = HookdProcess(tmp_path, config_extra=f"[metrics]\ntextfile_dir = {missing}\ninterval = 1\n")
    try:
        d.start()
        uid = str(uuidlib.uuid4())
        for _ in range(3):
            assert ask_prepare(d.socket, "instance-1", domain(uuid=uid, serial=uid)).action == "allow"
        wait_for(lambda: "cannot write metrics to" in d.log_text(), 10, "the write error")
        # Later writes (every second) fail too, and say nothing more.
        missing.mkdir()
        snap = written_after(missing / TEXTFILE_NAME, 0)
        assert sample(snap, "hookd_metrics_write_errors_total") >= 1
        assert sample(snap, "hookd_hook_calls_total", operation="prepare", result="allow") == 3
        assert d.log_text().count("cannot write metrics to") == 1
        assert "written to" in d.log_text() and "again" in d.log_text()
    finally:
        d.stop()


def _get(path, request=b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", timeout=10,
         half_close=False) -> bytes:
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(request)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_the_metrics_socket_answers_http_and_is_gone_after_stop(tmp_path):
    import grp
    import os
    import stat
    from prometheus_client.parser import text_string_to_metric_families
    sock = tmp_path / "m" / "metrics.sock"
    d = HookdProcess(tmp_path, config_extra=f"[metrics]\nsocket = {sock}\n")
    d.start()
    try:
        st = os.stat(sock)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == grp.getgrnam("libvirt").gr_gid
        uid = str(uuidlib.uuid4())
        ask_prepare(d.socket, "instance-1", domain(uuid=uid, serial=uid))
        reply = _get(sock)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK\r\n") and b"Content-Type: text/plain; version=0.0.4" in head
        assert f"Content-Length: {len(body)}".encode() in head
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        calls = {tuple(sorted(s.labels.items())): s.value for s in fams["hookd_hook_calls"].samples
                 if s.name == "hookd_hook_calls_total"}
        assert calls[(("operation", "prepare"), ("result", "allow"))] == 1
        assert _get(sock, b"POST / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 405 ")
        assert _get(sock, b"not http at all", half_close=True) == b""       # no answer, closed
        assert d.stop() == 0
        assert not sock.exists()
    finally:
        d.stop()


def test_a_pin_made_on_first_sight_is_counted_and_the_pins_recounted(tmp_path, textdir):
    import time
    d = HookdProcess(tmp_path, config_extra=f"[policy]\nmode = preserve\n[metrics]\ntextfile_dir = {textdir}\n")
    try:
        d.start()
        path = textdir / TEXTFILE_NAME
        before = written_after(path, 0)
        assert sample(before, "hookd_pins") == 0
        for n in range(2):
            uid = str(uuidlib.uuid4())
            assert ask_prepare(d.socket, f"instance-{n}", domain(uuid=uid, serial=f"KEEP-{n}")).action == "allow"
        after = written_after(path, time.time())
        assert delta(before, after, "hookd_pins_made_total") == 2
        assert sample(after, "hookd_pins") == 2          # recounted at once, not a minute later
        assert sample(after, "hookd_decisions_total", operation="prepare", verdict="compliant") == 2
    finally:
        d.stop()

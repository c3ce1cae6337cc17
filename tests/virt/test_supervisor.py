"""hookd.virt.supervisor without a worker process: describe_exit, and the supervisor's
handler table fed the worker's messages through a real hookd.ipc.channel (an in-memory
StreamReader, a writer that collects what the supervisor answers), into a real AuditLog
in tmp_path, through the boot ledger.

Nothing here spawns `python3 -m hookd.virt.worker` (it needs libvirt): where start()
is exercised, subprocess.Popen is replaced by one that refuses, so only the daemon's
side runs. A real worker is run by tests/test_daemon.py and tests/integration/.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest

from hookd.ipc import messages as m
from hookd.ipc import wire
from hookd.ipc.channel import Channel
from hookd.stores.audit import AuditLog, query
from hookd.virt import supervisor as supmod
from hookd.virt.supervisor import WorkerSupervisor, describe_exit
from tests.harness.memstream import CollectingWriter

U1 = "00000000-0000-4000-8000-000000000001"
U2 = "00000000-0000-4000-8000-000000000002"
U3 = "00000000-0000-4000-8000-000000000003"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def to_worker(d: dict):
    return m.decode(m.TO_WORKER, d)


def deliver(sup: WorkerSupervisor, *msgs) -> CollectingWriter:
    """Feed `msgs` (as the worker would send them) to a channel built on the supervisor's
    own handler table, serve until EOF, and return what the supervisor sent back."""
    async def go():
        reader = asyncio.StreamReader()
        for msg in msgs:
            reader.feed_data(wire.encode(msg.to_dict() if isinstance(msg, m.Message) else msg))
        reader.feed_eof()
        writer = CollectingWriter()
        channel = Channel(reader, writer, incoming=m.FROM_WORKER, handlers=sup._handlers,
                          peer="the libvirt worker", log=supmod.log)
        sup._channel = channel         # what _spawn does: the supervisor's replies go here
        try:
            await channel.serve(on_handler_error=sup._handler_failed)
        finally:
            sup._channel = None
        return writer
    return run(go())


@pytest.fixture
def audit(tmp_path):
    log = AuditLog(str(tmp_path / "state"), host="hv1")
    yield log
    log.close()


def rows(tmp_path):
    return query(str(tmp_path / "state"))


def started(uuid, boot, serial="S-1", **kw):
    return {"operation": "started", "instance_uuid": uuid, "domain": f"instance-{uuid[-2:]}", "boot": boot,
            "serial_seen": serial, "action": "booted", "detail": "libvirt event STARTED/BOOTED", **kw}


# ------------------------------------------------------------------ describe_exit
@pytest.mark.parametrize("code,text", [
    (None, "unknown status"),
    (0, "status 0"),
    (3, "status 3"),
    (-signal.SIGKILL, "signal SIGKILL"),
    (-signal.SIGSEGV, "signal SIGSEGV"),
    (-200, "signal 200"),                 # no such signal: its number
])
def test_describe_exit(code, text):
    assert describe_exit(code) == text


# ------------------------------------------------------------------ audit rows
def test_audit_row_becomes_a_row_with_only_audit_columns(audit, tmp_path):
    sup = WorkerSupervisor(None, audit)
    deliver(sup, m.AuditRow({"operation": "defined", "instance_uuid": U1, "domain": "instance-01",
                             "serial_seen": "S-1", "serial_wanted": U1, "verdict": "rewrite", "rule": "default",
                             "action": "added", "detail": "libvirt event DEFINED/ADDED",
                             "id": 999, "not_a_column": "x"}))
    (row,) = rows(tmp_path)
    assert (row["operation"], row["instance_uuid"], row["serial_wanted"], row["verdict"]) == \
        ("defined", U1, U1, "rewrite")
    assert row["host"] == "hv1"            # the audit log's own host
    assert row["id"] != 999 and "not_a_column" not in row
    assert sup.ledger.open == {}           # a definition opens no boot


def test_started_rows_open_a_boot_once(audit, tmp_path):
    sup = WorkerSupervisor(None, audit)
    deliver(sup, m.AuditRow(started(U1, "k:1:dom1")), m.AuditRow(started(U1, "k:1:dom1")))
    assert [r["operation"] for r in rows(tmp_path)] == ["started"]       # the duplicate is not recorded
    assert sup.ledger.open[U1].boot == "k:1:dom1"
    # A new boot while one is open: its missed stop is recorded first.
    deliver(sup, m.AuditRow(started(U1, "k:2:dom2", serial="S-2")))
    got = rows(tmp_path)
    assert [(r["operation"], r["boot"]) for r in got] == \
        [("started", "k:1:dom1"), ("stopped", "k:1:dom1"), ("started", "k:2:dom2")]
    assert got[1]["action"] == "resync" and "superseded by a new boot" in got[1]["detail"]
    assert got[1]["serial_seen"] == "S-1"


def test_stopped_row_closes_the_open_boot_and_gets_its_boot_and_serial(audit, tmp_path):
    sup = WorkerSupervisor(None, audit)
    stop = {"operation": "stopped", "instance_uuid": U1, "domain": "instance-01", "action": "destroyed",
            "detail": "libvirt event STOPPED/DESTROYED"}
    deliver(sup, m.AuditRow(started(U1, "k:1:dom1", serial="S-9")), m.AuditRow(dict(stop)),
            m.AuditRow(dict(stop)))            # the second: no boot open any more, not recorded
    got = rows(tmp_path)
    assert [r["operation"] for r in got] == ["started", "stopped"]
    assert (got[1]["boot"], got[1]["serial_seen"], got[1]["action"]) == ("k:1:dom1", "S-9", "destroyed")
    assert U1 not in sup.ledger.open


def test_ledger_starts_from_the_audit_log(audit, tmp_path):
    audit.record(**started(U1, "k:1:dom1"))
    audit.record(**started(U2, "k:1:dom2"))
    audit.record(operation="stopped", instance_uuid=U2, boot="k:1:dom2")
    sup = WorkerSupervisor(None, audit)
    assert set(sup.ledger.open) == {U1}
    deliver(sup, m.AuditRow(started(U1, "k:1:dom1")))     # seen before hookd restarted: not again
    assert len(rows(tmp_path)) == 3


# ------------------------------------------------------------------ resync
def test_resync_goes_through_the_boot_ledger(audit, tmp_path):
    audit.record(**started(U1, "k:1:dom1", serial="OLD"))     # open, but no longer running
    audit.record(**started(U3, "k:1:dom3"))                   # open and still starting up: left alone
    sup = WorkerSupervisor(None, audit)
    running = [{"instance_uuid": U2, "boot": "k:1:dom2", "domain": "instance-02", "serial_seen": "S-2",
                "since": "2024-01-31T10:00:00Z", "detail": "found running by the resync", "junk": 1},
               {"instance_uuid": U3, "boot": None},           # no boot key: not a running boot
               "not a row"]
    deliver(sup, m.Resync(why="a reconnect", running=running, pending=[U3]))
    got = rows(tmp_path)[2:]
    by_op = {r["operation"]: r for r in got}
    assert sorted(by_op) == ["observed", "stopped"]
    assert (by_op["stopped"]["instance_uuid"], by_op["stopped"]["boot"], by_op["stopped"]["serial_seen"]) == \
        (U1, "k:1:dom1", "OLD")
    assert "found stopped by the resync after a reconnect" in by_op["stopped"]["detail"]
    obs = by_op["observed"]
    assert (obs["instance_uuid"], obs["boot"], obs["serial_seen"], obs["action"]) == (U2, "k:1:dom2", "S-2", "resync")
    assert set(sup.ledger.open) == {U2, U3} and sup.resyncs == 1
    deliver(sup, m.Resync(why="a reconnect", running=running[:1], pending=[U3]))
    assert len(rows(tmp_path)) == 4 and sup.resyncs == 2              # repeating adds nothing
    deliver(sup, m.AuditRow(started(U2, "k:1:dom2")))                 # its late STARTED: a duplicate
    assert len(rows(tmp_path)) == 4


# ------------------------------------------------------------------ status and pins
def test_worker_status_is_kept_and_reported(audit):
    sup = WorkerSupervisor(None, audit)
    before = sup.status()
    assert before["events"]["connected"] is False and before["events"]["worker_pid"] is None
    assert before["events"]["last_error"] == "libvirt worker not running (not started)"
    deliver(sup, m.WorkerStatus(events={"uri": "qemu:///system", "connected": True, "reconnects": 2,
                                        "events": 10, "last_error": None},
                                reconcile={"sweeps": 3, "fixed": 1, "last_sweep": "t"}),
            m.WorkerStatus(events=None, reconcile={"sweeps": 4, "fixed": 1, "last_sweep": "u"}))
    st = sup.status()
    assert st["reconcile"] == {"sweeps": 4, "fixed": 1, "last_sweep": "u"}
    assert (st["events"]["uri"], st["events"]["reconnects"], st["events"]["events"]) == ("qemu:///system", 2, 10)
    # Not running (no process here): the reported connection is not believed.
    assert st["events"]["connected"] is False and "not running" in st["events"]["last_error"]
    assert (st["events"]["worker_restarts"], st["events"]["resyncs"], st["events"]["open_boots"]) == (0, 0, 0)


def test_pin_requests_are_answered_with_the_daemons_lookup(audit):
    sup = WorkerSupervisor(None, audit)
    out = deliver(sup, m.PinRequest(id=1, instance_uuid=U1))
    assert out.messages(to_worker) == [m.PinAnswer(id=1, instance_uuid=U1, serial=None)]     # no lookup yet
    asked = []
    sup.lookup_pin = lambda uuid: asked.append(uuid) or {U2: "PIN-2"}.get(uuid)
    out = deliver(sup, m.PinRequest(id=7, instance_uuid=U2), m.PinRequest(id=8, instance_uuid=U3))
    assert out.messages(to_worker) == [m.PinAnswer(id=7, instance_uuid=U2, serial="PIN-2"),
                              m.PinAnswer(id=8, instance_uuid=U3, serial=None)]
    assert asked == [U2, U3]


def test_a_failing_handler_is_logged_and_the_channel_goes_on(audit, tmp_path, caplog):
    sup = WorkerSupervisor(None, audit)

    def broken(uuid):
        raise RuntimeError("pin store bug")
    sup.lookup_pin = broken
    with caplog.at_level(logging.ERROR, logger="hookd.virt.supervisor"):
        out = deliver(sup, m.PinRequest(id=1, instance_uuid=U1), {"op": "no-such-kind"},
                      m.AuditRow(started(U1, "k:1:dom1")))
    assert out.messages(to_worker) == []
    assert "cannot handle 'pin' from the libvirt worker: RuntimeError: pin store bug" in caplog.text
    assert "unknown message 'no-such-kind'" in caplog.text
    assert [r["operation"] for r in rows(tmp_path)] == ["started"]      # the next message still handled


# ------------------------------------------------------------------ without a worker
def test_reconcile_without_a_worker_is_an_error_reply(audit):
    sup = WorkerSupervisor(None, audit)
    reply = run(sup.reconcile(dry_run=True))
    assert reply == m.ErrorReply("the libvirt worker is not running (not started)")
    sup.reload()                                   # no channel: nothing sent, nothing raised
    sup.note_hook(U1, "prepare")


def test_a_worker_that_cannot_start_is_retried_and_never_gets_the_daemons_variables(audit, monkeypatch):
    """Popen refuses (as for a missing interpreter): the supervisor says so in its status and
    schedules a restart, which close() cancels. The argv and environment it asked for show
    the worker's command line and that systemd's variables stay the daemon's."""
    for var, value in (("NOTIFY_SOCKET", "/run/systemd/notify"), ("WATCHDOG_USEC", "1"), ("WATCHDOG_PID", "1"),
                       ("LISTEN_FDS", "2"), ("LISTEN_PID", "1"), ("LISTEN_FDNAMES", "hook:proxy"),
                       ("HOOKD_TEST_KEPT", "yes")):
        monkeypatch.setenv(var, value)
    calls = []

    def refuse(argv, **kw):
        calls.append((argv, kw))
        raise OSError(2, "No such file or directory")
    monkeypatch.setattr(supmod.subprocess, "Popen", refuse)

    async def go():
        sup = WorkerSupervisor("/etc/hookd/hookd.conf", audit)
        await sup.start()
        scheduled = sup._restart_handle is not None
        status = sup.status()
        await sup.close()
        return sup, scheduled, status
    sup, scheduled, status = run(go())
    (argv, kw), = calls
    assert argv[1:4] == ["-m", "hookd.virt.worker", "--fd"] and argv[-2:] == ["--config", "/etc/hookd/hookd.conf"]
    assert int(argv[4]) in kw["pass_fds"]
    env = kw["env"]
    assert env["HOOKD_TEST_KEPT"] == "yes"
    assert not set(env) & {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                           "LISTEN_FDNAMES"}
    assert scheduled and sup._restart_handle is None and sup.restarts == 0
    assert status["events"]["last_error"].startswith("libvirt worker not running (cannot start: ")
    assert not sup.running

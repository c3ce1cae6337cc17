"""hookd.ledger: each boot recorded once across events, resyncs and restarts (pure)."""

from hookd.ledger import AFTER_THE_FACT, BootLedger, RunningBoot, close_row, fold_boots, observe_row

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"


def started(uuid, boot, serial="s", time="2026-01-01T00:00:00"):
    return {"operation": "started", "instance_uuid": uuid, "boot": boot, "serial_seen": serial,
            "domain": "instance-1", "time": time}


def running(uuid, boot, serial="s"):
    return RunningBoot(uuid, boot, {"domain": "instance-1", "serial_seen": serial})


def test_started_event_after_a_resync_of_the_same_boot_is_a_duplicate():
    ledger = BootLedger()
    plan = ledger.resync([running(U1, "b1")])
    assert [r.instance_uuid for r in plan.observe] == [U1]
    assert ledger.started(started(U1, "b1")) == (False, [])


def test_repeating_a_resync_adds_nothing():
    ledger = BootLedger()
    ledger.started(started(U1, "b1"))
    first = ledger.resync([running(U1, "b1"), running(U2, "b2")])
    again = ledger.resync([running(U1, "b1"), running(U2, "b2")])
    assert [r.instance_uuid for r in first.observe] == [U2] and not first.close
    assert not again.observe and not again.close and not again.adopted


def test_resync_closes_boots_no_longer_running_and_a_new_boot_of_the_same_instance():
    ledger = BootLedger()
    ledger.started(started(U1, "b1", serial="old"))
    ledger.started(started(U2, "b2"))
    plan = ledger.resync([running(U1, "b1-again")])       # U1 rebooted (new QEMU), U2 stopped
    assert sorted((u, b.boot) for u, b in plan.close) == [(U1, "b1"), (U2, "b2")]
    assert [(r.instance_uuid, r.boot) for r in plan.observe] == [(U1, "b1-again")]
    row = close_row(U1, dict(plan.close)[U1], "test")
    assert row["operation"] == "stopped" and row["action"] == AFTER_THE_FACT and row["serial_seen"] == "old"


def test_stop_fills_in_the_boot_and_a_second_stop_is_not_recorded():
    ledger = BootLedger()
    ledger.started(started(U1, "b1", serial="S"))
    row = {"operation": "stopped", "instance_uuid": U1}
    assert ledger.stopped(row) is True and row["boot"] == "b1" and row["serial_seen"] == "S"
    assert ledger.stopped({"operation": "stopped", "instance_uuid": U1}) is False


def test_start_over_an_open_boot_closes_it_first():
    ledger = BootLedger()
    ledger.started(started(U1, "b1"))
    record, before = ledger.started(started(U1, "b2"))
    assert record and [(r["operation"], r["boot"]) for r in before] == [("stopped", "b1")]


def test_loaded_from_latest_rows_and_upgrade_without_boot_keys_is_adopted_not_doubled():
    ledger = BootLedger.from_rows([
        {"operation": "started", "instance_uuid": U1, "boot": None, "serial_seen": "S"},   # before 0.2
        {"operation": "stopped", "instance_uuid": U2, "boot": "b2"},
    ])
    assert list(ledger.open) == [U1]
    plan = ledger.resync([running(U1, "k1")])
    assert plan.adopted == (U1,) and not plan.observe and not plan.close
    assert ledger.started(started(U1, "k1"))[0] is False


def test_fold_boots_one_line_per_boot():
    rows = [
        started(U1, "b1", serial="A", time="t1"),
        {"operation": "prepare", "instance_uuid": U1, "time": "t1"},
        {"operation": "stopped", "instance_uuid": U1, "boot": "b1", "time": "t2", "host": None},
        observe_row(running(U1, "b2", serial="B")) | {"time": "t3", "since": "t2.5"},
        {"operation": "stopped", "instance_uuid": U1, "boot": "b2", "time": "t4", "action": AFTER_THE_FACT},
    ]
    lines = fold_boots(rows)
    assert [(b.serial, b.started, b.stopped, b.seen, b.stop_seen) for b in lines] == [
        ("A", "t1", "t2", "event", "event"),
        ("B", "t2.5", "t4", "after the fact", "after the fact")]


def test_pending_domains_are_neither_observed_nor_closed():
    ledger = BootLedger()
    ledger.started(started(U1, "b1"))                       # the source end of a migration
    plan = ledger.resync([], pending=[U1, U2])               # U2: still starting here
    assert not plan.observe and not plan.close and list(ledger.open) == [U1]
    assert ledger.started(started(U2, "b2")) == (True, [])   # its STARTED event records it

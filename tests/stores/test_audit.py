"""hookd.stores.audit: the schema upgrade for the boot ledger and `hookctl audit --boots` (real SQLite)."""

from __future__ import annotations

import json
import sqlite3

from hookd.stores.audit import DB_NAME, AuditLog

U = "11111111-1111-4111-8111-111111111111"
#: The audit table as hookd 0.1 created it (no boot, no since).
OLD_SCHEMA = """CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL,
host TEXT NOT NULL, operation TEXT NOT NULL, domain TEXT, instance_uuid TEXT, nova_name TEXT,
project TEXT, flavor TEXT, serial_seen TEXT, serial_wanted TEXT, verdict TEXT, rule TEXT,
action TEXT, detail TEXT)"""


def old_database(state_dir):
    state_dir.mkdir()
    db = sqlite3.connect(state_dir / DB_NAME)
    db.execute(OLD_SCHEMA)
    db.execute("INSERT INTO audit (time, host, operation, domain, instance_uuid, serial_seen, action) "
               "VALUES ('2026-01-01T00:00:00.000+00:00', 'h1', 'started', 'instance-1', ?, 'S1', 'booted')", (U,))
    db.commit()
    db.close()


def test_hookctl_reads_a_database_from_before_the_ledger(tmp_path, hookctl):
    old_database(tmp_path / "state")
    res = hookctl("audit", "--boots", "--json", "--state-dir", tmp_path / "state")
    assert res.returncode == 0, res.stderr
    [boot] = json.loads(res.stdout)
    assert (boot["instance_uuid"], boot["serial"], boot["stopped"], boot["boot"]) == (U, "S1", None, None)
    res = hookctl("audit", "--json", "--state-dir", tmp_path / "state")
    assert json.loads(res.stdout)[0]["since"] is None


def test_open_upgrades_the_schema_and_the_ledger_sees_the_open_boot(tmp_path, hookctl):
    old_database(tmp_path / "state")
    log = AuditLog(str(tmp_path / "state"), host="h1")
    try:
        [row] = log.latest_lifecycle()
        assert (row["instance_uuid"], row["operation"], row["boot"]) == (U, "started", None)
        log.record(operation="stopped", instance_uuid=U, boot="k1", serial_seen="S1", action="destroyed")
        log.record(operation="observed", instance_uuid=U, boot="k2", serial_seen="S2", action="resync",
                   since="2026-01-02T00:00:00.000+00:00")
        assert [r["boot"] for r in log.latest_lifecycle()] == ["k2"]
        assert AuditLog(str(tmp_path / "state"), host="h2").latest_lifecycle() == []   # other hosts' rows
    finally:
        log.close()
    res = hookctl("audit", "--boots", "--state-dir", tmp_path / "state")
    assert res.returncode == 0, res.stderr
    header, first, second = res.stdout.decode().splitlines()
    assert header.split() == ["instance_uuid", "domain", "host", "serial", "started", "stopped", "seen",
                              "stop_seen"]
    assert first.split()[3] == "S1" and first.split()[-1] == "event"
    assert second.split()[3:5] == ["S2", "2026-01-02T00:00:00.000+00:00"]
    assert second.endswith("after the fact  -")
    res = hookctl("audit", "--boots", "--operation", "started", "--state-dir", tmp_path / "state")
    assert res.returncode != 0 and b"--boots" in res.stderr and b"Traceback" not in res.stderr

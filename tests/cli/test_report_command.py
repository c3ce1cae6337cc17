"""`hookctl report` as an operator runs it (a subprocess) on a real SQLite audit log written by
hookd's own AuditLog: the summary line first, the formats, the exit status, and bad input
as one line. The real-guest and real-etcd runs are tests/integration/test_report.py; here
the etcd store is only ever unreachable (a closed port)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.harness.run import one_line_error

OK = "00000000-0000-4000-8000-0000000000c1"
BAD = "00000000-0000-4000-8000-0000000000c2"
ODD = "00000000-0000-4000-8000-0000000000c3"


@pytest.fixture
def state(tmp_path):
    from hookd.stores.audit import AuditLog
    log = AuditLog(str(tmp_path / "state"), host="hv-1")
    common = {"operation": "started", "action": "booted", "rule": "default"}
    log.record(time="2026-12-01T10:00:00.000+00:00", instance_uuid=OK, nova_name="vm-ok", serial_seen=OK,
               serial_wanted=OK, verdict="compliant", boot="1:1", **common)
    log.record(time="2026-12-01T11:00:00.000+00:00", operation="stopped", instance_uuid=OK, boot="1:1")
    log.record(time="2026-12-02T10:00:00.000+00:00", instance_uuid=BAD, nova_name="vm-bad", serial_seen="HOST-1",
               serial_wanted=BAD, verdict="rewrite", boot="2:1", **common)
    log.record(time="2026-12-02T12:00:00.000+00:00", operation="stopped", instance_uuid=BAD, boot="2:1")
    log.record(time="2026-12-03T10:00:00.000+00:00", instance_uuid=ODD, domain="plain", serial_seen="X",
               verdict="not-nova", boot="3:1", **{**common, "rule": "not-nova"})
    log.close()
    return tmp_path / "state"


def test_summary_line_first_then_sources_then_one_line_per_instance(hookctl, state):
    res = hookctl("report", "--state-dir", state)
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode().splitlines()
    assert out[0] == "3 instances: 1 compliant, 1 drifted, 1 unknown"
    assert out[1].startswith(f"source audit: {state}/audit.sqlite")
    assert out[3].split()[:2] == ["status", "instance_uuid"]
    rows = [line.split()[:2] for line in out[4:]]
    assert rows == [["drifted", BAD], ["unknown", ODD], ["compliant", OK]]
    assert "2026-12-01T10:00:00Z" in out[6] and "2026-12-01T11:00:00Z" in out[6]     # first and last seen


def test_json_and_csv(hookctl, state):
    res = hookctl("report", "--json", "--state-dir", state)
    doc = json.loads(res.stdout)
    assert doc["summary"] == {"instances": 3, "compliant": 1, "drifted": 1, "unknown": 1}
    assert doc["sources"]["lastboot"] is None
    bad = doc["instances"][0]
    assert (bad["instance_uuid"], bad["serials"], bad["decided"], bad["hosts"]) == (BAD, ["HOST-1"], BAD, ["hv-1"])
    assert bad["boot_list"][0]["judgement"] == "drift" and bad["boot_list"][0]["source"] == "audit"
    rows = list(csv.DictReader(io.StringIO(hookctl("report", "--csv", "--state-dir", state).stdout.decode())))
    assert [(r["instance_uuid"], r["status"], r["name"]) for r in rows] == \
        [(BAD, "drifted", "vm-bad"), (ODD, "unknown", "plain"), (OK, "compliant", "vm-ok")]


def test_since_and_fail_on_drift(hookctl, state):
    """Drift is data (exit 0); --fail-on-drift makes it exit 3, and only when something drifted."""
    assert hookctl("report", "--state-dir", state).returncode == 0
    assert hookctl("report", "--fail-on-drift", "--state-dir", state).returncode == 3
    # BAD stopped before that; ODD's boot still runs (a boot that began before --since counts).
    res = hookctl("report", "--since", "2026-12-03T00:00", "--fail-on-drift", "--state-dir", state)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().splitlines()[0] == \
        "1 instances: 0 compliant, 0 drifted, 1 unknown (boots since 2026-12-03T00:00:00.000+00:00)"


def test_bad_input_is_one_line(hookctl, state, tmp_path):
    one_line_error(hookctl("report", "--since", "last week", "--state-dir", state), "--since 'last week'")
    one_line_error(hookctl("report", "--state-dir", tmp_path / "none"), "no audit log at")
    (tmp_path / "a-file").write_text("")
    one_line_error(hookctl("report", "--state-dir", tmp_path / "a-file"), "a-file/audit.sqlite")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "audit.sqlite").write_text("not a database")
    one_line_error(hookctl("report", "--state-dir", tmp_path / "broken"), "cannot read")


def test_unreachable_etcd_is_one_line_and_local_still_works(hookctl, state, tmp_path):
    conf = tmp_path / "etcd.conf"
    conf.write_text(f"[hookd]\nstate_dir = {state}\n[store]\nbackend = etcd\nendpoints = http://127.0.0.1:9\n"
                    "timeout = 0.5\n")
    one_line_error(hookctl("report", "--config", conf), "etcd unreachable (http://127.0.0.1:9:")
    res = hookctl("report", "--local", "--config", conf)
    assert res.returncode == 0 and res.stdout.decode().startswith("3 instances:")

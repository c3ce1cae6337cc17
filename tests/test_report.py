"""hookd.report, the compliance report's folding: boots from audit rows and from etcd's last
boots, each judged, and one status per instance (pure: rows and values in, lines out)."""

from __future__ import annotations

import json

from hookd import report

A = "00000000-0000-4000-8000-00000000000a"
B = "00000000-0000-4000-8000-00000000000b"


def t(minute: int) -> str:
    return f"2026-12-04T10:{minute:02d}:00.000+00:00"


def started(uuid=A, minute=0, serial=A, wanted=A, verdict="", host="h1", boot=None, op="started", **kw):
    """A boot's audit row; its verdict by default as the policy would give it (compliant when
    serial and wanted agree)."""
    if verdict == "":
        verdict = "compliant" if serial == wanted else "rewrite"
    return {"time": t(minute), "host": host, "operation": op, "instance_uuid": uuid, "domain": "instance-1",
            "nova_name": "vm-1", "serial_seen": serial, "serial_wanted": wanted, "verdict": verdict,
            "rule": "default", "boot": boot or f"{minute}:1", "action": "resync" if op == "observed" else "booted",
            **kw}


def stopped(uuid=A, minute=1, host="h1"):
    return {"time": t(minute), "host": host, "operation": "stopped", "instance_uuid": uuid}


def lastboot(minute=0, host="h2", serial=A, boot="9:9", op="started"):
    return json.dumps({"time": t(minute), "host": host, "serial": serial, "boot": boot, "operation": op},
                      separators=(",", ":"))


def one(rows, fleet=None, pins=None, since=None):
    boots = report.local_boots(rows)
    if fleet is not None:
        boots = report.merge(boots, report.fleet_boots(fleet, pins or {})[0])
    [line] = report.fold_report(report.in_range(boots, since))
    return line


def test_each_verdict_is_judged():
    assert report.judge_row(started())[0] == report.MATCHED
    j, why = report.judge_row(started(serial="S-1"))
    assert j == report.DRIFT and "'S-1'" in why and repr(A) in why
    j, why = report.judge_row(started(verdict="rewrite", serial=A))   # right serial, not shown to the guest
    assert j == report.DRIFT and "smbios" in why
    assert report.judge_row(started(verdict="not-nova")) == (report.UNKNOWN, report._NO_DECISION["not-nova"])
    assert report.judge_row(started(verdict=None))[0] == report.UNKNOWN


def test_compliant_instance_with_its_boots_stops_and_hosts():
    rows = [started(minute=0), {"operation": "prepare", "instance_uuid": A, "host": "h1", "time": t(0)},
            stopped(minute=5), started(minute=10, host="h2", boot="1:2")]
    line = one(rows)
    assert (line.status, line.boots, line.matched, line.hosts, line.serials) == ("compliant", 2, 2, ["h1", "h2"], [A])
    assert (line.first_seen, line.last_seen, line.sources, line.changes) == (t(0), t(10), ["audit"], 0)
    assert line.boot_list[0].stopped == t(5) and line.boot_list[1].stopped is None


def test_the_same_boot_twice_counts_once_and_after_the_fact_is_said():
    line = one([started(op="observed", boot="7:7"), started(op="observed", boot="7:7", minute=3)])
    assert line.boots == 1 and line.boot_list[0].seen == "after the fact" and line.status == "compliant"


def test_one_drifted_boot_makes_the_instance_drifted():
    line = one([started(minute=0), stopped(minute=1), started(minute=2, serial="HOST-SERIAL", boot="2:2")])
    assert (line.status, line.matched, line.drift) == ("drifted", 1, 1)
    assert "'HOST-SERIAL'" in line.why and "h1" in line.why and t(2) in line.why
    assert line.serials == [A, "HOST-SERIAL"] and line.changes == 1


def test_a_serial_change_to_a_new_decision_is_compliant_and_counted():
    """A pin (or the policy) changed between two boots, and each boot had its decided serial."""
    line = one([started(minute=0), stopped(minute=1), started(minute=2, serial="PIN-1", wanted="PIN-1", boot="2:2")])
    assert (line.status, line.changes, line.decided) == ("compliant", 1, "PIN-1")
    assert "changed 1 time" in line.why


def test_a_serial_change_into_an_undecided_boot_is_drift():
    rows = [started(verdict="not-nova", serial="X-1", wanted=None),
            started(minute=2, verdict="not-nova", serial="X-2", wanted=None, boot="2:2")]
    line = one(rows)
    assert line.status == "drifted" and "from 'X-1' to 'X-2'" in line.why and line.unknown == 2


def test_undecided_boots_without_a_change_are_unknown():
    line = one([started(verdict="not-nova", serial="X", wanted=None), started(minute=2, boot="2:2")])
    assert line.status == "unknown" and "not a Nova guest" in line.why


def test_fleet_last_boots_are_judged_against_the_pin():
    pins = {A: {"serial": "PIN-A"}, B: {"serial": "PIN-B"}}
    boots, ignored = report.fleet_boots({A: lastboot(serial="PIN-A"), B: lastboot(serial="OTHER"),
                                         "c": "not json", "d": '{"serial": "x"}'}, pins)
    assert ignored == ["c", "d"]
    assert [(b.instance_uuid, b.judgement, b.source, b.host) for b in boots] == \
        [(A, "matched", "lastboot", "h2"), (B, "drift", "lastboot", "h2")]
    [unpinned], _ = report.fleet_boots({A: lastboot(op="observed")}, {})
    assert unpinned.judgement == "unknown" and "not pinned" in unpinned.why and unpinned.seen == "after the fact"


def test_a_last_boot_that_is_a_local_boot_is_shown_once_as_both():
    line = one([started(boot="5:5")], fleet={A: lastboot(host="h1", boot="5:5")}, pins={})
    assert line.boots == 1 and line.sources == ["audit+lastboot"] and line.status == "compliant"


def test_local_history_and_a_fleet_last_boot_elsewhere():
    """Booted here, then on h2 with another serial than its pin: the fleet's last boot drifted."""
    line = one([started(serial="PIN-A", wanted="PIN-A", verdict="compliant"), stopped(minute=1)],
               fleet={A: lastboot(minute=4, serial="OLD")}, pins={A: {"serial": "PIN-A"}})
    assert (line.status, line.hosts, line.sources, line.serials) == ("drifted", ["h1", "h2"], ["audit", "lastboot"],
                                                                     ["PIN-A", "OLD"])
    assert "pinned 'PIN-A'" in line.why


def test_since_keeps_running_boots_and_recent_last_boots():
    rows = [started(minute=0), stopped(minute=1), started(uuid=B, minute=2, serial=B, wanted=B)]
    boots = report.local_boots(rows) + report.fleet_boots({"c": lastboot(minute=1)}, {})[0]
    kept = report.in_range(boots, t(3))
    assert [b.instance_uuid for b in kept] == [B]              # A stopped before; the last boot started before
    assert len(report.in_range(boots, t(1))) == 3


def test_report_order_and_summary():
    rows = [started(uuid=B, serial="S-B", wanted=B), started(uuid=A),
            started(uuid="u", verdict="not-nova", serial="X", wanted=None)]
    lines = report.fold_report(report.local_boots(rows))
    assert [line.status for line in lines] == ["drifted", "unknown", "compliant"]
    assert report.summary(lines) == {"instances": 3, "compliant": 1, "drifted": 1, "unknown": 1}
    assert json.loads(json.dumps(lines[0].as_dict()))["boot_list"][0]["serial"] == "S-B"

"""hookd.cli.pinfile: reading, validating and classifying pin files; exporting them back."""

from __future__ import annotations

import json

import pytest

from hookd.cli.pinfile import IMPORTED, KEPT, SAME, PinFileError, classify, export, guess_format, parse, \
    report_lines, summary
from hookd.policy.serial import serial_problem
from tests.harness.domains import UUID
from tests.harness.run import json_position

VMWARE = "VMware-42 3e fd 8c 1a 2b 3c 4d-5e 6f 70 81 92 a3 b4 c5"
U2 = "00000000-0000-4000-8000-000000000002"
U3 = "00000000-0000-4000-8000-000000000003"


def test_vmware_serial_is_a_valid_serial_and_unsafe_ones_are_not():
    # virt-v2v / os-migrate bring VMware's form verbatim: spaces and dashes are fine
    # (libvirt hands QEMU the serial as one argv element; XML escaping is libvirt's).
    assert serial_problem(VMWARE) is None
    for bad, what in ((VMWARE.replace(" ", ",", 1), "','"), ("nocloud;s", "';'"), ("a=b", "'='"),
                      (" " + VMWARE, "start"), (VMWARE + " ", "ends with a space"), ("a\nb", "'\\n'")):
        assert what in serial_problem(bad), bad


def test_csv_rows_with_extra_columns_any_order_and_bom():
    data = ("\ufeffname,Serial, instance_uuid \n"
            f"win1,{VMWARE},{UUID.upper()}\n"
            "\n"
            f"win2,LEGACY-2,{U2.replace('-', '')}\n").encode()
    p = parse(data, "csv", "f.csv")
    assert [(r.line, r.uuid, r.serial) for r in p.rows] == [(2, UUID, VMWARE), (4, U2, "LEGACY-2")]
    assert p.problems == [] and p.duplicates == [] and p.total == 2


def test_json_rows_carry_the_line_each_object_starts_on():
    data = json.dumps([{"instance_uuid": UUID, "serial": VMWARE, "vm": "a"},
                       {"instance_uuid": "nope", "serial": "X"},
                       {"instance_uuid": U2, "serial": 7},
                       ["not", "an", "object"],
                       {"serial": "X"}], indent=1).encode()
    p = parse(data, "json", "f.json")
    assert [(r.uuid, r.serial) for r in p.rows] == [(UUID, VMWARE)]
    lines = data.decode().split("\n")
    starts = [i + 1 for i, line in enumerate(lines) if line.startswith(" {") or line.startswith(" [")]
    assert [pr.line for pr in p.problems] == starts[1:]
    reasons = [pr.reason for pr in p.problems]
    assert "not an instance UUID" in reasons[0] and "not a string" in reasons[1]
    assert "not an object" in reasons[2] and reasons[3] == "no instance_uuid"


@pytest.mark.parametrize("serial,fragment", [("a;b", "contains ';'"), ("", "empty"), ("x" * 65, "longer than 64"),
                                             ("-x", "does not start")])
def test_invalid_serials_are_row_problems_with_the_policy_reason(serial, fragment):
    p = parse(f"instance_uuid,serial\n{UUID},{serial}\n".encode(), "csv")
    assert p.rows == [] and len(p.problems) == 1
    assert p.problems[0].line == 2 and fragment in p.problems[0].reason


def test_short_csv_row_is_a_problem():
    p = parse(f"instance_uuid,serial\n{UUID}\n".encode(), "csv")
    assert [(x.line, x.reason) for x in p.problems] == [(2, "no serial")]


def test_duplicates_same_serial_once_different_serials_all_invalid():
    data = (f"instance_uuid,serial\n{UUID},A\n{U2},B\n{UUID.upper()},A\n{U3},C\n{U3},D\n{U3},C\n").encode()
    p = parse(data, "csv", "f")
    assert [(r.uuid, r.serial) for r in p.rows] == [(UUID, "A"), (U2, "B")]
    assert [(r.line, first) for r, first in p.duplicates] == [(4, 2)]
    assert [x.line for x in p.problems] == [5, 6, 7]
    assert "'D' on line 6" in p.problems[0].reason and "'C' on line 5, 'C' on line 7" in p.problems[1].reason


@pytest.mark.parametrize("fmt,data,fragment", [
    ("csv", b"", "empty"),
    ("csv", b"uuid,serial\n1,2\n", "missing: instance_uuid"),
    ("csv", b"instance_uuid,serial,serial\n", "names serial twice"),
    ("csv", b'instance_uuid,serial\n"abc,1\n', "line 2: not valid CSV"),
    ("csv", b"instance_uuid,serial\n\0,1\n", "line 2: holds a NUL byte"),
    ("csv", b"instance_uuid,serial\n\xff,1\n", "line 2: not valid UTF-8"),
    ("json", b"", "empty"),
    ("json", b'{"instance_uuid": "x"}', "expected a JSON list"),
    # The position is json's own (Python 3.13 puts a trailing comma's error at the comma).
    ("json", b'[\n{"instance_uuid": "x",\n}]', "line %(line)d column %(col)d: not valid JSON"),
    ("json", b'[{"a": 1}] x', "extra data"),
    ("json", b'[{"a": 1}', "expecting ',' or ']'"),
    ("xml", b"", "unknown format"),
])
def test_bad_files_are_one_error(fmt, data, fragment):
    fragment = fragment % json_position(data) if "%(" in fragment else fragment
    with pytest.raises(PinFileError, match=fragment):
        parse(data, fmt, "f")


def test_empty_lists_are_fine():
    assert parse(b"instance_uuid,serial\n", "csv").total == 0
    assert parse(b" [ ] \n", "json").total == 0


def test_classify_and_report():
    p = parse(f"instance_uuid,serial\n{UUID},A\n{U2},B\n{U3},C\n{U3},C\nbad,X\n".encode(), "csv", "f")
    out = classify(p.rows, {U2: "B", U3: "OLD"})
    assert [(o, r.uuid, pinned) for o, r, pinned in out] == [(IMPORTED, UUID, None), (SAME, U2, "B"),
                                                            (KEPT, U3, "OLD")]
    lines = report_lines(out, p, dry_run=False, skipped_invalid=True)
    assert [ln.split()[2] for ln in lines] == ["imported", "unchanged", "kept", "duplicate", "invalid"]
    assert "'OLD'" in lines[2] and "'C'" in lines[2]          # both serials shown
    assert lines[4].startswith("line 6: invalid")
    assert summary(out, p, source="f", dry_run=True, backend="sqlite") == (
        "f: 5 rows: 1 would be imported, 1 already pinned to the same serial, 1 already pinned to a "
        "different serial (kept), 1 duplicate, 1 invalid (skipped) (sqlite store, dry run: nothing written)")


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_parses_back_to_the_same_pins(fmt):
    pins = {U2: {"serial": "B", "created": "x"}, UUID: {"serial": VMWARE}}
    text = export(pins, fmt)
    p = parse(text.encode(), fmt)
    assert {r.uuid: r.serial for r in p.rows} == {UUID: VMWARE, U2: "B"} and not p.problems
    assert export({r.uuid: {"serial": r.serial} for r in p.rows}, fmt) == text


def test_guess_format():
    assert guess_format("x.JSON", None) == "json" and guess_format("-", None) == "csv"
    assert guess_format("x.json", "csv") == "csv"

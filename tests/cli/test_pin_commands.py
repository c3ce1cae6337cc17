"""hookctl pin and pins --import/--export (hookd/cli/pins.py) as an operator runs them
(subprocesses): create-if-absent imports reported row by row, a bad file writing nothing,
misused options, dry runs and the export/import round trip. The file format itself
(hookd/cli/pinfile.py) is tested in tests/cli/test_pinfile.py. (Not test_pins.py: that
basename is tests/stores/test_pins.py's.)"""

from __future__ import annotations

import json

import pytest

from tests.harness.domains import UUID, domain
from tests.harness.run import json_position, one_line_error


VMWARE = "VMware-42 3e fd 8c 1a 2b 3c 4d-5e 6f 70 81 92 a3 b4 c5"
U2 = "00000000-0000-4000-8000-000000000002"
U3 = "00000000-0000-4000-8000-000000000003"


def _pin_conf(tmp_path, name="s"):
    conf = tmp_path / f"{name}.conf"
    conf.write_text(f"[hookd]\nstate_dir = {tmp_path / name}\n")
    return conf


def _pins(hookctl, conf):
    res = hookctl("pins", "--json", "--config", conf)
    assert res.returncode == 0, res.stderr
    return {u: p["serial"] for u, p in json.loads(res.stdout).items()}


def test_pins_import_first_writer_wins_and_reports_each_row(tmp_path, hookctl):
    conf = _pin_conf(tmp_path)
    assert hookctl("pin", U3, "ALREADY", "--config", conf).returncode == 0
    f = tmp_path / "v2v.csv"
    f.write_text(f"instance_uuid,serial,vm\n{UUID.upper()},{VMWARE},win2019\n{U2},LEGACY-2,sql\n{U3},FROM-VMWARE,x\n")
    res = hookctl("pins", "--import", f, "--config", conf)
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode().splitlines()
    assert out[0] == f"line 2: imported     {UUID}  {VMWARE!r}"
    assert out[2].startswith(f"line 4: kept         {U3}  already pinned to 'ALREADY'") and "'FROM-VMWARE'" in out[2]
    assert out[-1] == (f"{f}: 3 rows: 2 imported, 0 already pinned to the same serial, 1 already pinned to a "
                       f"different serial (kept), 0 invalid (sqlite store)")
    assert _pins(hookctl, conf) == {UUID: VMWARE, U2: "LEGACY-2", U3: "ALREADY"}   # never overwritten
    again = hookctl("pins", "--import", "-", "--config", conf, input=f.read_bytes())
    assert again.returncode == 0 and b"2 already pinned to the same serial" in again.stdout
    assert b"line 2: unchanged" in again.stdout
    # the pin decides the guest's serial, verbatim
    d = tmp_path / "d.xml"
    d.write_bytes(domain())
    ex = json.loads(hookctl("explain", "--xml", d, "--json", "--config", conf).stdout)
    assert (ex["rule"], ex["serial_policy"]) == ("pin", VMWARE)


@pytest.mark.parametrize("body,fragments", [
    (f"instance_uuid,serial\n{UUID},A\nnot-a-uuid,B\n{U2},a;b\n",
     ["line 3: 'not-a-uuid' is not an instance UUID", "line 4: serial 'a;b' contains ';'", "2 invalid rows"]),
    (f"instance_uuid,serial\n{UUID},A\n{U2},B\n{UUID},C\n",
     [f"line 2: instance {UUID} has serial 'A' here but 'C' on line 4", "line 4:", "2 invalid rows"]),
])
def test_pins_import_bad_file_writes_nothing(tmp_path, hookctl, body, fragments):
    conf = _pin_conf(tmp_path)
    f = tmp_path / "in.csv"
    f.write_text(body)
    for extra in ((), ("--dry-run",)):
        res = hookctl("pins", "--import", f, *extra, "--config", conf)
        assert res.returncode == 1 and res.stdout == b""
        err = res.stderr.decode()
        assert "Traceback" not in err and all(line.startswith("hookctl: error: ") for line in err.splitlines())
        for fragment in fragments:
            assert fragment in err, err
        assert "nothing imported" in err and "--skip-invalid" in err
    assert not (tmp_path / "s").exists()               # not even an empty store
    res = hookctl("pins", "--import", f, "--skip-invalid", "--config", conf)
    assert res.returncode == 0, res.stderr
    assert b"invalid" in res.stdout and b"(skipped)" in res.stdout and b"1 imported" in res.stdout
    assert _pins(hookctl, conf) == ({UUID: "A"} if "not-a-uuid" in body else {U2: "B"})


@pytest.mark.parametrize("data,fmt,fragment", [
    (b"uuid,serial\nx,y\n", "csv", "stdin line 1: the header must name the columns instance_uuid and serial"),
    (b'instance_uuid,serial\n"abc,1\n', "csv", "stdin line 2: not valid CSV"),
    (b'[{"instance_uuid": 1,}]', "json", "stdin line %(line)d column %(col)d: not valid JSON"),
    (b'{"a": 1}', "json", "expected a JSON list"),
])
def test_pins_import_malformed_file_is_one_line(tmp_path, hookctl, data, fmt, fragment):
    conf = _pin_conf(tmp_path)
    fragment = fragment % json_position(data) if "%(" in fragment else fragment
    res = hookctl("pins", "--import", "-", "--format", fmt, "--config", conf, input=data)
    one_line_error(res, fragment)
    assert b"nothing imported" in res.stderr and not (tmp_path / "s").exists()


def test_pins_import_unreadable_file_and_misused_options(tmp_path, hookctl):
    conf = _pin_conf(tmp_path)
    one_line_error(hookctl("pins", "--import", tmp_path / "missing.csv", "--config", conf), "cannot read")
    one_line_error(hookctl("pins", "--dry-run", "--config", conf), "--dry-run goes with --import")
    one_line_error(hookctl("pins", "--format", "json", "--config", conf), "--format goes with")
    res = hookctl("pins", "--json", "--export", "--config", conf)
    assert res.returncode == 2 and b"not allowed with" in res.stderr and b"Traceback" not in res.stderr


def test_pins_import_dry_run_writes_nothing(tmp_path, hookctl):
    conf = _pin_conf(tmp_path)
    f = tmp_path / "in.json"                           # .json: read as JSON without --format
    f.write_text(json.dumps([{"instance_uuid": UUID, "serial": VMWARE}]))
    res = hookctl("pins", "--import", f, "--dry-run", "--config", conf)
    assert res.returncode == 0, res.stderr
    assert f"line 1: would import {UUID}".encode() in res.stdout and b"dry run: nothing written" in res.stdout
    assert not (tmp_path / "s").exists()
    assert hookctl("pin", U2, "X", "--config", conf).returncode == 0
    assert hookctl("pins", "--import", f, "--dry-run", "--config", conf).returncode == 0
    assert _pins(hookctl, conf) == {U2: "X"}


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_pins_export_import_export_round_trip(tmp_path, hookctl, fmt):
    a, b = _pin_conf(tmp_path, "a"), _pin_conf(tmp_path, "b")
    for uuid, serial in ((U3, VMWARE), (UUID, "LEGACY 7"), (U2, "A-1")):
        assert hookctl("pin", uuid, serial, "--config", a).returncode == 0
    first = hookctl("pins", "--export", "--format", fmt, "--config", a)
    assert first.returncode == 0 and first.stderr == b""
    imported = hookctl("pins", "--import", "-", "--format", fmt, "--config", b, input=first.stdout)
    assert imported.returncode == 0 and b"3 imported" in imported.stdout, imported.stderr
    second = hookctl("pins", "--export", "--format", fmt, "--config", b)
    assert second.stdout == first.stdout
    assert _pins(hookctl, b) == {U3: VMWARE, UUID: "LEGACY 7", U2: "A-1"}
    if fmt == "csv":
        assert first.stdout.decode().splitlines()[0] == "instance_uuid,serial"

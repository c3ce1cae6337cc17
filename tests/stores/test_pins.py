"""Pins and preserve mode: the policy step, the SQLite store, first-writer-wins."""

from __future__ import annotations

import pytest

from hookd.config import build_config, parse_ini
from hookd.decision import evaluate
from hookd.errors import StoreError
from hookd.stores.pins import SqlitePinStore
from tests.harness.domains import HOST_SERIAL, UUID, domain


def policy(text=""):
    sections = {}
    parse_ini(text, "t.conf", sections)
    return build_config(sections, ("t.conf",)).policy


def test_pin_overrides_rules_modes_and_flavor():
    text = f"[rule:r]\ninstance = {UUID}\nmode = unique\n"
    xml = domain(extra_specs={"hookd:serial_mode": "unique"})
    d = evaluate(xml, policy(text), pins=lambda u: "LEGACY-1" if u == UUID else None).decision
    assert (d.verdict, d.rule, d.serial_policy) == ("rewrite", "pin", "LEGACY-1")


def test_pin_does_not_override_not_nova_or_not_applicable():
    pins = lambda u: "LEGACY-1"  # noqa: E731
    assert evaluate(domain(nova=None), policy(), pins=pins).decision.verdict == "not-nova"
    xml = domain(arch="aarch64", sysinfo=False, smbios=None)
    assert evaluate(xml, policy(), pins=pins).decision.verdict == "not-applicable"


def test_invalid_pin_falls_back_to_uuid():
    d = evaluate(domain(), policy(), pins=lambda u: "ds=nocloud;s=x").decision
    assert (d.rule, d.serial_policy) == ("fallback-invalid-template", UUID) and "pinned serial" in d.reason


def test_preserve_keeps_current_serial_and_asks_for_a_pin():
    d = evaluate(domain(), policy("[policy]\nmode = preserve\n")).decision
    assert (d.verdict, d.mode, d.serial_policy, d.new_pin) == ("compliant", "preserve", HOST_SERIAL, HOST_SERIAL)


def test_preserve_in_a_rule():
    d = evaluate(domain(), policy(f"[rule:keep]\ninstance = {UUID}\nmode = preserve\n")).decision
    assert (d.rule, d.new_pin) == ("rule:keep", HOST_SERIAL)


def test_preserve_without_a_valid_serial_pins_the_uuid():
    d = evaluate(domain(serial=None), policy("[policy]\nmode = preserve\n")).decision
    assert (d.serial_policy, d.new_pin, d.rule) == (UUID, UUID, "fallback-invalid-template")


def test_other_modes_never_ask_for_pins():
    for mode in ("unique", "host"):
        assert evaluate(domain(), policy(f"[policy]\nmode = {mode}\n")).decision.new_pin is None


def test_sqlite_store_first_writer_wins_and_survives_reopen(tmp_path):
    a = SqlitePinStore(str(tmp_path), host="a")
    b = SqlitePinStore(str(tmp_path), host="b")          # a second process on the same file
    assert a.pin_if_absent(UUID, "FIRST") == "FIRST"
    assert b.pin_if_absent(UUID, "SECOND") == "FIRST"
    a.close()
    assert SqlitePinStore(str(tmp_path)).get(UUID) == "FIRST"
    b.set(UUID, "THIRD")
    assert b.all()[UUID]["serial"] == "THIRD" and b.unpin(UUID) and not b.unpin(UUID)


@pytest.mark.parametrize("uuid,serial,fragment", [("nope", "X", "not an instance UUID"),
                                                  (UUID, "a;b", "contains ';'"), (UUID, "", "empty")])
def test_store_validates(tmp_path, uuid, serial, fragment):
    with pytest.raises(StoreError, match=fragment):
        SqlitePinStore(str(tmp_path)).set(uuid, serial)


def test_hookctl_pin_commands(tmp_path, hookctl):
    conf = tmp_path / "c.conf"
    conf.write_text(f"[hookd]\nstate_dir = {tmp_path / 's'}\n")
    assert hookctl("pin", UUID, "LEGACY 7", "--config", conf).returncode == 0
    res = hookctl("pins", "--json", "--config", conf)
    import json
    assert json.loads(res.stdout)[UUID]["serial"] == "LEGACY 7"
    f = tmp_path / "d.xml"
    f.write_bytes(domain())
    out = hookctl("explain", "--xml", f, "--json", "--config", conf)
    assert json.loads(out.stdout)["rule"] == "pin"
    bad = hookctl("pin", UUID, "x" * 65, "--config", conf)
    assert bad.returncode == 1 and b"longer than 64" in bad.stderr and bad.stdout == b""
    assert hookctl("unpin", UUID, "--config", conf).returncode == 0
    assert hookctl("unpin", UUID, "--config", conf).returncode == 1

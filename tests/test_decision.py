"""The one decision path (hookd.decision): pins, first-sight pinning, audit rows."""

from __future__ import annotations

import logging

from hookd.config import build_config, parse_ini
from hookd.decision import DecisionService, audit_fields, evaluate
from hookd.errors import StoreError
from hookd.stores.audit import COLUMNS, AuditLog, query
from hookd.stores.pins import SqlitePinStore
from tests.harness.domains import HOST_SERIAL, UUID, domain


def policy(text=""):
    sections = {}
    parse_ini(text, "t.conf", sections)
    return build_config(sections, ("t.conf",)).policy


def service(p, store=None, audit=None, **kw):
    return DecisionService(lambda: p, store=store, audit=audit, log=logging.getLogger("t"), **kw)


def test_preserve_pins_once_then_the_pin_decides(tmp_path):
    store, audit = SqlitePinStore(str(tmp_path)), AuditLog(str(tmp_path / "a"))
    svc = service(policy("[policy]\nmode = preserve\n"), store, audit)
    first = svc.decide(domain(), op="define", what="x", rewrite=True)
    assert store.get(UUID) == HOST_SERIAL and first.xml is None
    # Later the regenerated XML carries another host's serial: the pin decides.
    later = svc.decide(domain(serial="OTHER-HOST"), op="define", what="x", rewrite=True)
    assert later.decision.rule == "pin"
    assert f"<entry name=\"serial\">{HOST_SERIAL}</entry>".encode() in later.xml
    rows = query(str(tmp_path / "a"))
    assert [(r["operation"], r["action"], r["serial_wanted"], r["detail"]) for r in rows] == \
        [("pin", "pinned", HOST_SERIAL, "mode preserve, first seen at define")]


def test_a_competing_writer_pinned_first_its_pin_decides(tmp_path):
    class Racing(SqlitePinStore):
        misses = 1

        def get(self, u):
            if self.misses:                             # our lookup misses ...
                self.misses -= 1
                SqlitePinStore(str(tmp_path / "x")).pin_if_absent(u, "WINNER")   # ... the winner writes
                return None
            return super().get(u)
    audit = AuditLog(str(tmp_path / "b"))
    ev = service(policy("[policy]\nmode = preserve\n"), Racing(str(tmp_path / "x")), audit).decide(
        domain(), op="define", what="x", rewrite=True)
    assert ev.decision.serial_policy == "WINNER" and ev.decision.rule == "pin"
    assert query(str(tmp_path / "b")) == []          # the loser made no pin, so records none


def test_unreadable_store_decides_without_pins_and_logs_once(caplog):
    class Broken:
        def get(self, u):
            raise StoreError("disk gone")

        def pin_if_absent(self, u, s, source=""):
            raise AssertionError("never reached: no pin is asked for in unique mode")
    svc = service(policy(), Broken())
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            assert svc.decide(domain(), op="prepare", what="x", rewrite=False).decision.serial_policy == UUID
    assert sum("pin store unreadable" in m for m in caplog.messages) == 1


def test_read_only_service_reads_pins_and_never_makes_one():
    made = []

    def lookup(u):
        return "LEGACY-9" if u == UUID else None
    ro = DecisionService.read_only(policy("[policy]\nmode = preserve\n"), lookup)
    ev = ro.decide(domain(), op="explain", what="x", rewrite=False)
    assert (ev.decision.rule, ev.decision.serial_policy) == ("pin", "LEGACY-9")
    other = domain().replace(UUID.encode(), b"00000000-0000-4000-8000-000000000001")
    ev = ro.decide(other, op="explain", what="x", rewrite=False)
    assert ev.decision.new_pin == HOST_SERIAL and not made      # preserve would pin; read-only does not
    ro.record("explain", ev, "x", "y")                          # no audit log: nothing to write, no error


def test_every_audit_field_is_an_audit_column_and_record_fills_them(tmp_path):
    ev = evaluate(domain(), policy())
    fields = audit_fields(ev)
    assert set(fields) <= set(COLUMNS)
    audit = AuditLog(str(tmp_path))
    service(policy(), audit=audit).record("prepare", ev, "allow", "why")
    (row,) = query(str(tmp_path))
    assert (row["operation"], row["action"], row["detail"], row["instance_uuid"], row["serial_seen"],
            row["serial_wanted"], row["verdict"]) == ("prepare", "allow", "why", UUID, HOST_SERIAL, UUID, "rewrite")
    service(policy(), audit=audit).record_error("define", "forwarded", "bad XML", domain="d1")
    rows = query(str(tmp_path))
    assert (rows[-1]["verdict"], rows[-1]["action"], rows[-1]["domain"]) == ("error", "forwarded", "d1")

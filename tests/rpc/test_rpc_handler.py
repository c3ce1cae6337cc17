"""hookd.rpc.handler: the proxy's decision callback (DefinitionRewriter) with a real audit
log and a real SQLite pin store in tmp_path: the rewritten XML or None, the audit row of
each call (operation `define` or `migrate-persistent`), on_error's row.

(Named test_rpc_handler.py: tests/hookpath/test_handler.py has the basename
test_handler.py, and pytest imports test files by basename.)
"""

from __future__ import annotations

import pytest

from hookd.config import build_config, parse_ini
from hookd.errors import XmlError
from hookd.rpc.handler import AUDIT_OPERATION, DefinitionRewriter
from hookd.rpc.procedures import CODECS
from hookd.stores.audit import AuditLog, query
from hookd.stores.pins import SqlitePinStore
from hookd.xml.domain import read_domain
from tests.harness.domains import HOST_SERIAL, UUID, domain


def config(text=""):
    sections = {}
    parse_ini(text, "t.conf", sections)
    return build_config(sections, ("t.conf",))


def rewriter(tmp_path, text=""):
    cfg = config(text)
    return DefinitionRewriter(lambda: cfg, AuditLog(str(tmp_path / "audit")),
                              SqlitePinStore(str(tmp_path / "pins")))


def rows(tmp_path):
    return query(str(tmp_path / "audit"))


def test_a_host_serial_definition_is_rewritten_and_recorded(tmp_path):
    r = rewriter(tmp_path)
    out = r.rewrite("define", domain().decode())
    assert isinstance(out, str)
    facts = read_domain(out.encode())[1]
    assert facts.sysinfo.system_serial == UUID and facts.uuid == UUID
    (row,) = rows(tmp_path)
    assert (row["operation"], row["action"], row["verdict"], row["serial_seen"], row["serial_wanted"],
            row["instance_uuid"], row["domain"], row["nova_name"]) == \
        ("define", "rewritten", "rewrite", HOST_SERIAL, UUID, UUID, "instance-00000001", "web-1")
    assert row["detail"].startswith("define: ")
    assert r.counters == {"rewrite": 1}


def test_a_compliant_definition_is_forwarded_as_it_is(tmp_path):
    r = rewriter(tmp_path)
    assert r.rewrite("define-flags", domain(serial=UUID).decode()) is None
    (row,) = rows(tmp_path)
    assert (row["operation"], row["action"], row["verdict"], row["serial_seen"]) == \
        ("define", "unchanged", "compliant", UUID)
    assert row["detail"].startswith("define-flags: ")
    assert r.counters == {"compliant": 1}


def test_a_non_nova_definition_is_forwarded_and_recorded(tmp_path):
    r = rewriter(tmp_path)
    assert r.rewrite("create", domain(nova=None).decode()) is None
    (row,) = rows(tmp_path)
    assert (row["operation"], row["action"], row["verdict"]) == ("define", "unchanged", "not-nova")


@pytest.mark.parametrize("op,operation", [
    ("define", "define"), ("define-flags", "define"), ("create", "define"), ("create-with-files", "define"),
    ("migrate-persistent", "migrate-persistent")])
def test_audit_operation_of_each_proxy_op(tmp_path, op, operation):
    r = rewriter(tmp_path)
    assert r.rewrite(op, domain().decode()) is not None
    r.on_error(op, "<x/>", ValueError("boom"))
    assert [row["operation"] for row in rows(tmp_path)] == [operation, operation]


def test_every_op_the_proxy_sends_has_an_audit_operation():
    assert {c.op for c in CODECS.values()} == set(AUDIT_OPERATION)


def test_an_op_without_an_audit_name_is_recorded_as_it_is(tmp_path):
    r = rewriter(tmp_path)
    r.rewrite("define-future", domain().decode())
    assert rows(tmp_path)[0]["operation"] == "define-future"


def test_non_ascii_xml_round_trips_as_text(tmp_path):
    r = rewriter(tmp_path)
    out = r.rewrite("define", domain(nova_name="wéb-☃").decode())
    assert "<nova:name>wéb-☃</nova:name>" in out


def test_on_error_records_an_error_row_forwarded(tmp_path):
    r = rewriter(tmp_path)
    with pytest.raises(XmlError) as err:
        r.rewrite("define", "<domain><name>x</name></domain>")
    assert rows(tmp_path) == []                     # no row until the proxy reports it
    r.on_error("define", "<domain><name>x</name></domain>", err.value)
    (row,) = rows(tmp_path)
    assert (row["operation"], row["verdict"], row["action"]) == ("define", "error", "forwarded")
    assert row["detail"] == "define: XmlError: define XML: domain has no <uuid>"
    assert (row["domain"], row["instance_uuid"], row["serial_wanted"]) == (None, None, None)
    assert r.counters == {"error": 1}


def test_on_error_of_a_migration(tmp_path):
    r = rewriter(tmp_path)
    r.on_error("migrate-persistent", "", RuntimeError("re-encode failed"))
    (row,) = rows(tmp_path)
    assert (row["operation"], row["verdict"], row["action"], row["detail"]) == \
        ("migrate-persistent", "error", "forwarded", "migrate-persistent: RuntimeError: re-encode failed")


def test_preserve_pins_in_the_real_store_and_the_pin_then_decides(tmp_path):
    r = rewriter(tmp_path, "[policy]\nmode = preserve\n")
    assert r.rewrite("define", domain().decode()) is None            # first sight: the serial it has
    pins = SqlitePinStore(str(tmp_path / "pins")).all()
    assert pins[UUID]["serial"] == HOST_SERIAL and pins[UUID]["source"] == "preserve:define"
    out = r.rewrite("migrate-persistent", domain(serial="OTHER-HOST").decode())
    assert read_domain(out.encode())[1].sysinfo.system_serial == HOST_SERIAL
    assert [(row["operation"], row["action"]) for row in rows(tmp_path)] == \
        [("pin", "pinned"), ("define", "unchanged"), ("migrate-persistent", "rewritten")]
    assert rows(tmp_path)[-1]["rule"] == "pin"


def test_the_config_is_read_at_each_call(tmp_path):
    current = [config()]
    r = DefinitionRewriter(lambda: current[0], AuditLog(str(tmp_path / "audit")))
    assert r.rewrite("define", domain().decode()) is not None          # unique: rewritten
    current[0] = config("[policy]\nmode = host\n")                    # a reload
    assert r.rewrite("define", domain().decode()) is None
    assert r.counters == {"rewrite": 1, "compliant": 1}

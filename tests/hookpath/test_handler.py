"""Boot-time verification decisions, without sockets (the integration tests add libvirt)."""

from __future__ import annotations

import pytest

from hookd.stores.audit import AuditLog, query
from hookd.config import build_config, parse_ini
from hookd.hookpath.handler import HookHandler
from hookd.hookpath.shimwire import HookReply, HookRequest
from tests.harness.domains import HOST_SERIAL, UUID, domain


def handler(tmp_path, text=""):
    sections = {}
    parse_ini(text, "t.conf", sections)
    cfg = build_config(sections, ("t.conf",))
    return HookHandler(lambda: cfg, AuditLog(str(tmp_path))), tmp_path


def call(h, op, xml=None, **kw):
    fields = dict(op=op, sub="begin", domain="instance-00000001", extra="-", xml=xml or domain())
    fields.update(kw)
    return h.handle(HookRequest(**fields))


def test_warn_allows_and_records(tmp_path):
    h, state = handler(tmp_path)
    assert call(h, "prepare").action == "allow"
    (row,) = query(str(state))
    assert (row["operation"], row["action"], row["serial_seen"], row["serial_wanted"]) == \
        ("prepare", "warn", HOST_SERIAL, UUID)


def test_deny_message_names_instance_serials_and_fix(tmp_path):
    h, _ = handler(tmp_path, "[enforce]\non_mismatch = deny\n")
    reply = call(h, "prepare")
    assert reply.action == "deny"
    m = reply.reason
    assert "\n" not in m
    for part in (UUID, "'web-1'", "instance-00000001", HOST_SERIAL, f"wants '{UUID}'", "define it with that serial",
                 "hookd's libvirt socket"):
        assert part in m


@pytest.mark.parametrize("incoming", ["migrate", "restore"])
def test_prepare_after_incoming_is_drift_not_deny(tmp_path, incoming):
    h, state = handler(tmp_path, "[enforce]\non_mismatch = deny\n")
    reply = call(h, incoming)
    assert reply == HookReply("allow")                     # no XML: the serial is never changed there
    assert call(h, "prepare").action == "allow"
    assert [r["action"] for r in query(str(state))] == ["drift", "drift"]
    # the marker is used once: a later cold start is judged normally
    assert call(h, "prepare").action == "deny"


def test_incoming_marker_is_per_instance(tmp_path):
    h, _ = handler(tmp_path, "[enforce]\non_mismatch = deny\n")
    other = domain(uuid="00000000-0000-4000-8000-00000000abcd")
    call(h, "migrate", other)
    assert call(h, "prepare").action == "deny"


def test_not_nova_and_not_applicable_allowed(tmp_path):
    h, state = handler(tmp_path, "[enforce]\non_mismatch = deny\n")
    assert call(h, "prepare", domain(nova=None)).action == "allow"
    assert call(h, "prepare", domain(arch="aarch64", sysinfo=False, smbios=None)).action == "allow"
    assert [r["verdict"] for r in query(str(state))] == ["not-nova", "not-applicable"]


def test_unreadable_xml_is_allowed_and_recorded_as_error(tmp_path):
    h, state = handler(tmp_path, "[enforce]\non_mismatch = deny\n")
    assert call(h, "prepare", b"<domain><uuid>x").action == "allow"
    (row,) = query(str(state))
    assert row["verdict"] == "error" and "not well-formed" in row["detail"]


@pytest.mark.parametrize("op,sub", [("started", "begin"), ("prepare", "end"), ("reconnect", "begin"),
                                    ("release", "end")])
def test_unsupported_requests_are_allowed_and_not_recorded(tmp_path, op, sub):
    h, state = handler(tmp_path, "[enforce]\non_mismatch = deny\n")
    assert call(h, op, sub=sub) == HookReply("allow")
    assert query(str(state)) == [] and h.counters["bad-request"] == 1


def test_audit_queues_while_disk_refuses_and_flushes_later(tmp_path):
    state = tmp_path / "s"
    log = AuditLog(str(state))
    log.record(operation="prepare", verdict="compliant")
    # Make the database unwritable the way a full/RO disk does: sqlite errors on write.
    log._db.close()
    state.chmod(0o500)
    (state / "audit.sqlite").chmod(0o400)
    log._db = None
    import sqlite3
    try:
        log._open = lambda: setattr(log, "_db", sqlite3.connect(f"file:{state}/audit.sqlite?mode=ro", uri=True,
                                                                  isolation_level=None))
        log.record(operation="prepare", verdict="rewrite")
        log.record(operation="prepare", verdict="rewrite")
        assert log.failing is not None and log.pending == 2
    finally:
        state.chmod(0o750)
        (state / "audit.sqlite").chmod(0o600)
    del log._open                       # back to the real opener
    log._db = None
    assert log.flush() and log.pending == 0 and log.failing is None
    assert [r["verdict"] for r in query(str(state))] == ["compliant", "rewrite", "rewrite"]


def test_request_answered_after_the_hooks_deadline_is_recorded_as_expired(tmp_path):
    """A shim that gave up (on_unreachable decided) must not be recorded as a decision."""
    import time
    h, state = handler(tmp_path, "[enforce]\non_mismatch = deny\n")
    call(h, "prepare", deadline=time.time() - 1)
    call(h, "prepare", deadline=time.time() + 60)
    assert [r["action"] for r in query(str(state))] == ["expired", "deny"]

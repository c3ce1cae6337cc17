"""hookd.virt.events without libvirtd: event and detail names, and the audit rows the
worker sends for lifecycle events and resyncs, built by RowBuilder.

Domains and connections are small fakes offering only the calls RowBuilder may make
(name, UUIDString, XMLDesc, ID, state; listAllDomains): a fake is enough here because
the real-libvirt path (a namespaced libvirtd's events, through the worker and the
daemon's audit log) is covered by tests/integration/test_events.py. (This file is not
tests/virt/test_events.py: pytest imports test files by basename, and that one exists.)
No QEMU runs for these UUIDs, so boot keys have no start time (qemuproc finds none).
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from collections import OrderedDict

import libvirt
import pytest

from hookd.config import build_config, parse_ini
from hookd.errors import StoreError
from hookd.stores.audit import COLUMNS
from hookd.virt import events
from hookd.virt.events import RECORDED, RowBuilder, event_names, remember
from hookd.virt.reconciler import ReconcileError
from tests.harness.domains import HOST_SERIAL, PROJECT, domain


def config(text=""):
    sections = {}
    parse_ini(text, "t.conf", sections)
    return build_config(sections, ("t.conf",))


def lv_error(code, message="fake libvirt error"):
    err = libvirt.libvirtError(message)
    err.err = (code, 0, message, 2, None, None, None, 0, 0)
    return err


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


class FakeDomain:
    """Only what RowBuilder may call; XMLDesc records its flags (it must never ask for more)."""

    def __init__(self, xml: bytes, *, uuid: str, name: str = "instance-00000001", domain_id: int = 7,
                 xml_error=None, state=(libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED)):
        self.xml = xml
        self.uuid = uuid
        self._name = name
        self.domain_id = domain_id
        self.xml_error = xml_error
        self._state = state
        self.xml_flags = []

    def name(self):
        return self._name

    def UUIDString(self):
        return self.uuid

    def XMLDesc(self, flags=0):
        self.xml_flags.append(flags)
        if self.xml_error is not None:
            raise self.xml_error
        return self.xml.decode()

    def ID(self):
        if isinstance(self.domain_id, Exception):
            raise self.domain_id
        return self.domain_id

    def state(self):
        if isinstance(self._state, Exception):
            raise self._state
        return list(self._state)


class FakeConn:
    def __init__(self, doms, error=None):
        self.doms = doms
        self.error = error
        self.flags = []

    def listAllDomains(self, flags=0):
        self.flags.append(flags)
        if self.error is not None:
            raise self.error
        return list(self.doms)


class Builder:
    """A RowBuilder with a pin table, a configurable pin failure and liveness."""

    def __init__(self, text="", pins=None, pin_error=None, alive=True):
        self.cfg = config(text)
        self.pins = dict(pins or {})
        self.pin_error = pin_error
        self.alive = alive
        self.asked = []
        self.rows = RowBuilder(lambda: self.cfg, self._lookup, lambda: self.alive)

    async def _lookup(self, uuid):
        self.asked.append(uuid)
        if self.pin_error is not None:
            raise self.pin_error
        return self.pins.get(uuid)

    def event(self, dom, name, detail="x", stamp="2024-01-31T10:20:30Z"):
        return run(self.rows.event_row(stamp, dom, name, detail))


@pytest.fixture
def uid():
    return str(uuidlib.uuid4())


def nova_dom(uid, **kw):
    kw.setdefault("nova_name", "web-1")
    return FakeDomain(domain(uuid=uid, serial=kw.pop("serial", HOST_SERIAL), **kw), uuid=uid)


# ------------------------------------------------------------------ names
def test_event_names_of_known_numbers():
    assert event_names(libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED) == \
        ("started", "booted")
    assert event_names(libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED) == \
        ("stopped", "destroyed")
    assert event_names(libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_DEFINED_ADDED) == \
        ("defined", "added")
    assert event_names(libvirt.VIR_DOMAIN_EVENT_UNDEFINED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED) == \
        ("undefined", "removed")
    assert event_names(libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED) == \
        ("suspended", "paused")


def test_event_names_of_unknown_numbers():
    assert event_names(9999, 3) == ("event-9999", "detail-3")
    assert event_names(libvirt.VIR_DOMAIN_EVENT_STARTED, 9999) == ("started", "detail-9999")


def test_only_lifecycle_events_are_recorded_and_no_last_sentinel_is_a_name():
    assert RECORDED == {"started", "stopped", "defined", "undefined"}
    assert RECORDED <= set(events.EVENT_NAMES.values())
    assert not any("last" == n for names in events.DETAIL_NAMES.values() for n in names.values())


def test_remember_is_bounded_and_keeps_the_most_recent(monkeypatch):
    monkeypatch.setattr(events, "CACHE_MAX", 2)
    cache = OrderedDict()
    for key in ("a", "b", "c"):
        remember(cache, key, key.upper())
    assert list(cache) == ["b", "c"]
    remember(cache, "b", "B2")                       # seen again: the newest now
    remember(cache, "d", "D")
    assert cache == OrderedDict([("b", "B2"), ("d", "D")])


# ------------------------------------------------------------------ lifecycle rows
def test_defined_row_has_the_decision_of_the_saved_definition(uid):
    b = Builder()
    dom = nova_dom(uid)
    row = b.event(dom, "defined", "added")
    assert dom.xml_flags == [libvirt.VIR_DOMAIN_XML_INACTIVE]      # the saved definition, not the live one
    assert (row["operation"], row["action"], row["time"]) == ("defined", "added", "2024-01-31T10:20:30Z")
    assert (row["domain"], row["instance_uuid"]) == ("instance-00000001", uid)
    assert (row["serial_seen"], row["serial_wanted"], row["verdict"], row["rule"]) == \
        (HOST_SERIAL, uid, "rewrite", "default")
    assert (row["nova_name"], row["project"], row["flavor"]) == ("web-1", PROJECT, "m1.small")
    assert row["detail"] == ("libvirt event DEFINED/ADDED; serial_seen is the saved definition's "
                             "(next cold boot)")
    assert "boot" not in row                          # only a start opens a boot
    assert set(row) <= set(COLUMNS)                   # the audit's columns, nothing else
    assert b.asked == [uid]


def test_started_row_has_the_boot_key_and_the_running_serial(uid):
    b = Builder()
    dom = nova_dom(uid, serial=uid)
    dom.domain_id = 42
    row = b.event(dom, "started", "booted")
    assert dom.xml_flags == [0]                      # the live XML
    assert row["boot"].endswith(":dom42") and row["since"] is None   # no QEMU runs for this UUID
    assert (row["serial_seen"], row["serial_wanted"], row["verdict"]) == (uid, uid, "compliant")
    assert row["detail"] == "libvirt event STARTED/BOOTED; serial_seen is the running guest's"


def test_the_configured_policy_and_the_pin_decide_serial_wanted(uid):
    b = Builder("[policy]\nmode = host\n")
    row = b.event(nova_dom(uid), "defined")
    assert (row["serial_wanted"], row["verdict"], row["rule"]) == (HOST_SERIAL, "compliant", "default")
    b.pins[uid] = "PINNED-1"
    row = b.event(nova_dom(uid), "defined")
    assert (row["serial_wanted"], row["verdict"], row["rule"]) == ("PINNED-1", "rewrite", "pin")
    b.cfg = config("[policy]\nmode = unique\n")      # read at every row: a reload applies at once
    del b.pins[uid]
    assert b.event(nova_dom(uid), "defined")["serial_wanted"] == uid


def test_stopped_and_undefined_rows_carry_the_facts_remembered(uid):
    b = Builder()
    b.event(nova_dom(uid, nova_name="db-7", flavor="m1.large"), "started", "booted")
    gone = FakeDomain(b"", uuid=uid, xml_error=AssertionError("a gone domain's XML is not read"))
    stopped = b.event(gone, "stopped", "destroyed")
    assert (stopped["nova_name"], stopped["project"], stopped["flavor"]) == ("db-7", PROJECT, "m1.large")
    assert (stopped["operation"], stopped["action"]) == ("stopped", "destroyed")
    assert stopped["detail"] == "libvirt event STOPPED/DESTROYED"
    # The ledger adds the serial and the boot; the row does not guess them.
    assert "serial_seen" not in stopped and "boot" not in stopped and "verdict" not in stopped
    undefined = b.event(gone, "undefined", "removed")
    assert undefined["nova_name"] == "db-7"
    assert uid not in b.rows.facts                   # undefined: forgotten
    again = b.event(gone, "stopped", "destroyed")
    assert "nova_name" not in again and again["instance_uuid"] == uid
    assert gone.xml_flags == []


def test_a_stop_of_a_domain_never_seen_names_only_what_the_event_says(uid):
    row = Builder().event(FakeDomain(b"", uuid=uid, name="instance-9"), "stopped", "shutdown")
    assert row == {"time": "2024-01-31T10:20:30Z", "operation": "stopped", "domain": "instance-9",
                   "instance_uuid": uid, "action": "shutdown", "detail": "libvirt event STOPPED/SHUTDOWN"}


def test_pin_lookup_failing_gives_the_documented_note(uid):
    b = Builder(pin_error=StoreError("pin store at /x unreadable"))
    row = b.event(nova_dom(uid), "defined", "updated")
    assert row["detail"] == ("libvirt event DEFINED/UPDATED; serial_wanted decided without the pin store "
                             "(pin store at /x unreadable); serial_seen is the saved definition's (next cold boot)")
    assert (row["serial_wanted"], row["rule"]) == (uid, "default")     # decided as if unpinned


def test_unreadable_definition_keeps_the_event_row(uid):
    b = Builder()
    gone = FakeDomain(b"", uuid=uid, xml_error=lv_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found"))
    row = b.event(gone, "defined", "added")
    assert row["detail"] == "libvirt event DEFINED/ADDED; definition not readable (Domain not found)"
    assert "serial_seen" not in row and uid not in b.rows.facts
    bad = FakeDomain(b"<domain><name>x</name></domain>", uuid=uid)
    row = b.event(bad, "defined", "added")
    assert row["detail"].startswith("libvirt event DEFINED/ADDED; cannot read the definition: ")
    assert "no <uuid>" in row["detail"]


def test_a_failed_read_on_a_dead_connection_raises(uid):
    dom = FakeDomain(b"", uuid=uid, xml_error=lv_error(libvirt.VIR_ERR_INTERNAL_ERROR, "broken pipe"))
    with pytest.raises(ReconcileError, match="libvirt connection lost"):
        Builder(alive=False).event(dom, "defined")
    row = Builder(alive=True).event(dom, "defined")      # alive: only this domain's problem
    assert "definition not readable (broken pipe)" in row["detail"]


def test_a_started_domain_gone_before_its_id_is_read_has_no_boot(uid):
    b = Builder()
    dom = nova_dom(uid)
    dom.domain_id = lv_error(libvirt.VIR_ERR_NO_DOMAIN)
    row = b.event(dom, "started", "booted")
    assert (row["boot"], row["since"]) == (None, None)
    dom.domain_id = -1                                       # inactive
    assert b.event(dom, "started", "booted")["boot"] is None


# ------------------------------------------------------------------ resync
def test_resync_rows_list_running_domains_and_pending_ones():
    running_uid, starting_uid, gone_uid, migrating_uid = (str(uuidlib.uuid4()) for _ in range(4))
    running = nova_dom(running_uid, nova_name="web-2")
    starting = nova_dom(starting_uid)
    starting._state = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP)
    migrating = nova_dom(migrating_uid)
    migrating._state = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION)
    gone = nova_dom(gone_uid)
    gone._state = lv_error(libvirt.VIR_ERR_NO_DOMAIN)
    paused = nova_dom(str(uuidlib.uuid4()))
    paused._state = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER)   # started, then paused
    conn = FakeConn([running, starting, gone, migrating, paused])
    b = Builder()
    rows, pending = run(b.rows.resync_rows(conn, "a reconnect"))
    assert conn.flags == [libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE]
    assert pending == [starting_uid, migrating_uid]
    assert [r["instance_uuid"] for r in rows] == [running_uid, paused.uuid]
    row = rows[0]
    assert row["boot"].endswith(":dom7") and row["since"] is None
    assert (row["serial_seen"], row["serial_wanted"], row["nova_name"]) == (HOST_SERIAL, running_uid, "web-2")
    assert row["detail"].startswith("found running by the resync after a reconnect, its STARTED event missed; "
                                    "running since an unknown time (QEMU process not visible)")
    assert row["detail"].endswith("; serial_seen is the running guest's")
    assert b.rows.facts[running_uid]["nova_name"] == "web-2"     # for its later STOPPED row
    assert running.xml_flags == [0] and starting.xml_flags == []


def test_resync_that_cannot_list_raises():
    conn = FakeConn([], error=lv_error(libvirt.VIR_ERR_INTERNAL_ERROR, "no connection"))
    with pytest.raises(ReconcileError, match="cannot list running domains"):
        run(Builder().rows.resync_rows(conn, "a reconnect"))

"""The reconciler's decisions on saved definitions, without libvirt.

Domains and connections are small fakes that record every call, so the tests can
say exactly what the reconciler asked libvirt to do (and that it never touched a
running guest or its live definition). tests/integration/test_reconcile.py runs
the same code against a real libvirtd.
"""

from __future__ import annotations

import asyncio

import libvirt
import pytest

from hookd.config import build_config, parse_ini
from hookd.errors import HookdError
from hookd.virt.reconciler import (
    HOOK_HOLD_S,
    XML_FLAGS,
    ReconcileError,
    Reconciler,
    job_in_progress,
    plan,
)
from tests.harness.domains import HOST_SERIAL, UUID, domain

OTHER_UUID = "2c0b8a5e-2c1d-4d7e-9f00-aabbccddee00"


def config(text=""):
    sections = {}
    parse_ini(text, "t.conf", sections)
    return build_config(sections, ("t.conf",))


def lv_error(code, message="fake libvirt error"):
    err = libvirt.libvirtError(message)
    err.err = (code, 0, message, 2, None, None, None, 0, 0)
    return err


class FakeConn:
    def __init__(self, alive=True):
        self.domains = {}
        self.calls = []
        self.alive = alive
        self.define_error = None

    def add(self, dom):
        self.domains[dom.uuid] = dom
        dom.conn = self
        return dom

    def listAllDomains(self, flags=0):
        self.calls.append(("listAllDomains", flags))
        assert flags == libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT
        return [d for d in self.domains.values() if d.persistent]

    def defineXML(self, xml):
        self.calls.append(("defineXML", xml))
        if self.define_error is not None:
            raise self.define_error
        for d in self.domains.values():
            if f"<uuid>{d.uuid}</uuid>" in xml:
                d.saved = xml.encode()
                return d
        raise AssertionError("define of an unknown domain")

    def isAlive(self):
        return 1 if self.alive else 0


class FakeDomain:
    """Only the calls the reconciler may make exist here: anything else is an AttributeError."""

    def __init__(self, xml: bytes, *, uuid=UUID, name="instance-00000001", active=False, persistent=True,
                 job=libvirt.VIR_DOMAIN_JOB_NONE, job_error=None):
        self.saved = xml
        self.uuid = uuid
        self._name = name
        self.active = active
        self.persistent = persistent
        self.job = job
        self.job_error = job_error
        self.gone = False
        self.conn = None
        self.calls = []

    def name(self):
        return self._name

    def UUIDString(self):
        return self.uuid

    def connect(self):
        return self.conn

    def _check(self):
        if self.gone:
            raise lv_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found")

    def isPersistent(self):
        self._check()
        return 1 if self.persistent else 0

    def isActive(self):
        self._check()
        return 1 if self.active else 0

    def XMLDesc(self, flags=0):
        self.calls.append(("XMLDesc", flags))
        self._check()
        assert flags & libvirt.VIR_DOMAIN_XML_INACTIVE, "the reconciler reads only the saved definition"
        return self.saved.decode()

    def jobInfo(self):
        self.calls.append(("jobInfo",))
        if self.job_error is not None:
            raise self.job_error
        return [self.job, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]


class Clock:
    def __init__(self):
        self.now = 1000.0
        self.slept = []

    def __call__(self):
        return self.now

    async def sleep(self, s):
        self.slept.append(s)
        self.now += s


def reconciler(cfg=None, **kw):
    rows = []
    clock = Clock()
    cfg = cfg or config()
    r = Reconciler(lambda: cfg, lambda **row: rows.append(row), clock=clock, sleep=clock.sleep, **kw)
    return r, rows, clock


def run(coro):
    return asyncio.run(coro)


def defines(conn):
    return [c for c in conn.calls if c[0] == "defineXML"]


# ------------------------------------------------------------------ plan (pure)

def test_plan_out_of_policy_would_fix_with_rewritten_xml():
    ev, item = plan(domain(), config(), "instance-00000001")
    assert item.as_dict() == {"action": "would-fix", "domain": "instance-00000001", "instance_uuid": UUID,
                              "serial_saved": HOST_SERIAL, "serial_policy": UUID, "detail": item.detail}
    assert f"<entry name='serial'>{UUID}</entry>".encode() in ev.xml.replace(b'"', b"'")


def test_plan_compliant_is_left_alone():
    ev, item = plan(domain(serial=UUID), config(), "x")
    assert item.action == "compliant" and ev.xml is None


@pytest.mark.parametrize("xml,verdict", [
    (domain(nova=None), "not-nova"),
    (domain(arch="aarch64", sysinfo=False, smbios=None), "not-applicable"),
])
def test_plan_skips_what_hookd_has_no_say_over(xml, verdict):
    ev, item = plan(xml, config(), "x")
    assert item.action == "skipped" and item.detail.startswith(verdict) and ev.xml is None


def test_plan_host_mode_keeps_legacy_serial():
    _, item = plan(domain(), config("[policy]\nmode = host\n"), "x")
    assert item.action == "compliant" and item.serial_policy == HOST_SERIAL


def test_plan_unreadable_definition_is_skipped():
    ev, item = plan(b"<domain><name>x</name>", config(), "x")
    assert ev is None and item.action == "skipped" and "cannot read" in item.detail


# ------------------------------------------------------------------ one domain

def test_fix_defines_rewritten_inactive_xml_and_records_it():
    r, rows, _ = reconciler()
    conn = FakeConn()
    dom = conn.add(FakeDomain(domain(), active=True))
    item = run(r.reconcile_domain(dom, fix=True, why="test"))
    assert item.action == "fixed" and (item.serial_saved, item.serial_policy) == (HOST_SERIAL, UUID)
    (define,) = defines(conn)
    assert f">{UUID}</entry>" in define[1] and HOST_SERIAL not in define[1]
    assert all(flags == XML_FLAGS for op, *rest in dom.calls if op == "XMLDesc" for flags in rest)
    (row,) = rows
    assert (row["operation"], row["action"], row["serial_seen"], row["serial_wanted"], row["instance_uuid"]) == \
        ("reconcile", "fixed", HOST_SERIAL, UUID, UUID)
    assert "running guest keeps its serial" in row["detail"] and row["detail"].startswith("test:")
    assert r.fixed == 1


def test_fixed_definition_is_not_redefined_again():
    """Our own define raises a DEFINED event that comes back here: it must find nothing to do."""
    r, rows, _ = reconciler()
    conn = FakeConn()
    dom = conn.add(FakeDomain(domain()))
    assert run(r.reconcile_domain(dom, fix=True, why="t")).action == "fixed"
    assert run(r.reconcile_domain(dom, fix=True, why="after defined/updated event")).action == "compliant"
    assert len(defines(conn)) == 1 and len(rows) == 1


def test_dry_run_changes_nothing():
    r, rows, _ = reconciler()
    conn = FakeConn()
    dom = conn.add(FakeDomain(domain()))
    assert run(r.reconcile_domain(dom, fix=False, why="t")).action == "would-fix"
    assert defines(conn) == [] and rows == [] and dom.saved == domain()


def test_transient_and_vanished_domains_are_skipped():
    r, _, _ = reconciler()
    conn = FakeConn()
    transient = conn.add(FakeDomain(domain(), persistent=False, active=True))
    gone = conn.add(FakeDomain(domain(), uuid=OTHER_UUID))
    gone.gone = True
    assert run(r.reconcile_domain(transient, fix=True, why="t")).detail.startswith("transient")
    item = run(r.reconcile_domain(gone, fix=True, why="t"))
    assert (item.action, item.detail, item.retry) == ("skipped", "domain disappeared", False)
    assert defines(conn) == [] and transient.calls == []


@pytest.mark.parametrize("kw,why", [
    ({"job": libvirt.VIR_DOMAIN_JOB_UNBOUNDED}, "libvirt job in progress"),
    ({"job_error": lv_error(libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
                            "migration statistics are available only on the source host")},
     "incoming migration in progress"),
])
def test_domain_in_a_job_or_incoming_migration_is_put_off(kw, why):
    r, rows, _ = reconciler()
    conn = FakeConn()
    dom = conn.add(FakeDomain(domain(), active=True, **kw))
    for fix in (True, False):
        item = run(r.reconcile_domain(dom, fix=fix, why="t"))
        assert (item.action, item.retry) == ("skipped", True) and item.detail.startswith(why)
    assert defines(conn) == [] and rows == []
    dom.job, dom.job_error = libvirt.VIR_DOMAIN_JOB_NONE, None
    assert run(r.reconcile_domain(dom, fix=True, why="t")).action == "fixed"


def test_job_check_only_for_running_domains():
    dom = FakeDomain(domain(), active=False, job_error=lv_error(libvirt.VIR_ERR_OPERATION_INVALID))
    assert job_in_progress(dom) is None
    dom.calls.clear()
    r, _, _ = reconciler()
    FakeConn().add(dom)
    assert run(r.reconcile_domain(dom, fix=True, why="t")).action == "fixed"
    assert ("jobInfo",) not in dom.calls


def test_hook_call_holds_the_domain_until_started_or_timeout():
    r, _, clock = reconciler()
    conn = FakeConn()
    dom = conn.add(FakeDomain(domain()))
    r.note_hook(UUID, "prepare")
    item = run(r.reconcile_domain(dom, fix=True, why="t"))
    assert (item.action, item.retry) == ("skipped", True) and "prepare hook call" in item.detail
    assert dom.calls == []          # not even read: its hook holds libvirt's lock on it
    clock.now += 1
    r.note_settled(UUID)            # its STARTED event
    assert run(r.reconcile_domain(dom, fix=True, why="t")).action == "fixed"
    # A denied start raises no event: the hold ends after HOOK_HOLD_S anyway.
    other = conn.add(FakeDomain(domain(uuid=OTHER_UUID), uuid=OTHER_UUID))
    r.note_hook(OTHER_UUID.upper(), "prepare")
    assert run(r.reconcile_domain(other, fix=True, why="t")).action == "skipped"
    clock.now += HOOK_HOLD_S + 0.1
    assert run(r.reconcile_domain(other, fix=True, why="t")).action == "fixed"


def test_started_event_before_the_hook_note_arrives_still_releases_it():
    """The daemon's note may be read after the STARTED event it preceded: times decide."""
    r, _, clock = reconciler()
    conn = FakeConn()
    conn.add(FakeDomain(domain()))
    hook_time = clock.now
    clock.now += 0.5
    r.note_settled(UUID)                          # event seen first...
    r.note_hook(UUID, "prepare", when=hook_time)  # ...the earlier hook call's note later
    assert r.hook_pending(UUID) is None
    # A hook call after the last STARTED holds again.
    r.note_hook(UUID, "prepare", when=clock.now + 0.1)
    assert r.hook_pending(UUID) is not None


def test_defines_are_rate_limited():
    r, rows, clock = reconciler(max_defines_per_s=10)
    conn = FakeConn()
    for i in range(25):
        u = f"00000000-0000-4000-8000-{i:012d}"
        conn.add(FakeDomain(domain(uuid=u, name=f"instance-{i:08x}"), uuid=u, name=f"instance-{i:08x}"))
    t0 = clock.now
    items = run(r.sweep(conn, fix=True, why="t"))
    assert [i.action for i in items] == ["fixed"] * 25 and len(defines(conn)) == 25
    assert clock.now - t0 == pytest.approx(2.4)     # the first define at once, then 10 per second


def test_sweep_counts_and_skips_compliant_and_non_nova():
    r, rows, _ = reconciler()
    conn = FakeConn()
    conn.add(FakeDomain(domain(name="b-legacy"), name="b-legacy"))
    conn.add(FakeDomain(domain(uuid=OTHER_UUID, serial=OTHER_UUID, name="a-good"), uuid=OTHER_UUID,
                        name="a-good"))
    u3 = "3c0b8a5e-2c1d-4d7e-9f00-aabbccddee00"
    conn.add(FakeDomain(domain(uuid=u3, nova=None, name="c-other"), uuid=u3, name="c-other"))
    items = run(r.sweep(conn, fix=False, why="hookctl reconcile --dry-run"))
    assert [(i.domain, i.action) for i in items] == [("a-good", "compliant"), ("b-legacy", "would-fix"),
                                                     ("c-other", "skipped")]
    assert r.sweeps == 1 and r.fixed == 0 and rows == []
    assert r.last_sweep["checked"] == 3 and r.last_sweep["would-fix"] == 1 and r.last_sweep["dry_run"]
    run(r.sweep(conn, fix=True, why="periodic"))
    assert r.sweeps == 2 and r.fixed == 1 and r.last_sweep["fixed"] == 1 and r.last_sweep["why"] == "periodic"


def test_refused_define_is_reported_not_raised():
    r, rows, _ = reconciler()
    conn = FakeConn()
    conn.define_error = lv_error(libvirt.VIR_ERR_XML_ERROR, "XML error: bad thing")
    dom = conn.add(FakeDomain(domain()))
    item = run(r.reconcile_domain(dom, fix=True, why="t"))
    assert item.action == "skipped" and "libvirt refused" in item.detail and r.fixed == 0
    assert [row["action"] for row in rows] == ["failed"]


def test_lost_connection_abandons_the_sweep():
    r, _, _ = reconciler()
    conn = FakeConn(alive=False)
    conn.define_error = lv_error(libvirt.VIR_ERR_INTERNAL_ERROR, "client socket is closed")
    conn.add(FakeDomain(domain()))
    with pytest.raises(ReconcileError, match="connection lost"):
        run(r.sweep(conn, fix=True, why="t"))


def test_definition_changed_while_waiting_is_read_again():
    """Between the first look and the define (rate limit), someone wrote a compliant definition."""
    r, rows, clock = reconciler(max_defines_per_s=1)
    conn = FakeConn()
    dom = conn.add(FakeDomain(domain()))
    run(r.reconcile_domain(dom, fix=True, why="t"))       # uses up this second's define
    dom.saved = domain()
    real_sleep = clock.sleep

    async def sleep_and_redefine(s):
        dom.saved = domain(serial=UUID)                   # Nova redefined it meanwhile
        await real_sleep(s)

    r._sleep = sleep_and_redefine
    item = run(r.reconcile_domain(dom, fix=True, why="t"))
    assert item.action == "compliant" and len(defines(conn)) == 1


# ------------------------------------------------------------------ pins

def test_plan_pin_decides_before_the_mode():
    _, item = plan(domain(), config(), "x", pin="LIC-0001")
    assert (item.action, item.serial_policy) == ("would-fix", "LIC-0001")
    _, item = plan(domain(serial="LIC-0001"), config(), "x", pin="LIC-0001")
    assert item.action == "compliant"       # not "fixed" to the UUID: the hook path agrees


def test_pins_come_from_the_lookup_and_a_failed_lookup_changes_nothing():
    asked = []
    pins = {UUID: "LIC-0001"}
    failing = False

    async def lookup(uuid):
        asked.append(uuid)
        if failing:
            raise HookdError("no answer from the daemon within 5 s")
        return pins.get(uuid)

    rows = []
    r = Reconciler(lambda: config(), lambda **row: rows.append(row), pins=lookup, clock=Clock(),
                   sleep=Clock().sleep)
    conn = FakeConn()
    dom = conn.add(FakeDomain(domain()))
    failing = True
    item = run(r.reconcile_domain(dom, fix=True, why="t"))
    assert (item.action, item.retry) == ("skipped", True) and "pin lookup failed" in item.detail
    assert defines(conn) == []
    failing = False
    item = run(r.reconcile_domain(dom, fix=True, why="t"))
    assert (item.action, item.serial_policy) == ("fixed", "LIC-0001")
    assert "<entry name='serial'>LIC-0001</entry>" in defines(conn)[0][1].replace('"', "'")
    assert rows[0]["rule"] == "pin" and asked and set(asked) == {UUID}

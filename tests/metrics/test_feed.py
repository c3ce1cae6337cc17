"""hookd.metrics.feed: the daemon's status tree (as `hookctl status --json` shows it) into
the metrics, including the per-domain compliance gauge and its bounded label set."""

from __future__ import annotations

from hookd import metrics as m
from hookd.metrics.feed import from_status

STATUS = {
    "hook_refused": 2,
    "proxy": {"clients_connected": 1, "clients_total": 7, "clients_refused": 1, "definitions_seen": 4,
              "definitions_rewritten": 3, "errors": 1, "protocol_errors": 0, "upstream_failures": 2,
              "clients_over_limit": 0, "upstream_up": 1,
              "upstream": {"path": "/", "daemon": "configured", "why": "test"}},
    "events": {"connected": True, "reconnects": 3, "events": 11, "worker_pid": 1234, "worker_restarts": 1},
    "reconcile": {"sweeps": 5, "fixed": 2, "last_success": 1700000000.5},
    "store": {"backend": "etcd", "reachable": False, "queued": 4, "cached": 9},
    "audit": {"written": 20, "pending": 0, "dropped": 0},
}
UUID1 = "11111111-1111-1111-1111-111111111111"
UUID2 = "22222222-2222-2222-2222-222222222222"


def test_every_part_of_the_status_lands_in_its_metric():
    domains = {UUID1: ["instance-00000001", "drift"], UUID2: ["instance-00000002", "compliant"],
               "33333333-3333-3333-3333-333333333333": ["plain-vm", "not-nova"]}
    from_status(STATUS, domains, pins=9, reconcile_enabled=True, reconcile_interval=600)
    assert m.PROXY_CONNECTIONS.value() == 7 and m.PROXY_REWRITES.value() == 3
    assert m.PROXY_REFUSED.value("upstream") == 2 and m.PROXY_ERRORS.value("rewrite") == 1
    assert m.UPSTREAM_UP.value() == 1 and m.HOOK_REFUSED.value() == 2
    assert m.WORKER_UP.value() == 1 and m.LIBVIRT_CONNECTED.value() == 1 and m.LIBVIRT_RECONNECTS.value() == 3
    assert m.RECONCILE_FIXES.value() == 2 and m.RECONCILE_LAST_SUCCESS.value() == 1700000000.5
    assert m.RECONCILE_INTERVAL.value() == 600 and m.RECONCILE_ENABLED.value() == 1
    assert m.STORE_UP.value("etcd") == 0 and m.PINS.value() == 9 and m.PINS_QUEUED.value() == 4
    assert [m.DOMAINS.value(s) for s in ("compliant", "drift", "not-nova")] == [1, 1, 1]
    assert m.DOMAIN_STATE.value("instance-00000001", UUID1, "drift") == 1
    # A domain that is not Nova's has no instance_id.
    assert m.DOMAIN_STATE.value("plain-vm", "", "not-nova") == 1


def test_a_domain_gone_from_the_report_leaves_the_gauge():
    from_status(STATUS, {UUID1: ["instance-00000001", "drift"]}, pins=0, reconcile_enabled=True,
                reconcile_interval=600)
    from_status(STATUS, {}, pins=0, reconcile_enabled=True, reconcile_interval=600)
    assert m.DOMAIN_STATE.value("instance-00000001", UUID1, "drift") is None
    assert m.DOMAINS.value("drift") == 0


def test_a_missing_upstream_socket_is_down_whatever_the_last_connection_did(tmp_path):
    st = dict(STATUS, proxy=dict(STATUS["proxy"], upstream={"path": str(tmp_path / "gone"), "daemon": "libvirtd"}))
    from_status(st, {}, pins=0, reconcile_enabled=True, reconcile_interval=600)
    assert m.UPSTREAM_UP.value() == 0
    st = dict(STATUS, proxy=dict(STATUS["proxy"], upstream_up=0))
    from_status(st, {}, pins=0, reconcile_enabled=True, reconcile_interval=600)
    assert m.UPSTREAM_UP.value() == 0
    st = dict(STATUS, proxy=dict(STATUS["proxy"], upstream_up=None))      # no connection yet
    from_status(st, {}, pins=0, reconcile_enabled=True, reconcile_interval=600)
    assert m.UPSTREAM_UP.value() == 1


def test_the_worker_down_and_a_state_it_never_sends_are_handled():
    st = dict(STATUS, events={"connected": False, "worker_pid": None}, reconcile={})
    from_status(st, {UUID1: ["x", "bogus"], UUID2: "not a pair"}, pins=0, reconcile_enabled=False,
                reconcile_interval=0)
    assert m.WORKER_UP.value() == 0 and m.LIBVIRT_CONNECTED.value() == 0
    assert m.RECONCILE_LAST_SUCCESS.value() == 0 and m.RECONCILE_ENABLED.value() == 0
    assert sum(m.DOMAINS.value(s) for s in m.COMPLIANCE_STATES) == 0

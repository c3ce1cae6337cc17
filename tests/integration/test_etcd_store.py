"""The cluster-wide pin store on a real etcd: watch, outage, queue, first writer wins."""

from __future__ import annotations

import json
import threading

import pytest

from tests.conftest import run_hookctl
from tests.harness.hookcall import ask_prepare
from tests.domains import HOST_SERIAL, UUID, domain
from tests.waiting import wait_for

pytestmark = pytest.mark.libvirt      # real services (etcd); runs with the integration suite

OTHER = "00000000-0000-4000-8000-0000000000b1"


def store_conf(etcd, extra=""):
    return f"[store]\nbackend = etcd\nendpoints = {etcd.url}\ntimeout = 1\n{extra}"


def prepare(d, xml):
    return ask_prepare(d.socket, "x", xml, timeout=5)


def status(d):
    return json.loads(run_hookctl("status", "--socket", d.socket, "--json").stdout)


def test_watch_brings_a_pin_made_elsewhere_to_the_daemon(etcd, hookd_factory):
    """A pin written by hookctl (any host) reaches the daemon's cache through the watch."""
    d = hookd_factory(config_extra=store_conf(etcd) + "[enforce]\non_mismatch = deny\n").start()
    wait_for(lambda: status(d)["store"]["reachable"], 15, what="etcd reachable")
    assert prepare(d, domain(serial="LEGACY-1")).action == "deny"    # default policy wants the UUID
    assert run_hookctl("pin", UUID, "LEGACY-1", "--config", d.config).returncode == 0
    wait_for(lambda: prepare(d, domain(serial="LEGACY-1")).action == "allow", 15, what="pin via watch")
    assert d.audit(instance=UUID)[-1]["rule"] == "pin"
    run_hookctl("unpin", UUID, "--config", d.config)
    wait_for(lambda: prepare(d, domain(serial="LEGACY-1")).action == "deny", 15, what="unpin via watch")


def test_outage_decisions_from_cache_and_queued_pins_written_later(etcd, hookd_factory):
    """etcd stopped: decisions go on from the cache, new pins queue; restarted: nothing lost."""
    d = hookd_factory(config_extra=store_conf(etcd, "") + "[policy]\nmode = preserve\n").start()
    wait_for(lambda: status(d)["store"]["reachable"], 15, what="etcd reachable")
    assert prepare(d, domain(serial=HOST_SERIAL)).action == "allow"          # pins HOST_SERIAL
    wait_for(lambda: f"/hookd/pins/{UUID}" in etcd.get_prefix("/hookd/pins/"), 15, what="pin in etcd")
    etcd.stop()
    wait_for(lambda: not status(d)["store"]["reachable"], 15, what="outage noticed")
    # the pinned instance comes back with another host's serial: the cached pin decides
    prepare(d, domain(serial="HOST-B-SERIAL"))
    assert d.audit(instance=UUID)[-1]["serial_wanted"] == HOST_SERIAL
    # a new instance is seen for the first time during the outage: pinned locally, queued
    prepare(d, domain(uuid=OTHER, serial="KEEP-ME"))
    assert status(d)["store"]["queued"] == 1
    etcd.start()
    wait_for(lambda: status(d)["store"]["reachable"] and status(d)["store"]["queued"] == 0, 15, what="queue flushed")
    pins = etcd.get_prefix("/hookd/pins/")
    assert pins[f"/hookd/pins/{OTHER}"]["serial"] == "KEEP-ME"
    assert pins[f"/hookd/pins/{UUID}"]["serial"] == HOST_SERIAL
    audit = etcd.get_prefix("/hookd/audit/")
    assert any(r.get("operation") == "pin" and r.get("instance_uuid") == OTHER for r in audit.values())
    log = d.log_text()
    assert log.count("etcd unreachable") == 1                 # logged once, not per request


def test_two_hosts_adopting_the_same_instance_agree(etcd, hookd_factory):
    """Two daemons pin different serials for one instance while etcd is down: one pin wins everywhere."""
    conf = store_conf(etcd) + "[policy]\nmode = preserve\n"
    a = hookd_factory("a", config_extra=conf).start()
    b = hookd_factory("b", config_extra=conf).start()
    for d in (a, b):
        wait_for(lambda d=d: status(d)["store"]["reachable"], 15, what="etcd reachable")
    etcd.stop()
    for d in (a, b):
        wait_for(lambda d=d: not status(d)["store"]["reachable"], 15, what="outage noticed")
    prepare(a, domain(serial="SERIAL-FROM-A"))
    prepare(b, domain(serial="SERIAL-FROM-B"))
    etcd.start()
    for d in (a, b):
        wait_for(lambda d=d: status(d)["store"]["reachable"] and status(d)["store"]["queued"] == 0,
                 15, what="queues flushed")
    winner = etcd.get_prefix("/hookd/pins/")[f"/hookd/pins/{UUID}"]["serial"]
    assert winner in ("SERIAL-FROM-A", "SERIAL-FROM-B")
    # both now decide with the winner (the loser re-read it)
    for d in (a, b):
        prepare(d, domain(serial="WHATEVER"))
        assert d.audit(instance=UUID)[-1]["serial_wanted"] == winner
    assert status(a)["store"]["conflicts"] + status(b)["store"]["conflicts"] == 1


def test_concurrent_cli_pins_create_exactly_one(etcd, tmp_path):
    """Ten concurrent create-if-absent transactions on one instance: one winner, all agree."""
    from hookd.config import StoreSettings
    from hookd.etcdstore import EtcdPinStore
    settings = StoreSettings(backend="etcd", endpoints=(etcd.url,))
    results = []

    def one(i):
        results.append(EtcdPinStore(settings, host=f"h{i}").pin_if_absent(UUID, f"S-{i}"))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 10


def test_unreachable_etcd_is_one_clear_line_for_hookctl(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text("[store]\nbackend = etcd\nendpoints = http://127.0.0.1:9\ntimeout = 0.5\n")
    res = run_hookctl("pins", "--config", conf)
    assert res.returncode == 1 and res.stdout == b""
    err = res.stderr.decode()
    assert err.startswith("hookctl: error: etcd unreachable (http://127.0.0.1:9:") and err.count("\n") == 1

"""The cluster-wide pin store on a real etcd: watch, outage, queue, first writer wins;
each instance's last boot, one key overwritten in place."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import socket
import threading
import urllib.request
import uuid as uuidlib

import pytest

from tests.harness.lifecycle import store_conf
from tests.harness.run import run_hookctl
from tests.harness.hookcall import ask_prepare
from tests.harness.domains import HOST_SERIAL, UUID, domain
from tests.harness.guest import nova_domain_xml
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.libvirt      # real services (etcd); runs with the integration suite

OTHER = "00000000-0000-4000-8000-0000000000b1"


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
    # the pin's audit row stays in this host's audit log; etcd holds no copy of it
    assert any(r["operation"] == "pin" for r in d.audit(instance=OTHER))
    assert set(etcd.get_prefix("/hookd/")) == {f"/hookd/pins/{UUID}", f"/hookd/pins/{OTHER}"}
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
    from hookd.stores.etcd import EtcdPinStore
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


# ------------------------------------------------------------------ last boots

def etcd_kvs(etcd, prefix: str) -> dict:
    """{key: (value, version)} under `prefix`; version counts the writes since the key was created."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                       "range_end": base64.b64encode(end.encode()).decode()}).encode()
    req = urllib.request.Request(etcd.url + "/v3/kv/range", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        resp = json.loads(r.read())
    return {base64.b64decode(kv["key"]).decode(): (json.loads(base64.b64decode(kv["value"])), int(kv["version"]))
            for kv in resp.get("kvs", [])}


async def until(cond, timeout: float, what: str):
    """tests.harness.waiting.wait_for inside an event loop (the stores under test run in it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def test_last_boot_is_one_key_per_instance_newest_wins_across_hosts(etcd, tmp_path):
    """Two hosts' stores (the daemon's code, its loops, a real etcd) fed by real audit logs:
    N boots of an instance leave one key with the newest boot; a migration's boot on the
    other host replaces it, and a late older boot does not; boots queued in an outage are
    one write; no audit keys; pins go on working; keys stay O(instances)."""
    from hookd.stores.audit import AuditLog
    from hookd.config import StoreSettings
    from hookd.stores.etcd import EtcdPinStore
    settings = StoreSettings(backend="etcd", endpoints=(etcd.url,), timeout=1.0)
    instances = [str(uuidlib.uuid4()) for _ in range(20)]
    t0 = datetime.datetime.now(datetime.timezone.utc)

    def at(seconds: int) -> str:
        return (t0 + datetime.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")

    def boot(audit, uuid, seconds, serial, operation="started"):
        """What a host records around one boot; only `started`/`observed` is a boot."""
        for op in ("define", "prepare", operation):
            audit.record(operation=op, instance_uuid=uuid, serial_seen=serial, time=at(seconds), boot=f"1:{seconds}")
        audit.record(operation="stopped", instance_uuid=uuid, serial_seen=serial, time=at(seconds + 1))

    def lastboots():
        return {k.rsplit("/", 1)[1]: v for k, v in etcd_kvs(etcd, "/hookd/lastboot/").items()}

    async def go():
        stores, audits = {}, {}
        for h in ("hv-a", "hv-b"):
            stores[h] = EtcdPinStore(settings, host=h, state_dir=str(tmp_path / h))
            await stores[h].start()
            audits[h] = AuditLog(str(tmp_path / h), host=h)
            audits[h].mirror = stores[h].mirror_audit
        a, b = stores["hv-a"], stores["hv-b"]
        try:
            await until(lambda: a.reachable and b.reachable, 15, "etcd reachable")
            # a pin made on one host reaches the other through the watch, first writer wins
            assert a.pin_if_absent(instances[0], "PIN-A") == "PIN-A"
            await until(lambda: b.get(instances[0]) == "PIN-A", 15, "pin via watch")
            assert b.pin_if_absent(instances[0], "PIN-B") == "PIN-A"

            # five boots of each of 20 instances on hv-a
            for n in range(1, 6):
                for i, uuid in enumerate(instances):
                    boot(audits["hv-a"], uuid, 10 * n + i % 5, f"S-{n}")
            await until(lambda: a.status()["lastboot_queued"] == 0, 15, "hv-a's last boots sent")
            lb = lastboots()
            assert set(lb) == set(instances)
            assert {v["serial"] for v, _ in lb.values()} == {"S-5"} and {v["host"] for v, _ in lb.values()} == {"hv-a"}
            assert lb[instances[3]][0] == {"time": at(53), "host": "hv-a", "serial": "S-5", "boot": "1:53",
                                           "operation": "started"}

            # instance 0 live-migrates to hv-b: its boot there is the last boot
            boot(audits["hv-b"], instances[0], 100, "S-5")
            await until(lambda: lastboots()[instances[0]][0]["host"] == "hv-b", 15, "hv-b's boot in etcd")
            version = lastboots()[instances[0]][1]
            # hv-a learns late of a boot before the migration (a resync): it does not overwrite
            audits["hv-a"].record(operation="observed", instance_uuid=instances[0], serial_seen="OLD", time=at(90))
            await until(lambda: a.status()["lastboot_queued"] == 0, 15, "hv-a's late boot handled")
            assert lastboots()[instances[0]] == ({"time": at(100), "host": "hv-b", "serial": "S-5",
                                                 "boot": "1:100", "operation": "started"}, version)
            assert a.status()["lastboot_stale"] == 1

            # an outage: ten boots of instance 1 queue as one; one write when etcd is back
            before = lastboots()[instances[1]][1]
            await asyncio.to_thread(etcd.stop)
            await until(lambda: not a.reachable, 15, "outage noticed")
            for n in range(10):
                boot(audits["hv-a"], instances[1], 200 + 10 * n, f"OUTAGE-{n}")
            a.pin_if_absent(instances[1], "PIN-IN-OUTAGE")
            assert (a.status()["lastboot_queued"], a.status()["queued"]) == (1, 1)
            await asyncio.to_thread(etcd.start)
            await until(lambda: a.reachable and a.status()["lastboot_queued"] == 0 and a.status()["queued"] == 0,
                        20, "queues flushed")
            value, after = lastboots()[instances[1]]
            assert (value["serial"], after - before) == ("OUTAGE-9", 1)
            await until(lambda: b.get(instances[1]) == "PIN-IN-OUTAGE", 15, "the queued pin reaches hv-b")
            return a.status(), b.status()
        finally:
            for h in stores:
                await stores[h].aclose()
                audits[h].close()

    st_a, st_b = asyncio.run(go())
    everything = etcd.get_prefix("/hookd/")
    assert not [k for k in everything if k.startswith("/hookd/audit/")]
    # 20 instances, 2 pins: 22 keys, after 20 x 5 + 11 boots and four times as many audit rows
    assert len(everything) == 22
    assert set(etcd.get_prefix("/hookd/pins/")) == {f"/hookd/pins/{instances[0]}", f"/hookd/pins/{instances[1]}"}
    assert st_a["lastboot_dropped"] == st_b["lastboot_dropped"] == 0


def test_boots_of_a_real_guest_leave_one_last_boot_key(etcd, libvirt_hosts, hookd_factory, tmp_path):
    """A real libvirtd and hookd: three boots of one guest, each with another serial, are
    one etcd key holding the third boot; the per-event rows are in the local audit only."""
    d = hookd_factory("hookd-a", config_extra=store_conf(etcd) + "[reconcile]\nenabled = false\n")
    host = libvirt_hosts("a", setup_hooks=d.install_hook)
    d.follow(host)
    d.start()
    wait_for(lambda: status(d)["events"]["connected"] and status(d)["store"]["reachable"], 15,
             what="hookd connected to libvirt and etcd")
    uid = str(uuidlib.uuid4())
    name = f"instance-{uid[:8]}"
    path = tmp_path / "guest.xml"
    key = f"/hookd/lastboot/{uid}"
    for n in range(1, 4):
        path.write_text(nova_domain_xml(name=name, uuid=uid, serial=f"BOOT-{n}", image=None, console_log=None))
        host.virsh("define", path)
        host.virsh("start", name)
        wait_for(lambda: sum(r["operation"] == "started" for r in d.audit(instance=uid)) == n, 15,
                 what=f"started row {n}")
        host.virsh("destroy", name)
        wait_for(lambda: sum(r["operation"] == "stopped" for r in d.audit(instance=uid)) == n, 15,
                 what=f"stopped row {n}")
    wait_for(lambda: status(d)["store"]["lastboot_queued"] == 0 and
             etcd.get_prefix(key).get(key, {}).get("serial") == "BOOT-3", 15, what="the third boot in etcd")
    started = [r for r in d.audit(instance=uid) if r["operation"] == "started"][-1]
    assert etcd.get_prefix("/hookd/") == {key: {"time": started["time"], "host": socket.gethostname(),
                                                "serial": "BOOT-3", "boot": started["boot"],
                                                "operation": "started"}}
    assert started["boot"]                         # the boot key of the third QEMU process
    # every row of the three boots is in this host's audit log, none of them in etcd
    assert [r["operation"] for r in d.audit(instance=uid)] == ["defined", "prepare", "started", "stopped"] * 3
    assert etcd_kvs(etcd, key)[key][1] == 3        # one write per boot, all to the same key
    assert run_hookctl("pin", uid, "BOOT-3", "--config", d.config).returncode == 0
    assert set(etcd.get_prefix("/hookd/")) == {key, f"/hookd/pins/{uid}"}


def test_pins_import_and_export_with_etcd_first_writer_wins(etcd, tmp_path):
    """Migrated VMs' serials imported into etcd: an existing pin is kept, a re-import changes
    nothing, and export -> import into an empty prefix -> export is identical."""
    vmware = "VMware-42 3e fd 8c 1a 2b 3c 4d-5e 6f 70 81 92 a3 b4 c5"
    conf = tmp_path / "c.conf"
    conf.write_text(store_conf(etcd) + f"[hookd]\nstate_dir = {tmp_path / 's'}\n")
    assert run_hookctl("pin", OTHER, "FIRST", "--config", conf).returncode == 0
    f = tmp_path / "v2v.csv"
    f.write_text(f"instance_uuid,serial\n{UUID},{vmware}\n{OTHER},FROM-VMWARE\n")
    res = run_hookctl("pins", "--import", f, "--config", conf)
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    assert f"line 2: imported     {UUID}" in out and "already pinned to 'FIRST'" in out
    assert out.splitlines()[-1].endswith("1 imported, 0 already pinned to the same serial, 1 already pinned "
                                         "to a different serial (kept), 0 invalid (etcd store)")
    pins = etcd.get_prefix("/hookd/pins/")
    assert pins[f"/hookd/pins/{UUID}"]["serial"] == vmware
    assert pins[f"/hookd/pins/{UUID}"]["source"] == f"hookctl pins --import {f}"
    assert pins[f"/hookd/pins/{OTHER}"]["serial"] == "FIRST"           # never overwritten
    again = run_hookctl("pins", "--import", f, "--config", conf)
    assert again.returncode == 0 and b"1 already pinned to the same serial" in again.stdout
    # a bad file writes nothing to etcd either
    bad = tmp_path / "bad.csv"
    bad.write_text(f"instance_uuid,serial\n{uuidlib.uuid4()},GOOD\nnope,X\n")
    res = run_hookctl("pins", "--import", bad, "--config", conf)
    assert res.returncode == 1 and res.stdout == b"" and b"nothing imported" in res.stderr
    assert len(etcd.get_prefix("/hookd/pins/")) == 2
    exported = run_hookctl("pins", "--export", "--config", conf)
    assert exported.returncode == 0
    assert exported.stdout.decode() == "instance_uuid,serial\n" + "\n".join(
        sorted([f"{UUID},{vmware}", f"{OTHER},FIRST"])) + "\n"
    other = tmp_path / "other.conf"
    other.write_text(store_conf(etcd, "prefix = /other/\n") + f"[hookd]\nstate_dir = {tmp_path / 'o'}\n")
    assert run_hookctl("pins", "--import", "-", "--config", other, input=exported.stdout).returncode == 0
    assert run_hookctl("pins", "--export", "--config", other).stdout == exported.stdout

"""libvirtd dying and coming back under hookd's proxy (and its events connection).

Real namespaced libvirtd + QEMU, hookd with its proxy in front of it and the shim
(on_mismatch = deny, on_unreachable = deny): a guest starts only if its definition
came through the proxy rewritten and hookd answered its prepare.
"""

from __future__ import annotations

import time
import uuid as uuidlib

import libvirt
import pytest

from tests.harness.guest import nova_domain_xml
from tests.harness.faults import destroy_all_parallel, status_json
from tests.harness.waiting import wait_for
from tests.harness.storm import HOST_SERIAL

pytestmark = pytest.mark.libvirt


def spawn(conn, name):
    uid = str(uuidlib.uuid4())
    dom = conn.defineXML(nova_domain_xml(name=name, uuid=uid, serial=HOST_SERIAL, image=None,
                                         console_log=None, memory_mib=64))
    dom.create()
    return uid


def counts(d, uid):
    out = {}
    for row in d.audit(instance=uid):
        out[row["operation"]] = out.get(row["operation"], 0) + 1
    # A boot is recorded once: from its STARTED event, or by the worker's resync after it
    # reconnects (`observed`) when the guest started before that.
    out["boot"] = out.get("started", 0) + out.get("observed", 0)
    return out


def test_libvirtd_killed_and_restarted_under_proxy(hookd_stack, record):
    """libvirtd SIGKILLed: proxy clients are cut fast and reconnect after its restart; starts after it get exactly one define/prepare row and one boot (started, or observed by the resync) each, running guests get none."""
    host, d = hookd_stack(config_extra="[enforce]\non_mismatch = deny\n", on_unreachable="deny")
    uri = f"qemu+unix:///system?socket={d.proxy_socket}"
    wait_for(lambda: status_json(d)["events"]["connected"], 30, "the events worker to connect")
    ops = ("define", "prepare", "boot")
    try:
        conn = libvirt.open(uri)
        before = spawn(conn, "before")
        wait_for(lambda: counts(d, before).get("started"), 20, "the started row of the first guest")
        reconnects = status_json(d)["events"]["reconnects"]

        host.kill_libvirtd()
        t0 = time.monotonic()
        with pytest.raises(libvirt.libvirtError):
            conn.listAllDomains(0)
        cut = time.monotonic() - t0
        try:
            conn.close()
        except libvirt.libvirtError:
            pass
        wait_for(lambda: status_json(d)["proxy"]["clients_connected"] == 0, 10, "the proxy session to close")
        record("libvirtd SIGKILLed under the proxy", "proxy client's connection closed at once",
               f"next call failed after {cut:.2f} s; proxy sessions 0", ok=cut < 5)
        assert cut < 5

        # While libvirtd is down a new client is turned away, not hung.
        t0 = time.monotonic()
        with pytest.raises(libvirt.libvirtError):
            libvirt.open(uri)
        refused = time.monotonic() - t0
        record("libvirtd down, new proxy client", "connection refused quickly (no hang)",
               f"open failed after {refused:.2f} s", ok=refused < 5)
        assert refused < 5

        host.start_libvirtd()
        conn = libvirt.open(uri)               # the client reconnects
        try:
            survivors = [dom.name() for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
            after = [spawn(conn, f"after-{i}") for i in range(3)]
            running = sorted(dom.name() for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
        finally:
            conn.close()
        record("libvirtd restarted", "proxy clients reconnect; the running guest survived; new guests start",
               f"reconnected; running before the starts {survivors}, after {running}",
               ok=survivors == ["before"] and running == ["after-0", "after-1", "after-2", "before"])

        wait_for(lambda: status_json(d)["events"]["connected"]
                 and status_json(d)["events"]["reconnects"] > reconnects, 30,
                 "the events worker to reconnect")
        # The guests may have started before the worker reconnected: their boots come
        # from its resync, which follows the reconnect.
        wait_for(lambda: status_json(d)["events"]["resyncs"] >= 2, 30, "the resync after the reconnect")
        wait_for(lambda: all(counts(d, u)["boot"] for u in after), 20, "a boot row of each new guest")
        got = {u: counts(d, u) for u in after}
        bad = {u: c for u, c in got.items() if any(c.get(op) != 1 for op in ops)}
        record("starts after the libvirtd restart",
               "exactly one " + " + one ".join(ops) + " audit row per guest",
               f"{len(after) - len(bad)}/{len(after)} guests with exactly one of each; rows {list(got.values())[0]}",
               ok=not bad)
        assert not bad, bad
        old = counts(d, before)
        record("guest running across the libvirtd restart", "no new define/prepare row (reconnect is not a start)",
               f"rows {old}", ok=old.get("define") == 1 and old.get("prepare") == 1
               and (old.get("started"), old["boot"]) == (1, 1))
        st = status_json(d)
        assert st["proxy"]["upstream_failures"] >= 1 and st["audit"]["pending"] == 0
    finally:
        destroy_all_parallel(host)

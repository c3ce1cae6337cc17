"""Nova's own LibvirtDriver in the conditions of a running compute host: each of Nova 34's two
concurrency modes, and a restart of hookd under a running guest. Same setup as
test_nova_driver.py: ``sysinfo_serial = hardware`` (Nova writes the host serial), hookd's
proxy in front, the shim in deny mode.

Nova 34 picks its mode at the first line of every nova binary (nova/monkey_patch.py
``patch(backend='threading')``, which tests/harness/nova_compute.py calls the same way):
``[DEFAULT] concurrency_backend`` = threading | eventlet | auto (nova-compute's ``auto`` is
native threading since 2025.2), overridden by the environment's
OS_NOVA_DISABLE_EVENTLET_PATCHING. The mode changes how libvirt's events reach Nova: in
threading mode libvirt's event thread calls Nova's handler itself
(``_ThreadingLibvirtEventHandler``); in eventlet mode it queues them and wakes a greenthread
through a pipe (``_EventletLibvirtEventHandler``), and every libvirt call goes through
eventlet's tpool. Both have to work through the proxy.
"""

from __future__ import annotations

import time

import pytest

from tests.harness.nova import HOST_SERIAL, NovaError
from tests.harness.waiting import wait_for
from tests.harness.novacheck import defines, guest_serial, nova_wrote_host_serial, prepares, proxy_status, qemu_pid

pytestmark = pytest.mark.libvirt

HANDLERS = {"threading": "_ThreadingLibvirtEventHandler", "eventlet": "_EventletLibvirtEventHandler"}


def transitions(nova, what: str) -> int:
    return sum(1 for uid, t in nova.lifecycle_events() if uid == nova.uuid and t == what)


@pytest.mark.parametrize("mode", ["threading", "eventlet"])
def test_each_concurrency_mode_spawn_events_and_hard_reboot(nova_stack, mode, record_property):
    host, d, nova = nova_stack(concurrency=mode)
    seen = nova.concurrency_seen
    # the driver process really runs in the mode asked for (not merely configured)
    assert (seen["eventlet_patched"], seen["threading"]) == (mode == "eventlet", mode == "threading"), seen
    assert seen["event_handler"] == HANDLERS[mode], seen
    assert seen["service_backend"] == mode.upper(), seen
    assert seen["eventlet_imported"] is (mode == "eventlet"), seen     # threading mode forbids the import
    nova.call("spawn")
    assert guest_serial(host, nova) == nova.uuid
    assert defines(d, nova.uuid) == [("rewritten", HOST_SERIAL, nova.uuid)]
    wait_for(lambda: transitions(nova, "Started") == 1, 15, f"Nova's Started event ({mode})")
    nova.call("reboot", type="HARD")
    assert nova_wrote_host_serial(nova) == 2
    assert guest_serial(host, nova) == nova.uuid
    assert defines(d, nova.uuid) == [("rewritten", HOST_SERIAL, nova.uuid)] * 2
    assert prepares(d, nova.uuid) == [("allow", nova.uuid)] * 2
    # the reboot's destroy made a Stopped event, which Nova holds back 15 s and drops when
    # the guest starts again: what reaches the handler is the second Started
    wait_for(lambda: transitions(nova, "Started") == 2, 15, f"Nova's second Started event ({mode})")
    nova.call("power_off")
    # The delayed Stopped is emitted by Nova's delayed executor 15 s later while the driver
    # process sits idle waiting for the next command: in eventlet mode that needs the hub
    # to run between commands (a greenthread), in threading mode a timer thread.
    wait_for(lambda: transitions(nova, "Stopped") == 1, 30, f"Nova's Stopped event ({mode}, delayed 15 s)")
    assert transitions(nova, "Started") == 2
    record_property("nova_seconds", nova.timings)


def test_hookd_restart_nova_reconnects_and_the_next_hard_reboot_gets_the_policy_serial(nova_stack, record_property):
    """hookd stopped (by pid) and started again on the same proxy socket path under a running
    guest: Nova's libvirt connection (to the proxy) is closed, its close callback disables
    the compute service ("Connection to libvirt lost"), its next call opens a new connection
    through the new hookd and enables the service again; the guest keeps running, and the
    next hard reboot's definition is rewritten by the new hookd."""
    host, d, nova = nova_stack()
    nova.call("spawn")
    assert guest_serial(host, nova) == nova.uuid
    wait_for(lambda: transitions(nova, "Started") == 1, 15, "Nova's Started event")
    qemu = qemu_pid(host, nova)
    assert nova.call("service")["history"] == []                 # enabled since init_host
    t_stop = time.monotonic()
    d.stop()
    lost = wait_for(lambda: [h for h in nova.call("service")["history"] if h[0]], 30,
                    "Nova disabling its compute service on the lost connection")
    t_noticed = time.monotonic()
    assert "Connection to libvirt lost" in lost[0][1], lost
    d.start()

    def first_success():
        try:
            return nova.call("list_instances")
        except NovaError:                                        # HypervisorUnavailable meanwhile
            return None
    listed = wait_for(first_success, 60, "Nova's first successful call through the new hookd")
    outage = time.monotonic() - t_stop
    print(f"hookd restart as Nova saw it: connection loss noticed {t_noticed - t_stop:.2f} s after the stop, "
          f"first successful call {outage:.2f} s after it")
    record_property("nova_outage_seconds", round(outage, 2))
    assert nova.instance_name in listed["instances"]
    assert qemu_pid(host, nova) == qemu                          # the guest never noticed
    assert "Connection event '0' reason 'Connection to libvirt lost" in nova.log.read_text(errors="replace")
    wait_for(lambda: nova.call("service")["history"][-1] == [False, None], 15, "Nova enabling its service again")
    assert proxy_status(d)["clients_connected"] == 1             # Nova's new connection, to the new hookd
    nova.call("reboot", type="HARD")
    assert qemu_pid(host, nova) != qemu
    assert guest_serial(host, nova) == nova.uuid
    assert defines(d, nova.uuid) == [("rewritten", HOST_SERIAL, nova.uuid)] * 2
    assert proxy_status(d)["definitions_rewritten"] == 1         # this one by the new hookd
    # Nova re-registered for domain events on its new connection: the reboot's Started
    wait_for(lambda: transitions(nova, "Started") == 2, 15, "Nova's Started event through the new hookd")
    record_property("nova_seconds", nova.timings)

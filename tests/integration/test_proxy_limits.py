"""[hookd] proxy_max_clients against a real hookd in front of a real libvirtd: a flood of
clients beyond the limit is refused at once and logged once, while the connected
clients and the hook socket go on, and room comes back when clients leave."""

from __future__ import annotations

import json
import socket
import uuid as uuidlib

import libvirt
import pytest

from tests.harness.run import run_hookctl
from tests.harness.domains import domain
from tests.harness.guest import nova_domain_xml
from tests.harness.hookcall import ask_prepare
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.libvirt

LIMIT = 5
FLOOD = 40


def proxy_stats(d) -> dict:
    res = run_hookctl("status", "--socket", d.socket, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["proxy"]


def test_client_flood_beyond_the_limit_is_refused_and_others_go_on(hookd_stack):
    host, d = hookd_stack(config_extra=f"[hookd]\nproxy_max_clients = {LIMIT}\n")
    uri = f"qemu+unix:///system?socket={d.proxy_socket}"
    first = libvirt.open(uri)                   # a real client, connected before the flood
    held, flood = [], []
    try:
        for _ in range(LIMIT - 1):              # fill the limit with clients that say nothing
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(d.proxy_socket))
            held.append(s)
        wait_for(lambda: proxy_stats(d)["clients_connected"] == LIMIT, 10, f"{LIMIT} proxy sessions")

        for _ in range(FLOOD):                  # a leaking client: each is closed at once
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(str(d.proxy_socket))
            flood.append(s)
        closed = sum(1 for s in flood if s.recv(1) == b"")
        assert closed == FLOOD

        st = proxy_stats(d)
        assert (st["clients_over_limit"], st["clients_connected"]) == (FLOOD, LIMIT), st
        # Logged, but not once per refused client.
        lines = [line for line in d.log_text().splitlines() if "proxy_max_clients limit" in line]
        assert 1 <= len(lines) <= 2, lines

        # The connected client goes on: a definition through it is rewritten by policy.
        uid = str(uuidlib.uuid4())
        dom = first.defineXML(nova_domain_xml(name="limit-1", uuid=uid, serial="HOST-SERIAL", image=None,
                                              console_log=None))
        assert f"<entry name='serial'>{uid}</entry>" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        dom.undefine()
        # The hook socket goes on.
        assert ask_prepare(d.socket, "instance-1", domain(serial=None), timeout=10).action == "allow"

        for s in held:                          # clients leave: room comes back
            s.close()
        held.clear()
        wait_for(lambda: proxy_stats(d)["clients_connected"] == 1, 10, "the idle sessions closed")
        second = libvirt.open(uri)
        assert second.getLibVersion() == first.getLibVersion()
        second.close()
    finally:
        for s in held + flood:
            s.close()
        first.close()

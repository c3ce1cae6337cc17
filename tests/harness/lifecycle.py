"""A hookd following a namespaced libvirt host, driven step by step: start it and wait for its
worker, define a Nova guest, run virsh steps and wait for the audit rows each adds; the
[store] section of an etcd-backed hookd.
"""

from __future__ import annotations

import json
import uuid as uuidlib

from tests.harness.guest import nova_domain_xml
from tests.harness.waiting import wait_for

HOST_SERIAL = "4c4c4544-0054-3510-8052-b7c04f564732"


def status(d) -> dict:
    res = d.hookctl("status", "--socket", d.socket, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def host_and_hookd(libvirt_hosts, hookd_factory, config_extra="", name="a", *, proxy=False,
                   host_uuid=None, start=True):
    """A libvirt host with hookd's shim, and a hookd watching it (`[hookd] libvirt_uri`, and
    the proxy relaying to its socket). hookd starts after the host (start=False: not yet)."""
    d = hookd_factory(name=f"hookd-{name}", config_extra=config_extra, proxy=proxy)
    host = libvirt_hosts(name, host_uuid=host_uuid, setup_hooks=d.install_hook)
    d.follow(host)
    if start:
        start_hookd(d)
    return host, d


def start_hookd(d):
    d.start()
    wait_for(lambda: status(d)["events"]["connected"], 15, "hookd's worker connected to libvirt")
    return d


def define(host, tmp_path, *, serial, name=None):
    uid = str(uuidlib.uuid4())
    name = name or f"instance-{uid[:8]}"
    path = tmp_path / f"{name}.xml"
    path.write_text(nova_domain_xml(name=name, uuid=uid, serial=serial, image=None, console_log=None))
    host.virsh("define", path)
    return name, uid


def ops(d, uid):
    return [(r["operation"], r["action"]) for r in d.audit(instance=uid)]


def wait_rows(d, uid, expected, timeout=15):
    """Wait until the instance's rows are exactly `expected` ((operation, action) pairs)."""
    try:
        wait_for(lambda: ops(d, uid) == expected, timeout, f"rows {expected}")
    except AssertionError:
        raise AssertionError(f"rows of {uid}: {ops(d, uid)}, expected {expected}") from None
    return d.audit(instance=uid)


def drive(d, host, uid, steps):
    """Run virsh steps one at a time and wait after each for the rows it adds. Hook rows
    come from the daemon and event rows from the worker, two paths: only waiting between
    steps makes the order of the rows the order of the steps. Returns all rows."""
    expected: list = []
    rows: list = []
    for args, adds in steps:
        if args:
            host.virsh(*args)
        expected += adds
        rows = wait_rows(d, uid, list(expected))
    return rows


NO_RECONCILE = "[reconcile]\nenabled = false\n"


def store_conf(etcd, extra=""):
    return f"[store]\nbackend = etcd\nendpoints = {etcd.url}\ntimeout = 1\n{extra}"

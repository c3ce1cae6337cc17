"""`[hookd] libvirt_socket = auto` in a real hookd: the choice is logged and shown, a
missing libvirt is one clear line, and hooks are served regardless.

This machine has no system libvirt running, so normally neither /run/libvirt socket
exists and the warning branch is what runs; where one exists the test asserts that it
was chosen instead. The choice between the two is tested on sockets a test creates in
tests/rpc/test_upstream.py (a real virtqemud is not packaged for Debian 12).
"""

from __future__ import annotations

import json

import pytest

from hookd.rpc import upstream
from tests.harness.run import run_hookctl
from tests.harness.domains import UUID, domain
from tests.harness.hookcall import ask_prepare

pytestmark = pytest.mark.libvirt


def test_auto_upstream_is_logged_shown_and_hooks_go_on(hookd_factory):
    d = hookd_factory(proxy=True)           # no libvirt_socket in its config: the default, auto
    assert "libvirt_socket" not in d.config.read_text()
    d.start()
    want = upstream.resolve("auto")
    log = d.log_text()
    if want.found:
        assert f"libvirt proxy upstream: {want.why}" in log
    else:
        [line] = [ln for ln in log.splitlines() if "libvirt proxy upstream" in ln]
        assert "WARNING" in line and upstream.MODULAR_SOCKET in line and upstream.MONOLITHIC_SOCKET in line
    st = json.loads(run_hookctl("status", "--socket", d.socket, "--json").stdout)
    assert st["proxy"]["upstream"] == {"path": want.path, "daemon": want.daemon, "why": want.why}
    text = run_hookctl("status", "--socket", d.socket).stdout.decode()
    assert f"upstream    {want.why}" in text
    reply = ask_prepare(d.socket, "instance-00000001", domain(serial=UUID))
    assert not reply.denied
    assert [(r["domain"], r["verdict"]) for r in d.audit(operation="prepare")] == [("instance-00000001", "compliant")]

"""hookd's metrics against real components: a namespaced libvirtd + QEMU with hookd's shim,
hookd's proxy in front of it, a real busybox guest that prints its DMI serial, and
hookd's textfile read back with prometheus_client's parser, checked with promtool and
served by a real node_exporter's textfile collector.

The counters must move by exactly what happened: one definition rewritten by the proxy,
one hook call allowed for the guest that boots with the policy serial, one warned for a
guest started on libvirt's own socket, one saved definition fixed by the reconciler;
and the per-domain compliance gauge must name the domains by `domain` and `instance_id`.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
import uuid as uuidlib

import libvirt
import pytest

from hookd.metrics.textfile import TEXTFILE_NAME
from tests.harness import promtool
from tests.harness.guest import nova_domain_xml, read_guest_serial
from tests.harness.novaflow import NovaFlowDriver
from tests.harness.promtool import delta, sample, samples
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.libvirt

HOST_SERIAL = "4c4c4544-0054-3510-8052-b7c04f564732"


@pytest.fixture
def textdir(tmp_path):
    d = tmp_path / "textfile"
    d.mkdir()
    return d


def stack(hookd_stack, textdir, extra=""):
    return hookd_stack(config_extra=f"[metrics]\ntextfile_dir = {textdir}\ninterval = 1\n" + extra)


def snapshot(textdir, cond=lambda s: True, what="a metrics write", after=0.0, timeout=60):
    """The first written snapshot (after Unix time `after`) for which cond() holds."""
    def ready():
        try:
            s = samples(textdir / TEXTFILE_NAME)
        except (FileNotFoundError, ValueError):
            return None
        if sample(s, "hookd_metrics_last_write_timestamp_seconds") <= after:
            return None
        return s if cond(s) else None
    return wait_for(ready, timeout, what)


def connected(s):
    return sample(s, "hookd_libvirt_connected") == 1 and sample(s, "hookd_reconcile_sweeps_total") >= 1


def test_hook_calls_and_proxy_rewrites_move_the_counters(hookd_stack, textdir, tmp_path, guest_image):
    host, d = stack(hookd_stack, textdir)
    before = snapshot(textdir, connected, "the worker connected and its first sweep")
    uid = str(uuidlib.uuid4())
    console = tmp_path / "console.log"
    nova = NovaFlowDriver(f"qemu+unix:///system?socket={d.proxy_socket}")
    try:
        # Through the proxy: the definition is rewritten, the hook finds it compliant, the guest boots it.
        nova.spawn(nova_domain_xml(name="instance-0000000a", uuid=uid, serial=HOST_SERIAL, image=guest_image,
                                   console_log=console))
        assert read_guest_serial(console, timeout=90) == uid
        # On libvirt's own socket, transient (the reconciler leaves it alone): the hook warns.
        warned = str(uuidlib.uuid4())
        f = tmp_path / "warned.xml"
        f.write_text(nova_domain_xml(name="instance-0000000b", uuid=warned, serial=HOST_SERIAL, image=None,
                                     console_log=None))
        host.virsh("create", str(f))
        # Saved on libvirt's own socket, never started: the reconciler fixes it.
        fixed = str(uuidlib.uuid4())
        f = tmp_path / "fixed.xml"
        f.write_text(nova_domain_xml(name="instance-0000000c", uuid=fixed, serial=HOST_SERIAL, image=None,
                                     console_log=None))
        host.virsh("define", str(f))
        after = snapshot(textdir, lambda s: delta(before, s, "hookd_reconcile_fixes_total") >= 1
                         and sample(s, "hookd_domain_state", domain="instance-0000000c", instance_id=fixed,
                                    state="compliant") == 1
                         and delta(before, s, "hookd_hook_calls_total", operation="prepare", result="warn") >= 1,
                         "the reconciler's fix and the warned start")
        assert sample(after, "hookd_proxy_clients") == 1         # nova's connection, still open
    finally:
        nova.close()
    assert delta(before, after, "hookd_proxy_connections_total") == 1
    assert delta(before, after, "hookd_proxy_definitions_total") == 1
    assert delta(before, after, "hookd_proxy_rewrites_total") == 1
    assert delta(before, after, "hookd_decisions_total", operation="define", verdict="rewrite") == 1
    assert delta(before, after, "hookd_hook_calls_total", operation="prepare", result="allow") == 1
    assert delta(before, after, "hookd_hook_calls_total", operation="prepare", result="warn") == 1
    assert delta(before, after, "hookd_decisions_total", operation="prepare", verdict="compliant") == 1
    assert delta(before, after, "hookd_decisions_total", operation="prepare", verdict="rewrite") == 1
    assert delta(before, after, "hookd_hook_call_duration_seconds_count", operation="prepare") == 2
    assert delta(before, after, "hookd_reconcile_fixes_total") == 1
    assert sample(after, "hookd_proxy_errors_total", kind="rewrite") == 0
    assert sample(after, "hookd_domain_state", domain="instance-0000000a", instance_id=uid, state="compliant") == 1
    assert sample(after, "hookd_domains", state="drift") == 0
    assert sample(after, "hookd_proxy_upstream_up") == 1 and sample(after, "hookd_worker_up") == 1
    assert sample(after, "hookd_pin_store_up", backend="sqlite") == 1
    assert sample(after, "hookd_reconcile_last_success_timestamp_seconds") > time.time() - 120
    # Prometheus' linter on what hookd wrote, as written.
    r = promtool.run("check", "metrics", stdin=(textdir / TEXTFILE_NAME).read_text())
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    _node_exporter_serves(textdir, after)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_exporter_serves(textdir, written) -> None:
    """A real node_exporter (textfile collector only) reads the file without an error."""
    port = _free_port()
    proc = subprocess.Popen([str(promtool.node_exporter()), "--collector.disable-defaults", "--collector.textfile",
                             f"--collector.textfile.directory={textdir}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def scrape():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    return resp.read().decode()
            except OSError:
                return None
        text = wait_for(scrape, 20, "node_exporter's /metrics")
    finally:
        proc.terminate()
        proc.wait(10)
    from prometheus_client.parser import text_string_to_metric_families
    got = {(s.name, frozenset(s.labels.items())): s.value
           for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert got[("node_textfile_scrape_error", frozenset())] == 0, text[:2000]
    key = ("hookd_hook_calls_total", frozenset({"operation": "prepare", "result": "allow"}.items()))
    assert got[key] >= sample(written, "hookd_hook_calls_total", operation="prepare", result="allow")
    assert any(n == "node_textfile_mtime_seconds" and dict(labels).get("file", "").endswith(TEXTFILE_NAME)
               for n, labels in got)


def test_compliance_states_per_domain_and_a_lost_upstream(hookd_stack, textdir, tmp_path):
    """Reconcile off: a dry run records each domain's state without fixing anything; then
    libvirtd dies and the upstream and libvirt gauges fall to 0."""
    host, d = stack(hookd_stack, textdir, "[reconcile]\nenabled = false\n")
    snapshot(textdir, lambda s: sample(s, "hookd_libvirt_connected") == 1, "the worker connected")
    drift, good, plain = (str(uuidlib.uuid4()) for _ in range(3))
    for name, uid, serial, nova in (("instance-000000d1", drift, HOST_SERIAL, True),
                                    ("instance-000000d2", good, good, True), ("plain", plain, HOST_SERIAL, False)):
        f = tmp_path / f"{name}.xml"
        f.write_text(nova_domain_xml(name=name, uuid=uid, serial=serial, image=None, console_log=None,
                                     with_nova_metadata=nova))
        host.virsh("define", str(f))
    res = d.hookctl("reconcile", "--socket", d.socket, "--dry-run", timeout=130)
    assert res.returncode == 0, res.stderr
    s = snapshot(textdir, lambda s: sample(s, "hookd_domains", state="drift") == 1, "the dry run's states")
    assert sample(s, "hookd_domain_state", domain="instance-000000d1", instance_id=drift, state="drift") == 1
    assert sample(s, "hookd_domain_state", domain="instance-000000d2", instance_id=good, state="compliant") == 1
    assert sample(s, "hookd_domain_state", domain="plain", instance_id="", state="not-nova") == 1
    assert [sample(s, "hookd_domains", state=st) for st in ("compliant", "drift", "not-nova")] == [1, 1, 1]
    assert sample(s, "hookd_reconcile_enabled") == 0 and sample(s, "hookd_reconcile_fixes_total") == 0
    assert sample(s, "hookd_reconcile_last_success_timestamp_seconds") == 0    # a dry run fixes nothing
    # Undefined: it leaves the gauge at once (its UNDEFINED event).
    host.virsh("undefine", "plain")
    snapshot(textdir, lambda s: sample(s, "hookd_domains", state="not-nova") == 0, "plain's state gone")
    # libvirtd dies: the next client through the proxy fails, and the worker loses its connection.
    host.kill_libvirtd()
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(f"qemu+unix:///system?socket={d.proxy_socket}")
    s = snapshot(textdir, lambda s: sample(s, "hookd_proxy_upstream_up") == 0
                 and sample(s, "hookd_libvirt_connected") == 0, "upstream and libvirt down")
    assert sample(s, "hookd_proxy_connections_refused_total", reason="upstream") >= 1
    assert sample(s, "hookd_up") == 1

"""hookd.metrics.registry and hookd.metrics' definitions: the text format, read back with
prometheus_client's own parser (the reference implementation) and promtool's linter;
the naming rules; the series limit that bounds cardinality; and hookd's metric names."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hookd import metrics
from hookd.metrics.registry import Registry
from tests.harness import promtool


def parsed(text: str) -> dict:
    """name -> {(sample name, sorted labels): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
    return out


def test_counters_gauges_and_a_histogram_read_back_with_prometheus_client():
    r = Registry()
    c = r.counter("hookd_things_total", "Things", ("op",))
    g = r.gauge("hookd_level", "Level")
    h = r.histogram("hookd_wait_seconds", "Waits", ("op",), buckets=(0.01, 0.1, 1.0))
    c.inc("a")
    c.inc("a", n=2)
    c.inc('we"ird\\\nop')
    g.set(2.5)
    for v in (0.005, 0.01, 0.05, 3.0):
        h.observe(v, "a")
    p = parsed(r.render())
    assert p["hookd_things"][("hookd_things_total", (("op", "a"),))] == 3
    assert p["hookd_things"][("hookd_things_total", (("op", 'we"ird\\\nop'),))] == 1
    assert p["hookd_level"][("hookd_level", ())] == 2.5
    buckets = p["hookd_wait_seconds"]
    # le is "value <= bound"; cumulative; +Inf = count.
    assert buckets[("hookd_wait_seconds_bucket", (("le", "0.01"), ("op", "a")))] == 2
    assert buckets[("hookd_wait_seconds_bucket", (("le", "0.1"), ("op", "a")))] == 3
    assert buckets[("hookd_wait_seconds_bucket", (("le", "1.0"), ("op", "a")))] == 3
    assert buckets[("hookd_wait_seconds_bucket", (("le", "+Inf"), ("op", "a")))] == 4
    assert buckets[("hookd_wait_seconds_count", (("op", "a"),))] == 4
    assert math.isclose(buckets[("hookd_wait_seconds_sum", (("op", "a"),))], 3.065)


def test_hookds_metrics_pass_promtool_check_metrics():
    """Prometheus' linter: naming (base units, _total), HELP on everything, the format."""
    text = metrics.REGISTRY.render()
    r = promtool.run("check", "metrics", stdin=text)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_the_names_the_issue_asks_for_exist_with_their_types():
    types = {fam.name: fam.type for fam in text_string_to_metric_families(metrics.REGISTRY.render())}
    want = {"hookd_build_info": "gauge", "hookd_decisions": "counter", "hookd_hook_calls": "counter",
            "hookd_hook_call_duration_seconds": "histogram", "hookd_proxy_connections": "counter",
            "hookd_proxy_rewrites": "counter", "hookd_proxy_errors": "counter", "hookd_proxy_upstream_up": "gauge",
            "hookd_libvirt_connected": "gauge", "hookd_libvirt_reconnects": "counter",
            "hookd_reconcile_last_success_timestamp_seconds": "gauge", "hookd_reconcile_fixes": "counter",
            "hookd_domains": "gauge", "hookd_domain_state": "gauge", "hookd_pin_store_up": "gauge",
            "hookd_pins": "gauge", "hookd_pins_queued": "gauge", "hookd_config_reloads": "counter",
            "hookd_up": "gauge", "hookd_metrics_last_write_timestamp_seconds": "gauge"}
    for name, kind in want.items():
        assert types.get(name) == kind, name
    assert all(n.startswith("hookd_") for n in types)


def test_series_present_at_zero_before_anything_happens():
    """rate() and the alerts need the series before its first event."""
    p = parsed(metrics.REGISTRY.render())
    calls = p["hookd_hook_calls"]
    assert ("hookd_hook_calls_total", (("operation", "prepare"), ("result", "expired"))) in calls
    assert p["hookd_config_reloads"][("hookd_config_reloads_total", (("result", "rejected"),))] >= 0
    assert {dict(k[1])["state"] for k in p["hookd_domains"]} == {"compliant", "drift", "not-nova"}


@pytest.mark.parametrize("kind,name,labels,message", [
    ("counter", "hookd_things", (), "must end in _total"),
    ("gauge", "node_things", (), "must be hookd_"),
    ("gauge", "hookd_Things", (), "must be hookd_"),
    ("gauge", "hookd_things", ("le",), "bad label name"),
    ("gauge", "hookd_things", ("Bad-Label",), "bad label name"),
])
def test_names_that_break_prometheus_rules_are_refused(kind, name, labels, message):
    with pytest.raises(ValueError, match=message):
        getattr(Registry(), kind)(name, "help", labels)


def test_a_metric_name_is_made_once():
    r = Registry()
    r.gauge("hookd_x", "x")
    with pytest.raises(ValueError, match="twice"):
        r.gauge("hookd_x", "x")


def test_series_beyond_the_limit_are_dropped_and_counted():
    """No label can grow a metric without bound: past max_series new series are dropped."""
    r = Registry()
    c = r.counter("hookd_x_total", "x", ("op",), max_series=3)
    for i in range(10):
        c.inc(f"op{i}")
    c.inc("op0")                        # an existing series still counts
    p = parsed(r.render())["hookd_x"]
    assert len(p) == 3 and p[("hookd_x_total", (("op", "op0"),))] == 2
    assert r.dropped == 7
    g = r.gauge("hookd_d", "d", ("domain",), max_series=2)
    g.replace({(f"d{i}",): 1 for i in range(5)})
    assert len(parsed(r.render())["hookd_d"]) == 2 and r.dropped == 10


def test_wrong_label_count_is_a_programming_error():
    c = Registry().counter("hookd_x_total", "x", ("a", "b"))
    with pytest.raises(ValueError):
        c.inc("only-one")


def test_on_change_is_called_by_every_change_and_not_by_a_set_to_the_same_value():
    r = Registry()
    seen = []
    r.on_change = lambda: seen.append(1)
    g = r.gauge("hookd_g", "g")
    c = r.counter("hookd_c_total", "c")
    h = r.histogram("hookd_h_seconds", "h")
    g.set(1)
    g.set(1)
    c.inc()
    h.observe(0.1)
    assert len(seen) == 3


def test_numbers_render_as_prometheus_reads_them():
    r = Registry()
    g = r.gauge("hookd_g", "g", ("k",))
    for k, v in (("int", 3.0), ("float", 0.125), ("big", 1.5e20), ("inf", float("inf")), ("neg", -2.0)):
        g.set(v, k)
    text = r.render()
    assert 'hookd_g{k="int"} 3\n' in text and 'hookd_g{k="inf"} +Inf\n' in text
    p = parsed(text)["hookd_g"]
    assert p[("hookd_g", (("k", "float"),))] == 0.125 and p[("hookd_g", (("k", "big"),))] == 1.5e20

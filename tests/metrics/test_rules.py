"""packaging/prometheus/hookd.rules.yml, the shipped alert rules: `promtool check rules`
(syntax, PromQL, annotation templates), and `promtool test rules` showing that each alert
fires when it should and stays quiet when it should not, on synthetic series shaped as
hookd writes them (promtool's clock starts at Unix time 0, so a fresh
hookd_metrics_last_write_timestamp_seconds follows the evaluation time).

The unit tests run against a copy of the rules without their annotations: promtool compares
annotations verbatim, and their templates are what `check rules` already checks."""

from __future__ import annotations

import json

from tests.harness import promtool
from tests.harness.run import REPO

RULES = REPO / "packaging" / "prometheus" / "hookd.rules.yml"
HV = {"instance": "hv1", "job": "node"}


def series(name: str, values: str, **labels) -> dict:
    all_labels = {**HV, **labels}
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(all_labels.items()))
    return {"series": f"{name}{{{inner}}}", "values": values}


def fires(at: str, alert: str, *expected: dict) -> dict:
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": e} for e in expected]}


def quiet(at: str, alert: str) -> dict:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def without_annotations(text: str) -> str:
    out, skipping = [], None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if skipping is not None and line.strip() and indent > skipping:
            continue
        skipping = None
        if line.strip() == "annotations:":
            skipping = indent
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def test_promtool_check_rules_accepts_the_shipped_file():
    r = promtool.run("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    text = RULES.read_text()
    for alert in ("HookdDown", "HookdUpstreamDown", "HookdSerialDrift", "HookdReconcileStale", "HookdHookTimeouts"):
        assert f"alert: {alert}\n" in text


def test_promtool_test_rules_each_alert_fires_and_stays_quiet(tmp_path):
    (tmp_path / "rules.yml").write_text(without_annotations(RULES.read_text()))
    crit, warn = {**HV, "severity": "critical"}, {**HV, "severity": "warning"}
    tests = [
        {"interval": "1m", "input_series": [      # hookd stops cleanly (writes hookd_up 0)
            series("hookd_up", "1 1 0 0 0 0 0"),
            series("hookd_metrics_last_write_timestamp_seconds", "0+60x10")],
         "alert_rule_test": [quiet("1m", "HookdDown"), fires("5m", "HookdDown", crit)]},
        {"interval": "1m", "input_series": [      # hookd hangs or crashed: the file goes stale
            series("hookd_up", "1x10"),
            series("hookd_metrics_last_write_timestamp_seconds", "0 60 60 60 60 60 60 60")],
         "alert_rule_test": [quiet("3m", "HookdDown"), fires("5m", "HookdDown", crit)]},
        {"interval": "1m", "input_series": [series("hookd_proxy_upstream_up", "1 1 0 0 0 0 0")],
         "alert_rule_test": [quiet("3m", "HookdUpstreamDown"), fires("5m", "HookdUpstreamDown", crit)]},
        {"interval": "1m", "input_series": [series("hookd_domains", "0 2x40", state="drift"),
                                             series("hookd_domains", "5x40", state="compliant")],
         "alert_rule_test": [quiet("20m", "HookdSerialDrift"),
                             fires("35m", "HookdSerialDrift", {**warn, "state": "drift"})]},
        {"interval": "1m", "input_series": [
            # hv1: no fixing sweep since start; hv2 sweeps every minute; hv3 has reconcile off.
            series("hookd_reconcile_last_success_timestamp_seconds", "0x60"),
            series("hookd_reconcile_interval_seconds", "600x60"),
            series("hookd_reconcile_enabled", "1x60"),
            series("hookd_reconcile_last_success_timestamp_seconds", "0+60x60", instance="hv2"),
            series("hookd_reconcile_interval_seconds", "600x60", instance="hv2"),
            series("hookd_reconcile_enabled", "1x60", instance="hv2"),
            series("hookd_reconcile_last_success_timestamp_seconds", "0x60", instance="hv3"),
            series("hookd_reconcile_interval_seconds", "600x60", instance="hv3"),
            series("hookd_reconcile_enabled", "0x60", instance="hv3")],
         "alert_rule_test": [quiet("40m", "HookdReconcileStale"),
                             fires("50m", "HookdReconcileStale", warn)]},
        {"interval": "1m", "input_series": [
            series("hookd_hook_calls_total", "0 0 0 1 1 1", operation="prepare", result="expired"),
            series("hookd_hook_calls_total", "0 5 10 15 20 25", operation="prepare", result="allow")],
         "alert_rule_test": [quiet("2m", "HookdHookTimeouts"),
                             fires("4m", "HookdHookTimeouts",
                                   {**warn, "operation": "prepare", "result": "expired"})]},
        {"interval": "1m", "input_series": [series("hookd_config_last_reload_successful", "1 1 0x10")],
         "alert_rule_test": [quiet("4m", "HookdConfigReloadRejected"),
                             fires("9m", "HookdConfigReloadRejected", warn)]},
        {"interval": "1m", "input_series": [series("hookd_pin_store_up", "0x10", backend="etcd")],
         "alert_rule_test": [fires("7m", "HookdPinStoreDown", {**warn, "backend": "etcd"})]},
    ]
    # JSON is YAML: no YAML library needed.
    (tmp_path / "test.yml").write_text(json.dumps({"rule_files": ["rules.yml"], "evaluation_interval": "1m",
                                                   "tests": tests}, indent=1))
    r = promtool.run("test", "rules", "test.yml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_a_broken_expectation_fails_so_the_test_above_means_something(tmp_path):
    (tmp_path / "rules.yml").write_text(without_annotations(RULES.read_text()))
    tests = [{"interval": "1m", "input_series": [series("hookd_up", "1x10"),
                                                  series("hookd_metrics_last_write_timestamp_seconds", "0+60x10")],
              "alert_rule_test": [fires("5m", "HookdDown", {**HV, "severity": "critical"})]}]
    (tmp_path / "test.yml").write_text(json.dumps({"rule_files": ["rules.yml"], "tests": tests}))
    r = promtool.run("test", "rules", "test.yml", cwd=tmp_path)
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr

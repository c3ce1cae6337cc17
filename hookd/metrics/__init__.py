"""hookd's metrics: what hookd exports to Prometheus, and where each layer counts.

Owns every metric's name, type, help and labels: the module constants below are hookd's
public monitoring interface (the README's "Metrics and alerts" lists them). The types and
the text format are hookd.metrics.registry's, the atomic textfile writer is
hookd.metrics.textfile's, the metrics socket hookd.metrics.serve's, their lifecycle
hookd.metrics.exporter's, and hookd.metrics.feed copies what the daemon's status tree
already counts (proxy, worker, reconciler, pin store, audit log) into them before each
write, so that those paths gain no code at all.

Hot path. Any layer may count (`DECISIONS.inc("prepare", "compliant")`): an increment is
a dict update and a flag, no I/O, no lock, no allocation once the series exists; the
writer task renders later on the one event loop and never fails or delays a hook call
or a proxy call. This module must not import any hookd module outside this package, and
only hookd.metrics.exporter does (to bind its socket), so every layer may import it, as
hookd.clock and hookd.errors; none holds a reference to the daemon's objects.

Cardinality stays bounded by construction: every label of a counter or a histogram takes
its values from a fixed set (hook operations, proxy operations, verdicts, results), and
each metric refuses new series past MAX_SERIES (counted in
hookd_metrics_series_dropped_total). Only one metric carries per-domain labels,
hookd_domain_state{domain,instance_id,state}: a gauge with one series per domain
defined on this host (the reconciler's last look; a domain that is undefined drops out at
the next sweep), bounded by MAX_DOMAINS; the labels are those of the libvirt exporters
(`domain` = libvirt's name, `instance_id` = Nova's instance UUID), so that it joins
with their per-domain series.

Why not prometheus_client: it would be hookd's only runtime dependency outside the
standard library, and RHEL 9 ships it only in EPEL. The text format is small and
stable, and writing it here keeps increments lock-free (prometheus_client takes a
threading lock per sample) and its output the same on every distribution (its
versions differ, e.g. in `_created` series). The tests parse what this writes with
prometheus_client's own parser and check it with `promtool check metrics`.
"""

from __future__ import annotations

from hookd.metrics.registry import Registry

#: hookd_domain_state series beyond this are dropped (a hypervisor runs far fewer).
MAX_DOMAINS = 5000

REGISTRY = Registry()
_r = REGISTRY

BUILD_INFO = _r.gauge("hookd_build_info", "hookd's version; always 1", ("version",))
UP = _r.gauge("hookd_up", "1 while hookd serves; 0 written at a clean stop")
START_TIME = _r.gauge("hookd_start_time_seconds", "When the daemon started, Unix time")
WRITTEN = _r.gauge("hookd_metrics_last_write_timestamp_seconds", "When this file was written, Unix time")
WRITE_ERRORS = _r.counter("hookd_metrics_write_errors_total", "Failed writes of the metrics textfile")
SERIES_DROPPED = _r.counter("hookd_metrics_series_dropped_total",
                            "Series not exported because a metric reached its series limit")

DECISIONS = _r.counter("hookd_decisions_total", "Serial decisions on the hook and proxy paths, by the "
                       "operation that asked and the verdict (error: the XML could not be read)",
                       ("operation", "verdict"))
HOOK_CALLS = _r.counter("hookd_hook_calls_total", "qemu hook calls answered, by operation and result "
                        "(allow, warn, deny, drift, expired, error, bad-request, failed)", ("operation", "result"))
HOOK_SECONDS = _r.histogram("hookd_hook_call_duration_seconds", "Time hookd took to answer a hook call",
                            ("operation",))
HOOK_REFUSED = _r.counter("hookd_hook_connections_refused_total", "Hook socket connections refused (not root)")

PROXY_CLIENTS = _r.gauge("hookd_proxy_clients", "Proxy client sessions open now")
PROXY_CONNECTIONS = _r.counter("hookd_proxy_connections_total", "Connections accepted on the proxy socket")
PROXY_REFUSED = _r.counter("hookd_proxy_connections_refused_total", "Proxy connections closed at once, by reason "
                           "(permission: peer credentials; limit: proxy_max_clients; upstream: libvirt unreachable)",
                           ("reason",))
PROXY_DEFINITIONS = _r.counter("hookd_proxy_definitions_total", "Domain definitions the proxy decided on")
PROXY_REWRITES = _r.counter("hookd_proxy_rewrites_total", "Definitions the proxy forwarded with the policy serial")
PROXY_ERRORS = _r.counter("hookd_proxy_errors_total", "Proxy errors, by kind (rewrite: a definition forwarded "
                          "unchanged because it could not be decided; protocol: a session dropped)", ("kind",))
UPSTREAM_UP = _r.gauge("hookd_proxy_upstream_up", "1 when libvirt's socket exists and the proxy's last "
                       "connection to it succeeded")

WORKER_UP = _r.gauge("hookd_worker_up", "1 while the libvirt worker process runs")
WORKER_RESTARTS = _r.counter("hookd_worker_restarts_total", "Restarts of the libvirt worker process")
LIBVIRT_CONNECTED = _r.gauge("hookd_libvirt_connected", "1 while the worker's libvirt connection is up")
LIBVIRT_RECONNECTS = _r.counter("hookd_libvirt_reconnects_total", "Reconnects of the worker's libvirt connection")
LIBVIRT_EVENTS = _r.counter("hookd_libvirt_events_total", "Domain lifecycle events the worker received")

RECONCILE_ENABLED = _r.gauge("hookd_reconcile_enabled", "1 when [reconcile] enabled = true")
RECONCILE_INTERVAL = _r.gauge("hookd_reconcile_interval_seconds", "[reconcile] interval (0: no periodic sweep)")
RECONCILE_SWEEPS = _r.counter("hookd_reconcile_sweeps_total", "Reconcile sweeps completed")
RECONCILE_FIXES = _r.counter("hookd_reconcile_fixes_total", "Saved definitions the reconciler redefined")
RECONCILE_LAST_SUCCESS = _r.gauge("hookd_reconcile_last_success_timestamp_seconds",
                                  "When the last fixing sweep completed, Unix time (0: none yet)")
DOMAINS = _r.gauge("hookd_domains", "Domains defined on this host by compliance state of their saved "
                   "definition, as the reconciler last saw it (compliant, drift, not-nova)", ("state",))
DOMAIN_STATE = _r.gauge("hookd_domain_state", "1 for each domain, labelled with its compliance state",
                        ("domain", "instance_id", "state"), max_series=MAX_DOMAINS)

STORE_UP = _r.gauge("hookd_pin_store_up", "1 when the pin store is reachable", ("backend",))
PINS = _r.gauge("hookd_pins", "Pinned serials in the pin store (etcd: in the local cache)")
PINS_QUEUED = _r.gauge("hookd_pins_queued", "Pins made locally and not yet written to etcd")
PINS_MADE = _r.counter("hookd_pins_made_total", "Serials pinned on first sight (mode preserve) by this daemon")

AUDIT_WRITTEN = _r.counter("hookd_audit_rows_total", "Audit rows written")
AUDIT_PENDING = _r.gauge("hookd_audit_rows_pending", "Audit rows waiting to be written")
AUDIT_DROPPED = _r.counter("hookd_audit_rows_dropped_total", "Audit rows dropped (the log could not be written)")

RELOADS = _r.counter("hookd_config_reloads_total", "Configuration reloads, by result (applied, rejected)",
                     ("result",))
RELOAD_OK = _r.gauge("hookd_config_last_reload_successful", "0 when the last reload was rejected")

COMPLIANCE_STATES = ("compliant", "drift", "not-nova")
# Series present at 0 from the start: rate() and the alerts see the first event.
for _metric, _keys in ((HOOK_CALLS, [(op, res) for op in ("prepare", "migrate", "restore")
                                     for res in ("allow", "warn", "deny", "drift", "expired", "error")]),
                       (RELOADS, [("applied",), ("rejected",)]), (PROXY_ERRORS, [("rewrite",), ("protocol",)]),
                       (PROXY_REFUSED, [("permission",), ("limit",), ("upstream",)]),
                       (DOMAINS, [(s,) for s in COMPLIANCE_STATES])):
    for _key in _keys:
        _metric.set(0, *_key)
RELOAD_OK.set(1)      # the configuration hookd started with was good

"""Reconciler sweep time for 1,000 diskless Nova domains on a namespaced libvirtd.

One libvirtd (tests/harness) with N (default 1,000) defined, not running, diskless
Nova domains carrying a legacy serial. Measured in the same run:

  baseline      the floor any reconciler pays: listAllDomains(PERSISTENT) plus
                isPersistent + XMLDesc(INACTIVE|SECURE) of every domain;
  dry run       hookd.virt.reconciler's sweep without fixing (read + decide each one);
  fix           a fixing sweep with the rate limit off: N defines (the raw cost);
                with the default limit (10 defines/s) the same sweep takes N/10 s,
                on purpose, so a sweep never floods libvirtd;
  steady state  the periodic sweep once all are compliant (read + decide, no define);
  via hookd     `hookctl reconcile --dry-run` against a running hookd whose worker
                watches this libvirtd: the same sweep plus the worker/daemon/hookctl
                round trip and a JSON answer listing N domains.

Nothing here asserts a timing. Target: steady-state sweep of 1,000 domains <= 5 s.
`python3 bench/bench_reconcile.py` or `python3 bench/run.py bench_reconcile`.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import sys
import tempfile
import time
import uuid as uuidlib

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import libvirt  # noqa: E402

from hookd.config import Config  # noqa: E402
from hookd.virt.reconciler import XML_FLAGS, Reconciler  # noqa: E402
from tests.harness.guest import nova_domain_xml  # noqa: E402
from tests.harness.libvirt_host import LibvirtHost  # noqa: E402
from tests.harness.hookd_proc import HookdProcess  # noqa: E402

N = int(os.environ.get("HOOKD_BENCH_DOMAINS", "1000"))
LEGACY = "4c4c4544-0054-3510-8052-b7c04f564732"
TARGET_STEADY_S = 5.0


def _baseline(conn) -> float:
    t0 = time.perf_counter()
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT):
        dom.isPersistent()
        dom.XMLDesc(XML_FLAGS)
    return time.perf_counter() - t0


def _sweep(conn, *, fix: bool, rate: float = 0.0):
    rec = Reconciler(lambda: Config(), lambda **row: None, max_defines_per_s=rate)

    async def go():
        t0 = time.perf_counter()
        items = await rec.sweep(conn, fix=fix, why="bench")
        return time.perf_counter() - t0, items

    return asyncio.run(go())


def _via_hookd(base: pathlib.Path, host: LibvirtHost) -> dict:
    d = HookdProcess(base, name="hookd", config_extra="[reconcile]\nenabled = false\n")
    d.follow(host)
    d.start()
    try:
        deadline = time.monotonic() + 30
        while not json.loads(d.hookctl("status", "--socket", d.socket, "--json").stdout)["events"]["connected"]:
            if time.monotonic() > deadline:
                raise RuntimeError("hookd's worker did not connect")
            time.sleep(0.1)
        t0 = time.perf_counter()
        res = d.hookctl("reconcile", "--socket", d.socket, "--dry-run", "--json", timeout=300)
        elapsed = time.perf_counter() - t0
        reply = json.loads(res.stdout)
        return {"seconds": round(elapsed, 3), "items": len(reply["items"]), "reply_bytes": len(res.stdout)}
    finally:
        d.stop()


def run(n: int = N) -> dict:
    with tempfile.TemporaryDirectory(prefix="hookd-bench-") as tmp:
        base = pathlib.Path(tmp)
        host = LibvirtHost(base / "h", "rec")
        host.start()
        try:
            conn = host.connect()
            t0 = time.perf_counter()
            for i in range(n):
                uid = str(uuidlib.uuid4())
                conn.defineXML(nova_domain_xml(name=f"instance-{i:08x}", uuid=uid, serial=LEGACY,
                                               image=None, console_log=None))
            define_s = time.perf_counter() - t0
            _baseline(conn)                                  # warm libvirt's and the kernel's caches
            base_s = min(_baseline(conn) for _ in range(3))
            dry_s, items = _sweep(conn, fix=False)
            assert sum(i.action == "would-fix" for i in items) == n, "every domain must need a fix"
            via = _via_hookd(base, host)
            fix_s, items = _sweep(conn, fix=True)
            assert sum(i.action == "fixed" for i in items) == n
            steady_s = min(_sweep(conn, fix=False)[0] for _ in range(3))
            conn.close()
        finally:
            host.stop()
    return {
        "domains": n,
        "define_all_s": round(define_s, 3),
        "baseline_list_and_read_s": round(base_s, 3),
        "dry_run_sweep_s": round(dry_s, 3),
        "dry_run_ratio_vs_baseline": round(dry_s / base_s, 2),
        "fix_sweep_unlimited_s": round(fix_s, 3),
        "fix_sweep_at_10_per_s_s": round(max(fix_s, (n - 1) / 10.0), 1),
        "steady_state_sweep_s": round(steady_s, 3),
        "steady_state_ms_per_domain": round(steady_s / n * 1000, 3),
        "steady_ratio_vs_baseline": round(steady_s / base_s, 2),
        "hookctl_reconcile_dry_run": via,
        "target_steady_state_s": TARGET_STEADY_S,
        "meets_target": steady_s <= TARGET_STEADY_S,
    }


def main() -> int:
    r = run()
    print(f"reconciler, {r['domains']} diskless Nova domains on one namespaced libvirtd:")
    print(f"  define all (setup)                     {r['define_all_s']:>8.3f} s")
    print(f"  baseline: list + read every definition {r['baseline_list_and_read_s']:>8.3f} s")
    print(f"  dry-run sweep (read + decide)          {r['dry_run_sweep_s']:>8.3f} s  "
          f"({r['dry_run_ratio_vs_baseline']}x baseline)")
    print(f"  fixing sweep, rate limit off           {r['fix_sweep_unlimited_s']:>8.3f} s  "
          f"(at the default 10 defines/s: {r['fix_sweep_at_10_per_s_s']} s)")
    print(f"  steady-state sweep (all compliant)     {r['steady_state_sweep_s']:>8.3f} s  "
          f"({r['steady_state_ms_per_domain']} ms/domain, {r['steady_ratio_vs_baseline']}x baseline; "
          f"target <= {TARGET_STEADY_S} s)")
    v = r["hookctl_reconcile_dry_run"]
    print(f"  hookctl reconcile --dry-run via hookd  {v['seconds']:>8.3f} s  "
          f"({v['items']} items, {v['reply_bytes']} B of JSON)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

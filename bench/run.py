"""Run every benchmark, print one table, write bench/results.json.

Each benchmark measures its baseline in the same run and reports the ratio; none
of them is a test (nothing here asserts a timing). `make bench` runs this.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

BENCHES = ("bench_policy", "bench_hook", "bench_proxy", "bench_rss", "bench_stall", "bench_fleet") + \
    (("bench_reconcile",) if (HERE / "bench_reconcile.py").exists() else ()) + ("bench_metrics",)


def machine() -> dict:
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}


def main() -> int:
    import importlib
    only = sys.argv[1:] or BENCHES
    results = {"machine": machine()}
    for name in only:
        mod = importlib.import_module(f"bench.{name}")
        print(f"== {name}", flush=True)
        results[name] = mod.run()
        print(json.dumps(results[name], indent=2), flush=True)
    out = HERE / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What hookd's metrics cost (issue #16): per decision, per hook call, and per textfile write.

Measured in one run, baselines in the same run:
  - decide(): DecisionService.decide of the ~15 KB Nova domain of bench_policy (no store,
    no audit), with hookd.decision's counter live, and with it swapped for a no-op object
    (the baseline: the same call without the dict update), interleaved in rounds so that
    drift hits both alike; the difference is the instrumentation's cost per decision;
  - the counting alone, per operation: one Counter.inc on an existing series, and the hook
    handler's whole addition (two perf_counter calls, one inc, one Histogram.observe);
  - one textfile write (render + temporary file + rename) of hookd's whole registry with
    200 domains in hookd_domain_state, and its share of one core at the default interval.
  - with valgrind present, the same decide() counted in instructions (callgrind: immune to
    the other jobs on a shared machine): 10 and 110 decisions, with and without the
    counter, so that start-up cancels out.
Nothing here asserts a timing. Target: instrumentation <= 1 % of a decision.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hookd import decision as decision_mod, metrics  # noqa: E402
from hookd.decision import DecisionService  # noqa: E402
from hookd.metrics.textfile import TextfileWriter  # noqa: E402
from hookd.policy.serial import PolicyConfig  # noqa: E402

INPUT = REPO / "tests" / "data" / "corpus" / "90-bench-15k.xml"


class _NoCounter:
    def inc(self, *labels, n=1.0):
        pass


class _NoMetrics:
    DECISIONS = _NoCounter()


def _per_call(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


_CALLGRIND_SCRIPT = """
import sys, pathlib
sys.path.insert(0, sys.argv[3])
from hookd import decision as dm
from hookd.decision import DecisionService
from hookd.policy.serial import PolicyConfig
class _No:
    def inc(self, *labels, n=1.0):
        pass
class _NoMetrics:
    DECISIONS = _No()
if sys.argv[1] == "bare":
    dm.metrics = _NoMetrics
data = pathlib.Path(sys.argv[4]).read_bytes()
svc = DecisionService(lambda: PolicyConfig())
for _ in range(int(sys.argv[2])):
    svc.decide(data, op="prepare", what="bench", rewrite=False)
"""


def _instructions(mode: str, n: int) -> int:
    r = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c",
                        _CALLGRIND_SCRIPT, mode, str(n), str(REPO), str(INPUT)],
                       capture_output=True, text=True, timeout=600)
    m = re.search(r"Collected : (\d+)", r.stderr)
    if m is None:
        raise RuntimeError(f"callgrind: {r.stderr[-500:]}")
    return int(m.group(1))


def callgrind() -> dict:
    """Instructions per decision with and without the counter."""
    if shutil.which("valgrind") is None:
        return {"callgrind": "valgrind not installed"}
    per = {mode: (_instructions(mode, 110) - _instructions(mode, 10)) / 100 for mode in ("live", "bare")}
    return {"decide_instructions_with_metrics": round(per["live"]), "decide_instructions_without": round(per["bare"]),
            "decide_instructions_added": round(per["live"] - per["bare"]),
            "decide_instructions_added_pct": round(100 * (per["live"] - per["bare"]) / per["bare"], 3)}


def run(rounds: int = 15, per_round: int = 300) -> dict:
    data = INPUT.read_bytes()
    svc = DecisionService(lambda: PolicyConfig())
    decide = lambda: svc.decide(data, op="prepare", what="bench", rewrite=False)  # noqa: E731
    decide()
    live, bare = [], []
    for i in range(rounds):
        for instrumented in ((True, False) if i % 2 else (False, True)):    # alternate which goes first
            decision_mod.metrics = metrics if instrumented else _NoMetrics
            try:
                (live if instrumented else bare).append(_per_call(decide, per_round))
            finally:
                decision_mod.metrics = metrics
    inc = min(timeit.repeat(lambda: metrics.DECISIONS.inc("prepare", "compliant"), number=200000, repeat=5)) / 200000
    # With a writer running, every change also sets its (already set, mostly) asyncio.Event.
    import asyncio
    metrics.REGISTRY.on_change = asyncio.Event().set
    try:
        inc_w = min(timeit.repeat(lambda: metrics.DECISIONS.inc("prepare", "compliant"), number=200000,
                                  repeat=5)) / 200000
    finally:
        metrics.REGISTRY.on_change = None

    def hook_instrumentation():
        t0 = time.perf_counter()
        metrics.HOOK_CALLS.inc("prepare", "allow")
        metrics.HOOK_SECONDS.observe(time.perf_counter() - t0, "prepare")
    hook = min(timeit.repeat(hook_instrumentation, number=200000, repeat=5)) / 200000
    metrics.DOMAIN_STATE.replace({(f"instance-{i:08x}", f"00000000-0000-0000-0000-{i:012x}", "compliant"): 1
                                  for i in range(200)})
    with tempfile.TemporaryDirectory() as tmp:
        writer = TextfileWriter(metrics.REGISTRY, tmp)
        write = min(timeit.repeat(writer.write_once, number=200, repeat=5)) / 200
        size = (pathlib.Path(tmp) / "hookd.prom").stat().st_size
    metrics.DOMAIN_STATE.replace({})
    live_us, bare_us = statistics.median(live) * 1e6, statistics.median(bare) * 1e6
    return {
        "decide_us_with_metrics": round(live_us, 1), "decide_us_without": round(bare_us, 1),
        "decide_overhead_us_median_of_rounds": round(live_us - bare_us, 2),
        "counter_inc_ns": round(inc * 1e9), "counter_inc_ns_writer_running": round(inc_w * 1e9),
        "hook_call_instrumentation_ns": round(hook * 1e9),
        "counting_share_of_decide_pct": round(100 * inc_w / (bare_us / 1e6), 3),
        "textfile_write_us_200_domains": round(write * 1e6), "textfile_bytes": size,
        "writer_core_share_at_15s_pct": round(100 * write / 15.0, 4),
        **callgrind(),
    }


if __name__ == "__main__":
    import json
    print(json.dumps(run(), indent=2))

"""Policy core throughput: parse + decide + rewrite + serialize of a ~15 KB Nova domain.

Baseline measured in the same run: a bare lxml parse + serialize of the same bytes
(the floor any XML-rewriting approach pays). Prints decisions/s on one core and the
ratio against that floor. Target: >= 2,000 decisions/s.
"""

from __future__ import annotations

import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lxml import etree  # noqa: E402

from hookd.decision import evaluate  # noqa: E402
from hookd.policy.serial import PolicyConfig, SerialTemplate  # noqa: E402

INPUT = REPO / "tests" / "data" / "corpus" / "90-bench-15k.xml"
TARGET_PER_S = 2000


def _rate(fn, seconds=2.0):
    fn()
    n, start = 0, time.perf_counter()
    while True:
        for _ in range(100):
            fn()
        n += 100
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def run(seconds: float = 2.0) -> dict:
    data = INPUT.read_bytes()
    # A template policy, so every decision also pays for the rewrite + serialize.
    policy = PolicyConfig(mode="template", template=SerialTemplate.compile("B-{uuid_hex}"))
    ev = evaluate(data, policy)
    assert ev.decision.verdict == "rewrite", "the bench input must need a rewrite"
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    floor = _rate(lambda: etree.tostring(etree.fromstring(data, parser)), seconds)
    decisions = _rate(lambda: evaluate(data, policy), seconds)
    return {
        "input_bytes": len(data),
        "decisions_per_s": round(decisions),
        "baseline_parse_serialize_per_s": round(floor),
        "ratio_vs_baseline": round(decisions / floor, 3),
        "target_decisions_per_s": TARGET_PER_S,
        "meets_target": decisions >= TARGET_PER_S,
    }


def main() -> int:
    r = run()
    print(f"policy core, {r['input_bytes']} B Nova domain, one core:")
    print(f"  parse+decide+rewrite+serialize  {r['decisions_per_s']:>8} /s   (target >= {TARGET_PER_S})")
    print(f"  baseline lxml parse+serialize   {r['baseline_parse_serialize_per_s']:>8} /s")
    print(f"  ratio vs baseline               {r['ratio_vs_baseline']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

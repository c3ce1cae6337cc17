"""Coverage-guided fuzzing (atheris) of the two parsers that read untrusted bytes.

The XML entry point (hookd.decision.evaluate) and the proxy's frame decoder with the
XDR codecs (hookd.rpc.frame + hookd.rpc.xdr) are fuzzed at the same time, one process
each (2 cores), for HOOKD_FUZZ_SECONDS (default 60) each, with a memory limit and a
per-input timeout (see fuzz_targets.py). atheris is the suite's one package from
PyPI: it lives in its own virtualenv (see README.md). If it cannot be installed the
test FAILS with the reason: no fuzzing must not look like a pass.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess


from tests.harness.venv import ensure_venv
from tests.harness.faults import wait_or_kill

HERE = pathlib.Path(__file__).resolve().parent
VENV = pathlib.Path(os.environ.get("HOOKD_FUZZ_VENV", "/var/cache/hookd-tests/fuzz-venv"))
SECONDS = int(os.environ.get("HOOKD_FUZZ_SECONDS", "60"))
RSS_LIMIT_MB = 1024
PER_INPUT_TIMEOUT_S = 10
#: Fewer inputs than this in the whole run is not fuzzing (the harness returning at once
#: runs millions; a slow one under CPU load still runs thousands).
MIN_RUNS = 1000


def ensure_fuzz_venv() -> pathlib.Path:
    """The venv's python with atheris importable; created (and atheris installed) if needed."""
    return ensure_venv(VENV, ["atheris"], ["-c", "import atheris, lxml"], "fuzzing")


def parse_stats(log: str) -> dict:
    done = re.findall(r"Done (\d+) runs in (\d+) second", log)
    last = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)/\S+.*?rss: (\d+)Mb", log)
    out = {"runs": int(done[-1][0]) if done else 0, "seconds": int(done[-1][1]) if done else 0}
    if last:
        out.update(cov=int(last[-1][0]), corpus=int(last[-1][2]), rss_mb=int(last[-1][3]))
    return out


def test_fuzz_xml_and_frame_decoder(tmp_path, record):
    """atheris on engine.evaluate and on FrameDecoder+XDR codecs, in parallel: no crash, no hang, bounded memory."""
    python = ensure_fuzz_venv()
    targets = {"xml": 65536, "frames": 16384}
    procs = {}
    try:
        for name, max_len in targets.items():
            corpus = tmp_path / f"corpus-{name}"
            subprocess.run([str(python), str(HERE / "fuzz_targets.py"), "seed", name, str(corpus)],
                           check=True, timeout=120, capture_output=True)
            log = open(tmp_path / f"{name}.log", "wb")
            procs[name] = (subprocess.Popen(
                [str(python), str(HERE / "fuzz_targets.py"), name, f"-max_total_time={SECONDS}",
                 f"-rss_limit_mb={RSS_LIMIT_MB}", f"-timeout={PER_INPUT_TIMEOUT_S}", f"-max_len={max_len}",
                 "-print_final_stats=1", f"-artifact_prefix={tmp_path}/{name}-", str(corpus)],
                stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path), start_new_session=True), log)
    finally:
        wait_or_kill([proc for proc, _ in procs.values()], SECONDS + 120)
        for _, log in procs.values():
            log.close()
    for name, (proc, _) in procs.items():
        text = (tmp_path / f"{name}.log").read_text(errors="replace")
        stats = parse_stats(text)
        artifacts = sorted(p.name for p in tmp_path.glob(f"{name}-*"))
        # It fuzzed for its whole budget ("Done N runs in S seconds" with S >= SECONDS: a
        # fuzzer that stopped early with exit 0 did not look for SECONDS), and its status
        # lines were there to read peak RSS from.
        ok = proc.returncode == 0 and not artifacts and stats["runs"] > MIN_RUNS \
            and stats["seconds"] >= SECONDS and "rss_mb" in stats and stats["rss_mb"] < RSS_LIMIT_MB
        what = {"xml": "hookd.decision.evaluate", "frames": "rpcframe.FrameDecoder + rpcxdr codecs"}[name]
        record(f"atheris fuzzing {what}", f"no crash/hang/OOM in {SECONDS} s (rss limit {RSS_LIMIT_MB} MiB, "
               f"{PER_INPUT_TIMEOUT_S} s per input), > {MIN_RUNS} inputs",
               f"exit {proc.returncode}; {stats['runs']} inputs in {stats['seconds']} s, coverage {stats.get('cov')}, "
               f"corpus {stats.get('corpus')}, peak rss {stats.get('rss_mb')} MiB; artifacts {artifacts or 'none'}",
               ok=ok, detail=f"{name}: exit {proc.returncode}, artifacts {artifacts}:\n{text[-3000:]}")

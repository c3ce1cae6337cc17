"""Coverage-guided fuzzing (libFuzzer) of the compiled hook shim.

The shim runs as root on every guest start and reads two things it does not control:
hookd's reply (shim_parse_reply) and libvirt's domain name and extra argument, which
become its request header (shim_encode_header). tests/reliability/fuzz_shim.c holds
one libFuzzer target for each, built with clang's -fsanitize=fuzzer,address,undefined
(Debian's clang and libclang-rt, from scripts/install-deps), and checks each
function's contract besides the sanitizers. Both run in parallel for
HOOKD_SHIM_FUZZ_SECONDS (default 20). A missing clang FAILS the test: no fuzzing must
not look like a pass.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess

import pytest

from tests.harness.shim import build
from tests.harness.faults import wait_or_kill

HERE = pathlib.Path(__file__).resolve().parent
SECONDS = int(os.environ.get("HOOKD_SHIM_FUZZ_SECONDS", "20"))
RSS_LIMIT_MB = 1024
TARGETS = {
    "reply": ("FUZZ_REPLY", [b"HOOKD1 allow 0\n", b"HOOKD1 deny 3\nabc", b"HOOKD1 deny 0\n"]),
    "encode": ("FUZZ_ENCODE", [bytes([128]) + bytes(8) + b"\x00\x10\x00\x01\x00\x00\x10prepare\x00begin\x00"]),
}


def build_target(define: str) -> pathlib.Path:
    if shutil.which("clang") is None:
        pytest.fail("clang is missing (scripts/install-deps installs clang and libclang-rt-14-dev)", pytrace=False)
    flags = ("-g", "-O1", "-Wall", "-Wextra", "-Werror", "-fsanitize=fuzzer,address,undefined",
             "-fno-sanitize-recover=all", f"-D{define}")
    return build(flags, extra_sources=(HERE / "fuzz_shim.c",), name=f"fuzz-{define.lower()}", cc="clang")


def test_fuzz_shim_reply_parser_and_request_encoder(tmp_path, record):
    """libFuzzer on the shim's reply parser and header encoder, in parallel: no sanitizer report, no contract break."""
    procs = {}
    try:
        for name, (define, seeds) in TARGETS.items():
            binary = build_target(define)
            corpus = tmp_path / f"corpus-{name}"
            corpus.mkdir()
            for i, seed in enumerate(seeds):
                (corpus / f"seed{i}").write_bytes(seed)
            log = open(tmp_path / f"{name}.log", "wb")
            procs[name] = (subprocess.Popen(
                [str(binary), f"-max_total_time={SECONDS}", f"-rss_limit_mb={RSS_LIMIT_MB}", "-timeout=10",
                 "-print_final_stats=1", f"-artifact_prefix={tmp_path}/{name}-", str(corpus)],
                stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path), start_new_session=True), log)
    finally:
        wait_or_kill([proc for proc, _ in procs.values()], SECONDS + 60)
        for _, log in procs.values():
            log.close()
    for name, (proc, _) in procs.items():
        text = (tmp_path / f"{name}.log").read_text(errors="replace")
        done = re.findall(r"Done (\d+) runs in (\d+) second", text)
        runs, seconds = (int(done[-1][0]), int(done[-1][1])) if done else (0, 0)
        artifacts = sorted(p.name for p in tmp_path.glob(f"{name}-*"))
        # seconds >= SECONDS: it fuzzed for its whole budget (one that stops early with exit 0 did not)
        ok = proc.returncode == 0 and not artifacts and runs > 1000 and seconds >= SECONDS \
            and "contract broken" not in text
        what = {"reply": "shim_parse_reply", "encode": "shim_encode_header"}[name]
        record(f"libFuzzer on the C shim's {what}", f"no ASan/UBSan report or contract break in {SECONDS} s",
               f"exit {proc.returncode}; {runs} inputs in {seconds} s; artifacts {artifacts or 'none'}", ok=ok,
               detail=f"{name}: exit {proc.returncode}, {runs} runs, artifacts {artifacts}:\n{text[-3000:]}")


def test_fuzz_harness_catches_a_broken_contract(tmp_path):
    """The contract checks can fail: an input that breaks one (a reply whose reason runs past
    the buffer, faked by a parser built to lie) makes the target abort."""
    broken = tmp_path / "broken_parser.c"
    source = (HERE / "fuzz_shim.c").read_text().replace(
        '#include "../../hooks/hookd-shim.c"',
        f'#include "{(HERE.parent.parent / "hooks" / "hookd-shim.c")}"\n'
        "#define shim_parse_reply(b, n, r) lying_parse_reply(b, n, r)\n"
        "static int lying_parse_reply(const char *b, size_t n, struct shim_reply *r)\n"
        "{ int rc = (shim_parse_reply)(b, n, r); if (rc == 0) r->reason_len += 1; return rc; }")
    broken.write_text(source)
    binary = build(("-g", "-O1", "-fsanitize=fuzzer,address", "-DFUZZ_REPLY"), extra_sources=(broken,),
                   name="fuzz-broken", cc="clang") if shutil.which("clang") else pytest.fail("clang is missing")
    seed = tmp_path / "seed"
    seed.write_bytes(b"HOOKD1 deny 3\nabc")
    res = subprocess.run([str(binary), str(seed)], capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert res.returncode != 0 and "contract broken" in res.stderr, res.stderr[-2000:]

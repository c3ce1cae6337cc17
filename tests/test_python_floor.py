"""setup.cfg's python_requires (>= 3.9, RHEL 9's Python) holds for the syntax and
standard library the code uses: vermin (pinned, in a cached test venv) must find
nothing that needs a newer Python. It does not run the code on 3.9: the asyncio loop
binding that differs on 3.9 needs a real 3.9 (issue #17's bullseye root)."""

from __future__ import annotations

import configparser
import pathlib
import subprocess

from tests.harness.venv import ensure_venv

REPO = pathlib.Path(__file__).resolve().parents[1]
VENV = pathlib.Path("/var/cache/hookd-tests/tools-venv")
VERMIN = "vermin==1.9.2"
CHECKED = ["hookd", "bench", "tests", "demo", "scripts/run-tests"]


def floor() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg["options"]["python_requires"].replace(">=", "").strip()


def vermin(*args):
    python = ensure_venv(VENV, [VERMIN], [str(VENV / "bin" / "vermin"), "--version"], "vermin")
    return subprocess.run([str(python), str(VENV / "bin" / "vermin"), f"-t={floor()}-", "--no-tips", "--violations",
                           "--eval-annotations", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_code_needs_no_python_newer_than_python_requires():
    assert floor() == "3.9"
    res = vermin(*[p for p in CHECKED if (REPO / p).exists()])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-1000:]


def test_the_check_fails_on_newer_syntax(tmp_path):
    (tmp_path / "m.py").write_text("def f(x):\n    match x:\n        case 1:\n            return 2\n")
    res = vermin(tmp_path / "m.py")
    assert res.returncode != 0 and "pattern matching requires" in res.stdout

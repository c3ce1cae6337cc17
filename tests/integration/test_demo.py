"""`make demo` is also a test: every row must be what the guest itself printed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, hookd_env

pytestmark = pytest.mark.libvirt


def test_demo_passes(libvirt_env):
    res = subprocess.run([sys.executable, str(REPO / "demo" / "demo.py")], capture_output=True, text=True,
                         env=hookd_env(), timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [line for line in res.stdout.splitlines() if line[:2] in ("1 ", "2 ", "3 ", "4 ")]
    assert len(rows) == 4 and all(r.rstrip().endswith("OK") for r in rows), res.stdout
    assert "(instance UUID)" in rows[0] and "host C serial)" in rows[3].split("  ")[-2]

"""`make demo` is also a test: every row must be what the guest itself printed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness.run import REPO, hookd_env

pytestmark = pytest.mark.libvirt


def test_demo_passes(libvirt_env):
    res = subprocess.run([sys.executable, str(REPO / "demo" / "demo.py")], capture_output=True, text=True,
                         env=hookd_env(), timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    import re
    rows = [line for line in res.stdout.splitlines() if re.match(r"[1-4] \S.*\s(OK|FAIL)\s*$", line)]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"], res.stdout
    assert all(r.rstrip().endswith("OK") for r in rows), res.stdout
    assert all("(instance UUID)" in r.split("  ")[-2] for r in rows[:3]) or \
        all(r.rstrip()[:-2].rstrip().endswith("(instance UUID)") for r in rows[:3]), res.stdout
    assert rows[3].rstrip()[:-2].rstrip().endswith("(host C serial)"), res.stdout
    # the audit story includes what libvirt's events said (started/stopped rows)
    assert " started " in res.stdout and " define " in res.stdout

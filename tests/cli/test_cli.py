"""hookctl's command line as a whole (hookd/cli/main.py): usage errors, --version, and
the daemon's version agreeing with it and the changelog. Each command group has its own
file: test_explain.py, test_pin_commands.py, doctor/."""

from __future__ import annotations

import subprocess
import sys

from hookd import __version__
from tests.harness.run import REPO, hookd_env


def test_usage_error_is_not_a_traceback(hookctl):
    res = hookctl("explain")
    assert res.returncode == 2 and b"Traceback" not in res.stderr and b"--xml" in res.stderr


def test_version(hookctl):
    res = hookctl("--version")
    assert res.returncode == 0 and res.stdout.decode().strip() == f"hookctl {__version__}"


def test_daemon_version_agrees():
    res = subprocess.run([sys.executable, "-m", "hookd.daemon", "--version"], capture_output=True, text=True,
                         env=hookd_env(), timeout=30)
    assert res.returncode == 0 and res.stdout.strip() == f"hookd {__version__}"
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert f"## {__version__} " in changelog

"""A cached test-only virtualenv (Debian's python3 + --system-site-packages) with a few
PyPI packages the tests need but hookd does not (atheris, vermin).

Created once per machine under /var/cache/hookd-tests and reused; a file lock makes
concurrent test runs wait for one another instead of racing pip. Failures are one
pytest.fail line with the command and its output's tail, never a traceback.
"""

from __future__ import annotations

import fcntl
import pathlib
import subprocess
from typing import Sequence

import pytest


def ensure_venv(venv: pathlib.Path, packages: Sequence[str], check: Sequence[str], what: str) -> pathlib.Path:
    """The venv's python, where `check` (arguments to that python) exits 0; created with
    `packages` installed if it does not yet."""
    python = venv / "bin" / "python"

    def works() -> bool:
        return python.exists() and subprocess.run([str(python), *check], capture_output=True,
                                                  timeout=60).returncode == 0

    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if works():
            return python
        steps = [["/usr/bin/python3", "-m", "venv", "--system-site-packages", "--clear", str(venv)],
                 [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages]]
        for argv in steps:
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as err:
                pytest.fail(f"cannot set up the {what} virtualenv: {' '.join(argv)}: {err}", pytrace=False)
            if r.returncode != 0:
                pytest.fail(f"cannot set up the {what} virtualenv ({' '.join(argv)} exited {r.returncode}): "
                            f"{(r.stderr or r.stdout).strip()[-1500:]}", pytrace=False)
        if not works():
            pytest.fail(f"{' '.join(packages)} installed in {venv} but {' '.join(check)} fails", pytrace=False)
        return python

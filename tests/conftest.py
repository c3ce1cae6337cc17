"""Shared fixtures: run hookd's commands the way an operator does (a subprocess)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = pathlib.Path(__file__).resolve().parent / "data"


def hookd_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def run_hookctl(*args, input=None, timeout=60, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hookd.cli", *map(str, args)], input=input,
                          capture_output=True, timeout=timeout, env=env or hookd_env())


@pytest.fixture
def hookctl():
    return run_hookctl


@pytest.fixture
def short_dir():
    """A short directory of its own: socket paths must fit in sun_path (108 bytes)."""
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix="hk-", dir="/tmp")
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def activated(short_dir):
    """Factory make(name="hookd", **kw) -> ActivatedHookd (not started): hookd on sockets the
    test holds, as systemd's socket units hold them; every one is stopped by pid and its held
    sockets released at teardown."""
    from tests.integration.activation import ActivatedHookd
    made = []

    def make(name: str = "hookd", **kw):
        d = ActivatedHookd(short_dir / "d", name=name, **kw)
        made.append(d)
        return d
    yield make
    for d in made:
        d.stop()
        d.release()

"""Shared fixtures: run hookd's commands the way an operator does (a subprocess)."""

from __future__ import annotations

import pathlib

import pytest

from tests.harness.run import run_hookctl


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
    from tests.harness.activation import ActivatedHookd
    made = []

    def make(name: str = "hookd", **kw):
        d = ActivatedHookd(short_dir / "d", name=name, **kw)
        made.append(d)
        return d
    yield make
    for d in made:
        d.stop()
        d.release()

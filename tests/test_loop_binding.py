"""Objects built before asyncio.run hold no asyncio object: on Python 3.9 an Event, Lock,
Queue or Future made outside the running loop binds to another one ("got Future attached
to a different loop", "There is no current event loop"). Python 3.10+ binds lazily, so
this checks the objects themselves rather than waiting for a 3.9 failure."""

from __future__ import annotations

import asyncio

import pytest

ASYNCIO_TYPES = (asyncio.Event, asyncio.Lock, asyncio.Queue, asyncio.Future, asyncio.Condition,
                 asyncio.Semaphore)


def asyncio_attributes(obj, depth: int = 2, path: str = "") -> list:
    """Attribute paths (down to `depth` levels of hookd objects) that hold an asyncio object."""
    found = []
    for name, value in vars(obj).items():
        where = f"{path}.{name}" if path else name
        values = value.values() if isinstance(value, dict) else [value]
        for v in values:
            if isinstance(v, ASYNCIO_TYPES):
                found.append(where)
            elif depth > 0 and type(v).__module__.startswith("hookd.") and hasattr(v, "__dict__"):
                found += asyncio_attributes(v, depth - 1, where)
    return found


def test_the_scan_finds_an_asyncio_object():
    class Holder:
        pass

    class Inner:
        pass
    Inner.__module__ = "hookd.fake"
    h, inner = Holder(), Inner()
    h.inner = inner

    async def make_lock():
        return asyncio.Lock()        # inside a loop: on Python 3.9 outside one is an error
    inner.lock = asyncio.run(make_lock())
    assert asyncio_attributes(h) == ["inner.lock"]


@pytest.fixture
def config(tmp_path):
    from hookd.config import load_config
    conf = tmp_path / "hookd.conf"
    conf.write_text("[policy]\nmode = unique\n")
    return load_config(str(conf)), str(conf)


def test_daemon_init_makes_no_asyncio_object(config):
    from hookd.daemon import Daemon
    assert asyncio_attributes(Daemon(*config)) == []


def test_worker_init_makes_no_asyncio_object(config):
    from hookd.virt.worker import Worker
    w = Worker(config[0], config[1], fd=-1)
    assert asyncio_attributes(w) == []
    assert w.reconciler is None        # made in run(): it holds locks


def test_supervisor_init_makes_no_asyncio_object():
    from hookd.virt.supervisor import WorkerSupervisor

    class Audit:
        def latest_lifecycle(self):
            return []
    assert asyncio_attributes(WorkerSupervisor(None, Audit())) == []


def test_reconciler_init_makes_no_asyncio_object(config):
    from hookd.virt.reconciler import Reconciler
    assert asyncio_attributes(Reconciler(lambda: config[0], lambda **row: None)) == []

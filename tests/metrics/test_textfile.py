"""hookd.metrics.textfile: the atomic textfile writer, against a real directory.

What node_exporter's textfile collector needs: DIR/hookd.prom whole or not at all
(written under a name it ignores, then renamed), readable by another user whatever
hookd's umask, rewritten on change and every interval; and what hookd needs: a
directory that cannot be written costs one log line and a counter, never an exception
or a stalled caller. The tests wait on the writer's `attempted` event, never on a sleep.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat

from prometheus_client.parser import text_string_to_metric_families

from hookd import metrics
from hookd.metrics.registry import Registry
from hookd.metrics.textfile import TEXTFILE_NAME, TextfileWriter


def families(path) -> dict:
    return {f.name: f for f in text_string_to_metric_families(open(path).read())}


def value(path, name, **labels):
    for s in families(path)[name.replace("_total", "")].samples:
        if s.name == name and s.labels == labels:
            return s.value
    return None


async def next_write(w: TextfileWriter) -> None:
    w.attempted.clear()
    await asyncio.wait_for(w.attempted.wait(), 10)


def test_write_once_is_whole_world_readable_and_leaves_no_temporary_file(tmp_path):
    r = Registry()
    c = r.counter("hookd_x_total", "x")
    c.inc()
    w = TextfileWriter(r, str(tmp_path))
    old = os.umask(0o077)           # hookd.service's UMask=
    try:
        assert w.write_once()
    finally:
        os.umask(old)
    path = tmp_path / TEXTFILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == [TEXTFILE_NAME]
    assert value(path, "hookd_x_total") == 1


def test_a_reader_never_sees_half_a_file(tmp_path):
    """The file is replaced by rename: an open reader keeps the old whole file."""
    r = Registry()
    g = r.gauge("hookd_g", "g", ("k",), max_series=5000)
    for i in range(2000):
        g.set(i, f"k{i}")
    w = TextfileWriter(r, str(tmp_path))
    w.write_once()
    path = tmp_path / TEXTFILE_NAME
    with open(path) as before:
        first = before.read(100)
        for i in range(2000):
            g.set(-i, f"k{i}")
        w.write_once()
        rest = before.read()
    old = first + rest
    assert len(list(text_string_to_metric_families(old))[0].samples) == 2000
    assert all(s.value >= 0 for s in list(text_string_to_metric_families(old))[0].samples)
    assert value(path, "hookd_g", k="k5") == -5


def test_the_task_writes_at_start_on_change_and_at_stop(tmp_path):
    async def main():
        r = Registry()
        c = r.counter("hookd_x_total", "x")
        up = r.gauge("hookd_up", "up")
        up.set(1)
        w = TextfileWriter(r, str(tmp_path), interval=3600, min_gap=0)
        w.start()
        await asyncio.wait_for(w.attempted.wait(), 10)
        path = tmp_path / TEXTFILE_NAME
        assert value(path, "hookd_x_total") == 0
        w.attempted.clear()
        c.inc(n=5)          # a change wakes the writer long before its hour-long interval
        await asyncio.wait_for(w.attempted.wait(), 10)
        assert value(path, "hookd_x_total") == 5
        await w.stop(final=lambda: up.set(0))
        assert value(path, "hookd_up") == 0 and r.on_change is None
        return w.writes
    assert asyncio.run(main()) >= 3


def test_the_interval_rewrites_a_file_that_did_not_change(tmp_path):
    async def main():
        w = TextfileWriter(Registry(), str(tmp_path), interval=0.05, min_gap=0.01)
        w.start()
        for _ in range(3):
            await next_write(w)
        await w.stop()
        return w.writes
    assert asyncio.run(main()) >= 4


def test_its_own_timestamp_does_not_keep_it_writing(tmp_path):
    """Each write sets hookd_metrics_last_write_timestamp_seconds: that must not wake it."""
    async def main():
        w = TextfileWriter(metrics.REGISTRY, str(tmp_path), interval=3600, min_gap=0)
        w.start()
        await asyncio.wait_for(w.attempted.wait(), 10)
        w.attempted.clear()
        # Enough turns of the loop for a self-triggered write to happen.
        for _ in range(50):
            await asyncio.sleep(0)
        writes = w.writes
        await w.stop()
        return writes
    assert asyncio.run(main()) == 1


def test_an_unwritable_directory_is_logged_once_counted_and_retried(tmp_path, caplog):
    missing = tmp_path / "not-yet"

    async def main():
        errors0 = metrics.WRITE_ERRORS.value()
        w = TextfileWriter(metrics.REGISTRY, str(missing), interval=0.02, min_gap=0.01)
        w.start()
        for _ in range(3):
            await next_write(w)
        assert w.failing and w.writes == 0
        assert metrics.WRITE_ERRORS.value() - errors0 >= 3
        metrics.DECISIONS.inc("prepare", "compliant")     # counting goes on meanwhile
        missing.mkdir()
        while not w.writes:
            await next_write(w)
        await w.stop()
        return w
    with caplog.at_level(logging.WARNING, logger="hookd.metrics"):
        w = asyncio.run(main())
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert f"cannot write metrics to {missing}/hookd.prom" in errors[0].getMessage()
    assert "hooks and the proxy are unaffected" in errors[0].getMessage()
    assert any("written to" in r.getMessage() and "again" in r.getMessage() for r in caplog.records)
    assert w.failing is None and (missing / TEXTFILE_NAME).exists()


def test_a_directory_that_refuses_files_names_the_systemd_drop_in(caplog):
    # sysfs refuses new files even to root (EACCES), as ProtectSystem=strict's read-only
    # mounts do (EROFS): the line says what an operator adds.
    w = TextfileWriter(Registry(), "/sys/kernel")
    with caplog.at_level(logging.ERROR, logger="hookd.metrics"):
        assert not w.write_once()
    assert "cannot write metrics to /sys/kernel/hookd.prom: Permission denied (under systemd, add " \
           "ReadWritePaths=/sys/kernel in a drop-in: hookd.conf(5))" in caplog.text


def test_a_bug_in_what_feeds_it_costs_the_write_not_the_task(tmp_path, caplog):
    calls = []

    def broken():
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("proxy")

    async def main():
        w = TextfileWriter(Registry(), str(tmp_path), interval=0.02, min_gap=0.01, before_write=broken)
        w.start()
        while not w.writes:
            await next_write(w)
        await w.stop()
    with caplog.at_level(logging.ERROR, logger="hookd.metrics"):
        asyncio.run(main())
    assert "KeyError: 'proxy'" in caplog.text and (tmp_path / TEXTFILE_NAME).exists()

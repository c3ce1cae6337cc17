"""hookd.confwatch on a real inotify descriptor in a temporary directory, inside a running
loop; the record decoder on bytes laid out as the kernel lays them out."""

from __future__ import annotations

import asyncio
import os

import pytest

from hookd import confwatch
from hookd.confwatch import ConfigWatch, WatchError, parse_events


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


class Seen:
    """Collects callbacks; `until(pred)` waits (on an Event, no sleeps) for a matching one."""

    def __init__(self):
        self.events = []
        self.changed = None

    def __call__(self, what, path, is_dir):
        self.events.append((what, path, is_dir))
        self.changed.set()

    async def until(self, pred):
        while True:
            for e in self.events:
                if pred(*e):
                    return e
            self.changed.clear()
            await self.changed.wait()


def test_writes_removals_and_a_conf_d_made_after_start(tmp_path):
    async def go():
        seen = Seen()
        seen.changed = asyncio.Event()
        watch = ConfigWatch(str(tmp_path), seen)
        watch.start(asyncio.get_running_loop())
        try:
            (tmp_path / "hookd.conf").write_text("[policy]\n")
            await seen.until(lambda w, p, d: w == "IN_CLOSE_WRITE" and p == str(tmp_path / "hookd.conf"))
            confd = tmp_path / "conf.d"
            confd.mkdir()
            await seen.until(lambda w, p, d: d and p == str(confd) and "IN_CREATE" in w)
            (confd / "50-x.conf").write_text("[policy]\nmode = host\n")      # inside the new directory
            await seen.until(lambda w, p, d: w == "IN_CLOSE_WRITE" and p == str(confd / "50-x.conf"))
            (confd / "50-x.conf").unlink()
            await seen.until(lambda w, p, d: w == "IN_DELETE" and p == str(confd / "50-x.conf"))
            tmp = tmp_path / ".hookd.conf.swp"
            tmp.write_text("x")
            os.rename(tmp, tmp_path / "hookd.conf")                            # an editor's save
            await seen.until(lambda w, p, d: w == "IN_MOVED_TO" and p == str(tmp_path / "hookd.conf"))
        finally:
            watch.close()
        watch.close()                                                          # twice is fine
    run(go())


def test_a_subdirectory_that_exists_at_start_is_watched(tmp_path):
    (tmp_path / "conf.d").mkdir()

    async def go():
        seen = Seen()
        seen.changed = asyncio.Event()
        watch = ConfigWatch(str(tmp_path), seen)
        watch.start(asyncio.get_running_loop())
        try:
            (tmp_path / "conf.d" / "10-a.conf").write_text("")
            await seen.until(lambda w, p, d: p == str(tmp_path / "conf.d" / "10-a.conf"))
        finally:
            watch.close()
    run(go())


def test_a_missing_directory_is_one_watch_error(tmp_path):
    async def go():
        watch = ConfigWatch(str(tmp_path / "absent"), lambda *a: None)
        with pytest.raises((WatchError, OSError), match="absent"):
            watch.start(asyncio.get_running_loop())
    run(go())


def record(wd, mask, name=b""):
    padded = name + b"\0" * (-len(name) % 16 or (16 if name else 0))
    return confwatch.EVENT.pack(wd, mask, 0, len(padded)) + padded


def test_parse_events_reads_every_record_and_strips_padding():
    data = record(1, confwatch.IN_CLOSE_WRITE, b"a.conf") + record(2, confwatch.IN_IGNORED) + \
        record(1, confwatch.IN_CREATE | confwatch.IN_ISDIR, b"conf.d")
    assert list(parse_events(data)) == [(1, confwatch.IN_CLOSE_WRITE, "a.conf"), (2, confwatch.IN_IGNORED, ""),
                                        (1, confwatch.IN_CREATE | confwatch.IN_ISDIR, "conf.d")]
    assert confwatch.mask_name(confwatch.IN_CREATE | confwatch.IN_ISDIR) == "IN_CREATE|IN_ISDIR"


def test_a_queue_overflow_is_a_change_of_the_directory(tmp_path):
    """Events were lost: the daemon must reload anyway (it reads the whole config)."""
    seen = []
    watch = ConfigWatch(str(tmp_path), lambda *e: seen.append(e))
    r, w = os.pipe()
    watch._fd = r
    os.write(w, record(-1, confwatch.IN_Q_OVERFLOW))
    watch._readable()
    os.close(w)
    os.close(r)
    watch._fd = None
    assert seen == [("IN_Q_OVERFLOW", str(tmp_path), True)]

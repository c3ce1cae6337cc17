"""hookd's state directory failing: read-only, full, and a SIGKILL in the middle of writes.

No libvirt needed: requests go to hookd's hook socket exactly as the shim sends
them, so "decisions still made" is the reply (allow, or deny with the reason,
on_mismatch = deny) and the status counters. Mounts (a read-only bind mount, a
small tmpfs) are made by the test over the daemon's state dir and unmounted at
teardown after the daemon is stopped.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import uuid as uuidlib


from tests.harness.domains import domain
from tests.harness.faults import ask, prepare_msg, status_json
from tests.harness.waiting import wait_for

HOST_SERIAL = "4c4c4544-0054-3510-8052-b7c04f564732"
FAIL_LINE = "cannot be written"


def decide(d, n, tag):
    """n prepares, half compliant and half out of policy; returns the replies."""
    replies = []
    for i in range(n):
        uid = str(uuidlib.uuid4())
        serial = uid if i % 2 == 0 else HOST_SERIAL
        xml = domain(uuid=uid, name=f"{tag}-{i}", serial=serial).decode()
        replies.append((uid, serial == uid, ask(d.socket, prepare_msg(f"{tag}-{i}", xml))))
    return replies


def decisions_ok(replies) -> bool:
    return all((r.action == "allow") if compliant else
               (r.action == "deny" and f"wants '{uid}'" in r.reason)
               for uid, compliant, r in replies)


def rows_for(d, replies):
    got = {r["instance_uuid"] for r in d.audit(operation="prepare")}
    return [uid for uid, _, _ in replies if uid in got]


def test_read_only_state_dir(hookd_factory, mounts, record):
    """State dir read-only: decisions still served, the failure logged once, the queued rows written once it is writable again (no new request needed)."""
    d = hookd_factory(config_extra="[enforce]\non_mismatch = deny\n")
    d.state_dir.mkdir(parents=True)
    mounts.add(["--bind", d.state_dir, d.state_dir], d.state_dir, before_umount=d.stop)
    mounts.remount(d.state_dir, "remount,bind,ro")
    d.start()
    replies = decide(d, 10, "ro")
    st = status_json(d)
    record("state dir read-only", "every decision still served (allow / deny with reason)",
           f"{len(replies)} replies, decisions right: {decisions_ok(replies)}; audit failing: "
           f"{(st['audit']['failing'] or '')[:40]!r}, {st['audit']['pending']} rows queued",
           ok=decisions_ok(replies) and st["audit"]["failing"] and st["audit"]["pending"] == 10)
    assert decisions_ok(replies) and st["audit"]["failing"] and st["audit"]["pending"] == 10
    failures = d.log_text().count(FAIL_LINE)
    record("state dir read-only", "the failure logged once, not per row", f"{failures} log line(s)",
           ok=failures == 1)
    assert failures == 1, d.log_text()[-2000:]

    mounts.remount(d.state_dir, "remount,bind,rw")
    try:
        wait_for(lambda: status_json(d)["audit"]["pending"] == 0, 15, "queued rows written")
        flushed = True
    except AssertionError:
        flushed = False
    written = rows_for(d, replies) if flushed else []
    record("state dir writable again", "the 10 queued rows appear without any new request",
           f"{'flushed' if flushed else 'still queued after 15 s'}; {len(written)}/10 rows in the audit",
           ok=flushed and len(written) == 10)
    assert flushed and len(written) == 10
    more = decide(d, 2, "rw")
    assert len(rows_for(d, more)) == 2 and status_json(d)["audit"]["failing"] is None


def fill(path) -> int:
    """Fill the filesystem of `path` to the last byte; returns the bytes written."""
    total = 0
    fd = os.open(os.path.join(path, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            while True:
                try:
                    total += os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return total


def test_full_state_dir(hookd_factory, mounts, record):
    """State dir full (1 MiB tmpfs, filled): decisions still served, the failure logged once, queued rows written once space is back."""
    # 64 KiB would be full from the start: the WAL index of each SQLite file (audit,
    # pins) alone takes 32 KiB. 1 MiB lets hookd start and write, then the test fills it.
    d = hookd_factory(config_extra="[enforce]\non_mismatch = deny\n")
    d.state_dir.mkdir(parents=True)
    mounts.add(["-t", "tmpfs", "-o", "size=1m,mode=0750", "tmpfs", d.state_dir], d.state_dir,
               before_umount=d.stop)
    d.start()
    first = decide(d, 4, "before")
    assert len(rows_for(d, first)) == 4
    fill(d.state_dir)
    replies = decide(d, 40, "full")          # a WAL with free pages may take a few rows
    st = status_json(d)
    record("state dir full (tmpfs)", "every decision still served (allow / deny with reason)",
           f"{len(replies)} replies, decisions right: {decisions_ok(replies)}; audit failing: "
           f"{(st['audit']['failing'] or '')[:40]!r}, {st['audit']['pending']} rows queued",
           ok=decisions_ok(replies) and bool(st["audit"]["failing"]) and st["audit"]["pending"] > 0)
    assert decisions_ok(replies) and st["audit"]["failing"] and st["audit"]["pending"] > 0
    failures = d.log_text().count(FAIL_LINE)
    record("state dir full (tmpfs)", "the failure logged once, not per row", f"{failures} log line(s)",
           ok=failures == 1)
    assert failures == 1, d.log_text()[-2000:]

    os.unlink(d.state_dir / "filler")
    try:
        wait_for(lambda: status_json(d)["audit"]["pending"] == 0, 15, "queued rows written")
        flushed = True
    except AssertionError:
        flushed = False
    if not flushed:                         # does the next request at least write them?
        decide(d, 1, "nudge")
    written = rows_for(d, replies)
    record("space back on the state dir", "all 40 queued rows appear (without a new request)",
           f"{'flushed by itself' if flushed else 'NOT flushed by itself'}; "
           f"{len(written)}/40 rows in the audit; failing={status_json(d)['audit']['failing']!r:.60}",
           ok=flushed and len(written) == 40)
    assert flushed and len(written) == 40
    more = decide(d, 2, "after")
    assert len(rows_for(d, more)) == 2 and status_json(d)["audit"]["failing"] is None


def test_sigkill_during_write_burst(hookd_factory, record):
    """SIGKILL during a burst of audit writes: the SQLite file passes integrity_check and holds every row whose request was answered."""
    d = hookd_factory()
    d.start()
    acked, lock, stop, killed = [], threading.Lock(), threading.Event(), threading.Event()
    early = []          # a client whose request failed before the kill: hookd failing under the burst

    def client(k):
        i = 0
        while not stop.is_set():
            uid = str(uuidlib.uuid4())
            xml = domain(uuid=uid, name=f"burst-{k}-{i}", serial=HOST_SERIAL).decode()
            try:
                reply = ask(d.socket, prepare_msg(f"burst-{k}-{i}", xml), timeout=5)
            except OSError as err:
                if not killed.is_set():
                    early.append(f"client {k}: {err!r}")
                return
            if reply.action == "allow":
                with lock:
                    acked.append(uid)
            i += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 300 or early, 60, "300 answered requests")
    running = [t for t in threads if t.is_alive()]      # still sending: the kill lands in the burst
    killed.set()
    d.signal(signal.SIGKILL)
    d.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(10)
    with lock:
        answered = list(acked)
    record("SIGKILL during a burst of audit writes",
           f"{len(threads)} clients answered until the kill, none failed before it",
           f"{len(running)}/{len(threads)} still sending at the kill; failed before it: {early or 'none'}",
           ok=not early and len(running) == len(threads))
    db = sqlite3.connect(str(d.state_dir / "audit.sqlite"))
    try:
        check = db.execute("PRAGMA integrity_check").fetchall()
        stored = {r[0] for r in db.execute("SELECT instance_uuid FROM audit WHERE operation = 'prepare'")}
    finally:
        db.close()
    lost = [u for u in answered if u not in stored]
    record("SIGKILL during a burst of audit writes", "integrity_check ok; no answered request's row lost",
           f"integrity {check[0][0]!r}; {len(answered)} answered, {len(stored)} rows, {len(lost)} lost",
           ok=check == [("ok",)] and not lost)
    assert check == [("ok",)] and not lost, (check, lost[:3])
    pins = d.state_dir / "pins.sqlite"      # the default (sqlite) pin store opens it at start
    assert pins.exists()
    db = sqlite3.connect(str(pins))
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()

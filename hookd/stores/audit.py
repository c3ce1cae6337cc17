"""The audit log: one SQLite row per event hookd saw or decided, in state_dir.

Owns the schema, writing rows (from the daemon) and reading them (hookctl audit works
without the daemon). It never decides anything; which lifecycle rows to write is
hookd.ledger's call (the `boot` and `since` columns are its boot key and the QEMU
start time). A failing disk must not stop
decisions: rows that cannot be written are kept in a bounded memory queue, the
failure is logged once, and the queue is flushed when writing works again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sqlite3
from collections import deque
from typing import Iterable, List, Optional

from hookd.clock import now_iso
from hookd.errors import StoreError
from hookd.ledger import LIFECYCLE

log = logging.getLogger("hookd.stores.audit")

DB_NAME = "audit.sqlite"
COLUMNS = ("time", "host", "operation", "domain", "instance_uuid", "nova_name", "project",
           "flavor", "serial_seen", "serial_wanted", "verdict", "rule", "action", "detail",
           "boot", "since")
#: Columns added after 0.1 (hookd.ledger's boot key and the QEMU start time), with the
#: ALTER TABLE that gives an older database them at open.
ADDED_COLUMNS = ("boot", "since")
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    host TEXT NOT NULL,
    operation TEXT NOT NULL,
    domain TEXT,
    instance_uuid TEXT,
    nova_name TEXT,
    project TEXT,
    flavor TEXT,
    serial_seen TEXT,
    serial_wanted TEXT,
    verdict TEXT,
    rule TEXT,
    action TEXT,
    detail TEXT,
    boot TEXT,
    since TEXT
);
CREATE INDEX IF NOT EXISTS audit_instance ON audit (instance_uuid, time);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
"""
#: Rows kept in memory while the disk refuses them (a few hours of a busy host).
PENDING_MAX = 100_000
#: While the disk refuses rows, try again this often (seconds), so queued rows reach
#: the disk once it recovers even when no new event comes (a quiet host).
RETRY_S = 2.0


def db_path(state_dir: str) -> str:
    return os.path.join(state_dir, DB_NAME)


class AuditLog:
    """Append-only writer used by the daemon (one event loop, no threads)."""

    def __init__(self, state_dir: str, host: Optional[str] = None):
        self.path = db_path(state_dir)
        self.host = host or socket.gethostname()
        self._db: Optional[sqlite3.Connection] = None
        self._pending: deque = deque(maxlen=PENDING_MAX)
        self.failing: Optional[str] = None
        self.dropped = 0
        self.written = 0
        #: Called with every row as a dict (the etcd store keeps each instance's last boot).
        self.mirror = None
        self._retry: Optional[asyncio.TimerHandle] = None
        try:
            os.makedirs(state_dir, mode=0o750, exist_ok=True)
        except OSError as err:
            self._fail(err)     # _open() below fails too; rows wait in memory
        self._open()

    def _open(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=1.0)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode is durable against a daemon crash (SIGKILL); only a
            # power loss can drop the last transactions.
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            have = {r[1] for r in db.execute("PRAGMA table_info(audit)")}
            for col in ADDED_COLUMNS:
                if col not in have:
                    db.execute(f"ALTER TABLE audit ADD COLUMN {col} TEXT")
            self._db = db
        except sqlite3.Error as err:
            self._db = None
            self._fail(err)

    def _fail(self, err: Exception) -> None:
        if self.failing is None:
            log.error("audit log %s cannot be written (%s); keeping rows in memory until it can",
                      self.path, err)
        self.failing = str(err)
        if self._retry is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return      # no event loop (hookctl): the next record() tries again
            self._retry = loop.call_later(RETRY_S, self._retry_flush)

    def _retry_flush(self) -> None:
        self._retry = None
        self.flush()        # a failure schedules the next try

    def record(self, **row) -> None:
        row.setdefault("time", now_iso())
        row.setdefault("host", self.host)
        values = tuple(None if row.get(c) is None else str(row.get(c)) for c in COLUMNS)
        if self.mirror is not None:
            self.mirror(dict(zip(COLUMNS, values)))
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1
        self._pending.append(values)
        self.flush()

    def flush(self) -> bool:
        """Write queued rows; True when nothing is left pending."""
        if not self._pending:
            return True
        if self._db is None:
            self._open()
            if self._db is None:
                return False
        rows = list(self._pending)
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)
        except sqlite3.Error as err:
            self._fail(err)
            return False
        self._pending.clear()
        self.written += len(rows)
        if self.failing is not None:
            log.warning("audit log %s writable again; %d queued rows written", self.path, len(rows))
            self.failing = None
        return True

    def latest_lifecycle(self) -> List[dict]:
        """Each instance's latest lifecycle row on this host (hookd.ledger's state at
        start). Rows still queued in memory count too; a database that cannot be read
        gives what the queue holds, logged."""
        ops = sorted(LIFECYCLE)
        latest: dict = {}
        if self._db is not None:
            marks = ", ".join("?" * len(ops))
            try:
                cur = self._db.execute(
                    f"SELECT {', '.join(COLUMNS)} FROM audit WHERE id IN (SELECT MAX(id) FROM audit "
                    f"WHERE host = ? AND operation IN ({marks}) GROUP BY instance_uuid)", [self.host, *ops])
                for values in cur.fetchall():
                    row = dict(zip(COLUMNS, values))
                    latest[row["instance_uuid"]] = row
            except sqlite3.Error as err:
                log.error("audit log %s: cannot read the open boots (%s); the resync may record running "
                          "guests again", self.path, err)
        for values in self._pending:
            row = dict(zip(COLUMNS, values))
            if row["host"] == self.host and row["operation"] in LIFECYCLE:
                latest[row["instance_uuid"]] = row
        return list(latest.values())

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None


def query(state_dir: str, *, instance: Optional[str] = None, since: Optional[str] = None,
          operation: Optional[str] = None, operations: Optional[Iterable[str]] = None,
          limit: Optional[int] = None) -> List[dict]:
    """Read rows, oldest first (read-only; works while the daemon writes)."""
    path = db_path(state_dir)
    if not os.path.exists(path):
        raise StoreError(f"no audit log at {path} (has hookd run with state_dir = {state_dir}?)")
    try:
        # Not mode=ro: a read-only connection cannot open a WAL database whose -shm
        # file is gone (after the daemon's clean exit). Reading writes nothing.
        db = sqlite3.connect(path, timeout=5.0)
    except sqlite3.Error as err:
        raise StoreError(f"cannot open {path}: {err}") from err
    where, args = [], []
    if instance:
        where.append("instance_uuid = ?")
        args.append(instance)
    if since:
        where.append("time >= ?")
        args.append(since)
    if operation:
        where.append("operation = ?")
        args.append(operation)
    if operations is not None:
        ops = sorted(operations)
        where.append(f"operation IN ({', '.join('?' * len(ops))})")
        args.extend(ops)
    try:
        have = {r[1] for r in db.execute("PRAGMA table_info(audit)")}
    except sqlite3.Error as err:
        db.close()
        raise StoreError(f"cannot read {path}: {err}") from err
    # A database the daemon has not opened since an upgrade lacks the newer columns.
    cols = ", ".join(c if c in have else f"NULL AS {c}" for c in COLUMNS)
    sql = f"SELECT id, {cols} FROM audit"
    if where:
        sql += " WHERE " + " AND ".join(where)
    # Rows from the libvirt worker (events) arrive a few ms after the hook and proxy
    # rows of the same moment; time order tells the story, id breaks ties.
    sql += " ORDER BY time, id"
    if limit:
        sql += f" LIMIT {int(limit)}"
    try:
        with db:
            cur = db.execute(sql, args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]
    except sqlite3.Error as err:
        raise StoreError(f"cannot read {path}: {err}") from err
    finally:
        db.close()


def iter_columns() -> Iterable[str]:
    return ("id",) + COLUMNS

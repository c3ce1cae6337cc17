"""Pins: an instance's serial, fixed once and kept wherever the instance moves.

Owns the pin store interface and the embedded SQLite store (state_dir/pins.sqlite),
which serves one host and live migration (the XML carries the serial across). A
cloud where instances cold-migrate or evacuate needs every host to know a pin
before the instance starts there: hookd.stores.etcd keeps them in etcd. Lookups never
block on the network: they are served from a local file or memory.

Pins are first-writer-wins: `pin_if_absent` returns the serial that is pinned after
the call, which is the caller's only if nobody pinned first.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Dict, Optional

from hookd.clock import now_iso
from hookd.errors import StoreError
from hookd.policy.model import canonical_uuid
from hookd.policy.serial import serial_problem

PINS_DB = "pins.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS pins (
    instance_uuid TEXT PRIMARY KEY,
    serial TEXT NOT NULL,
    created TEXT NOT NULL,
    source TEXT,
    host TEXT
);
"""


def check_pin(instance: str, serial: str) -> tuple:
    """Canonical (uuid, serial) or StoreError naming what is wrong."""
    uuid = canonical_uuid(instance)
    if uuid is None:
        raise StoreError(f"{instance!r} is not an instance UUID")
    problem = serial_problem(serial)
    if problem is not None:
        raise StoreError(f"serial {serial!r} {problem}")
    return uuid, serial


class SqlitePinStore:
    """Pins in state_dir/pins.sqlite. Used by the daemon and, directly, by hookctl."""

    backend = "sqlite"

    def __init__(self, state_dir: str, host: str = "", filename: str = PINS_DB):
        self.path = os.path.join(state_dir, filename)
        self.host = host
        try:
            os.makedirs(state_dir, mode=0o750, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=2.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot open the pin store {self.path}: {err}") from err

    def get(self, instance_uuid: str) -> Optional[str]:
        try:
            row = self._db.execute("SELECT serial FROM pins WHERE instance_uuid = ?", (instance_uuid,)).fetchone()
        except sqlite3.Error as err:
            raise StoreError(f"cannot read {self.path}: {err}") from err
        return row[0] if row else None

    def pin_if_absent(self, instance_uuid: str, serial: str, source: str = "") -> str:
        uuid, serial = check_pin(instance_uuid, serial)
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("INSERT OR IGNORE INTO pins VALUES (?, ?, ?, ?, ?)",
                                 (uuid, serial, now_iso(), source, self.host))
        except sqlite3.Error as err:
            raise StoreError(f"cannot write {self.path}: {err}") from err
        return self.get(uuid)

    def set(self, instance_uuid: str, serial: str, source: str = "hookctl pin") -> None:
        uuid, serial = check_pin(instance_uuid, serial)
        try:
            with self._db:
                self._db.execute("INSERT OR REPLACE INTO pins VALUES (?, ?, ?, ?, ?)",
                                 (uuid, serial, now_iso(), source, self.host))
        except sqlite3.Error as err:
            raise StoreError(f"cannot write {self.path}: {err}") from err

    def unpin(self, instance_uuid: str) -> bool:
        uuid = canonical_uuid(instance_uuid)
        if uuid is None:
            raise StoreError(f"{instance_uuid!r} is not an instance UUID")
        try:
            with self._db:
                cur = self._db.execute("DELETE FROM pins WHERE instance_uuid = ?", (uuid,))
        except sqlite3.Error as err:
            raise StoreError(f"cannot write {self.path}: {err}") from err
        return cur.rowcount > 0

    def all(self) -> Dict[str, dict]:
        try:
            rows = self._db.execute("SELECT instance_uuid, serial, created, source, host FROM pins "
                                    "ORDER BY created").fetchall()
        except sqlite3.Error as err:
            raise StoreError(f"cannot read {self.path}: {err}") from err
        return {r[0]: {"serial": r[1], "created": r[2], "source": r[3], "host": r[4]} for r in rows}

    def status(self) -> dict:
        return {"backend": self.backend, "path": self.path, "reachable": True, "queued": 0}

    async def start(self) -> None:
        """Nothing to connect: the daemon-side interface shared with the etcd store."""

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()


class UnavailableStore:
    """Stands in for a pin store that could not be opened at start-up (e.g. a
    read-only state_dir): hooks are still answered, decided without pins, and the
    failure is visible in `hookctl status`."""

    backend = "unavailable"

    def __init__(self, reason: str):
        self.reason = reason

    def get(self, instance_uuid: str):
        raise StoreError(self.reason)

    def pin_if_absent(self, instance_uuid: str, serial: str, source: str = "") -> str:
        raise StoreError(self.reason)

    def status(self) -> dict:
        return {"backend": self.backend, "reachable": False, "queued": 0, "last_error": self.reason}

    async def start(self) -> None:
        """Nothing to start."""

    async def aclose(self) -> None:
        """Nothing to close."""

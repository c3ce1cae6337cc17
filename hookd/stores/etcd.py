"""Pins and each instance's last boot in etcd v3, shared by every hypervisor.

Owns the keys and values hookd keeps in etcd, the transactions that write them
(/v3/kv/range, /v3/kv/txn, /v3/kv/deleterange, /v3/watch, spoken through
hookd.stores.etcdgateway) and the daemon's pin cache. It decides nothing.

etcd holds state, never a log. Two kinds of key, both O(instances):

  PREFIX/pins/UUID      the pinned serial, written once (create-if-absent);
  PREFIX/lastboot/UUID  the instance's last boot, {"time", "host", "serial",
                        "boot", "operation"} (compact JSON, time first),
                        overwritten in place at every boot.

Of the audit rows hookd.stores.audit.AuditLog hands to `mirror_audit` (all of them),
only boots count: `started` (a STARTED event) and `observed` (a boot found
running after the fact, hookd.ledger). The per-event history stays in each
host's SQLite audit (`hookctl audit`) and the journal. The queue of unsent boots
holds one entry per instance, the newest: N boots of one instance during an
outage are one write when etcd is back. It lives in memory (as the audit copy it
replaces did): a restart during an outage loses those writes, not the history.

A last boot never overwrites a newer one: the write is one transaction whose
compare is `stored value < new value` (as bytes), and the value starts with its
time, in one fixed-width UTC form, so bytes order as times; a key that does not
exist yet is created by the nested transaction of the failure branch. A host
whose clock runs ahead can hide a later boot elsewhere for as long as it is
ahead (hosts are expected to run NTP, as Nova's own bookkeeping needs). A stored
value that is not a hookd last boot is overwritten.

In the daemon a lookup never waits on the network: pins are served from a local
SQLite copy (state_dir/pins-etcd-cache.sqlite) kept current by a watch and
reloaded in full after every reconnect. A pin made while etcd is unreachable is
written to the cache and to a local queue at once and sent to etcd when it is
back, with a create-if-absent transaction: the first writer wins, and a loser
takes the winner's pin into its cache (the next decision uses it).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import os
import sqlite3
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from hookd.clock import now_iso
from hookd.errors import StoreError
from hookd.ledger import OPENS
from hookd.policy.model import canonical_uuid
from hookd.stores.etcdgateway import AsyncClient, SyncClient, b64, prefix_end, unb64
from hookd.stores.pins import SqlitePinStore, check_pin

log = logging.getLogger("hookd.etcd")

PINS = "pins/"
LASTBOOT = "lastboot/"
CACHE_DB = "pins-etcd-cache.sqlite"
#: Audit operations that are a boot: a STARTED event, and a running boot a resync
#: found after the fact (`observed`).
BOOT_OPERATIONS = OPENS
#: Instances whose last boot waits for etcd (one entry each: the newest boot). A host
#: runs far fewer; beyond it the oldest entry goes (counted, logged once).
LASTBOOT_QUEUE_MAX = 10_000
BACKOFF_MAX_S = 10.0


def _pin_value(serial: str, source: str, host: str) -> str:
    return json.dumps({"serial": serial, "created": now_iso(), "source": source, "host": host},
                      separators=(",", ":"))


def _parse_pin(kv: dict, prefix: str) -> Optional[Tuple[str, dict]]:
    key = unb64(kv["key"])
    uuid = canonical_uuid(key[len(prefix + PINS):])
    if uuid is None:
        return None
    try:
        value = json.loads(unb64(kv.get("value", "")))
        if not isinstance(value, dict) or not isinstance(value.get("serial"), str):
            raise ValueError("no serial")
    except ValueError:
        log.warning("etcd key %s does not hold a hookd pin; ignored", key)
        return None
    return uuid, value


def _utc_time(text: Optional[str]) -> str:
    """`text` (an ISO time) in one fixed-width UTC form, so that values starting with it
    order as bytes as they do in time; now when it is not an ISO time."""
    try:
        t = _dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return now_iso()
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.astimezone(_dt.timezone.utc).isoformat(timespec="milliseconds")


def lastboot_record(row: dict, host: str = "") -> Optional[Tuple[str, str]]:
    """(instance UUID, value of PREFIX/lastboot/UUID) for an audit row that is a boot;
    None for every other row. The value is compact JSON whose first field is the time."""
    if row.get("operation") not in BOOT_OPERATIONS:
        return None
    uuid = canonical_uuid(row.get("instance_uuid"))
    if uuid is None:
        return None
    return uuid, json.dumps({"time": _utc_time(row.get("time")), "host": row.get("host") or host,
                             "serial": row.get("serial_seen"), "boot": row.get("boot"),
                             "operation": row["operation"]}, separators=(",", ":"))


def _is_lastboot(value: str) -> bool:
    try:
        parsed = json.loads(value)
    except ValueError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("time"), str) and value.startswith('{"time":"')


class EtcdPinStore:
    backend = "etcd"

    def __init__(self, settings, host: str = "", state_dir: Optional[str] = None):
        self.settings = settings
        self.host = host
        self.prefix = settings.prefix
        self._sync = SyncClient(settings)
        self._state_dir = state_dir
        self._daemon = False
        self.cache: Optional[SqlitePinStore] = None
        self.reachable = False
        self.last_error: Optional[str] = None
        self.conflicts = 0
        #: Unsent last boots, instance UUID -> value, oldest first (one per instance).
        self._lastboot: "OrderedDict[str, str]" = OrderedDict()
        self.lastboot_written = 0
        self.lastboot_stale = 0          # not written: etcd held a newer boot (another host)
        self.lastboot_dropped = 0        # queue full: an instance's last boot was never sent
        self._dropping = False
        self._client = None
        self._wake: Optional[asyncio.Event] = None
        self._tasks: List[asyncio.Task] = []

    # -------------------------------------------------------------- hookctl
    def _key(self, uuid: str) -> str:
        return self.prefix + PINS + uuid

    def get(self, instance_uuid: str) -> Optional[str]:
        if self._daemon:
            return self.cache.get(instance_uuid)
        resp = self._sync.call("/v3/kv/range", {"key": b64(self._key(instance_uuid))})
        for kv in resp.get("kvs", []):
            parsed = _parse_pin(kv, self.prefix)
            if parsed is not None:
                return parsed[1]["serial"]
        return None

    def pin_if_absent(self, instance_uuid: str, serial: str, source: str = "") -> str:
        uuid, serial = check_pin(instance_uuid, serial)
        if self._daemon:
            return self._pin_locally(uuid, serial, source)
        return self._txn_sync(uuid, serial, source)

    def _txn_body(self, uuid: str, serial: str, source: str) -> dict:
        key = b64(self._key(uuid))
        return {"compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
                "success": [{"request_put": {"key": key, "value": b64(_pin_value(serial, source, self.host))}}],
                "failure": [{"request_range": {"key": key}}]}

    @staticmethod
    def _txn_winner(resp: dict, serial: str, prefix: str) -> str:
        if resp.get("succeeded"):
            return serial
        for r in resp.get("responses", []):
            for kv in r.get("response_range", {}).get("kvs", []):
                parsed = _parse_pin(kv, prefix)
                if parsed is not None:
                    return parsed[1]["serial"]
        raise StoreError("etcd transaction neither created the pin nor returned the existing one")

    def _txn_sync(self, uuid: str, serial: str, source: str) -> str:
        return self._txn_winner(self._sync.call("/v3/kv/txn", self._txn_body(uuid, serial, source)),
                                serial, self.prefix)

    def set(self, instance_uuid: str, serial: str, source: str = "hookctl pin") -> None:
        uuid, serial = check_pin(instance_uuid, serial)
        self._sync.call("/v3/kv/put", {"key": b64(self._key(uuid)),
                                       "value": b64(_pin_value(serial, source, self.host))})

    def unpin(self, instance_uuid: str) -> bool:
        uuid = canonical_uuid(instance_uuid)
        if uuid is None:
            raise StoreError(f"{instance_uuid!r} is not an instance UUID")
        resp = self._sync.call("/v3/kv/deleterange", {"key": b64(self._key(uuid))})
        return int(resp.get("deleted", 0)) > 0

    def all(self) -> Dict[str, dict]:
        kvs, _ = self._range_sync()
        return kvs

    def _range_body(self) -> dict:
        start = self.prefix + PINS
        return {"key": b64(start), "range_end": b64(prefix_end(start))}

    def _range_sync(self):
        resp = self._sync.call("/v3/kv/range", self._range_body())
        return self._parse_range(resp)

    def _parse_range(self, resp: dict):
        out = {}
        for kv in resp.get("kvs", []):
            parsed = _parse_pin(kv, self.prefix)
            if parsed is not None:
                out[parsed[0]] = parsed[1]
        return out, int(resp.get("header", {}).get("revision", 0))

    # --------------------------------------------------------------- daemon
    async def start(self, state_dir: Optional[str] = None) -> None:
        state_dir = state_dir or self._state_dir
        if state_dir is None:
            raise StoreError("the etcd store needs a state_dir for its local cache")
        self.cache = SqlitePinStore(state_dir, host=self.host, filename=CACHE_DB)
        self._queue_db = sqlite3.connect(os.path.join(state_dir, CACHE_DB), isolation_level=None, timeout=2.0)
        self._queue_db.executescript("CREATE TABLE IF NOT EXISTS pending (instance_uuid TEXT PRIMARY KEY, "
                                     "serial TEXT NOT NULL, source TEXT, created TEXT)")
        self._client = AsyncClient(self.settings)
        self._wake = asyncio.Event()
        self._daemon = True
        self._tasks = [asyncio.create_task(self._sync_loop()), asyncio.create_task(self._writer_loop())]

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        # return_exceptions collects the tasks' own cancellations without catching ours.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.cache is not None:
            self.cache.close()
            self._queue_db.close()

    def pending(self) -> int:
        if not self._daemon:
            return 0
        return self._queue_db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]

    def _pin_locally(self, uuid: str, serial: str, source: str) -> str:
        existing = self.cache.get(uuid)
        if existing is not None:
            return existing
        # Decide now from the cache; etcd confirms (or overrules) when reachable.
        self.cache.pin_if_absent(uuid, serial, source)
        self._queue_db.execute("INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?)", (uuid, serial, source, now_iso()))
        self._wake.set()
        return serial

    def mirror_audit(self, row: dict) -> None:
        """Every audit row (hookd.stores.audit.AuditLog.mirror). Only a boot is kept: as the
        instance's last boot, replacing an older one still queued."""
        record = lastboot_record(row, self.host)
        if record is None:
            return
        uuid, value = record
        queued = self._lastboot.get(uuid)
        if queued is not None and queued > value:
            return          # an older boot recorded late (values order as their times)
        self._lastboot[uuid] = value
        self._lastboot.move_to_end(uuid)
        if len(self._lastboot) > LASTBOOT_QUEUE_MAX:
            lost, _ = self._lastboot.popitem(last=False)
            self.lastboot_dropped += 1
            if not self._dropping:
                log.warning("etcd: more than %d instances' last boots waiting; the oldest (instance %s "
                            "first) will not reach etcd (the local audit has them)", LASTBOOT_QUEUE_MAX, lost)
                self._dropping = True
        if self._wake is not None:
            self._wake.set()

    def _lastboot_txn(self, uuid: str, value: str) -> dict:
        """Write `value` unless etcd holds a newer (greater) one; create it when absent."""
        key, val = b64(self.prefix + LASTBOOT + uuid), b64(value)
        put = {"request_put": {"key": key, "value": val}}
        return {"compare": [{"key": key, "result": "LESS", "target": "VALUE", "value": val}],
                "success": [put],
                "failure": [{"request_txn": {
                    "compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
                    "success": [put], "failure": [{"request_range": {"key": key}}]}}]}

    async def send_lastboots(self) -> None:
        """Send every queued last boot, oldest first (the writer loop's step; StoreError
        when etcd fails, the rest stays queued)."""
        while self._lastboot:
            uuid, value = next(iter(self._lastboot.items()))
            resp = await self._client.call("/v3/kv/txn", self._lastboot_txn(uuid, value))
            stored = self._lastboot_outcome(resp)
            if stored is None:
                self.lastboot_written += 1
            elif stored == value:
                pass        # already there: a retry of a write whose answer was lost
            elif _is_lastboot(stored):
                self.lastboot_stale += 1
                log.debug("instance %s: etcd holds a newer last boot (%s) than %s; kept", uuid, stored, value)
            else:
                log.warning("etcd key %s%s%s does not hold a hookd last boot; overwritten", self.prefix,
                            LASTBOOT, uuid)
                await self._client.call("/v3/kv/put", {"key": b64(self.prefix + LASTBOOT + uuid),
                                                       "value": b64(value)})
                self.lastboot_written += 1
            if self._lastboot.get(uuid) == value:      # not replaced by a newer boot meanwhile
                del self._lastboot[uuid]
        self._dropping = False

    @staticmethod
    def _lastboot_outcome(resp: dict) -> Optional[str]:
        """None when the transaction wrote the value, else the value etcd holds."""
        if resp.get("succeeded"):
            return None
        for r in resp.get("responses", []):
            inner = r.get("response_txn")
            if inner is None:
                continue
            if inner.get("succeeded"):
                return None
            for rr in inner.get("responses", []):
                for kv in rr.get("response_range", {}).get("kvs", []):
                    return unb64(kv.get("value", ""))
        raise StoreError("etcd transaction neither wrote the last boot nor returned the stored one")

    def _set_reachable(self, ok: bool, err: Optional[Exception] = None) -> None:
        if ok and not self.reachable:
            log.info("etcd reachable at %s", ", ".join(self.settings.endpoints))
        if not ok:
            if self.reachable or self.last_error is None:
                log.error("etcd unreachable (%s); decisions use the local pin cache, new pins are queued", err)
            self.last_error = str(err)
        self.reachable = ok

    async def _sync_loop(self) -> None:
        """Load every pin, then follow the watch; after any failure, start over (backoff)."""
        delay = 0.2
        while True:
            try:
                resp = await self._client.call("/v3/kv/range", self._range_body())
                pins, revision = self._parse_range(resp)
                self._replace_cache(pins)
                self._set_reachable(True)
                self._wake.set()
                delay = 0.2
                body = {"create_request": dict(self._range_body(), start_revision=str(revision + 1))}
                async for msg in self._client.stream("/v3/watch", body):
                    for ev in msg.get("result", {}).get("events", []):
                        self._apply_event(ev)
                raise StoreError("watch ended")
            except (StoreError, ValueError, OSError) as err:
                self._set_reachable(False, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)

    def _replace_cache(self, pins: Dict[str, dict]) -> None:
        pending = {r[0] for r in self._queue_db.execute("SELECT instance_uuid FROM pending")}
        for uuid in list(self.cache.all()):
            if uuid not in pins and uuid not in pending:
                self.cache.unpin(uuid)
        for uuid, value in pins.items():
            if self.cache.get(uuid) != value["serial"]:
                self.cache.set(uuid, value["serial"], source=value.get("source") or "etcd")

    def _apply_event(self, ev: dict) -> None:
        kv = ev.get("kv", {})
        if ev.get("type") == "DELETE":
            uuid = canonical_uuid(unb64(kv.get("key", ""))[len(self.prefix + PINS):])
            if uuid is not None:
                self.cache.unpin(uuid)
            return
        parsed = _parse_pin(kv, self.prefix)
        if parsed is not None:
            uuid, value = parsed
            if self.cache.get(uuid) != value["serial"]:
                self.cache.set(uuid, value["serial"], source=value.get("source") or "etcd")

    async def _writer_loop(self) -> None:
        """Send queued pins (create-if-absent) and last boots whenever etcd is reachable."""
        delay = 0.2
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                for uuid, serial, source in self._queue_db.execute(
                        "SELECT instance_uuid, serial, source FROM pending").fetchall():
                    resp = await self._client.call("/v3/kv/txn", self._txn_body(uuid, serial, source))
                    winner = self._txn_winner(resp, serial, self.prefix)
                    if winner != serial:
                        self.conflicts += 1
                        log.warning("instance %s: pin conflict: etcd already holds %r (first writer wins); "
                                    "using it instead of %r", uuid, winner, serial)
                        self.cache.set(uuid, winner, source="etcd")
                    self._queue_db.execute("DELETE FROM pending WHERE instance_uuid = ?", (uuid,))
                await self.send_lastboots()
                delay = 0.2
            except StoreError as err:
                self._set_reachable(False, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                self._wake.set()

    def status(self) -> dict:
        return {"backend": self.backend, "endpoints": list(self.settings.endpoints), "reachable": self.reachable,
                "queued": self.pending(), "lastboot_queued": len(self._lastboot),
                "lastboot_written": self.lastboot_written, "lastboot_stale": self.lastboot_stale,
                "lastboot_dropped": self.lastboot_dropped, "conflicts": self.conflicts,
                "cached": len(self.cache.all()) if self.cache is not None else 0, "last_error": self.last_error}

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def last_boots(self) -> Dict[str, str]:
        """{instance UUID: PREFIX/lastboot/UUID's value (JSON text)}: hookctl report (blocking, no cache)."""
        return {k[len(self.prefix + LASTBOOT):]: v for k, v in self._sync.range_prefix(self.prefix + LASTBOOT).items()}

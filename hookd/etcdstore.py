"""Pins (and a copy of the audit) in etcd v3, shared by every hypervisor.

Owns the etcd client (the v3 HTTP/JSON gateway: /v3/kv/range, /v3/kv/txn,
/v3/kv/deleterange, /v3/watch; keys and values base64) and the daemon's pin
cache. It decides nothing.

Why this client: OpenStack's etcd3gw speaks the same gateway but blocks on
`requests` and runs its watches in threads; hookd's daemon is one asyncio loop
with no threads, and its packages depend only on Debian's python3-* set. The few
calls hookd needs are small JSON POSTs, so the daemon speaks them over asyncio
streams and hookctl over http.client.

In the daemon a lookup never waits on the network: pins are served from a local
SQLite copy (state_dir/pins-etcd-cache.sqlite) kept current by a watch and
reloaded in full after every reconnect. A pin made while etcd is unreachable is
written to the cache and to a local queue at once and sent to etcd when it is
back, with a create-if-absent transaction: the first writer wins, and a loser
takes the winner's pin into its cache (the next decision uses it).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import http.client
import json
import logging
import os
import sqlite3
import ssl
import urllib.parse
from collections import deque
from typing import Dict, List, Optional, Tuple

from hookd.audit import now_iso
from hookd.errors import StoreError
from hookd.model import canonical_uuid
from hookd.store import SqlitePinStore, check_pin

log = logging.getLogger("hookd.etcd")

PINS = "pins/"
AUDIT = "audit/"
CACHE_DB = "pins-etcd-cache.sqlite"
AUDIT_QUEUE_MAX = 10_000
BACKOFF_MAX_S = 10.0


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _prefix_end(prefix: str) -> str:
    """The range_end that selects every key starting with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _tls_context(settings) -> Optional[ssl.SSLContext]:
    if not any(e.startswith("https://") for e in settings.endpoints):
        return None
    ctx = ssl.create_default_context(cafile=settings.ca_file or None)
    if settings.cert_file:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    return ctx


def _pin_value(serial: str, source: str, host: str) -> str:
    return json.dumps({"serial": serial, "created": now_iso(), "source": source, "host": host},
                      separators=(",", ":"))


def _parse_pin(kv: dict, prefix: str) -> Optional[Tuple[str, dict]]:
    key = _unb64(kv["key"])
    uuid = canonical_uuid(key[len(prefix + PINS):])
    if uuid is None:
        return None
    try:
        value = json.loads(_unb64(kv.get("value", "")))
        if not isinstance(value, dict) or not isinstance(value.get("serial"), str):
            raise ValueError("no serial")
    except ValueError:
        log.warning("etcd key %s does not hold a hookd pin; ignored", key)
        return None
    return uuid, value


class _SyncClient:
    """Blocking calls for hookctl (never used inside the daemon)."""

    def __init__(self, settings):
        self.settings = settings
        self.tls = _tls_context(settings)

    def call(self, path: str, body: dict) -> dict:
        errors = []
        for endpoint in self.settings.endpoints:
            url = urllib.parse.urlsplit(endpoint)
            conn_cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
            kw = {"context": self.tls} if url.scheme == "https" else {}
            conn = conn_cls(url.hostname, url.port, timeout=self.settings.timeout, **kw)
            try:
                conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise StoreError(f"etcd {endpoint}{path}: HTTP {resp.status}: {data[:200]!r}")
                return json.loads(data or b"{}")
            except (OSError, http.client.HTTPException, ValueError) as err:
                errors.append(f"{endpoint}: {err}")
            finally:
                conn.close()
        raise StoreError("etcd unreachable (" + "; ".join(errors) + ")")


class _AsyncClient:
    """HTTP/1.1 POSTs over asyncio streams, one connection per call (the daemon)."""

    def __init__(self, settings):
        self.settings = settings
        self.tls = _tls_context(settings)

    async def _open(self):
        errors = []
        for endpoint in self.settings.endpoints:
            url = urllib.parse.urlsplit(endpoint)
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(url.hostname, url.port, ssl=self.tls if url.scheme == "https" else None),
                    self.settings.timeout)
                return url, reader, writer
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as err:
                if getattr(err, "errno", None) in (errno.EAFNOSUPPORT, errno.ENETUNREACH):
                    # What the shipped hookd.service sandbox does to TCP (AF_UNIX only,
                    # PrivateNetwork): say so instead of a bare errno.
                    err = f"{err.strerror}: hookd.service allows no network; install the etcd drop-in " \
                          f"(/usr/share/hookd/hookd-etcd.conf)"
                errors.append(f"{endpoint}: {err or type(err).__name__}")
        raise StoreError("etcd unreachable (" + "; ".join(errors) + ")")

    async def _send(self, path: str, body: dict):
        url, reader, writer = await self._open()
        payload = json.dumps(body).encode()
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        await writer.drain()
        status_line = await reader.readline()
        headers = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        parts = status_line.split()
        if len(parts) < 2 or parts[1] != b"200":
            writer.close()
            raise StoreError(f"etcd {url.netloc}{path}: {status_line.decode('latin-1').strip()}")
        return reader, writer, headers

    async def call(self, path: str, body: dict) -> dict:
        async def go():
            reader, writer, headers = await self._send(path, body)
            try:
                if "content-length" in headers:
                    data = await reader.readexactly(int(headers["content-length"]))
                else:
                    data = b"".join([chunk async for chunk in _chunks(reader)])
                return json.loads(data or b"{}")
            finally:
                writer.close()
        try:
            return await asyncio.wait_for(go(), self.settings.timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
            raise StoreError(f"etcd request {path} failed: {err or type(err).__name__}") from err

    async def stream(self, path: str, body: dict):
        """Yield JSON objects of a streaming response (a watch) until it ends."""
        try:
            reader, writer, headers = await asyncio.wait_for(self._send(path, body), self.settings.timeout)
        except (OSError, asyncio.TimeoutError) as err:
            raise StoreError(f"etcd {path} failed: {err or type(err).__name__}") from err
        buf = b""
        try:
            async for chunk in _chunks(reader):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            writer.close()


async def _chunks(reader):
    """HTTP/1.1 chunked transfer decoding."""
    while True:
        size_line = await reader.readline()
        if not size_line:
            return
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


class EtcdPinStore:
    backend = "etcd"

    def __init__(self, settings, host: str = "", state_dir: Optional[str] = None):
        self.settings = settings
        self.host = host
        self.prefix = settings.prefix
        self._sync = _SyncClient(settings)
        self._state_dir = state_dir
        self._daemon = False
        self.cache: Optional[SqlitePinStore] = None
        self.reachable = False
        self.last_error: Optional[str] = None
        self.conflicts = 0
        self._audit: deque = deque(maxlen=AUDIT_QUEUE_MAX)
        self._wake: Optional[asyncio.Event] = None
        self._tasks: List[asyncio.Task] = []
        self._audit_seq = 0

    # -------------------------------------------------------------- hookctl
    def _key(self, uuid: str) -> str:
        return self.prefix + PINS + uuid

    def get(self, instance_uuid: str) -> Optional[str]:
        if self._daemon:
            return self.cache.get(instance_uuid)
        resp = self._sync.call("/v3/kv/range", {"key": _b64(self._key(instance_uuid))})
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
        key = _b64(self._key(uuid))
        return {"compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
                "success": [{"request_put": {"key": key, "value": _b64(_pin_value(serial, source, self.host))}}],
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
        self._sync.call("/v3/kv/put", {"key": _b64(self._key(uuid)),
                                       "value": _b64(_pin_value(serial, source, self.host))})

    def unpin(self, instance_uuid: str) -> bool:
        uuid = canonical_uuid(instance_uuid)
        if uuid is None:
            raise StoreError(f"{instance_uuid!r} is not an instance UUID")
        resp = self._sync.call("/v3/kv/deleterange", {"key": _b64(self._key(uuid))})
        return int(resp.get("deleted", 0)) > 0

    def all(self) -> Dict[str, dict]:
        kvs, _ = self._range_sync()
        return kvs

    def _range_body(self) -> dict:
        start = self.prefix + PINS
        return {"key": _b64(start), "range_end": _b64(_prefix_end(start))}

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
        self._client = _AsyncClient(self.settings)
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
        self._audit.append(row)
        if self._wake is not None:
            self._wake.set()

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
            uuid = canonical_uuid(_unb64(kv.get("key", ""))[len(self.prefix + PINS):])
            if uuid is not None:
                self.cache.unpin(uuid)
            return
        parsed = _parse_pin(kv, self.prefix)
        if parsed is not None:
            uuid, value = parsed
            if self.cache.get(uuid) != value["serial"]:
                self.cache.set(uuid, value["serial"], source=value.get("source") or "etcd")

    async def _writer_loop(self) -> None:
        """Send queued pins (create-if-absent) and audit copies whenever etcd is reachable."""
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
                while self._audit:
                    row = self._audit[0]
                    self._audit_seq += 1
                    key = f"{self.prefix}{AUDIT}{self.host}/{row.get('time', now_iso())}-{self._audit_seq:06d}"
                    await self._client.call("/v3/kv/put", {"key": _b64(key), "value": _b64(json.dumps(row))})
                    self._audit.popleft()
                delay = 0.2
            except StoreError as err:
                self._set_reachable(False, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                self._wake.set()

    def status(self) -> dict:
        return {"backend": self.backend, "endpoints": list(self.settings.endpoints), "reachable": self.reachable,
                "queued": self.pending(), "audit_queued": len(self._audit), "conflicts": self.conflicts,
                "cached": len(self.cache.all()) if self.cache is not None else 0, "last_error": self.last_error}

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

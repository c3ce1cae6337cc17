"""etcd v3's HTTP/JSON gateway as hookd speaks it: one blocking client (hookctl) and one
asyncio client (the daemon), the base64 of keys and values, TLS, and the little HTTP/1.1
the daemon needs (a POST, the response head, a content-length or chunked body, a
streaming watch).

It owns transport only: which keys exist and what their values mean is
hookd.stores.etcd's. It never blocks the daemon's loop (the asyncio client) and never
runs a thread.

Why this client: OpenStack's etcd3gw speaks the same gateway but blocks on `requests`
and runs its watches in threads; hookd's daemon is one asyncio loop with no threads,
and its packages depend only on Debian's python3-* set. The few calls hookd needs are
small JSON POSTs, so the daemon speaks them over asyncio streams and hookctl over
http.client.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import http.client
import json
import ssl
import urllib.parse
from typing import Dict, Optional, Tuple

from hookd.errors import StoreError


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def prefix_end(prefix: str) -> str:
    """The range_end that selects every key starting with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def tls_context(settings) -> Optional[ssl.SSLContext]:
    if not any(e.startswith("https://") for e in settings.endpoints):
        return None
    ctx = ssl.create_default_context(cafile=settings.ca_file or None)
    if settings.cert_file:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    return ctx


class SyncClient:
    """Blocking calls for hookctl (never used inside the daemon)."""

    def __init__(self, settings):
        self.settings = settings
        self.tls = tls_context(settings)

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

    def range_prefix(self, prefix: str) -> Dict[str, str]:
        """Every key under `prefix` and its value, decoded (one range call; what they mean is
        the caller's)."""
        resp = self.call("/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        return {unb64(kv["key"]): unb64(kv.get("value", "")) for kv in resp.get("kvs", [])}


class AsyncClient:
    """HTTP/1.1 POSTs over asyncio streams, one connection per call (the daemon)."""

    def __init__(self, settings):
        self.settings = settings
        self.tls = tls_context(settings)

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
        writer.write(http_post(url.netloc, path, body))
        await writer.drain()
        status_line, headers = await read_response_head(reader)
        parts = status_line.split()
        if len(parts) < 2 or parts[1] != b"200":
            writer.close()
            raise StoreError(f"etcd {url.netloc}{path}: {status_line.decode('latin-1').strip()}")
        return reader, writer, headers

    async def call(self, path: str, body: dict) -> dict:
        async def go():
            reader, writer, headers = await self._send(path, body)
            try:
                return json.loads(await read_body(reader, headers) or b"{}")
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


def http_post(host: str, path: str, body: dict) -> bytes:
    """One HTTP/1.1 POST of a JSON body to etcd's gRPC gateway."""
    payload = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)


async def read_response_head(reader) -> Tuple[bytes, dict]:
    """The status line and the headers (lower-case names) of an HTTP/1.1 response."""
    status_line = await reader.readline()
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status_line, headers


async def read_body(reader, headers: dict) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return b"".join([chunk async for chunk in _chunks(reader)])


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

"""hookd.stores.etcdgateway, the transport to etcd's HTTP/JSON gateway, without etcd: the
base64 of keys, prefix ranges, the POST bytes, the response head and bodies (content-length
and chunked) read from an in-memory asyncio.StreamReader, AsyncClient against a tiny
asyncio server on 127.0.0.1 (a streaming watch, a call, a refusal), and the error both
clients give when nothing listens (the real etcd is tests/integration/test_etcd_store.py's).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import socket

import pytest

from hookd.config import StoreSettings
from hookd.errors import StoreError
from hookd.stores.etcdgateway import (AsyncClient, SyncClient, b64, http_post, prefix_end, read_body,
                                      read_response_head, tls_context, unb64)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def reader_of(*parts: bytes, eof: bool = True) -> asyncio.StreamReader:
    """A StreamReader holding `parts` (call inside the loop)."""
    reader = asyncio.StreamReader()
    for part in parts:
        reader.feed_data(part)
    if eof:
        reader.feed_eof()
    return reader


def closed_port() -> int:
    """A port on 127.0.0.1 that was just bound and closed: nothing listens there."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def settings(*endpoints, timeout=5.0) -> StoreSettings:
    return StoreSettings(backend="etcd", endpoints=tuple(endpoints), timeout=timeout)


# ------------------------------------------------------------------ keys and ranges

@pytest.mark.parametrize("text", ["", "/hookd/pins/1b0b8a5e-2c1d-4d7e-9f00-aabbccddeeff", "wéb ☃", "a\nb\0c"])
def test_b64_is_standard_base64_of_utf8_and_unb64_undoes_it(text):
    assert b64(text) == base64.b64encode(text.encode("utf-8")).decode("ascii")
    assert unb64(b64(text)) == text


def test_b64_known_values():
    assert b64("/hookd/") == "L2hvb2tkLw=="
    assert unb64("L2hvb2tkL3BpbnMv") == "/hookd/pins/"


@pytest.mark.parametrize("prefix,end", [("/hookd/pins/", "/hookd/pins0"), ("a", "b"), ("/x/y", "/x/z"),
                                        ("k\x7f", "k\x80"), ("é", "ê")])
def test_prefix_end(prefix, end):
    assert prefix_end(prefix) == end


def test_prefix_range_holds_exactly_the_keys_with_the_prefix():
    # etcd compares keys as bytes: key <= k < range_end.
    prefix = "/hookd/pins/"
    start, end = prefix.encode(), prefix_end(prefix).encode()
    inside = [prefix, prefix + "0", prefix + "1b0b8a5e", prefix + "\x7f", prefix + "é", prefix + "\U0010ffff"]
    outside = ["/hookd/pins", "/hookd/pinr/x", "/hookd/pins0", "/hookd/pins0/x", "/hookd/lastboot/x", "/hookd/"]
    for key in inside:
        assert start <= key.encode() < end, key
    for key in outside:
        assert not start <= key.encode() < end, key


# ------------------------------------------------------------------ the POST

def test_http_post_bytes():
    body = {"key": "L2hvb2tkLw==", "range_end": "L2hvb2tkMA=="}
    payload = json.dumps(body).encode()
    assert http_post("127.0.0.1:2379", "/v3/kv/range", body) == (
        b"POST /v3/kv/range HTTP/1.1\r\nHost: 127.0.0.1:2379\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)


def test_http_post_content_length_counts_bytes():
    raw = http_post("h", "/p", {"v": "é☃"})
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert f"Content-Length: {len(payload)}".encode() in head.split(b"\r\n")
    assert json.loads(payload) == {"v": "é☃"}


# ------------------------------------------------------------------ reading a response

def test_response_head():
    async def go():
        reader = reader_of(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                           b"Grpc-Metadata-Content-Type:  application/grpc \r\nX-Empty:\r\n\r\n{}")
        status, headers = await read_response_head(reader)
        return status, headers, await reader.read()
    status, headers, rest = run(go())
    assert status == b"HTTP/1.1 200 OK\r\n"
    assert headers == {"content-type": "application/json", "grpc-metadata-content-type": "application/grpc",
                       "x-empty": ""}
    assert rest == b"{}"                            # the body is left to read_body


def test_response_head_cut_short():
    async def head(data):
        return await read_response_head(reader_of(data))
    assert run(head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n")) == (b"HTTP/1.1 200 OK\r\n", {"content-length": "5"})
    assert run(head(b"")) == (b"", {})


def test_body_by_content_length_reads_exactly_that():
    async def go():
        reader = reader_of(b'{"a":', b' 1}NEXT')
        return await read_body(reader, {"content-length": "8"}), await reader.read()
    assert run(go()) == (b'{"a": 1}', b"NEXT")


def test_body_by_content_length_cut_short():
    async def go():
        await read_body(reader_of(b'{"a"'), {"content-length": "8"})
    with pytest.raises(asyncio.IncompleteReadError):
        run(go())


def test_chunked_body():
    async def go():
        reader = reader_of(b"4\r\nabcd\r\n", b"3;name=value\r\nef", b"g\r\n1A\r\n" + b"z" * 26 + b"\r\n",
                           b"0\r\n\r\nNEXT")
        return await read_body(reader, {"transfer-encoding": "chunked"}), await reader.read()
    assert run(go()) == (b"abcdefg" + b"z" * 26, b"NEXT")


def test_chunked_body_ended_by_eof_and_cut_short():
    async def body(*parts):
        return await read_body(reader_of(*parts), {})
    assert run(body(b"2\r\nab\r\n")) == b"ab"             # the connection closed after a whole chunk
    with pytest.raises(asyncio.IncompleteReadError):
        run(body(b"5\r\nab"))                             # ... in the middle of one
    with pytest.raises(ValueError):
        run(body(b"zz\r\nab\r\n"))                        # not a chunk size


# ------------------------------------------------------------------ AsyncClient over TCP

class Gateway:
    """A one-shot HTTP server on 127.0.0.1: records the request, answers with `respond`."""

    def __init__(self, respond):
        self.respond = respond
        self.requests = []
        self.server = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return "http://127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer):
        status, headers = await read_response_head(reader)      # a request head reads the same way
        body = await reader.readexactly(int(headers["content-length"]))
        self.requests.append((status, headers, body))
        try:
            await self.respond(writer)
        finally:
            writer.close()

    async def close(self):
        self.server.close()
        await self.server.wait_closed()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def test_stream_yields_json_lines_as_they_come():
    async def go():
        first_seen = asyncio.Event()

        async def respond(writer):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(chunk(b'{"result":{"created":true}}\n'))
            await writer.drain()
            await first_seen.wait()              # the first event reached the client before any more is sent
            writer.write(chunk(b'{"result":{"events":[{"kv":{"key":"a"}}]'))    # one line over two chunks
            writer.write(chunk(b'}}\n\n{"result":{"events":[]}}\n'))             # a blank line, then the last
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        gw = Gateway(respond)
        endpoint = await gw.start()
        got = []
        async for msg in AsyncClient(settings(endpoint)).stream("/v3/watch", {"create_request": {"key": "L2g="}}):
            got.append(msg)
            first_seen.set()
        await gw.close()
        return endpoint, got, gw.requests
    endpoint, got, requests = run(go())
    assert got == [{"result": {"created": True}}, {"result": {"events": [{"kv": {"key": "a"}}]}},
                   {"result": {"events": []}}]
    ((status, headers, body),) = requests
    assert status == b"POST /v3/watch HTTP/1.1\r\n"
    assert headers["host"] == endpoint[len("http://"):] and headers["content-type"] == "application/json"
    assert json.loads(body) == {"create_request": {"key": "L2g="}}


def test_call_reads_a_content_length_answer():
    async def go():
        async def respond(writer):
            payload = b'{"header":{"revision":"7"},"count":"0"}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
            await writer.drain()
        gw = Gateway(respond)
        endpoint = await gw.start()
        try:
            return await AsyncClient(settings(endpoint)).call("/v3/kv/range", {"key": "YQ=="}), gw.requests
        finally:
            await gw.close()
    answer, ((status, _, body),) = run(go())
    assert answer == {"header": {"revision": "7"}, "count": "0"}
    assert status == b"POST /v3/kv/range HTTP/1.1\r\n" and json.loads(body) == {"key": "YQ=="}


def test_call_and_stream_refuse_a_non_200_answer():
    async def respond(writer):
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async def go(use_stream):
        gw = Gateway(respond)
        endpoint = await gw.start()
        try:
            client = AsyncClient(settings(endpoint))
            if use_stream:
                async for _ in client.stream("/v3/watch", {}):
                    pass
            else:
                await client.call("/v3/kv/put", {})
        finally:
            await gw.close()
        return endpoint
    for use_stream, path in ((False, "/v3/kv/put"), (True, "/v3/watch")):
        with pytest.raises(StoreError, match=f"^etcd 127.0.0.1:[0-9]+{path}: HTTP/1.1 503 Service Unavailable$"):
            run(go(use_stream))


# ------------------------------------------------------------------ nothing listening

def test_sync_call_says_which_endpoints_refused():
    a, b = closed_port(), closed_port()
    with pytest.raises(StoreError) as err:
        SyncClient(settings(f"http://127.0.0.1:{a}", f"http://127.0.0.1:{b}")).call("/v3/kv/range", {})
    text = str(err.value)
    assert text.startswith(f"etcd unreachable (http://127.0.0.1:{a}: ") and text.endswith(")")
    assert f"; http://127.0.0.1:{b}: " in text
    assert text.count(f"[Errno {errno.ECONNREFUSED}] Connection refused") == 2


def test_async_call_says_which_endpoint_refused():
    port = closed_port()
    refused = rf"^etcd unreachable \(http://127.0.0.1:{port}: \[Errno {errno.ECONNREFUSED}\] "
    with pytest.raises(StoreError, match=refused):
        run(AsyncClient(settings(f"http://127.0.0.1:{port}")).call("/v3/kv/range", {}))


def test_plain_http_needs_no_tls():
    assert tls_context(settings("http://127.0.0.1:2379", "http://[::1]:2379")) is None

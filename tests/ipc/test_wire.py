"""Hook-socket JSON framing (hookctl's control calls), in memory."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookd.ipc import wire
def feed(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    if eof:
        r.feed_eof()
    return r


def read(data: bytes, **kw):
    async def go():
        return await wire.read_message(feed(data), **kw)
    return asyncio.run(go())


def test_round_trip():
    msg = {"v": 1, "op": "status", "detail": "<domain>é</domain>"}
    assert wire.decode(wire.encode(msg)) == msg
    assert read(wire.encode(msg)) == msg


def test_two_messages_in_one_stream():
    async def go():
        r = feed(wire.encode({"a": 1}) + wire.encode({"b": 2}))
        return [await wire.read_message(r), await wire.read_message(r)]
    assert asyncio.run(go()) == [{"a": 1}, {"b": 2}]


def test_clean_eof_is_eof_error():
    with pytest.raises(EOFError):
        read(b"")


@pytest.mark.parametrize("data,fragment", [
    (b"\x00\x00", "truncated header"),
    (struct.pack(">I", 10) + b"{}", "announced 10 bytes, got 2"),
    (struct.pack(">I", 3) + b"\xff\xfe\xfd", "undecodable"),
    (struct.pack(">I", 2) + b"[]", "not a JSON object"),
    (struct.pack(">I", 5) + b"nope!", "undecodable"),
])
def test_bad_streams_keep_raw_bytes(data, fragment):
    with pytest.raises(wire.MessageError) as err:
        read(data)
    assert fragment in str(err.value) and err.value.raw and err.value.raw in data


def test_deeply_nested_json_is_a_message_error():
    # json recurses per nesting level: past the interpreter's limit it raises RecursionError.
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(wire.MessageError, match="undecodable"):
        wire.decode(struct.pack(">I", len(body)) + body)


def test_oversize_announcement_rejected_without_reading_body():
    data = struct.pack(">I", wire.MAX_MESSAGE + 1)
    with pytest.raises(wire.MessageError, match="over the"):
        read(data)        # no body follows: it must not wait for 48 MiB
    with pytest.raises(wire.MessageError, match="over the"):
        read(struct.pack(">I", 1000) + b"x" * 1000, limit=999)


def test_encode_refuses_oversize(monkeypatch):
    monkeypatch.setattr(wire, "MAX_MESSAGE", 10)
    with pytest.raises(wire.MessageError):
        wire.encode({"x": "y" * 20})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_anything_else(data):
    try:
        read(data)
    except (wire.MessageError, EOFError):
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=10), st.one_of(st.text(), st.integers(), st.booleans(), st.none()),
                       max_size=5))
def test_round_trip_property(msg):
    assert wire.decode(wire.encode(msg)) == msg

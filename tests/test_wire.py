"""Hook-socket framing, in memory; and agreement with the shim's own copy."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookd import wire


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
    msg = {"v": 1, "op": "prepare", "xml": "<domain>é</domain>"}
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


def load_shim(tmp_path):
    """The rendered shim imported as a module (it is valid Python as well as sh)."""
    import importlib.util
    from hookd.cli import render_shim
    from tests.conftest import REPO
    text = render_shim((REPO / "hooks" / "qemu").read_text(), socket_path="/x", timeout=1.0, on_unreachable="allow")
    path = tmp_path / "shim.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("hookd_shim_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("xml", ["<domain/>", "<domain>é \" \\ \u2028 \U0001f600</domain>", "x" * 100000,
                                 "bad \udcff byte"], ids=["plain", "escapes", "100k", "surrogate"])
def test_shim_request_is_a_wire_message(tmp_path, xml):
    """The shim's own encoder (stdlib C cores only) produces what hookd/wire.py decodes."""
    shim = load_shim(tmp_path)
    data = shim.encode_request("prepare", "begin", "instance-1", "-", xml, 1700000000.25)
    msg = wire.decode(data)
    assert msg == {"v": 1, "op": "prepare", "sub": "begin", "domain": "instance-1", "extra": "-",
                   "deadline": 1700000000.25, "xml": xml}


@pytest.mark.parametrize("reply", [{"v": 1, "action": "allow"},
                                   {"v": 1, "action": "deny", "message": "hookd: é \"x\""},
                                   {"v": 1, "action": "allow", "xml": "<domain>\n</domain>", "n": 1.5, "k": [None, True]}])
def test_shim_reads_wire_replies(tmp_path, reply):
    shim = load_shim(tmp_path)
    assert shim.decode_reply(wire.encode(reply)[wire.HEADER.size:]) == reply


@pytest.mark.parametrize("body", [b"[]", b"{} x", b"nope", b"\xff"])
def test_shim_refuses_bad_replies(tmp_path, body):
    shim = load_shim(tmp_path)
    with pytest.raises(ValueError):
        shim.decode_reply(body)


def test_shim_limits_match_wire(tmp_path):
    shim = load_shim(tmp_path)
    from hookd.xmlsafe import MAX_XML_BYTES
    assert (shim.MAX_MESSAGE, shim.MAX_XML) == (wire.MAX_MESSAGE, MAX_XML_BYTES)


def test_render_shim_refuses_unknown_placeholders():
    from hookd.cli import CliError, render_shim
    with pytest.raises(CliError, match="@NEW_KNOB@"):
        render_shim("x = @SOCKET@\ny = @NEW_KNOB@\n", socket_path="/x", timeout=1.0, on_unreachable="allow")
    out = render_shim("#!/bin/sh\nexec @PYTHON@ a\nS = @SOCKET@\nT = @TIMEOUT@\nO = @ON_UNREACHABLE@\n",
                      socket_path="/run/a b/@odd@.sock", timeout=2, on_unreachable="deny")
    assert out == "#!/bin/sh\nexec /usr/bin/python3 a\nS = '/run/a b/@odd@.sock'\nT = 2.0\nO = 'deny'\n"

"""The shim's wire format (hookd.hookpath.shimwire), in memory; and its agreement with the C shim."""

from __future__ import annotations

import asyncio
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookd.hookpath import shimwire

from hookd.ipc import wire
from hookd.hookpath.shimwire import HookReply, HookRequest, ShimWireError
from tests.harness.run import REPO


def feed(data: bytes) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    r.feed_eof()
    return r


def read(data: bytes) -> HookRequest:
    async def go():
        reader = feed(data)
        head = await reader.readexactly(4)
        return await shimwire.read_request(reader, head)
    return asyncio.run(go())


REQ = HookRequest(op="prepare", sub="begin", domain="instance-0000002a", extra="-",
                  xml=b"<domain>\xc3\xa9 '\"\n</domain>", deadline=1700000000.25)


def test_request_layout_is_the_documented_one():
    assert shimwire.encode_request(REQ) == (b"HOOKD1 prepare begin 1700000000250 17 1 23\n"
                                            b"instance-0000002a-<domain>\xc3\xa9 '\"\n</domain>")


def test_request_round_trip_stream_and_whole():
    data = shimwire.encode_request(REQ)
    assert shimwire.decode_request(data) == REQ
    assert read(data) == REQ


def test_no_deadline_is_zero():
    req = HookRequest("migrate", "begin", "d", "-", b"<domain/>")
    assert b" 0 " in shimwire.encode_request(req) and read(shimwire.encode_request(req)).deadline is None


def test_xml_travels_byte_for_byte():
    xml = bytes(range(256)) * 4
    req = HookRequest("prepare", "begin", "d", "-", xml)
    assert read(shimwire.encode_request(req)).xml == xml


def test_undecodable_domain_name_is_kept_visible():
    data = b"HOOKD1 prepare begin 0 2 1 0\n\xff\xfe-"
    assert read(data).domain == "\udcff\udcfe"


@pytest.mark.parametrize("data,fragment", [
    (b"HOOKD1 prepare begin 0 1 1\n", "not a hookd shim request header"),
    (b"HOOKD1 Prepare begin 0 1 1 0\nd-", "not a hookd shim request header"),
    (b"HOOKD1 prepare begin 01 1 1 0\nd-", "not a hookd shim request header"),
    (b"HOOKD1 prepare begin -1 1 1 0\nd-", "not a hookd shim request header"),
    (b"HOOKD1 prepare begin 0 1 1 5\nd-<do", "announced 7 bytes, got 5"),
    (b"HOOKD1 prepare begin 0 4097 1 0\n", "over 4096 bytes"),
    (b"HOOKD1 prepare begin 0 1 1 %d\n" % (shimwire.MAX_XML + 2), "over the"),
    (b"HOOKD1 prepare begin 0 1 1 0", "truncated request header"),
    (b"HOOKD1 " + b"a" * 200 + b"\n", "over the limit"),
    (b"HOOKD1 " + b"a" * 200, "truncated request header"),
])
def test_bad_requests_keep_raw_bytes(data, fragment):
    with pytest.raises(ShimWireError) as err:
        read(data)
    assert fragment in str(err.value) and err.value.raw and err.value.raw[:20] == data[:20]
    if b"\n" in data:
        with pytest.raises(ShimWireError):
            shimwire.decode_request(data)


def test_a_line_without_end_is_bounded_by_the_stream_limit():
    async def go():
        reader = asyncio.StreamReader(limit=1024)
        reader.feed_data(b"HOOKD1 " + b"a" * 5000)
        head = await reader.readexactly(4)
        return await shimwire.read_request(reader, head)
    with pytest.raises(ShimWireError, match="over the limit"):
        asyncio.run(go())


def test_one_byte_over_the_xml_limit_travels():
    """The shim sends MAX_XML + 1 bytes so that hookd records the oversize definition."""
    req = HookRequest("prepare", "begin", "d", "-", b"x" * (shimwire.MAX_XML + 1))
    assert len(shimwire.decode_request(shimwire.encode_request(req)).xml) == shimwire.MAX_XML + 1


def test_encode_refuses_what_the_shim_could_not_send():
    with pytest.raises(ShimWireError):
        shimwire.encode_request(HookRequest("pre pare", "begin", "d", "-", b""))
    with pytest.raises(ShimWireError):
        shimwire.encode_request(HookRequest("prepare", "begin", "d" * 4097, "-", b""))


@pytest.mark.parametrize("reply,data", [
    (HookReply("allow"), b"HOOKD1 allow 0\n"),
    (HookReply("allow", "ignored for allow"), b"HOOKD1 allow 0\n"),
    (HookReply("deny", "hookd: no \u00e9"), b"HOOKD1 deny 12\nhookd: no \xc3\xa9"),
    (HookReply("deny", "two\nlines"), b"HOOKD1 deny 9\ntwo lines"),
])
def test_reply_layout(reply, data):
    assert shimwire.encode_reply(reply) == data
    assert shimwire.decode_reply(data).action == reply.action


def test_long_reason_is_cut_at_a_character_boundary():
    data = shimwire.encode_reply(HookReply("deny", "\u00e9" * 3000))
    back = shimwire.decode_reply(data)
    assert len(back.reason.encode()) <= shimwire.MAX_REASON and back.reason.endswith("...")
    assert "\ufffd" not in back.reason


@pytest.mark.parametrize("data", [b"HOOKD1 allow 1\nx", b"HOOKD1 deny 5\nabc", b"HOOKD1 deny 05\nabcde",
                                  b"HOOKD1 maybe 0\n", b"HOOKD2 allow 0\n", b"HOOKD1 deny 4001\n" + b"x" * 4001])
def test_bad_replies_are_refused(data):
    with pytest.raises(ShimWireError):
        shimwire.decode_reply(data)


def test_json_messages_and_shim_requests_cannot_be_confused():
    """hookd.hookpath.server tells the two apart by the first four bytes."""
    assert int.from_bytes(shimwire.PREFIX, "big") > wire.MAX_MESSAGE
    assert wire.encode({"v": 1, "op": "status"})[:4] != shimwire.PREFIX


def c_define(name: str) -> int:
    text = (REPO / "hooks" / "hookd-shim.c").read_text()
    m = re.search(rf"^#define {name} \(?([0-9]+)(UL)?( \* 1024 \* 1024\))?", text, re.M)
    assert m, name
    return int(m.group(1)) * (1024 * 1024 if m.group(3) else 1)


def test_c_shim_limits_match():
    assert c_define("MAX_XML") == shimwire.MAX_XML
    assert c_define("MAX_FIELD") == shimwire.MAX_FIELD
    assert c_define("MAX_REASON") == shimwire.MAX_REASON
    assert c_define("MAX_HEADER") == shimwire.MAX_HEADER


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_else(data):
    try:
        read(b"HOOK" + data)
    except ShimWireError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[a-z]{1,16}", fullmatch=True), st.text(max_size=50), st.text(max_size=20),
       st.binary(max_size=500), st.one_of(st.none(), st.floats(1, 4e9)))
def test_request_round_trip_property(op, name, extra, xml, deadline):
    req = HookRequest(op, "begin", name, extra, xml, deadline)
    back = read(shimwire.encode_request(req))
    assert (back.op, back.domain, back.extra, back.xml) == (op, name, extra, xml)
    assert (back.deadline is None) == (deadline is None or int(deadline * 1000) == 0)

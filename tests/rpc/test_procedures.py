"""In-memory tests of hookd.rpc.procedures: the intercepted procedures and their ops, and
each one's argument codec (decode, byte-identical re-encode, the XML found and replaced,
strict refusals), on hand-built wire bytes and on generated ones."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookd.rpc.procedures import CODECS
from hookd.rpc.xdr import NonnullDomain, ParamType, TypedParam, XdrError, XdrWriter, encode_typed_params
from tests.harness.xdrgen import params, text


def xdr_string(s: bytes) -> bytes:
    return struct.pack(">I", len(s)) + s + b"\0" * ((4 - len(s) % 4) % 4)


def xdr_param(name: bytes, ptype: int, value: bytes) -> bytes:
    return xdr_string(name) + struct.pack(">i", ptype) + value


def test_intercepted_procedures_and_ops():
    assert {n: c.op for n, c in CODECS.items()} == {
        10: "create",
        11: "define",
        303: "migrate-persistent",
        304: "migrate-persistent",
        305: "migrate-persistent",
        309: "create-with-files",
        350: "define-flags",
    }


DOM_WIRE = xdr_string(b"instance-0001") + bytes(range(16)) + struct.pack(">i", 3)
PERSIST = b"<domain><name>instance-0001</name><sysinfo>SERIAL-OLD</sysinfo></domain>"
DEST = b"<domain><name>instance-0001</name><sysinfo>SERIAL-OLD</sysinfo><live/></domain>"
PARAMS_WIRE = b"".join([
    struct.pack(">I", 5),
    xdr_param(b"migrate_uri", 7, xdr_string(b"tcp://10.0.0.2")),
    xdr_param(b"destination_xml", 7, xdr_string(DEST)),
    xdr_param(b"persistent_xml", 7, xdr_string(PERSIST)),
    xdr_param(b"bandwidth", 4, struct.pack(">Q", 1 << 40)),
    xdr_param(b"auto_converge.initial", 1, struct.pack(">i", 20)),
])
COOKIE = b"<qemu-migration>cookie</qemu-migration>\x00"
PERFORM_WIRE = (DOM_WIRE + struct.pack(">I", 1) + xdr_string(b"qemu+tcp://dst/system") + PARAMS_WIRE
                + struct.pack(">I", len(COOKIE)) + COOKIE + b"\0" * ((4 - len(COOKIE) % 4) % 4)
                + struct.pack(">I", 0x203))
PREPARE_WIRE = (PARAMS_WIRE + struct.pack(">I", len(COOKIE)) + COOKIE
                + b"\0" * ((4 - len(COOKIE) % 4) % 4) + struct.pack(">I", 0x1))

XML = "<domain type='qemu'><name>g</name><sysinfo type='smbios'/></domain>"
SIMPLE_WIRE = {
    11: xdr_string(XML.encode()),
    350: xdr_string(XML.encode()) + struct.pack(">I", 2),
    10: xdr_string(XML.encode()) + struct.pack(">I", 1),
    309: xdr_string(XML.encode()) + struct.pack(">I", 0),
}


@pytest.mark.parametrize("proc", sorted(SIMPLE_WIRE))
def test_simple_codecs_round_trip_and_rewrite(proc):
    codec = CODECS[proc]
    wire = SIMPLE_WIRE[proc]
    args = codec.decode(wire)
    assert codec.get_xml(args) == XML
    assert codec.encode(args) == wire
    new = XML.replace("<name>g</name>", "<name>g</name><x>é</x>")
    out = codec.rewrite_payload(wire, new)
    assert codec.get_xml(codec.decode(out)) == new
    assert out[:4] == struct.pack(">I", len(new.encode()))
    if proc != 11:
        assert out[-4:] == wire[-4:]  # flags untouched


@pytest.mark.parametrize("proc", sorted(SIMPLE_WIRE))
def test_simple_codecs_reject_trailing_and_truncated(proc):
    codec = CODECS[proc]
    with pytest.raises(XdrError):
        codec.decode(SIMPLE_WIRE[proc] + b"\0\0\0\0")
    with pytest.raises(XdrError):
        codec.decode(SIMPLE_WIRE[proc][:-1])


def test_perform3_params_decode_reencode_identical():
    codec = CODECS[305]
    args = codec.decode(PERFORM_WIRE)
    assert args.dom == NonnullDomain("instance-0001", bytes(range(16)), 3)
    assert args.dconnuri == "qemu+tcp://dst/system"
    assert args.cookie_in == COOKIE
    assert args.flags == 0x203
    assert codec.get_xml(args) == PERSIST.decode()
    assert codec.encode(args) == PERFORM_WIRE


def test_perform3_params_rewrite_touches_only_persistent_xml():
    codec = CODECS[305]
    new_persist = PERSIST.replace(b"SERIAL-OLD", b"SERIAL-NEW-LONGER")
    out = codec.rewrite_payload(PERFORM_WIRE, new_persist.decode())
    old_param = xdr_param(b"persistent_xml", 7, xdr_string(PERSIST))
    new_param = xdr_param(b"persistent_xml", 7, xdr_string(new_persist))
    assert out == PERFORM_WIRE.replace(old_param, new_param)
    args = codec.decode(out)
    dest = [p for p in args.params if p.field == "destination_xml"]
    assert dest[0].value == DEST.decode()  # destination_xml never touched


def test_prepare3_params_round_trip_and_rewrite():
    for proc in (303, 304):
        codec = CODECS[proc]
        args = codec.decode(PREPARE_WIRE)
        assert codec.encode(args) == PREPARE_WIRE
        out = codec.rewrite_payload(PREPARE_WIRE, "<domain/>")
        assert codec.get_xml(codec.decode(out)) == "<domain/>"
        assert out.endswith(PREPARE_WIRE[len(PARAMS_WIRE):])  # cookie and flags untouched


def test_migration_without_persistent_xml_has_no_xml():
    wire = (struct.pack(">I", 1) + xdr_param(b"destination_xml", 7, xdr_string(DEST))
            + struct.pack(">I", 0) + struct.pack(">I", 0))
    codec = CODECS[303]
    assert codec.get_xml(codec.decode(wire)) is None


def test_duplicate_or_non_string_persistent_xml_refused():
    codec = CODECS[303]
    dup = (struct.pack(">I", 2) + xdr_param(b"persistent_xml", 7, xdr_string(b"a"))
           + xdr_param(b"persistent_xml", 7, xdr_string(b"b")) + struct.pack(">II", 0, 0))
    with pytest.raises(XdrError):
        codec.get_xml(codec.decode(dup))
    wrong = (struct.pack(">I", 1) + xdr_param(b"persistent_xml", 1, struct.pack(">i", 1))
             + struct.pack(">II", 0, 0))
    with pytest.raises(XdrError):
        codec.get_xml(codec.decode(wrong))


# --- properties ------------------------------------------------------------------------



@settings(max_examples=200, deadline=None, database=None)
@given(xml=text, flags=st.integers(0, 2**32 - 1), params=params, cookie=st.binary(max_size=50),
       dconnuri=st.none() | text)
def test_property_codecs_round_trip(xml, flags, params, cookie, dconnuri):
    w = XdrWriter()
    w.string(xml)
    w.uint(flags)
    for proc in (10, 309, 350):
        codec = CODECS[proc]
        args = codec.decode(w.getvalue())
        assert codec.get_xml(args) == xml
        assert codec.encode(args) == w.getvalue()
    params = [p for p in params if p.field != "persistent_xml"]
    params.append(TypedParam("persistent_xml", ParamType.STRING, xml))
    w = XdrWriter()
    w.string("dom")
    w.fixed_opaque(b"u" * 16)
    w.int(-1)
    w.optional_string(dconnuri)
    encode_into = encode_typed_params(params)
    wire = w.getvalue() + encode_into
    w2 = XdrWriter()
    w2.opaque(cookie)
    w2.uint(flags)
    wire += w2.getvalue()
    codec = CODECS[305]
    args = codec.decode(wire)
    assert codec.get_xml(args) == xml
    assert codec.encode(args) == wire


@settings(max_examples=500, deadline=None, database=None)
@given(data=st.binary(max_size=200))
def test_property_arbitrary_payload_only_raises_xdr_error(data):
    for codec in CODECS.values():
        try:
            args = codec.decode(data)
            codec.get_xml(args)
        except XdrError:
            continue
        # Anything accepted re-encodes identically; an encode error here is a failure.
        assert codec.encode(args) == data

"""In-memory tests of hookd.rpc.xdr: XDR primitives, typed params, per-procedure codecs."""

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookd.errors import ProtocolError
from hookd.rpc.procedures import CODECS
from hookd.rpc.xdr import (NonnullDomain,
                           ParamType,
                           TypedParam,
                           XdrError,
                           XdrReader,
                           XdrWriter,
                           decode_typed_params,
                           encode_typed_params)


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


def test_string_encoding_is_rfc4506():
    w = XdrWriter()
    w.string("abcde")
    assert w.getvalue() == b"\0\0\0\x05abcde\0\0\0"
    w = XdrWriter()
    w.string("")
    assert w.getvalue() == b"\0\0\0\0"
    w = XdrWriter()
    w.string("abcd")
    assert w.getvalue() == b"\0\0\0\x04abcd"


def test_reader_primitives():
    data = (struct.pack(">I", 4000000000) + struct.pack(">i", -5) + struct.pack(">q", -(2**40))
            + struct.pack(">Q", 2**63) + struct.pack(">d", 1.5) + xdr_string(b"hi"))
    r = XdrReader(data)
    assert r.uint() == 4000000000
    assert r.int() == -5
    assert r.hyper() == -(2**40)
    assert r.uhyper() == 2**63
    assert r.double() == 1.5
    assert r.string() == "hi"
    r.done()


def test_nonzero_padding_rejected():
    with pytest.raises(XdrError, match="padding"):
        XdrReader(b"\0\0\0\x01a\0\x01\0").string()


def test_truncated_string_rejected():
    with pytest.raises(XdrError, match="truncated"):
        XdrReader(b"\0\0\0\x09abc").string()


def test_string_limit():
    with pytest.raises(XdrError, match="limit"):
        XdrReader(xdr_string(b"abcdef")).string(maximum=5)
    with pytest.raises(XdrError):
        XdrWriter().string("abcdef", maximum=5)


def test_optional_string_discriminant():
    assert XdrReader(b"\0\0\0\0").optional_string() is None
    assert XdrReader(b"\0\0\0\x01" + xdr_string(b"x")).optional_string() == "x"
    with pytest.raises(XdrError):
        XdrReader(b"\0\0\0\x02" + xdr_string(b"x")).optional_string()


def test_invalid_utf8_round_trips_bytes_exactly():
    raw = xdr_string(b"<a>\xff\xfe</a>")
    value = XdrReader(raw).string()
    w = XdrWriter()
    w.string(value)
    assert w.getvalue() == raw


def test_unencodable_string_is_xdr_error():
    with pytest.raises(XdrError):
        XdrWriter().string("\ud800")  # lone surrogate outside the escape range
    with pytest.raises(XdrError):
        XdrWriter().string(None)


def test_errors_are_protocol_errors():
    assert issubclass(XdrError, ProtocolError)


ALL_TYPES_WIRE = b"".join([
    struct.pack(">I", 7),
    xdr_param(b"i", 1, struct.pack(">i", -7)),
    xdr_param(b"ui", 2, struct.pack(">I", 2**32 - 1)),
    xdr_param(b"ll", 3, struct.pack(">q", -(2**62))),
    xdr_param(b"ull", 4, struct.pack(">Q", 2**64 - 1)),
    xdr_param(b"d", 5, struct.pack(">d", 0.25)),
    xdr_param(b"b", 6, struct.pack(">i", 1)),
    xdr_param(b"s", 7, xdr_string(b"text")),
])


def test_typed_params_all_types_decode_and_reencode_identically():
    params = decode_typed_params(ALL_TYPES_WIRE)
    assert params == (
        TypedParam("i", ParamType.INT, -7),
        TypedParam("ui", ParamType.UINT, 2**32 - 1),
        TypedParam("ll", ParamType.LLONG, -(2**62)),
        TypedParam("ull", ParamType.ULLONG, 2**64 - 1),
        TypedParam("d", ParamType.DOUBLE, 0.25),
        TypedParam("b", ParamType.BOOLEAN, 1),
        TypedParam("s", ParamType.STRING, "text"),
    )
    assert encode_typed_params(params) == ALL_TYPES_WIRE


def test_typed_param_unknown_type_rejected():
    wire = struct.pack(">I", 1) + xdr_param(b"x", 9, struct.pack(">i", 0))
    with pytest.raises(XdrError, match="unknown type"):
        decode_typed_params(wire)


def test_typed_param_count_larger_than_data_rejected_fast():
    with pytest.raises(XdrError, match="does not fit"):
        decode_typed_params(struct.pack(">I", 2**32 - 1))


def test_typed_param_out_of_range_value_not_encodable():
    with pytest.raises(XdrError):
        encode_typed_params([TypedParam("x", ParamType.UINT, -1)])


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

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
params = st.lists(st.one_of(
    st.builds(TypedParam, text, st.just(ParamType.INT), st.integers(-(2**31), 2**31 - 1)),
    st.builds(TypedParam, text, st.just(ParamType.UINT), st.integers(0, 2**32 - 1)),
    st.builds(TypedParam, text, st.just(ParamType.LLONG), st.integers(-(2**63), 2**63 - 1)),
    st.builds(TypedParam, text, st.just(ParamType.ULLONG), st.integers(0, 2**64 - 1)),
    st.builds(TypedParam, text, st.just(ParamType.DOUBLE), st.floats(allow_nan=False)),
    st.builds(TypedParam, text, st.just(ParamType.BOOLEAN), st.integers(-(2**31), 2**31 - 1)),
    st.builds(TypedParam, text, st.just(ParamType.STRING), text),
), max_size=8)


@settings(max_examples=300, deadline=None, database=None)
@given(params=params)
def test_property_typed_params_round_trip(params):
    wire = encode_typed_params(params)
    assert decode_typed_params(wire) == tuple(params)
    assert encode_typed_params(decode_typed_params(wire)) == wire


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


def test_double_nan_bits_survive():
    wire = struct.pack(">I", 1) + xdr_param(b"d", 5, b"\x7f\xf0\x00\x00\x00\x00\x00\x01")
    params = decode_typed_params(wire)
    assert math.isnan(params[0].value)
    assert encode_typed_params(params) == wire

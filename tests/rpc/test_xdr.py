"""In-memory tests of hookd.rpc.xdr: XDR primitives, typed params, remote_nonnull_domain
(the per-procedure codecs built on them are tests/rpc/test_procedures.py's)."""

import math
import struct

import pytest
from hypothesis import given, settings

from hookd.errors import ProtocolError
from hookd.rpc.xdr import (NonnullDomain,
                           ParamType,
                           TypedParam,
                           XdrError,
                           XdrReader,
                           XdrWriter,
                           decode_typed_params,
                           encode_typed_params,
                           read_domain,
                           write_domain)
from tests.harness.xdrgen import params


def xdr_string(s: bytes) -> bytes:
    return struct.pack(">I", len(s)) + s + b"\0" * ((4 - len(s) % 4) % 4)


def xdr_param(name: bytes, ptype: int, value: bytes) -> bytes:
    return xdr_string(name) + struct.pack(">i", ptype) + value


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


def test_nonnull_domain_round_trip():
    r = XdrReader(DOM_WIRE + b"rest")
    dom = read_domain(r)
    assert dom == NonnullDomain("instance-0001", bytes(range(16)), 3)
    assert r.remaining == 4                     # name, 16-byte uuid, id: nothing more is read
    w = XdrWriter()
    write_domain(w, dom)
    assert w.getvalue() == DOM_WIRE
    w = XdrWriter()
    write_domain(w, NonnullDomain("i", b"u" * 16, -1))      # an inactive domain's id
    assert w.getvalue() == xdr_string(b"i") + b"u" * 16 + b"\xff\xff\xff\xff"


def test_nonnull_domain_uuid_is_16_bytes():
    with pytest.raises(XdrError, match="truncated"):
        read_domain(XdrReader(DOM_WIRE[:-5]))
    with pytest.raises(XdrError, match="16 bytes"):
        write_domain(XdrWriter(), NonnullDomain("i", b"u" * 15, 1))


# --- properties ------------------------------------------------------------------------



@settings(max_examples=300, deadline=None, database=None)
@given(params=params)
def test_property_typed_params_round_trip(params):
    wire = encode_typed_params(params)
    assert decode_typed_params(wire) == tuple(params)
    assert encode_typed_params(decode_typed_params(wire)) == wire


def test_double_nan_bits_survive():
    wire = struct.pack(">I", 1) + xdr_param(b"d", 5, b"\x7f\xf0\x00\x00\x00\x00\x00\x01")
    params = decode_typed_params(wire)
    assert math.isnan(params[0].value)
    assert encode_typed_params(params) == wire

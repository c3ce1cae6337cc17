"""In-memory tests of hookd.rpc.frame: framing, limits, incremental decoding, garbage."""

import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookd.errors import ProtocolError
from hookd.rpc.frame import (
    HEADER_SIZE,
    KEEPALIVE_PROGRAM,
    LEN_SIZE,
    MESSAGE_MAX,
    MIN_LENGTH,
    NUM_FDS_MAX,
    REMOTE_PROGRAM,
    Frame,
    FrameDecoder,
    FrameError,
    Header,
    MessageType,
    Status,
    decode,
    encode,
)

CALL = Header(REMOTE_PROGRAM, 1, 11, MessageType.CALL, 7, Status.OK)


def test_sizes_match_virnetprotocol():
    assert LEN_SIZE == 4
    assert HEADER_SIZE == 24
    assert MIN_LENGTH == 28
    assert MESSAGE_MAX == 33554432
    assert NUM_FDS_MAX == 32
    assert MessageType.CALL_WITH_FDS == 4
    assert MessageType.REPLY_WITH_FDS == 5
    assert KEEPALIVE_PROGRAM == 0x6B656570


def test_encode_layout_is_xdr_big_endian():
    raw = encode(CALL, b"\x00\x00\x00\x01abc\x00")
    assert raw[:4] == struct.pack(">I", 36)
    assert raw[4:28] == struct.pack(">IIiiIi", REMOTE_PROGRAM, 1, 11, 0, 7, 0)
    assert raw[28:] == b"\x00\x00\x00\x01abc\x00"


def test_decode_round_trip_keeps_raw_bytes():
    raw = encode(CALL, b"payload!")
    frame = decode(raw)
    assert frame.header == CALL
    assert frame.raw == raw
    assert frame.payload == b"payload!"
    assert frame.nfds == 0
    assert frame.header.message_type is MessageType.CALL


def test_with_fds_message_carries_count_before_payload():
    header = Header(REMOTE_PROGRAM, 1, 309, MessageType.CALL_WITH_FDS, 3)
    raw = encode(header, b"ARGS", nfds=2)
    assert raw[28:32] == struct.pack(">I", 2)
    frame = decode(raw)
    assert frame.nfds == 2
    assert frame.payload == b"ARGS"
    assert frame.body == raw[28:]


def test_with_payload_fixes_length_and_keeps_header():
    header = Header(REMOTE_PROGRAM, 1, 309, MessageType.CALL_WITH_FDS, 3)
    frame = decode(encode(header, b"ARGS", nfds=1))
    bigger = frame.with_payload(b"LONGER-ARGUMENTS")
    assert struct.unpack(">I", bigger.raw[:4])[0] == len(bigger.raw)
    assert bigger.header == header and bigger.nfds == 1
    assert decode(bigger.raw).payload == b"LONGER-ARGUMENTS"


def test_unknown_type_and_status_stay_ints():
    raw = encode(Header(1, 2, -3, 99, 4, 77))
    frame = decode(raw)
    assert frame.header.type == 99 and frame.header.message_type == 99
    assert not isinstance(frame.header.message_type, MessageType)
    assert frame.header.status == 77
    assert frame.header.procedure == -3
    assert frame.raw == raw


@pytest.mark.parametrize("length", [0, 1, 4, 27])
def test_length_below_minimum_is_rejected(length):
    data = struct.pack(">I", length) + b"\0" * 40
    with pytest.raises(FrameError) as exc:
        FrameDecoder().feed(data)
    assert "minimum" in str(exc.value)
    assert exc.value.raw.startswith(struct.pack(">I", length))
    assert isinstance(exc.value, ProtocolError)


def test_length_limit_is_libvirts_exactly():
    # libvirt: length - 4 <= VIR_NET_MESSAGE_MAX. Exactly the limit is accepted.
    limit = 1000
    ok = struct.pack(">I", limit + LEN_SIZE) + struct.pack(">IIiiIi", 1, 1, 1, 0, 0, 0)
    assert FrameDecoder(max_message=limit).feed(ok) == []  # accepted, waiting for the rest
    too_big = struct.pack(">I", limit + LEN_SIZE + 1)
    with pytest.raises(FrameError, match="exceeds"):
        FrameDecoder(max_message=limit).feed(too_big)


def test_default_limit_rejects_oversize_from_the_length_word_alone():
    dec = FrameDecoder()
    with pytest.raises(FrameError, match="exceeds"):
        dec.feed(struct.pack(">I", MESSAGE_MAX + LEN_SIZE + 1))


def test_encode_refuses_oversize_payload():
    with pytest.raises(FrameError):
        encode(CALL, b"x" * 100, max_message=100)


def test_too_many_fds_rejected():
    header = Header(REMOTE_PROGRAM, 1, 309, MessageType.CALL_WITH_FDS, 3)
    with pytest.raises(FrameError):
        encode(header, b"", nfds=NUM_FDS_MAX + 1)
    raw = bytearray(encode(header, b"", nfds=1))
    raw[28:32] = struct.pack(">I", NUM_FDS_MAX + 1)
    with pytest.raises(FrameError, match="descriptors"):
        FrameDecoder().feed(bytes(raw))


def test_with_fds_without_count_rejected():
    raw = struct.pack(">I", 28) + struct.pack(">IIiiIi", REMOTE_PROGRAM, 1, 1, 5, 1, 0)
    with pytest.raises(FrameError, match="descriptor count"):
        FrameDecoder().feed(raw)
    with pytest.raises(FrameError):
        decode(raw)


def test_non_fd_type_cannot_have_fds():
    with pytest.raises(FrameError):
        encode(CALL, b"", nfds=1)


def test_decode_rejects_truncated_and_trailing():
    raw = encode(CALL, b"abcd")
    with pytest.raises(FrameError, match="truncated"):
        decode(raw[:-1])
    with pytest.raises(FrameError, match="after the message"):
        decode(raw + b"\0")
    with pytest.raises(FrameError):
        decode(b"\0\0")


def _stream():
    frames = [
        encode(CALL, b"define-args"),
        encode(Header(KEEPALIVE_PROGRAM, 1, 1, MessageType.MESSAGE, 0)),
        encode(Header(REMOTE_PROGRAM, 1, 209, MessageType.STREAM, 9, Status.CONTINUE), b"\xff" * 300),
        encode(Header(REMOTE_PROGRAM, 1, 343, MessageType.REPLY_WITH_FDS, 10), b"", nfds=2),
        encode(Header(REMOTE_PROGRAM, 1, 2, MessageType.CALL, 11)),
    ]
    carriers = [b"", b"", b"", b"\0\x07", b""]
    wire = b"".join(f + c for f, c in zip(frames, carriers))
    return frames, carriers, wire


def test_incremental_split_at_every_offset():
    frames, carriers, wire = _stream()
    for cut in range(len(wire) + 1):
        dec = FrameDecoder()
        got = dec.feed(wire[:cut]) + dec.feed(wire[cut:])
        assert [f.raw for f in got] == frames, cut
        assert [f.fd_carrier for f in got] == carriers
        assert dec.pending == 0
        dec.eof()


def test_incremental_byte_by_byte_offsets():
    frames, carriers, wire = _stream()
    dec = FrameDecoder()
    got = []
    for i in range(len(wire)):
        got += dec.feed(wire[i:i + 1])
    assert [f.raw for f in got] == frames
    offsets = [f.offset for f in got]
    expected, pos = [], 0
    for f, c in zip(frames, carriers):
        expected.append(pos)
        pos += len(f) + len(c)
    assert offsets == expected
    fd_frame = got[3]
    assert fd_frame.carrier_offset == expected[3] + len(frames[3])
    assert fd_frame.end_offset == expected[4]
    assert dec.received == len(wire) == dec.offset


def test_fd_message_held_back_until_carrier_bytes_arrive():
    frames, carriers, wire = _stream()
    end_of_fd_frame = sum(len(f) + len(c) for f, c in zip(frames[:4], carriers[:4]))
    dec = FrameDecoder()
    got = dec.feed(wire[:end_of_fd_frame - 1])
    assert len(got) == 3
    got = dec.feed(wire[end_of_fd_frame - 1:end_of_fd_frame])
    assert len(got) == 1 and got[0].fd_carrier == b"\0\x07"


def test_read_from_bytesio_in_chunks():
    frames, _, wire = _stream()
    src = io.BytesIO(wire)
    dec = FrameDecoder()
    got = []
    while chunk := src.read(7):
        got += dec.feed(chunk)
    dec.eof()
    assert [f.raw for f in got] == frames


def test_truncated_stream_at_eof():
    raw = encode(CALL, b"abcdef")
    dec = FrameDecoder()
    assert dec.feed(raw[:-2]) == []
    with pytest.raises(FrameError, match="ended inside") as exc:
        dec.eof()
    assert exc.value.raw == raw[:-2]


def test_garbage_poisons_decoder():
    dec = FrameDecoder()
    good = encode(CALL, b"ok")
    with pytest.raises(FrameError) as exc:
        dec.feed(good + b"GET / HTTP/1.1\r\n\r\n")
    assert exc.value.offset == len(good)
    assert exc.value.raw.startswith(b"GET ")
    with pytest.raises(FrameError):
        dec.feed(good)
    with pytest.raises(FrameError):
        dec.eof()


def test_frame_error_keeps_bounded_raw():
    err = FrameError("x", b"a" * (1 << 20))
    assert len(err.raw) == 64 * 1024


headers = st.builds(
    Header,
    program=st.integers(0, 2**32 - 1),
    version=st.integers(0, 2**32 - 1),
    procedure=st.integers(-(2**31), 2**31 - 1),
    type=st.sampled_from(list(MessageType)) | st.integers(-(2**31), 2**31 - 1),
    serial=st.integers(0, 2**32 - 1),
    status=st.sampled_from(list(Status)) | st.integers(-(2**31), 2**31 - 1),
)


@settings(max_examples=300, deadline=None, database=None)
@given(header=headers, payload=st.binary(max_size=300), nfds=st.integers(0, NUM_FDS_MAX))
def test_property_decode_encode_round_trip(header, payload, nfds):
    if not header.has_fds:
        nfds = 0
    raw = encode(header, payload, nfds=nfds)
    frame = decode(raw)
    assert frame.header == header
    assert frame.payload == payload
    assert frame.nfds == nfds
    assert frame.raw == raw
    assert encode(frame.header, frame.payload, nfds=frame.nfds) == raw


@settings(max_examples=500, deadline=None, database=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=5))
def test_property_arbitrary_bytes_only_raise_frame_error(data, cuts):
    dec = FrameDecoder(max_message=1024)
    pos = 0
    try:
        for cut in sorted(cuts) + [len(data)]:
            for frame in dec.feed(data[pos:cut]):
                assert isinstance(frame, Frame)
                assert frame.raw == data[frame.offset:frame.offset + frame.length]
            pos = max(pos, cut)
        dec.eof()
    except FrameError:
        pass
    try:
        decode(data, max_message=1024)
    except FrameError:
        pass

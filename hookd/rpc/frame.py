"""Wire framing of libvirt's RPC protocol (src/rpc/virnetprotocol.x).

This module owns: the message header, the 4-byte length word, the size limits,
the file-descriptor count that WITH_FDS messages carry, and an incremental
decoder that cuts a byte stream into complete messages while keeping every
message's exact raw bytes.

It must not do: any I/O, any decoding of a procedure's arguments (that is
hookd.rpc.xdr), any policy. It never changes a byte it was not asked to change.

Wire format (all XDR, RFC 4506, big-endian)::

    uint32 length      total message bytes INCLUDING this word
    uint32 program     e.g. REMOTE_PROGRAM
    uint32 version
    int32  procedure
    int32  type        MessageType
    uint32 serial
    int32  status      Status
    [uint32 nfds]      only when type is CALL_WITH_FDS or REPLY_WITH_FDS
    payload

A WITH_FDS message is followed on the stream by ``nfds`` extra bytes that are
not part of the message: libvirt (gnulib's sendfd) sends every descriptor with
SCM_RIGHTS attached to a one-byte write of its own, after the message. The
decoder therefore holds such a message back until those carrier bytes have
arrived and hands them over in ``Frame.fd_carrier``; which descriptor came with
which byte is the transport's business (hookd.rpc.relay).
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from hookd.errors import ProtocolError

# --- Sizes (virnetprotocol.x) ------------------------------------------------

#: VIR_NET_MESSAGE_LEN_MAX: size of the length word; counted in the length
#: word's own value but NOT in VIR_NET_MESSAGE_MAX.
LEN_SIZE = 4
#: VIR_NET_MESSAGE_HEADER_MAX: serialised virNetMessageHeader.
HEADER_SIZE = 24
#: Smallest valid value of the length word: length word + header.
MIN_LENGTH = LEN_SIZE + HEADER_SIZE
#: VIR_NET_MESSAGE_MAX in libvirt >= 5.x (was 16 MiB before): header + payload,
#: excluding the length word. libvirt accepts a length word up to this + 4.
MESSAGE_MAX = 32 * 1024 * 1024
#: VIR_NET_MESSAGE_NUM_FDS_MAX: descriptors per message.
NUM_FDS_MAX = 32
#: Size of the XDR unsigned int that carries the descriptor count.
NFDS_SIZE = 4
#: How many bytes of a rejected message FrameError keeps for diagnostics.
RAW_KEEP_MAX = 64 * 1024

_LEN = struct.Struct(">I")
_HEADER = struct.Struct(">IIiiIi")
_NFDS = struct.Struct(">I")

# --- Program numbers ---------------------------------------------------------

REMOTE_PROGRAM = 0x20008086  # src/remote/remote_protocol.x
REMOTE_PROTOCOL_VERSION = 1
QEMU_PROGRAM = 0x20008087  # src/remote/qemu_protocol.x
LXC_PROGRAM = 0x00068000  # src/remote/lxc_protocol.x
KEEPALIVE_PROGRAM = 0x6B656570  # src/rpc/virkeepaliveprotocol.x ("keep")
ADMIN_PROGRAM = 0x06900690  # src/admin/admin_protocol.x


class MessageType(enum.IntEnum):
    """virNetMessageType."""

    CALL = 0
    REPLY = 1
    MESSAGE = 2
    STREAM = 3
    CALL_WITH_FDS = 4
    REPLY_WITH_FDS = 5
    STREAM_HOLE = 6


class Status(enum.IntEnum):
    """virNetMessageStatus."""

    OK = 0
    ERROR = 1
    CONTINUE = 2


#: Message types whose payload starts with a descriptor count.
FD_TYPES = frozenset({int(MessageType.CALL_WITH_FDS), int(MessageType.REPLY_WITH_FDS)})
#: Message types a client sends to invoke a procedure.
CALL_TYPES = frozenset({int(MessageType.CALL), int(MessageType.CALL_WITH_FDS)})


class FrameError(ProtocolError):
    """A byte stream that is not a valid libvirt RPC message.

    ``raw`` holds the bytes of the offending message as far as they were
    received (at most RAW_KEEP_MAX), ``offset`` its position in the stream.
    """

    def __init__(self, reason: str, raw: bytes = b"", offset: int = 0):
        self.reason = reason
        self.raw = bytes(raw[:RAW_KEEP_MAX])
        self.offset = offset
        super().__init__(f"{reason} (at stream offset {offset}, {len(raw)} bytes)")


class Header(NamedTuple):
    """virNetMessageHeader, as decoded: plain ints (compare equal to the enums).

    A NamedTuple rather than a dataclass: one is built for every message the
    proxy relays, and tuple construction is several times cheaper.
    """

    program: int
    version: int
    procedure: int
    type: int
    serial: int
    status: int = Status.OK

    def pack(self) -> bytes:
        try:
            return _HEADER.pack(*self)
        except struct.error as err:
            raise FrameError(f"header field out of range: {err}") from err

    @classmethod
    def unpack(cls, data, offset: int = 0) -> "Header":
        return cls._make(_HEADER.unpack_from(data, offset))

    @property
    def has_fds(self) -> bool:
        return self.type in FD_TYPES

    @property
    def is_call(self) -> bool:
        return self.type in CALL_TYPES

    @property
    def message_type(self):
        """``type`` as a MessageType, or the int when libvirt has no such type."""
        return _known(MessageType, self.type)


def _known(enum_cls, value: int):
    try:
        return enum_cls(value)
    except ValueError:
        return value


class Frame(NamedTuple):
    """One complete message.

    ``raw`` is exactly what was (or is to be) on the wire, length word
    included; ``body`` is everything after the header (for WITH_FDS messages
    it starts with the descriptor count); ``fd_carrier`` holds the ``nfds``
    one-byte writes that followed the message on a stream; ``offset`` is
    where ``raw`` started in that stream.
    """

    header: Header
    raw: bytes
    nfds: int = 0
    fd_carrier: bytes = b""
    offset: int = 0

    @property
    def length(self) -> int:
        return len(self.raw)

    @property
    def body(self) -> bytes:
        return self.raw[MIN_LENGTH:]

    @property
    def payload(self) -> bytes:
        """The procedure's XDR arguments/return value/event, without the fd count."""
        start = MIN_LENGTH + (NFDS_SIZE if self.header.has_fds else 0)
        return self.raw[start:]

    @property
    def carrier_offset(self) -> int:
        """Stream offset of the first descriptor-carrier byte."""
        return self.offset + len(self.raw)

    @property
    def end_offset(self) -> int:
        """Stream offset just after this message and its carrier bytes."""
        return self.carrier_offset + len(self.fd_carrier)

    def with_payload(self, payload: bytes, max_message: int = MESSAGE_MAX) -> "Frame":
        """The same message (header, descriptors) with a new payload; length fixed."""
        return self._replace(raw=encode(self.header, payload, nfds=self.nfds, max_message=max_message))


def encode(header: Header, payload: bytes = b"", *, nfds: int = 0,
           max_message: int = MESSAGE_MAX) -> bytes:
    """Serialise one message: length word, header, [fd count], payload."""
    if header.has_fds:
        if not 0 <= nfds <= NUM_FDS_MAX:
            raise FrameError(f"descriptor count {nfds} outside 0..{NUM_FDS_MAX}")
        prefix = _NFDS.pack(nfds)
    elif nfds:
        raise FrameError(f"message type {header.type} cannot carry descriptors")
    else:
        prefix = b""
    total = MIN_LENGTH + len(prefix) + len(payload)
    if total - LEN_SIZE > max_message:
        raise FrameError(f"message of {total} bytes exceeds the {max_message}-byte limit")
    return b"".join((_LEN.pack(total), header.pack(), prefix, payload))


def check_length(length: int, max_message: int = MESSAGE_MAX) -> str | None:
    """Why a length word is unacceptable, or None. Mirrors virNetMessageDecodeLength."""
    if length < MIN_LENGTH:
        return f"length word {length} smaller than the {MIN_LENGTH}-byte minimum"
    if length - LEN_SIZE > max_message:
        return f"length word {length} exceeds the {max_message}-byte message limit"
    return None


def _parse_nfds(data, start: int, offset: int) -> int:
    (nfds,) = _NFDS.unpack_from(data, start + MIN_LENGTH)
    if nfds > NUM_FDS_MAX:
        raise FrameError(f"message announces {nfds} descriptors, limit {NUM_FDS_MAX}",
                         bytes(data[start:start + MIN_LENGTH + NFDS_SIZE]), offset)
    return nfds


def decode(data: bytes, max_message: int = MESSAGE_MAX) -> Frame:
    """Decode exactly one message (without descriptor-carrier bytes) from ``data``."""
    data = bytes(data)
    if len(data) < LEN_SIZE:
        raise FrameError("truncated length word", data)
    (length,) = _LEN.unpack_from(data)
    reason = check_length(length, max_message)
    if reason:
        raise FrameError(reason, data)
    if len(data) < length:
        raise FrameError(f"truncated message: {len(data)} of {length} bytes", data)
    if len(data) > length:
        raise FrameError(f"{len(data) - length} bytes after the message", data)
    header = Header.unpack(data, LEN_SIZE)
    nfds = 0
    if header.has_fds:
        if length < MIN_LENGTH + NFDS_SIZE:
            raise FrameError("WITH_FDS message without descriptor count", data)
        nfds = _parse_nfds(data, 0, 0)
    return Frame(header=header, raw=data, nfds=nfds)


class FrameDecoder:
    """Incremental decoder: feed arbitrary chunks, get complete frames in order.

    After a FrameError the decoder is poisoned: every later call raises the
    same error, so a caller cannot accidentally resynchronise on garbage.
    """

    def __init__(self, max_message: int = MESSAGE_MAX):
        self.max_message = max_message
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._error: FrameError | None = None

    @property
    def offset(self) -> int:
        """Stream offset of the first byte not yet returned in a frame."""
        return self._base

    @property
    def received(self) -> int:
        """Total bytes fed so far."""
        return self._base + len(self._buf)

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a complete frame."""
        return len(self._buf)

    def feed(self, chunk) -> list[Frame]:
        """Add ``chunk`` (any bytes-like; not kept) and return the frames it completed."""
        if self._error is not None:
            raise self._error
        buffered = bool(self._buf)
        if buffered:
            self._buf += chunk
            view = memoryview(self._buf)
        else:
            # Nothing pending: parse the chunk in place and keep only its tail.
            view = memoryview(chunk).cast("B")
        frames: list[Frame] = []
        pos = 0
        end = len(view)
        base = self._base
        try:
            while end - pos >= LEN_SIZE:
                (length,) = _LEN.unpack_from(view, pos)
                reason = check_length(length, self.max_message)
                if reason:
                    raise FrameError(reason, view[pos:pos + RAW_KEEP_MAX].tobytes(), base + pos)
                if end - pos < MIN_LENGTH:
                    break
                header = Header._make(_HEADER.unpack_from(view, pos + LEN_SIZE))
                nfds = 0
                if header[3] in FD_TYPES:
                    if length < MIN_LENGTH + NFDS_SIZE:
                        raise FrameError("WITH_FDS message without descriptor count",
                                         view[pos:pos + length].tobytes(), base + pos)
                    if end - pos < MIN_LENGTH + NFDS_SIZE:
                        break
                    nfds = _parse_nfds(view, pos, base + pos)
                if end - pos < length + nfds:
                    break
                frames.append(Frame(header, view[pos:pos + length].tobytes(), nfds,
                                    view[pos + length:pos + length + nfds].tobytes() if nfds else b"",
                                    base + pos))
                pos += length + nfds
        except FrameError as err:
            self._error = err
            raise
        finally:
            tail = None if buffered or pos == end else view[pos:end].tobytes()
            view.release()
            if buffered:
                del self._buf[:pos]
            elif tail:
                self._buf += tail
            self._base = base + pos
        return frames

    def eof(self) -> None:
        """Declare the end of the stream; raises FrameError if a message was cut short."""
        if self._error is not None:
            raise self._error
        if self._buf:
            self._error = FrameError(f"stream ended inside a message ({len(self._buf)} bytes pending)",
                                     bytes(self._buf), self._base)
            raise self._error

"""Minimal XDR (RFC 4506) for the libvirt calls hookd intercepts, and nothing more.

This module owns: XDR primitives (unsigned int, int, hyper, double, string,
variable opaque), libvirt's ``remote_typed_param`` list and
``remote_nonnull_domain``. Which procedures hookd decodes, and where their domain
XML is, is hookd.rpc.procedures'.

Decoding is strict (non-zero padding, trailing bytes and truncation are
errors) so that encoding an unchanged decoded value gives back the identical
bytes.

It must not do: framing (hookd.rpc.frame), I/O, policy.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Callable, Union

from hookd.errors import ProtocolError

#: REMOTE_STRING_MAX (libvirt >= 5.x): longest remote_nonnull_string.
REMOTE_STRING_MAX = 4 * 1024 * 1024
#: VIR_UUID_BUFLEN: remote_uuid is a fixed 16-byte opaque.
UUID_LEN = 16

_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")
_ZERO_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


class XdrError(ProtocolError):
    """XDR data that does not decode as the expected structure (or cannot be encoded)."""


def _pad(length: int) -> int:
    return (4 - length % 4) % 4


class XdrReader:
    """Strict XDR decoder over a bytes-like object."""

    def __init__(self, data, offset: int = 0):
        self._data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self.pos = offset

    @property
    def remaining(self) -> int:
        return len(self._data) - self.pos

    def _take(self, n: int) -> bytes:
        if n < 0 or self.remaining < n:
            raise XdrError(f"truncated XDR data: need {n} bytes at offset {self.pos}, "
                           f"{self.remaining} left")
        start = self.pos
        self.pos += n
        return bytes(self._data[start:self.pos])

    def _unpack(self, st: struct.Struct):
        if self.remaining < st.size:
            raise XdrError(f"truncated XDR data: need {st.size} bytes at offset {self.pos}, "
                           f"{self.remaining} left")
        (value,) = st.unpack_from(self._data, self.pos)
        self.pos += st.size
        return value

    def uint(self) -> int:
        return self._unpack(_U32)

    def int(self) -> int:
        return self._unpack(_I32)

    def uhyper(self) -> int:
        return self._unpack(_U64)

    def hyper(self) -> int:
        return self._unpack(_I64)

    def double(self) -> float:
        return self._unpack(_F64)

    def fixed_opaque(self, n: int) -> bytes:
        data = self._take(n)
        self._check_pad(n)
        return data

    def opaque(self, maximum: int | None = None) -> bytes:
        n = self.uint()
        if maximum is not None and n > maximum:
            raise XdrError(f"opaque of {n} bytes exceeds its limit {maximum}")
        return self.fixed_opaque(n)

    def string(self, maximum: int = REMOTE_STRING_MAX) -> str:
        # surrogateescape: any byte sequence survives decode -> encode unchanged.
        return self.opaque(maximum).decode("utf-8", "surrogateescape")

    def optional_string(self, maximum: int = REMOTE_STRING_MAX) -> str | None:
        present = self.uint()
        if present == 0:
            return None
        if present != 1:
            raise XdrError(f"optional-data discriminant {present} is neither 0 nor 1")
        return self.string(maximum)

    def _check_pad(self, n: int) -> None:
        pad = self._take(_pad(n))
        if pad != _ZERO_PAD[n % 4]:
            raise XdrError(f"non-zero XDR padding before offset {self.pos}")

    def done(self) -> None:
        if self.remaining:
            raise XdrError(f"{self.remaining} unexpected bytes after the XDR structure")


class XdrWriter:
    """XDR encoder collecting parts; ``getvalue()`` joins them."""

    def __init__(self):
        self._parts: list[bytes] = []

    def _pack(self, st: struct.Struct, value) -> None:
        try:
            self._parts.append(st.pack(value))
        except (struct.error, TypeError) as err:
            raise XdrError(f"cannot encode {value!r}: {err}") from err

    def uint(self, value: int) -> None:
        self._pack(_U32, value)

    def int(self, value: int) -> None:
        self._pack(_I32, value)

    def uhyper(self, value: int) -> None:
        self._pack(_U64, value)

    def hyper(self, value: int) -> None:
        self._pack(_I64, value)

    def double(self, value: float) -> None:
        self._pack(_F64, value)

    def fixed_opaque(self, data: bytes, n: int | None = None) -> None:
        if n is not None and len(data) != n:
            raise XdrError(f"fixed opaque must be {n} bytes, got {len(data)}")
        self._parts.append(bytes(data))
        self._parts.append(_ZERO_PAD[len(data) % 4])

    def opaque(self, data: bytes, maximum: int | None = None) -> None:
        if maximum is not None and len(data) > maximum:
            raise XdrError(f"opaque of {len(data)} bytes exceeds its limit {maximum}")
        self.uint(len(data))
        self.fixed_opaque(data)

    def string(self, value: str, maximum: int = REMOTE_STRING_MAX) -> None:
        try:
            data = value.encode("utf-8", "surrogateescape")
        except (UnicodeEncodeError, AttributeError) as err:
            raise XdrError(f"string cannot be encoded as UTF-8: {err}") from err
        self.opaque(data, maximum)

    def optional_string(self, value: str | None, maximum: int = REMOTE_STRING_MAX) -> None:
        if value is None:
            self.uint(0)
        else:
            self.uint(1)
            self.string(value, maximum)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


# --- remote_typed_param -------------------------------------------------------


class ParamType(enum.IntEnum):
    """virTypedParameterType: the discriminant of remote_typed_param_value."""

    INT = 1
    UINT = 2
    LLONG = 3
    ULLONG = 4
    DOUBLE = 5
    BOOLEAN = 6
    STRING = 7


ParamValue = Union[int, float, str]

_PARAM_CODECS: dict[int, tuple[Callable, Callable]] = {
    ParamType.INT: (XdrReader.int, XdrWriter.int),
    ParamType.UINT: (XdrReader.uint, XdrWriter.uint),
    ParamType.LLONG: (XdrReader.hyper, XdrWriter.hyper),
    ParamType.ULLONG: (XdrReader.uhyper, XdrWriter.uhyper),
    ParamType.DOUBLE: (XdrReader.double, XdrWriter.double),
    # The wire carries an int; keep it as one so a non-0/1 value round-trips.
    ParamType.BOOLEAN: (XdrReader.int, XdrWriter.int),
    ParamType.STRING: (XdrReader.string, XdrWriter.string),
}


@dataclass(frozen=True)
class TypedParam:
    """One remote_typed_param: field name, type discriminant, value."""

    field: str
    type: ParamType
    value: ParamValue


def read_typed_param(reader: XdrReader) -> TypedParam:
    name = reader.string()
    discriminant = reader.int()
    try:
        ptype = ParamType(discriminant)
    except ValueError as err:
        raise XdrError(f"typed param {name!r} has unknown type {discriminant}") from err
    read, _ = _PARAM_CODECS[ptype]
    return TypedParam(name, ptype, read(reader))


def write_typed_param(writer: XdrWriter, param: TypedParam) -> None:
    try:
        ptype = ParamType(param.type)
    except ValueError as err:
        raise XdrError(f"typed param {param.field!r} has unknown type {param.type}") from err
    writer.string(param.field)
    writer.int(ptype)
    _, write = _PARAM_CODECS[ptype]
    write(writer, param.value)


def read_typed_params(reader: XdrReader) -> tuple[TypedParam, ...]:
    count = reader.uint()
    # Each param takes at least 12 bytes; refuse counts the data cannot hold
    # before looping, so a hostile count cannot make us spin.
    if count * 12 > reader.remaining:
        raise XdrError(f"typed param list of {count} entries does not fit in "
                       f"{reader.remaining} bytes")
    return tuple(read_typed_param(reader) for _ in range(count))


def write_typed_params(writer: XdrWriter, params) -> None:
    writer.uint(len(params))
    for param in params:
        write_typed_param(writer, param)


def decode_typed_params(data: bytes) -> tuple[TypedParam, ...]:
    reader = XdrReader(data)
    params = read_typed_params(reader)
    reader.done()
    return params


def encode_typed_params(params) -> bytes:
    writer = XdrWriter()
    write_typed_params(writer, params)
    return writer.getvalue()


# --- remote_nonnull_domain ------------------------------------------------------


@dataclass(frozen=True)
class NonnullDomain:
    name: str
    uuid: bytes
    id: int


def read_domain(reader: XdrReader) -> NonnullDomain:
    return NonnullDomain(reader.string(), reader.fixed_opaque(UUID_LEN), reader.int())


def write_domain(writer: XdrWriter, dom: NonnullDomain) -> None:
    writer.string(dom.name)
    writer.fixed_opaque(dom.uuid, UUID_LEN)
    writer.int(dom.id)

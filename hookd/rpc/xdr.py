"""Minimal XDR (RFC 4506) for the libvirt calls hookd intercepts, and nothing more.

This module owns: XDR primitives (unsigned int, int, hyper, double, string,
variable opaque), libvirt's ``remote_typed_param`` list, and one argument codec
per intercepted procedure of REMOTE_PROGRAM (src/remote/remote_protocol.x):

    no.  procedure (REMOTE_PROC_...)            arguments
     10  DOMAIN_CREATE_XML                       string xml_desc; uint flags
     11  DOMAIN_DEFINE_XML                       string xml
    303  DOMAIN_MIGRATE_PREPARE3_PARAMS          params; opaque cookie_in; uint flags
    304  DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS   params; opaque cookie_in; uint flags
    305  DOMAIN_MIGRATE_PERFORM3_PARAMS          domain dom; string *dconnuri; params;
                                                 opaque cookie_in; uint flags
    309  DOMAIN_CREATE_XML_WITH_FILES            string xml_desc; uint flags (CALL_WITH_FDS)
    350  DOMAIN_DEFINE_XML_FLAGS                 string xml; uint flags

The migration calls carry the domain XML in typed params: only
``persistent_xml`` (VIR_MIGRATE_PARAM_PERSIST_XML) is ever exposed for
rewriting. ``destination_xml`` (VIR_MIGRATE_PARAM_DEST_XML) describes the
running guest and libvirt ABI-checks it against the source (sysinfo included),
so changing its serial would abort the migration.

Decoding is strict (non-zero padding, trailing bytes and truncation are
errors) so that encoding an unchanged decoded value gives back the identical
bytes; every other param and field is re-encoded byte-identically.

It must not do: framing (hookd.rpc.frame), I/O, policy.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, replace
from typing import Callable, Union

from hookd.errors import ProtocolError

#: REMOTE_STRING_MAX (libvirt >= 5.x): longest remote_nonnull_string.
REMOTE_STRING_MAX = 4 * 1024 * 1024
#: VIR_UUID_BUFLEN: remote_uuid is a fixed 16-byte opaque.
UUID_LEN = 16

VIR_MIGRATE_PARAM_PERSIST_XML = "persistent_xml"
VIR_MIGRATE_PARAM_DEST_XML = "destination_xml"

# Procedure numbers of REMOTE_PROGRAM (remote_protocol.x, enum remote_procedure).
PROC_DOMAIN_CREATE_XML = 10
PROC_DOMAIN_DEFINE_XML = 11
# Not intercepted: MIGRATE_BEGIN3_PARAMS (302) runs on the source, which reads
# destination_xml there and ignores persistent_xml.
PROC_DOMAIN_MIGRATE_PREPARE3_PARAMS = 303
PROC_DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS = 304
PROC_DOMAIN_MIGRATE_PERFORM3_PARAMS = 305
PROC_DOMAIN_CREATE_XML_WITH_FILES = 309
PROC_DOMAIN_DEFINE_XML_FLAGS = 350

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


# --- Per-procedure argument structs ------------------------------------------------


@dataclass(frozen=True)
class DomainDefineXmlArgs:
    xml: str


@dataclass(frozen=True)
class DomainDefineXmlFlagsArgs:
    xml: str
    flags: int


@dataclass(frozen=True)
class DomainCreateXmlArgs:
    xml_desc: str
    flags: int


@dataclass(frozen=True)
class DomainCreateXmlWithFilesArgs:
    xml_desc: str
    flags: int


@dataclass(frozen=True)
class DomainMigratePrepare3ParamsArgs:
    """Also the shape of remote_domain_migrate_prepare_tunnel3_params_args."""

    params: tuple[TypedParam, ...]
    cookie_in: bytes
    flags: int


@dataclass(frozen=True)
class DomainMigratePerform3ParamsArgs:
    dom: NonnullDomain
    dconnuri: str | None
    params: tuple[TypedParam, ...]
    cookie_in: bytes
    flags: int


def _decode_define(r: XdrReader):
    return DomainDefineXmlArgs(r.string())


def _encode_define(w: XdrWriter, a: DomainDefineXmlArgs):
    w.string(a.xml)


def _decode_define_flags(r: XdrReader):
    return DomainDefineXmlFlagsArgs(r.string(), r.uint())


def _encode_define_flags(w: XdrWriter, a: DomainDefineXmlFlagsArgs):
    w.string(a.xml)
    w.uint(a.flags)


def _decode_create(r: XdrReader):
    return DomainCreateXmlArgs(r.string(), r.uint())


def _encode_create(w: XdrWriter, a):
    w.string(a.xml_desc)
    w.uint(a.flags)


def _decode_create_files(r: XdrReader):
    return DomainCreateXmlWithFilesArgs(r.string(), r.uint())


def _decode_prepare(r: XdrReader):
    return DomainMigratePrepare3ParamsArgs(read_typed_params(r), r.opaque(), r.uint())


def _encode_prepare(w: XdrWriter, a: DomainMigratePrepare3ParamsArgs):
    write_typed_params(w, a.params)
    w.opaque(a.cookie_in)
    w.uint(a.flags)


def _decode_perform(r: XdrReader):
    return DomainMigratePerform3ParamsArgs(read_domain(r), r.optional_string(),
                                           read_typed_params(r), r.opaque(), r.uint())


def _encode_perform(w: XdrWriter, a: DomainMigratePerform3ParamsArgs):
    write_domain(w, a.dom)
    w.optional_string(a.dconnuri)
    write_typed_params(w, a.params)
    w.opaque(a.cookie_in)
    w.uint(a.flags)


def _xml_field_get(name):
    return lambda args: getattr(args, name)


def _xml_field_set(name):
    return lambda args, xml: replace(args, **{name: xml})


def _persist_get(args) -> str | None:
    found = [p for p in args.params if p.field == VIR_MIGRATE_PARAM_PERSIST_XML]
    if not found:
        return None
    if len(found) > 1 or found[0].type != ParamType.STRING:
        # libvirt itself rejects a duplicate or non-string persistent_xml;
        # refuse to guess which one it would have used.
        raise XdrError(f"{len(found)} {VIR_MIGRATE_PARAM_PERSIST_XML!r} params, or not a string")
    return found[0].value


def _persist_set(args, xml: str):
    params = tuple(replace(p, value=xml) if p.field == VIR_MIGRATE_PARAM_PERSIST_XML else p
                   for p in args.params)
    return replace(args, params=params)


@dataclass(frozen=True)
class CallCodec:
    """How to find and replace the domain XML in one procedure's arguments."""

    procedure: int
    name: str
    op: str  # the operation name handed to hookd's rewrite callback
    _decode: Callable[[XdrReader], object]
    _encode: Callable[[XdrWriter, object], None]
    get_xml: Callable[[object], str | None]
    set_xml: Callable[[object, str], object]

    def decode(self, payload: bytes):
        reader = XdrReader(payload)
        args = self._decode(reader)
        reader.done()
        return args

    def encode(self, args) -> bytes:
        writer = XdrWriter()
        self._encode(writer, args)
        return writer.getvalue()

    def rewrite_payload(self, payload: bytes, xml: str) -> bytes:
        """``payload`` re-encoded with its domain XML replaced by ``xml``."""
        return self.encode(self.set_xml(self.decode(payload), xml))


def _codec(proc, name, op, dec, enc, get, set_):
    return proc, CallCodec(proc, name, op, dec, enc, get, set_)


#: Intercepted REMOTE_PROGRAM procedures, by number.
CODECS: dict[int, CallCodec] = dict((
    _codec(PROC_DOMAIN_DEFINE_XML, "DOMAIN_DEFINE_XML", "define",
           _decode_define, _encode_define, _xml_field_get("xml"), _xml_field_set("xml")),
    _codec(PROC_DOMAIN_DEFINE_XML_FLAGS, "DOMAIN_DEFINE_XML_FLAGS", "define-flags",
           _decode_define_flags, _encode_define_flags, _xml_field_get("xml"), _xml_field_set("xml")),
    _codec(PROC_DOMAIN_CREATE_XML, "DOMAIN_CREATE_XML", "create",
           _decode_create, _encode_create, _xml_field_get("xml_desc"), _xml_field_set("xml_desc")),
    _codec(PROC_DOMAIN_CREATE_XML_WITH_FILES, "DOMAIN_CREATE_XML_WITH_FILES", "create-with-files",
           _decode_create_files, _encode_create, _xml_field_get("xml_desc"),
           _xml_field_set("xml_desc")),
    _codec(PROC_DOMAIN_MIGRATE_PERFORM3_PARAMS, "DOMAIN_MIGRATE_PERFORM3_PARAMS", "migrate-persistent",
           _decode_perform, _encode_perform, _persist_get, _persist_set),
    _codec(PROC_DOMAIN_MIGRATE_PREPARE3_PARAMS, "DOMAIN_MIGRATE_PREPARE3_PARAMS", "migrate-persistent",
           _decode_prepare, _encode_prepare, _persist_get, _persist_set),
    _codec(PROC_DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS, "DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS",
           "migrate-persistent", _decode_prepare, _encode_prepare, _persist_get, _persist_set),
))

"""The libvirt procedures hookd intercepts: their numbers, argument structs and codecs.

One argument codec per intercepted procedure of REMOTE_PROGRAM
(src/remote/remote_protocol.x), built on hookd.rpc.xdr's primitives, and CODECS, the
table hookd.rpc.intercept looks a call up in:

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

Every other param and field is re-encoded byte-identically.

It must not do: framing, I/O, policy; it says where the XML is, never what it should be.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from hookd.rpc.xdr import (NonnullDomain, ParamType, TypedParam, XdrError, XdrReader, XdrWriter, read_domain,
                           read_typed_params, write_domain, write_typed_params)

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

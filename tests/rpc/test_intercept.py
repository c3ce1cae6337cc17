"""hookd.rpc.intercept in memory: calls built with hookd.rpc.frame/xdr's own encoders go
through an Interceptor, and what comes out is checked byte for byte."""

from __future__ import annotations

import logging

import pytest

from hookd.rpc.frame import (
    KEEPALIVE_PROGRAM,
    REMOTE_PROGRAM,
    Header,
    MessageType,
    Status,
    decode,
    encode,
)
from hookd.rpc.intercept import STATS_KEYS, Interceptor
from hookd.rpc.procedures import (CODECS,
                                  PROC_DOMAIN_CREATE_XML_WITH_FILES,
                                  PROC_DOMAIN_DEFINE_XML,
                                  PROC_DOMAIN_MIGRATE_PREPARE3_PARAMS,
                                  DomainCreateXmlWithFilesArgs,
                                  DomainDefineXmlArgs,
                                  DomainMigratePrepare3ParamsArgs)
from hookd.rpc.xdr import ParamType, TypedParam, XdrWriter

OLD = "<domain type='kvm'><name>g</name><uuid>u-1</uuid></domain>"
NEW = "<domain type='kvm'><name>g</name><uuid>u-1</uuid><sysinfo/></domain>"


def header(procedure=PROC_DOMAIN_DEFINE_XML, mtype=MessageType.CALL, serial=4711, program=REMOTE_PROGRAM):
    return Header(program, 1, procedure, mtype, serial, Status.OK)


def define_call(xml=OLD, **kw) -> bytes:
    codec = CODECS[PROC_DOMAIN_DEFINE_XML]
    return encode(header(**kw), codec.encode(DomainDefineXmlArgs(xml)))


class Recorder:
    """A rewrite callback and an on_error callback that remember their calls."""

    def __init__(self, result=None, raises=None, error_raises=None):
        self.result, self.raises, self.error_raises = result, raises, error_raises
        self.calls, self.errors = [], []

    def rewrite(self, op, xml):
        self.calls.append((op, xml))
        if self.raises is not None:
            raise self.raises
        return self.result

    def on_error(self, op, xml, err):
        self.errors.append((op, xml, err))
        if self.error_raises is not None:
            raise self.error_raises


def interceptor(rec: Recorder, **kw) -> Interceptor:
    return Interceptor(rec.rewrite, rec.on_error, log=logging.getLogger("test.intercept"), **kw)


def test_new_xml_is_re_encoded_with_the_same_header_and_serial():
    rec = Recorder(result=NEW)
    icp = interceptor(rec)
    raw = define_call()
    out = icp(decode(raw), 3)
    assert rec.calls == [("define", OLD)] and rec.errors == []
    frame = decode(out)                      # a complete, valid message: length word fixed
    assert frame.header == header()
    assert frame.header.serial == 4711
    assert CODECS[PROC_DOMAIN_DEFINE_XML].decode(frame.payload) == DomainDefineXmlArgs(NEW)
    assert out[4:28] == raw[4:28]            # header bytes unchanged
    assert len(out) == len(raw) + len(NEW) - len(OLD) + (-len(NEW) % 4) - (-len(OLD) % 4)
    assert icp.stats == {"definitions_seen": 1, "definitions_rewritten": 1, "errors": 0}


@pytest.mark.parametrize("result", [None, OLD])
def test_no_change_forwards_the_identical_bytes(result):
    rec = Recorder(result=result)
    icp = interceptor(rec)
    raw = define_call()
    assert icp(decode(raw)) == raw
    assert rec.calls == [("define", OLD)]
    assert icp.stats == {"definitions_seen": 1, "definitions_rewritten": 0, "errors": 0}


def test_a_callback_error_forwards_the_original_and_reports_it(caplog):
    boom = RuntimeError("policy exploded")
    rec = Recorder(raises=boom)
    icp = interceptor(rec)
    raw = define_call()
    with caplog.at_level(logging.ERROR, logger="test.intercept"):
        assert icp(decode(raw), 7) == raw
    assert rec.errors == [("define", OLD, boom)]
    assert icp.stats == {"definitions_seen": 1, "definitions_rewritten": 0, "errors": 1}
    assert "session #7: define call forwarded unchanged: RuntimeError: policy exploded" in caplog.text


def test_an_on_error_failure_is_logged_and_still_forwards_the_original(caplog):
    rec = Recorder(raises=ValueError("bad"), error_raises=KeyError("worse"))
    icp = interceptor(rec)
    raw = define_call()
    with caplog.at_level(logging.ERROR, logger="test.intercept"):
        assert icp(decode(raw)) == raw
    assert len(rec.errors) == 1 and icp.stats["errors"] == 1
    assert "on_error callback failed: KeyError: 'worse'" in caplog.text


def test_undecodable_arguments_are_forwarded_untouched_without_asking_the_policy():
    rec = Recorder(result=NEW)
    icp = interceptor(rec)
    raw = encode(header(), b"\0\0\0\x40short")      # a string longer than the payload
    assert icp(decode(raw)) == raw
    assert rec.calls == []
    [(op, xml, err)] = rec.errors
    assert (op, xml, type(err).__name__) == ("define", "", "XdrError")
    assert icp.stats == {"definitions_seen": 0, "definitions_rewritten": 0, "errors": 1}


def test_a_rewrite_over_the_message_limit_forwards_the_original():
    rec = Recorder(result=OLD + " " * 4096)
    raw = define_call()
    icp = interceptor(rec, max_message=len(raw) + 1024)
    assert icp(decode(raw)) == raw
    [(op, xml, err)] = rec.errors
    assert (op, xml, type(err).__name__) == ("define", OLD, "FrameError")
    assert icp.stats == {"definitions_seen": 1, "definitions_rewritten": 0, "errors": 1}


@pytest.mark.parametrize("raw", [
    define_call(mtype=MessageType.REPLY),                     # libvirtd's answer, not a call
    define_call(procedure=1),                                 # CONNECT_OPEN: not intercepted
    define_call(program=KEEPALIVE_PROGRAM),                   # another program's procedure 11
    define_call(mtype=MessageType.STREAM),
], ids=["reply", "other-procedure", "other-program", "stream"])
def test_messages_that_are_not_intercepted_pass_as_they_came(raw):
    rec = Recorder(result=NEW)
    icp = interceptor(rec)
    frame = decode(raw)
    assert not icp.wants(frame)
    assert icp(frame) is frame.raw
    assert rec.calls == [] and icp.stats["definitions_seen"] == 0


def test_a_call_with_fds_keeps_its_descriptor_count():
    codec = CODECS[PROC_DOMAIN_CREATE_XML_WITH_FILES]
    hdr = header(procedure=PROC_DOMAIN_CREATE_XML_WITH_FILES, mtype=MessageType.CALL_WITH_FDS, serial=9)
    raw = encode(hdr, codec.encode(DomainCreateXmlWithFilesArgs(OLD, 0)), nfds=2)
    rec = Recorder(result=NEW)
    out = interceptor(rec)(decode(raw))
    frame = decode(out)
    assert rec.calls == [("create-with-files", OLD)]
    assert (frame.header, frame.nfds) == (hdr, 2)
    assert codec.decode(frame.payload) == DomainCreateXmlWithFilesArgs(NEW, 0)


def _prepare_call(params) -> bytes:
    w = XdrWriter()
    CODECS[PROC_DOMAIN_MIGRATE_PREPARE3_PARAMS]._encode(
        w, DomainMigratePrepare3ParamsArgs(tuple(params), b"cookie", 1))
    return encode(header(procedure=PROC_DOMAIN_MIGRATE_PREPARE3_PARAMS), w.getvalue())


def test_a_migration_without_persistent_xml_is_not_shown_to_the_policy():
    raw = _prepare_call([TypedParam("destination_xml", ParamType.STRING, OLD)])
    rec = Recorder(result=NEW)
    icp = interceptor(rec)
    assert icp(decode(raw)) == raw
    assert rec.calls == [] and rec.errors == [] and icp.stats["definitions_seen"] == 0


def test_a_migration_persistent_xml_is_rewritten_and_the_rest_kept():
    params = [TypedParam("destination_xml", ParamType.STRING, OLD),
              TypedParam("persistent_xml", ParamType.STRING, OLD),
              TypedParam("bandwidth", ParamType.ULLONG, 5)]
    rec = Recorder(result=NEW)
    out = interceptor(rec)(decode(_prepare_call(params)))
    assert rec.calls == [("migrate-persistent", OLD)]
    args = CODECS[PROC_DOMAIN_MIGRATE_PREPARE3_PARAMS].decode(decode(out).payload)
    assert args.params == (params[0], TypedParam("persistent_xml", ParamType.STRING, NEW), params[2])
    assert (args.cookie_in, args.flags) == (b"cookie", 1)


def test_stats_are_added_to_the_dict_given():
    shared = {"clients_total": 5}
    icp = interceptor(Recorder(result=NEW), stats=shared)
    icp(decode(define_call()))
    assert icp.stats is shared
    assert shared == {"clients_total": 5, "definitions_seen": 1, "definitions_rewritten": 1, "errors": 0}
    assert set(STATS_KEYS) <= set(shared)

"""Coverage-guided fuzz targets (atheris / libFuzzer) for hookd's two untrusted-input parsers.

    fuzz_targets.py xml    [libFuzzer flags] CORPUS_DIR   hookd.decision.evaluate on domain XML bytes
    fuzz_targets.py frames [libFuzzer flags] CORPUS_DIR   hookd.rpc.frame.FrameDecoder + hookd.rpc.xdr codecs
    fuzz_targets.py seed   xml|frames DIR                 write the seed corpus into DIR

Run by tests/reliability/test_fuzz.py with the interpreter of the fuzz virtualenv
(atheris is not a Debian package; see tests/reliability/README.md). An input that
raises anything but the module's own error class, breaks a round trip, or makes a
rewritten document read back out of policy is a crash: libFuzzer stops and saves it.
Memory is bounded twice: RLIMIT_AS here (a runaway allocation fails in Python) and
libFuzzer's -rss_limit_mb; hangs by libFuzzer's -timeout per input.
"""

from __future__ import annotations

import os
import pathlib
import random
import resource
import struct
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

#: Address-space cap of the fuzzing process (Python + lxml + libFuzzer need ~300 MiB).
AS_LIMIT = 2 * 1024 * 1024 * 1024


def _import_targets():
    import atheris
    with atheris.instrument_imports(include=["hookd"]):
        from hookd import decision as engine, errors
        from hookd.policy import serial as policy
        from hookd.rpc import frame as rpcframe, xdr as rpcxdr  # noqa: F401
    return atheris


# ------------------------------------------------------------------------------ XML

def _policies():
    from hookd.policy.serial import PolicyConfig, Rule, SerialTemplate
    return [
        PolicyConfig(),
        PolicyConfig(mode="template", template=SerialTemplate.compile("VM-{name}-{flavor}")),
        PolicyConfig(mode="template", template=SerialTemplate.compile("{host_serial}"),
                     host_serial_to_chassis=True),
        PolicyConfig(non_nova="apply", rules=(Rule(name="r", mode="template", flavor="*",
                                                   template=SerialTemplate.compile("{project_id}")),)),
    ]


def xml_target():
    from hookd.decision import evaluate
    from hookd.errors import XmlError
    from hookd.policy.serial import VERDICT_REWRITE, serial_problem
    policies = _policies()

    def one(data: bytes) -> None:
        for policy in policies:
            try:
                ev = evaluate(data, policy)
            except XmlError:
                return
            d = ev.decision
            if d.verdict == VERDICT_REWRITE:
                if serial_problem(d.serial_policy) is not None or ev.xml is None:
                    raise AssertionError(f"bad rewrite decision {d}")
                again = evaluate(ev.xml, policy)
                if again.decision.verdict == VERDICT_REWRITE or again.decision.serial_current != d.serial_policy:
                    raise AssertionError(f"rewrite does not read back compliant: {again.decision}")
    return one


def xml_seeds():
    corpus = REPO / "tests" / "data" / "corpus"
    return {p.name: p.read_bytes() for p in sorted(corpus.glob("*.xml")) if not p.name.startswith("90-")}


# --------------------------------------------------------------------------- frames

def frames_target():
    from hookd.rpc import frame as rpcframe
    from hookd.rpc.frame import FrameDecoder, FrameError
    from hookd.rpc.procedures import CODECS
    from hookd.rpc.xdr import XdrError

    def one(data: bytes) -> None:
        if len(data) < 5:
            return
        rnd = random.Random(data[:4])
        max_message = rpcframe.MESSAGE_MAX if data[4] & 1 else 28 + data[4] * 64
        stream = data[5:]
        dec = FrameDecoder(max_message)
        frames, pos = [], 0
        try:
            while pos < len(stream):
                n = rnd.randint(1, max(1, len(stream) - pos))
                frames += dec.feed(stream[pos:pos + n])
                pos += n
            dec.eof()
        except FrameError:
            try:
                dec.feed(b"x")
            except FrameError:
                pass
            else:
                raise AssertionError("decoder not poisoned after a FrameError")
        consumed = sum(len(f.raw) + len(f.fd_carrier) for f in frames)
        if stream[:consumed] != b"".join(f.raw + f.fd_carrier for f in frames):
            raise AssertionError("frames are not the stream's bytes in order")
        for f in frames:
            if struct.unpack(">I", f.raw[:4])[0] != len(f.raw) or len(f.fd_carrier) != f.nfds:
                raise AssertionError("frame length or carrier count wrong")
            if not f.nfds and rpcframe.decode(f.raw, max_message).header != f.header:
                raise AssertionError("incremental and one-shot decoding disagree")
            if f.with_payload(f.payload, max_message).raw != f.raw:
                raise AssertionError("with_payload(payload) changed the frame")
            codec = CODECS.get(f.header.procedure)
            if f.header.program != rpcframe.REMOTE_PROGRAM or codec is None:
                continue
            try:
                args = codec.decode(f.payload)
            except XdrError:
                continue
            if codec.encode(args) != f.payload:
                raise AssertionError(f"{codec.name}: decode/encode is not byte-identical")
            try:
                xml = codec.get_xml(args)
            except XdrError:
                continue
            if xml is not None:
                changed = codec.decode(codec.encode(codec.set_xml(args, xml + "<x/>")))
                if codec.get_xml(changed) != xml + "<x/>":
                    raise AssertionError(f"{codec.name}: set_xml does not round-trip")
        return None
    return one


def frames_seeds():
    from hookd.rpc.frame import REMOTE_PROGRAM, Header, MessageType, encode
    from hookd.rpc.procedures import CODECS
    from hookd.rpc.xdr import NonnullDomain, ParamType, TypedParam
    from hookd.rpc.procedures import DomainCreateXmlArgs, DomainDefineXmlArgs, DomainDefineXmlFlagsArgs
    from hookd.rpc.procedures import DomainMigratePerform3ParamsArgs, DomainMigratePrepare3ParamsArgs
    xml = "<domain type='kvm'><name>x</name><uuid>1b0b8a5e-2c1d-4d7e-9f00-aabbccddeeff</uuid></domain>"
    params = (TypedParam("persistent_xml", ParamType.STRING, xml),
              TypedParam("destination_xml", ParamType.STRING, xml),
              TypedParam("bandwidth", ParamType.ULLONG, 2 ** 40), TypedParam("x", ParamType.INT, -1),
              TypedParam("y", ParamType.UINT, 7), TypedParam("z", ParamType.LLONG, -2 ** 40),
              TypedParam("d", ParamType.DOUBLE, 1.5), TypedParam("b", ParamType.BOOLEAN, 1))
    dom = NonnullDomain("x", bytes(range(16)), 3)
    calls = {
        11: DomainDefineXmlArgs(xml), 350: DomainDefineXmlFlagsArgs(xml, 1), 10: DomainCreateXmlArgs(xml, 0),
        303: DomainMigratePrepare3ParamsArgs(params, b"cookie", 1),
        304: DomainMigratePrepare3ParamsArgs(params[:1], b"", 0),
        305: DomainMigratePerform3ParamsArgs(dom, "qemu+tcp://b/system", params, b"c", 2),
    }
    seeds = {}
    prefix = b"\x01\x02\x03\x04\x01"
    for proc, args in calls.items():
        payload = CODECS[proc].encode(args)
        seeds[f"call-{proc}"] = prefix + encode(Header(REMOTE_PROGRAM, 1, proc, MessageType.CALL, proc), payload)
    files = CODECS[309].encode(DomainCreateXmlArgs(xml, 0))
    seeds["call-309-fds"] = prefix + encode(Header(REMOTE_PROGRAM, 1, 309, MessageType.CALL_WITH_FDS, 9),
                                            files, nfds=2) + b"\0\0"
    seeds["two-frames"] = prefix + encode(Header(0x6B656570, 1, 1, MessageType.CALL, 0)) * 2
    seeds["reply"] = prefix + encode(Header(REMOTE_PROGRAM, 1, 1, MessageType.REPLY, 5), b"\0\0\0\1")
    return seeds


TARGETS = {"xml": (xml_target, xml_seeds), "frames": (frames_target, frames_seeds)}


def main(argv) -> int:
    if len(argv) >= 4 and argv[1] == "seed":
        out = pathlib.Path(argv[3])
        out.mkdir(parents=True, exist_ok=True)
        for name, data in TARGETS[argv[2]][1]().items():
            (out / name).write_bytes(data)
        return 0
    name = argv[1]
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    atheris = _import_targets()
    target = TARGETS[name][0]()
    atheris.Setup([argv[0]] + argv[2:], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main(sys.argv))

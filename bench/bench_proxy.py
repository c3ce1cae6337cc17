"""libvirt-protocol proxy overhead, measured against a direct connection in the same run.

Starts a namespaced libvirtd (tests/harness LibvirtHost) and hookd.rpc.proxy in a
child process in front of it (rewrite callback: a regex that sets the serial
to the domain uuid, so every define through the proxy is really rewritten),
then measures, interleaving direct and proxied samples in random order so
that load from elsewhere on the machine hits both alike:

* RTT: median of lookupByName + XMLDesc (two round trips) -- target <= 1.2x direct;
* define + undefine throughput -- target >= 0.9x direct (the direct define
  already carries the serial the proxy writes, so libvirtd stores the same);
* stream throughput: downloading a 64 MiB volume with virStream.

For scale it also measures a bare relay (an asyncio byte copier with no
framing, no descriptors, no rewriting): the floor of any extra user-space hop
on this machine.

Not a test: it prints figures; ``run()`` returns them for a bench runner.
Needs root and Debian's libvirt/QEMU (like tests/integration).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness.guest import nova_domain_xml  # noqa: E402
from tests.harness.libvirt_host import LibvirtHost  # noqa: E402

PY = "/usr/bin/python3"
TARGET_RTT_RATIO = 1.2
TARGET_DEFINE_RATIO = 0.9
STREAM_BYTES = 64 * 1024 * 1024

RUNNER = r'''
import asyncio, logging, os, re, signal, sys
from hookd.rpc.proxy import LibvirtProxy
SERIAL = re.compile(r"(<entry name='serial'>)[^<]*(</entry>)")
UUID = re.compile(r"<uuid>([^<]*)</uuid>")

def rewrite(op, xml):
    m = UUID.search(xml)
    return SERIAL.sub(lambda s: s.group(1) + m.group(1) + s.group(2), xml) if m else None

async def main():
    logging.basicConfig(level=logging.WARNING)
    proxy = LibvirtProxy(listen_path=sys.argv[1], upstream_path=sys.argv[2], rewrite=rewrite,
                         on_error=lambda op, xml, exc: None, allowed_gid=None)
    await proxy.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await proxy.close()

asyncio.run(main())
'''


# The floor of any extra user-space hop: a relay that copies bytes and nothing
# else (no framing, no descriptors). Printed beside the proxy for scale.
BARE_RELAY = r"""
import asyncio, signal, socket, sys

async def main():
    loop = asyncio.get_running_loop()
    ls = socket.socket(socket.AF_UNIX)
    ls.bind(sys.argv[1])
    ls.listen()
    ls.setblocking(False)
    buf = memoryview(bytearray(262144))

    def pump(a, b):
        def cb():
            n = a.recv_into(buf)
            if n == 0:
                loop.remove_reader(a.fileno())
                return
            b.sendall(buf[:n])
        return cb

    def accept():
        c, _ = ls.accept()
        c.setblocking(False)
        u = socket.socket(socket.AF_UNIX)
        u.connect(sys.argv[2])
        u.setblocking(False)
        loop.add_reader(c.fileno(), pump(c, u))
        loop.add_reader(u.fileno(), pump(u, c))

    loop.add_reader(ls.fileno(), accept)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()

asyncio.run(main())
"""


def _interleaved(conns: dict, op, n: int) -> dict:
    """Time op(conn, i) n times per connection, alternating connections in random order
    so that load from elsewhere on the machine hits every connection alike."""
    samples = {name: [] for name in conns}
    names = list(conns)
    rng = random.Random(42)
    for i in range(n):
        rng.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            op(conns[name], i)
            samples[name].append(time.perf_counter() - t0)
    return samples


def _spawn(code: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([PY, "-c", code, *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"helper process did not start: {code[:60]!r}")
    return proc


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stream_rate(libvirt, conn, pool: str, vol: str) -> float:
    volume = conn.storagePoolLookupByName(pool).storageVolLookupByName(vol)
    stream = conn.newStream(0)
    got = [0]

    def sink(_stream, data, counter):
        counter[0] += len(data)
        return len(data)

    t0 = time.perf_counter()
    volume.download(stream, 0, STREAM_BYTES, 0)
    stream.recvAll(sink, got)
    stream.finish()
    elapsed = time.perf_counter() - t0
    if got[0] != STREAM_BYTES:
        raise RuntimeError(f"stream returned {got[0]} bytes, expected {STREAM_BYTES}")
    return STREAM_BYTES / elapsed / 1e6


def run(rtt_samples: int = 2000, define_samples: int = 400, stream_rounds: int = 3) -> dict:
    import libvirt

    with tempfile.TemporaryDirectory(prefix="hookd-bench-proxy-") as tmp:
        tmp_path = pathlib.Path(tmp)
        host = LibvirtHost(tmp_path / "h", "bench")
        proxy = relay = None
        conns: dict = {}
        try:
            host.start()
            proxy_sock, relay_sock = str(tmp_path / "proxy.sock"), str(tmp_path / "relay.sock")
            proxy = _spawn(RUNNER, proxy_sock, str(host.socket_path))
            relay = _spawn(BARE_RELAY, relay_sock, str(host.socket_path))
            conns = {"direct": libvirt.open(host.uri),
                     "relay": libvirt.open(f"qemu+unix:///system?socket={relay_sock}"),
                     "proxy": libvirt.open(f"qemu+unix:///system?socket={proxy_sock}")}
            conns["direct"].defineXML(nova_domain_xml(name="bench-rtt", uuid=str(uuid.uuid4()),
                                                      serial="S", image=None, console_log=None))
            template = nova_domain_xml(name="bench-def-NAME", uuid="UUID", serial="S",
                                       image=None, console_log=None)

            def xml_for(i: int, stored: bool) -> str:
                """stored=True: the serial the proxy would write, so libvirtd does the same work."""
                dom_uuid = str(uuid.uuid4())
                xml = template.replace("NAME", str(i)).replace("UUID", dom_uuid)
                return xml.replace("<entry name='serial'>S</entry>",
                                   f"<entry name='serial'>{dom_uuid}</entry>") if stored else xml

            pool_dir = tmp_path / "pool"
            pool_dir.mkdir()
            host.virsh("pool-create-as", "bp", "dir", "--target", pool_dir)
            with open(pool_dir / "v", "wb") as f:
                f.write(os.urandom(STREAM_BYTES))
            host.virsh("pool-refresh", "bp")

            def cheap(c, i):
                c.lookupByName("bench-rtt").XMLDesc(0)

            _interleaved(conns, cheap, 50)  # warm-up
            rtt = _interleaved(conns, cheap, rtt_samples)
            two = {"direct": conns["direct"], "proxy": conns["proxy"]}
            proxied = conns["proxy"]
            define = _interleaved(
                conns, lambda c, i: c.defineXML(xml_for(i, stored=c is not proxied)).undefine(),
                define_samples)
            stream = {"direct": [], "proxy": []}
            for _ in range(stream_rounds):
                for key, conn in two.items():
                    stream[key].append(_stream_rate(libvirt, conn, "bp", "v"))
        finally:
            for conn in conns.values():
                conn.close()
            _stop(proxy)
            _stop(relay)
            host.stop()

    med = statistics.median
    rtt_d, rtt_r, rtt_p = med(rtt["direct"]), med(rtt["relay"]), med(rtt["proxy"])
    def_d = len(define["direct"]) / sum(define["direct"])
    def_p = len(define["proxy"]) / sum(define["proxy"])
    def_r = len(define["relay"]) / sum(define["relay"])
    st_d, st_p = med(stream["direct"]), med(stream["proxy"])
    return {
        "rtt_direct_us": round(rtt_d * 1e6, 1),
        "rtt_proxy_us": round(rtt_p * 1e6, 1),
        "rtt_ratio": round(rtt_p / rtt_d, 3),
        "rtt_target_ratio_max": TARGET_RTT_RATIO,
        "rtt_bare_relay_us": round(rtt_r * 1e6, 1),
        "rtt_bare_relay_ratio": round(rtt_r / rtt_d, 3),
        "define_direct_per_s": round(def_d, 1),
        "define_proxy_per_s": round(def_p, 1),
        "define_ratio": round(def_p / def_d, 3),
        "define_target_ratio_min": TARGET_DEFINE_RATIO,
        "define_bare_relay_per_s": round(def_r, 1),
        "define_bare_relay_ratio": round(def_r / def_d, 3),
        "stream_direct_mb_s": round(st_d, 1),
        "stream_proxy_mb_s": round(st_p, 1),
        "stream_ratio": round(st_p / st_d, 3),
        "meets_targets": rtt_p / rtt_d <= TARGET_RTT_RATIO and def_p / def_d >= TARGET_DEFINE_RATIO,
    }


def main() -> int:
    r = run()
    print("libvirt proxy vs direct connection (same libvirtd, same run, interleaved samples):")
    print(f"  RTT lookupByName+XMLDesc  direct {r['rtt_direct_us']:>8} us   proxy {r['rtt_proxy_us']:>8} us"
          f"   ratio {r['rtt_ratio']:.3f}  (target <= {TARGET_RTT_RATIO})")
    print(f"    bare byte relay (floor of any extra hop)   {r['rtt_bare_relay_us']:>8} us"
          f"   ratio {r['rtt_bare_relay_ratio']:.3f}")
    print(f"  define+undefine           direct {r['define_direct_per_s']:>8} /s   proxy {r['define_proxy_per_s']:>8} /s"
          f"   ratio {r['define_ratio']:.3f}  (target >= {TARGET_DEFINE_RATIO})")
    print(f"    bare byte relay (floor of any extra hop)   {r['define_bare_relay_per_s']:>8} /s"
          f"   ratio {r['define_bare_relay_ratio']:.3f}")
    print(f"  stream download 64 MiB    direct {r['stream_direct_mb_s']:>8} MB/s proxy {r['stream_proxy_mb_s']:>8} MB/s"
          f"   ratio {r['stream_ratio']:.3f}")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

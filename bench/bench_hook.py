"""Hook path cost: guest start time without a hook, with /bin/true, and with hookd.

Four namespaced libvirtds (tests/harness) started side by side: one with no hook,
one whose qemu.d hook is /bin/true (the floor any hook pays: libvirt forks it for
prepare, start and started), one with hookd's shim and a running hookd, and one
with hookd's shim whose client talks to libvirt through hookd's proxy (the full
production path: define rewritten by the proxy, prepare verified by the shim).
Each run is define + start of a diskless TCG guest (timed), then destroy +
undefine (not timed); configurations are interleaved so drift hits all alike. Also: the
shim's fast path (an operation hookd ignores) and `prepare` latency with 1, 50 and
200 concurrent callers straight into the shim, beside /bin/cat fed the same XML (the
exec + read-stdin floor) and hookd's own service time (the request without an exec).

The shim is the release build (`hookctl install-hook` compiles hooks/hookd-shim.c
with the flags the packages use), not the tests' sanitizer build.

Targets: hookd start <= 1.04x no hook (hook only, and proxy + hook); fast path <= 3 ms;
prepare median <= 3 ms at 1 caller and p99 <= 100 ms at 200.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness.guest import nova_domain_xml  # noqa: E402
from tests.harness.libvirt_host import LibvirtHost  # noqa: E402
from tests.harness.hookd_proc import HookdProcess  # noqa: E402

RUNS = int(os.environ.get("HOOKD_BENCH_RUNS", "20"))


def _pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def _start_once(conn, xml):
    t0 = time.perf_counter()
    dom = conn.defineXML(xml)
    dom.create()
    elapsed = time.perf_counter() - t0
    dom.destroy()
    dom.undefine()
    return elapsed


def release_shim(base: pathlib.Path) -> pathlib.Path:
    from hookd.cli.shim import build_shim
    out = base / "hookd-shim"
    if not out.exists():
        build_shim(str(out))
    return out


def measure_starts(base: pathlib.Path, runs: int = RUNS) -> dict:
    import libvirt
    shim = release_shim(base)
    d = HookdProcess(base, name="hookd")
    d.start()
    hosts = {}
    dp = None
    try:
        hosts["no hook"] = LibvirtHost(base / "h", "none")
        hosts["/bin/true hook"] = LibvirtHost(base / "h", "true")
        os.symlink("/bin/true", hosts["/bin/true hook"].hooks_dir / "50-true")
        hosts["hookd"] = LibvirtHost(base / "h", "hookd")
        d.install_hook(hosts["hookd"].hooks_dir, binary=shim)
        hosts["hookd proxy+hook"] = LibvirtHost(base / "h", "proxy")
        dp = HookdProcess(base, name="hookd-proxy", proxy=True,
                          libvirt_socket=hosts["hookd proxy+hook"].socket_path)
        dp.install_hook(hosts["hookd proxy+hook"].hooks_dir, binary=shim)
        conns = {}
        for name, h in hosts.items():
            h.start()
            if name == "hookd proxy+hook":
                dp.start()
                conns[name] = libvirt.open(f"qemu+unix:///system?socket={dp.proxy_socket}")
            else:
                conns[name] = h.connect()
        times = {name: [] for name in hosts}
        for i in range(runs + 1):
            for name, conn in conns.items():
                uid = str(uuidlib.uuid4())
                # Compliant serial: hookd's normal case is a verdict, not a refusal.
                xml = nova_domain_xml(name=f"bench-{i}", uuid=uid, serial=uid, image=None, console_log=None)
                t = _start_once(conn, xml)
                if i:                                   # the first run warms caches
                    times[name].append(t)
        for c in conns.values():
            c.close()
    finally:
        for h in hosts.values():
            h.stop()
        d.stop()
        if dp is not None:
            dp.stop()
    med = {name: statistics.median(v) for name, v in times.items()}
    return {
        "runs": runs,
        "start_median_ms": {k: round(v * 1000, 1) for k, v in med.items()},
        "ratio_true_hook_vs_none": round(med["/bin/true hook"] / med["no hook"], 3),
        "ratio_hookd_vs_none": round(med["hookd"] / med["no hook"], 3),
        "ratio_hookd_proxy_vs_none": round(med["hookd proxy+hook"] / med["no hook"], 3),
        "target_ratio_hookd": 1.04,
    }


def measure_shim(base: pathlib.Path) -> dict:
    d = HookdProcess(base, name="shimbench")
    d.start()
    nice = int(os.environ.get("HOOKD_BENCH_NICE", "0"))
    if nice:
        os.setpriority(os.PRIO_PROCESS, d.pid, nice)
    try:
        hooks = base / "hooks"
        hooks.mkdir()
        d.install_hook(hooks, binary=release_shim(base))
        shim = str(hooks / "50-hookd")
        fast = []
        for _ in range(200):
            t0 = time.perf_counter()
            subprocess.run([shim, "vm", "stopped", "end", "-"], stdin=subprocess.DEVNULL, check=True)
            fast.append(time.perf_counter() - t0)
        floor = []
        for _ in range(200):
            t0 = time.perf_counter()
            subprocess.run(["/bin/true"], stdin=subprocess.DEVNULL, check=True)
            floor.append(time.perf_counter() - t0)
        uid = str(uuidlib.uuid4())
        xml = nova_domain_xml(name="instance-x", uuid=uid, serial=uid, image=None, console_log=None).encode()
        out = {"fast_path_median_ms": round(statistics.median(fast) * 1000, 2),
               "bin_true_median_ms": round(statistics.median(floor) * 1000, 2),
               "target_fast_path_ms": 3.0, "prepare": {}}
        floor_cmd = ["/bin/cat"]          # exec + read the XML from stdin: the floor of any hook
        for n in (1, 50, 200):
            # One caller: 50 calls one after the other, so its median is a median.
            calls = (lambda argv: _sequential_prepares(argv, xml, 50)) if n == 1 else \
                (lambda argv: _concurrent_prepares(argv, xml, n))
            lat = calls([shim, "instance-x", "prepare", "begin", "-"])
            base = calls(floor_cmd)
            service = [x for _ in range(50 if n == 1 else 1) for x in _daemon_service_latency(d.socket, xml, n)]
            out["prepare"][n] = {
                "p50_ms": round(_pct(lat, 50) * 1000, 1), "p99_ms": round(_pct(lat, 99) * 1000, 1),
                "floor_p50_ms": round(_pct(base, 50) * 1000, 1),
                "floor_p99_ms": round(_pct(base, 99) * 1000, 1),
                "ratio_p99_vs_floor": round(_pct(lat, 99) / _pct(base, 99), 2),
                "daemon_service_p50_ms": round(_pct(service, 50) * 1000, 1),
                "daemon_service_p99_ms": round(_pct(service, 99) * 1000, 1)}
        out["target_prepare_p99_ms_at_200"] = 100.0
        out["target_prepare_p50_ms_at_1"] = 3.0
        return out
    finally:
        d.stop()


def _daemon_service_latency(sock_path, xml: bytes, n: int) -> list:
    """n shim requests sent at once from one asyncio loop: hookd's own latency, no exec
    (threads would measure this process's GIL instead)."""
    import asyncio
    from hookd.hookpath import shimwire
    from tests.harness.hookcall import hook_request
    request = shimwire.encode_request(hook_request("instance-x", xml))

    async def one(start: asyncio.Event) -> float:
        await start.wait()
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_unix_connection(str(sock_path))
        writer.write(request)
        await writer.drain()
        reply = await reader.read(shimwire.MAX_REASON + shimwire.MAX_HEADER)
        writer.close()
        assert shimwire.decode_reply(reply).action == "allow", reply
        return time.perf_counter() - t0

    async def go():
        start = asyncio.Event()
        tasks = [asyncio.ensure_future(one(start)) for _ in range(n)]
        await asyncio.sleep(0)
        start.set()
        return await asyncio.gather(*tasks)
    return list(asyncio.run(go()))


def _concurrent_prepares(argv: list, xml: bytes, n: int) -> list:
    """Start n processes at once, each reading the XML from a file on stdin (as libvirt
    hands it a pipe it has filled); per-call latency from spawn to exit. posix_spawn and a
    pre-filled stdin keep this process's own cost out of the figure."""
    with tempfile.NamedTemporaryFile(prefix="hookd-bench-xml-") as f, \
            tempfile.TemporaryFile(prefix="hookd-bench-err-") as err:
        f.write(xml)
        f.flush()
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/"}
        procs = {}
        for _ in range(n):
            actions = [(os.POSIX_SPAWN_OPEN, 0, f.name, os.O_RDONLY, 0),
                       (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                       (os.POSIX_SPAWN_DUP2, err.fileno(), 2)]
            t0 = time.perf_counter()
            procs[os.posix_spawn(argv[0], argv, env, file_actions=actions)] = t0
        lat, failed = [], 0
        while procs:
            for pid in list(procs):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    lat.append(time.perf_counter() - procs.pop(pid))
                    failed += os.waitstatus_to_exitcode(status) != 0
            if procs:
                time.sleep(0.0002)
        err.seek(0)
        text = err.read().decode(errors="replace").strip()
        if failed or text:
            print(f"  {argv[0]}: {failed} failed; stderr: {text[:300]}", file=sys.stderr)
    return lat


def _sequential_prepares(argv: list, xml: bytes, n: int) -> list:
    return [_concurrent_prepares(argv, xml, 1)[0] for _ in range(n)]


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="hookd-bench-") as tmp:
        base = pathlib.Path(tmp)
        return {"guest_start": measure_starts(base), "shim": measure_shim(base)}


def main() -> int:
    r = run()
    g, s = r["guest_start"], r["shim"]
    print(f"guest start (define+start, diskless TCG), median of {g['runs']} runs:")
    for k, v in g["start_median_ms"].items():
        print(f"  {k:<16} {v:>8.1f} ms")
    print(f"  ratio /bin/true hook vs none   {g['ratio_true_hook_vs_none']:.3f}")
    print(f"  ratio hookd vs none            {g['ratio_hookd_vs_none']:.3f}   (target <= {g['target_ratio_hookd']})")
    print(f"  ratio hookd proxy+hook vs none {g['ratio_hookd_proxy_vs_none']:.3f}   (target <= {g['target_ratio_hookd']})")
    print(f"shim fast path (stopped end)     {s['fast_path_median_ms']:.2f} ms median   (target <= 3 ms; "
          f"/bin/true {s['bin_true_median_ms']:.2f} ms)")
    for n, v in s["prepare"].items():
        print(f"shim prepare, {n:>3} concurrent    p50 {v['p50_ms']:>7.1f} ms   p99 {v['p99_ms']:>7.1f} ms"
              f"   | /bin/cat floor: p50 {v['floor_p50_ms']:>6.1f} p99 {v['floor_p99_ms']:>7.1f} ms "
              f"(p99 ratio {v['ratio_p99_vs_floor']})"
              f"   | hookd service: p50 {v['daemon_service_p50_ms']:.1f} p99 {v['daemon_service_p99_ms']:.1f} ms")
    print("  (targets: p50 <= 3 ms at 1, p99 <= 100 ms at 200; n execs of /bin/cat on 2 cores are the floor beside)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

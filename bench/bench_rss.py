"""hookd's memory: resident set at idle and after a boot storm of 30 guests.

A namespaced libvirtd (tests/harness) with hookd's shim, and hookd with its proxy in
front of that libvirtd and its events worker connected to it (the production
shape). RSS is read from /proc/<pid>/status (VmRSS now, VmHWM peak) for the daemon
and, separately, for its libvirt worker process. The storm is the reliability
suite's (tests/harness/storm.py): 30 diskless TCG guests defined and started
at once through the proxy, one connection each. For scale, the RSS of a bare
`/usr/bin/python3 -c 'import lxml.etree, asyncio'` is measured in the same run.

Target: daemon RSS < 60 MiB at idle and after the storm.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness.libvirt_host import LibvirtHost  # noqa: E402
from tests.harness.hookd_proc import HookdProcess  # noqa: E402
from tests.harness.storm import boot_storm  # noqa: E402

GUESTS = int(os.environ.get("HOOKD_BENCH_STORM", "30"))
TARGET_MIB = 60.0


def _mem(pid: int) -> dict:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def _children(pid: int) -> list:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(p) for p in f.read().split()]
    return kids


def _status(d) -> dict:
    import json
    from tests.harness.run import run_hookctl
    return json.loads(run_hookctl("status", "--socket", d.socket, "--json").stdout)


def _wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def _bare_interpreter_rss() -> float:
    code = ("import asyncio, lxml.etree, sqlite3, sys\n"
            "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])")
    out = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, check=True).stdout
    return round(int(out) / 1024, 1)


def _destroy_all(host) -> None:
    import libvirt
    conn = host.connect()
    try:
        threads = [threading.Thread(target=dom.destroy) for dom in
                   conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        conn.close()


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="hookd-bench-rss-") as tmp:
        base = pathlib.Path(tmp)
        host = LibvirtHost(base / "h", "a")
        d = HookdProcess(base, proxy=True, libvirt_socket=host.socket_path,
                         config_extra=f"libvirt_uri = {host.uri}\n")
        d.install_hook(host.hooks_dir)
        try:
            host.start()
            d.start()
            events = _wait(lambda: (_status(d).get("events") or {}).get("connected"), 30)
            kids = _children(d.pid)
            idle = _mem(d.pid)
            idle_worker = [_mem(k) for k in kids]
            storm = boot_storm(f"qemu+unix:///system?socket={d.proxy_socket}", GUESTS)
            if events:
                _wait(lambda: _status(d)["counters"].get("compliant", 0) >= GUESTS, 30)
            after = _mem(d.pid)
            after_worker = [_mem(k) for k in kids if os.path.exists(f"/proc/{k}")]
            _destroy_all(host)
            st = _status(d)
        finally:
            try:
                host.stop()
            finally:
                d.stop()
    return {
        "guests": GUESTS, "started": GUESTS - len(storm.failed), "storm_wall_s": round(storm.wall_s, 1),
        "events_worker_connected": events,
        "daemon_idle_mib": idle.get("VmRSS"), "daemon_after_storm_mib": after.get("VmRSS"),
        "daemon_peak_mib": after.get("VmHWM"),
        "worker_idle_mib": [w.get("VmRSS") for w in idle_worker],
        "worker_after_storm_mib": [w.get("VmRSS") for w in after_worker],
        "bare_python_lxml_asyncio_mib": _bare_interpreter_rss(),
        "hook_requests": st.get("hook_requests"), "audit_rows_written": (st.get("audit") or {}).get("written"),
        "target_daemon_mib": TARGET_MIB,
    }


def main() -> int:
    r = run()
    print(f"boot storm: {r['started']}/{r['guests']} guests started in {r['storm_wall_s']} s "
          f"(events worker connected: {r['events_worker_connected']})")
    print(f"hookd daemon RSS: idle {r['daemon_idle_mib']} MiB, after storm {r['daemon_after_storm_mib']} MiB, "
          f"peak {r['daemon_peak_mib']} MiB   (target < {r['target_daemon_mib']:g} MiB)")
    print(f"libvirt worker RSS: idle {r['worker_idle_mib']} MiB, after storm {r['worker_after_storm_mib']} MiB")
    print(f"bare python3 + lxml + asyncio + sqlite3: {r['bare_python_lxml_asyncio_mib']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
